"""The five graphs as torch modules over upstream's own submodules.

Each wrapper is a pure function of its inputs while `patches.stateless_modules()` is active:
state tensors come in as arguments, go into a `model_state` dict the patched upstream modules
read and replace, and come back out as outputs. The graph contract (names, axes) lives in
`pocket_tts_onnx.specs`; this module only knows how to compute it.
"""

from __future__ import annotations

import torch
from torch import nn

from pocket_tts_onnx.specs import BufferSpec, StateSpec


def _attention_modules(root: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    from pocket_tts.modules.attention import StreamingMultiheadAttention

    return [
        (name, m)
        for name, m in root.named_modules()
        if isinstance(m, StreamingMultiheadAttention) and name.startswith(prefix)
    ]


def flow_lm_state_specs(flow_lm: nn.Module) -> list[StateSpec]:
    """Keys and values per layer, then the transformer's position counter: the number of
    real positions fed so far. Cache rows before the last `position` ones are masked, so
    the state is right under any zero-init convention (docs/state-design.md)."""
    specs = []
    for name, attn in _attention_modules(flow_lm):
        for part in ("k", "v"):
            specs.append(
                StateSpec(
                    name=f"state_{len(specs)}",
                    upstream_module=f"flow_lm.{name}",
                    upstream_key=f"cache.{part}",
                    dtype="float32",
                    shape=[1, attn.num_kv_heads, "kv_len", attn.dim_per_head],
                )
            )
    specs.append(
        StateSpec(
            name=f"state_{len(specs)}",
            upstream_module="flow_lm.transformer",
            upstream_key="offset",
            dtype="int64",
            shape=[1],
        )
    )
    return specs


def mimi_decoder_state_specs(mimi: nn.Module) -> list[StateSpec]:
    """Decoder-side streaming state: sliding KV windows, one position counter per transformer,
    conv tails and transposed-conv overlaps. Encoder-side modules run stateless."""
    from pocket_tts.modules.attention import StreamingMultiheadAttention
    from pocket_tts.modules.conv import StreamingConv1d, StreamingConvTranspose1d
    from pocket_tts.modules.transformer import StreamingTransformer

    decoder_prefixes = ("upsample.", "decoder_transformer.", "decoder.")
    specs: list[StateSpec] = []

    def add(module: str, key: str, shape: list, dtype: str = "float32") -> None:
        specs.append(
            StateSpec(
                name=f"state_{len(specs)}",
                upstream_module=f"mimi.{module}",
                upstream_key=key,
                dtype=dtype,
                shape=shape,
            )
        )

    for name, module in mimi.named_modules():
        if not name.startswith(decoder_prefixes):
            continue
        if isinstance(module, StreamingTransformer):
            add(name, "offset", [1], "int64")
        elif isinstance(module, StreamingMultiheadAttention):
            window = f"window_{len(specs)}"
            for part in ("k", "v"):
                add(name, f"cache.{part}", [1, module.num_kv_heads, window, module.dim_per_head])
        elif isinstance(module, StreamingConv1d):
            pad = module._effective_kernel_size - module._stride
            if pad:
                add(name, "previous", [1, module.conv.in_channels, pad])
                if module.pad_mode == "replicate":
                    add(name, "started", [1])
        elif isinstance(module, StreamingConvTranspose1d):
            overlap = module._kernel_size - module._stride
            if overlap:
                add(name, "partial", [1, module.convtr.out_channels, overlap])
    return specs


def _relative(spec: StateSpec) -> str:
    return spec.upstream_module.split(".", 1)[1]


def _build_model_state(
    specs: list[StateSpec], states: tuple[torch.Tensor, ...], root: nn.Module
) -> dict[str, dict[str, torch.Tensor]]:
    """Graph inputs -> the dict the patched modules read; transformer offsets fan out to
    every attention layer of that transformer."""
    model_state: dict[str, dict[str, torch.Tensor]] = {}
    offsets = {}
    for spec, tensor in zip(specs, states, strict=True):
        if spec.upstream_key == "offset":
            offsets[_relative(spec)] = tensor
        else:
            model_state.setdefault(_relative(spec), {})[_patched_key(spec)] = tensor
    for transformer_name, offset in offsets.items():
        for name, _ in _attention_modules(root, transformer_name + "."):
            model_state.setdefault(name, {})["offset"] = offset
    return model_state


def _collect_states(
    specs: list[StateSpec], model_state: dict[str, dict[str, torch.Tensor]], root: nn.Module
) -> list[torch.Tensor]:
    out = []
    for spec in specs:
        if spec.upstream_key == "offset":
            first_layer = _attention_modules(root, _relative(spec) + ".")[0][0]
            out.append(model_state[first_layer]["offset"])
        else:
            out.append(model_state[_relative(spec)][_patched_key(spec)])
    return out


def _patched_key(spec: StateSpec) -> str:
    """Upstream key -> key of the patched modules' state ("cache.k" is held as "k")."""
    return spec.upstream_key.removeprefix("cache.")


def _last_or_zeros(hidden: torch.Tensor) -> torch.Tensor:
    """hidden[:, -1], or zeros when nothing was fed (S + T = 0: a documented no-op call
    that leaves the state unchanged; runtimes that probe graphs with empty inputs rely on
    it)."""
    return torch.cat([hidden.new_zeros((hidden.shape[0], 1, hidden.shape[2])), hidden], 1)[:, -1]


class TextConditionerGraph(nn.Module):
    def __init__(self, flow_lm: nn.Module):
        super().__init__()
        self.conditioner = flow_lm.conditioner

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.conditioner(token_ids)


class MimiEncoderGraph(nn.Module):
    """Audio -> voice conditioning ready for flow_lm_main (projection and BOS included)."""

    def __init__(self, tts_model: nn.Module):
        super().__init__()
        self.mimi = tts_model.mimi
        self.flow_lm = tts_model.flow_lm
        self.frame_size = int(self.mimi.frame_size)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # Right-pad to whole frames inside the graph so any N works (upstream pads in Python).
        n = audio.shape[-1]
        pad = (self.frame_size - n % self.frame_size) % self.frame_size
        audio = torch.cat([audio, audio.new_zeros((1, 1, pad))], dim=-1)
        emb = self.mimi.encoder(audio, model_state=None)
        (emb,) = self.mimi.encoder_transformer(emb, model_state=None)
        emb = self.mimi._to_framerate(emb)
        latents = torch.nn.functional.linear(
            emb.transpose(-1, -2), self.flow_lm.speaker_proj_weight
        )
        if self.flow_lm.insert_bos_before_voice:
            latents = torch.cat([self.flow_lm.bos_before_voice, latents], dim=1)
        return latents


class FlowLMMainGraph(nn.Module):
    """One backbone call: prompt (text or voice embeddings) and/or one latent step."""

    def __init__(self, flow_lm: nn.Module, state_specs: list[StateSpec]):
        super().__init__()
        self.flow_lm = flow_lm
        self.state_specs = state_specs

    def forward(self, sequence, text_embeddings, *states):
        flow_lm = self.flow_lm
        model_state = _build_model_state(self.state_specs, states, flow_lm)
        latents = torch.where(torch.isnan(sequence), flow_lm.bos_emb, sequence)
        hidden = flow_lm.backbone(
            flow_lm.input_linear(latents), text_embeddings, sequence, model_state
        )
        conditioning = _last_or_zeros(hidden)
        eos_logit = flow_lm.out_eos(conditioning)
        return (conditioning, eos_logit, *_collect_states(self.state_specs, model_state, flow_lm))


def _stored(rows: torch.Tensor, buffer: BufferSpec) -> torch.Tensor:
    """New K/V rows in the buffer's dtype; a narrower float saturates at its largest value
    instead of overflowing to inf."""
    dtype = getattr(torch, buffer.dtype)
    if dtype == rows.dtype:
        return rows
    largest = torch.finfo(dtype).max
    return rows.clamp(-largest, largest).to(dtype)


class FlowLMStepGraph(nn.Module):
    """flow_lm_main over read-only K/V buffers, returning only the new rows (fast-KV), for
    any batch of streams at different positions (docs/state-design.md), and every layer's
    post-RoPE query of the last position (for word timestamps). Buffers stored in another
    dtype than float32 (`--kv-dtype fp16`) are cast in and out: the graph computes in
    float32, only the stored keys and values are rounded."""

    def __init__(self, flow_lm: nn.Module, buffers: list[BufferSpec]):
        super().__init__()
        self.flow_lm = flow_lm
        self.buffers = buffers

    def forward(self, sequence, text_embeddings, position, *caches):
        flow_lm = self.flow_lm
        model_state: dict[str, dict[str, torch.Tensor]] = {}
        for spec, tensor in zip(self.buffers, caches, strict=True):
            entry = model_state.setdefault(spec.upstream_module.split(".", 1)[1], {})
            if tensor.dtype != torch.float32:  # the float32 graph gets no Cast at all
                tensor = tensor.float()
            entry["buf_" + spec.upstream_key.removeprefix("cache.")] = tensor
            entry["offset"] = position
        latents = torch.where(torch.isnan(sequence), flow_lm.bos_emb, sequence)
        hidden = flow_lm.backbone(
            flow_lm.input_linear(latents), text_embeddings, sequence, model_state
        )
        conditioning = _last_or_zeros(hidden)
        eos_logit = flow_lm.out_eos(conditioning)
        new = [
            _stored(model_state[b.upstream_module.split(".", 1)[1]]["new_" + b.upstream_key[-1]], b)
            for b in self.buffers
        ]
        layers = dict.fromkeys(b.upstream_module.split(".", 1)[1] for b in self.buffers)
        queries = torch.stack([model_state[name]["query"] for name in layers], dim=1)
        return (conditioning, eos_logit, queries, *new)


class FlowHeadGraph(nn.Module):
    """One solver step of the flow head. Inputs are lifted to 3-D so every Linear exports as
    MatMul (quantizable) rather than Gemm."""

    def __init__(self, flow_lm: nn.Module):
        super().__init__()
        self.flow_net = flow_lm.flow_net

    def forward(self, c, *time_and_x):
        args = [a[:, None, :] for a in time_and_x]
        return self.flow_net(c[:, None, :], *args)[:, 0, :]


class MimiDecoderGraph(nn.Module):
    """Latents in flow-head space -> audio, streaming."""

    def __init__(self, tts_model: nn.Module, state_specs: list[StateSpec]):
        super().__init__()
        self.mimi = tts_model.mimi
        self.flow_lm = tts_model.flow_lm
        self.state_specs = state_specs

    def forward(self, latent, *states):
        model_state = _build_model_state(self.state_specs, states, self.mimi)
        latent = latent * self.flow_lm.emb_std + self.flow_lm.emb_mean
        audio = self.mimi.decode_from_latent(latent, model_state)
        return (audio, *_collect_states(self.state_specs, model_state, self.mimi))
