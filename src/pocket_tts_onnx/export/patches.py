"""Export-time patches that turn upstream's stateful modules into pure functions.

Upstream modules keep their streaming state inside a mutable `model_state` dict and update
it in place (preallocated KV buffers, `state[...][:] = ...`). Tracing in-place writes into
graph inputs gives wrong graphs, so while `stateless_modules()` is active each stateful
module reads its state from the dict and *replaces* the dict entry with a new tensor. The
graph wrappers (graphs.py) put graph inputs into the dict and read graph outputs back out.

State layout seen by the patched modules, keyed by the module's absolute name:
- attention: {"k": [B, H_kv, P, d], "v": [B, H_kv, P, d]} (upstream's "cache" [2, B, P, H_kv, d]
  split and made head-major) and optionally {"offset": int64 [1]} (absolute position of the
  next token; without it the position is P, the cache length). A module with a finite
  `context` keeps only the last `context - 1` keys, so its state stays bounded.
- conv: {"previous": [B, C, K_eff - stride]} plus, for replicate padding, {"started": [B]}
  (0.0 before the first call, so an all-zeros initial state is the right one).
- transposed conv: {"partial": [B, C_out, K - stride]}.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import torch

from pocket_tts_onnx.errors import UnsupportedVersionError

# pocket-tts versions whose module internals these patches were written and tested against.
TESTED_POCKET_TTS = ((4, 0, 0), (4, 1, 0))  # [min, max)


def pocket_tts_version() -> str:
    try:
        return version("pocket-tts")
    except PackageNotFoundError as e:
        raise UnsupportedVersionError(
            "pocket-tts is not installed: install the export extra, "
            "`pip install 'pocket-tts-onnx[export]'`"
        ) from e


def check_pocket_tts_version(installed: str | None = None) -> str:
    """Fail early on an untested pocket-tts: the patches depend on its module internals."""
    installed = installed or pocket_tts_version()
    try:
        parts = tuple(int(p) for p in installed.split("+")[0].split(".")[:3])
    except ValueError as e:
        raise UnsupportedVersionError(f"cannot parse pocket-tts version {installed!r}") from e
    low, high = TESTED_POCKET_TTS
    if not (low <= parts < high):
        raise UnsupportedVersionError(
            f"pocket-tts {installed} is installed, but the exporter is tested with "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}; install a tested "
            f"version: pip install 'pocket-tts>={'.'.join(map(str, low))},"
            f"<{'.'.join(map(str, high))}'"
        )
    return installed


def _module_state(module: torch.nn.Module, model_state: dict | None) -> dict | None:
    if model_state is None:
        return None
    return model_state.get(module._module_absolute_name)


def _attention_forward(self, query, model_state, attn_mask=None):
    """Attention over [past; new] keys. Keys and values are stored head-major as two states
    ([B, H_kv, P, d]) so the step reads them without transposes or splits; the scale is
    applied to the queries and GQA groups queries per key head instead of repeating keys."""
    state = _module_state(self, model_state)
    b, t, _ = query.shape
    d = self.dim_per_head
    projected = self.in_proj(query)
    q = projected[..., : self.attn_dim].reshape(b, t, self.num_heads, d)
    kv = projected[..., self.attn_dim :].reshape(b, t, 2, self.num_kv_heads, d)
    k, v = kv.unbind(2)

    if state is None:
        past_len = 0
        offset = torch.zeros((), dtype=torch.long)
    else:
        past_len = state["k"].shape[2]
        offset = state["offset"].reshape(()) if "offset" in state else past_len
    q, k = self.rope(q, k, offset=offset)
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, H_kv, t, d]
    if state is not None:
        k = torch.cat([state["k"], k], dim=2)
        v = torch.cat([state["v"], v], dim=2)
        keep = slice(None) if self.context is None else slice(-(self.context - 1), None)
        state["k"], state["v"] = k[:, :, keep], v[:, :, keep]
        if "offset" in state:
            state["offset"] = state["offset"] + t

    group = self.num_heads // self.num_kv_heads
    q = (q * d**-0.5).transpose(1, 2).reshape(b, self.num_kv_heads, group * t, d)
    if state is None and self.context is not None:
        x = _banded_attention(q, k, v, group, t, self.context)
    else:
        # Absolute positions: queries start at `offset`, keys at `offset - past_len`.
        pos_q = offset + torch.arange(t, dtype=torch.long)
        pos_k = (offset - past_len) + torch.arange(k.shape[2], dtype=torch.long)
        delta = pos_q[:, None] - pos_k[None, :]
        mask = delta >= 0
        if self.context is not None:
            mask = mask & (delta < self.context)
        scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H_kv, group * t, P + t]
        scores = scores.masked_fill(~mask.repeat(group, 1), float("-inf"))
        x = torch.matmul(torch.softmax(scores, dim=-1), v)
    x = x.reshape(b, self.num_heads, t, d).transpose(1, 2).reshape(b, t, self.num_heads * d)
    return self.out_proj(x)


def _banded_attention(q, k, v, group: int, t, context: int):
    """Causal attention limited to `context` keys, in blocks of `context` queries that each
    see their own and the previous block: O(t * context) time and memory instead of O(t^2)
    (a 30 s voice prompt is 6000 encoder steps). The same keys as the full masked form.

    q: [B, H_kv, group * t, d] (query groups of one key head stacked), k, v: [B, H_kv, t, d].
    """
    b, heads, _, d = k.shape
    size = context
    blocks = (t + size - 1) // size
    pad = blocks * size - t
    q = q.reshape(b, heads, group, t, d)
    q = torch.cat([q, q.new_zeros((b, heads, group, pad, d))], dim=3)
    q = q.reshape(b, heads, group, blocks, size, d).transpose(2, 3)  # [B, H, nb, g, S, d]

    def windows(x):  # [B, H, t, d] -> [B, H, nb, 2S, d]: previous block + own block
        x = torch.cat([x.new_zeros((b, heads, size, d)), x, x.new_zeros((b, heads, pad, d))], 2)
        x = x.reshape(b, heads, blocks + 1, size, d)
        return torch.cat([x[:, :, :-1], x[:, :, 1:]], dim=3)

    k_win, v_win = windows(k), windows(v)
    block = torch.arange(blocks, dtype=torch.long)[:, None, None]
    row = torch.arange(size, dtype=torch.long)[None, :, None]
    col = torch.arange(2 * size, dtype=torch.long)[None, None, :]
    delta = size + row - col  # query position minus key position
    mask = (delta >= 0) & (delta < context) & ((block - 1) * size + col >= 0)
    scores = torch.matmul(q, k_win[:, :, :, None].transpose(-1, -2))  # [B, H, nb, g, S, 2S]
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    x = torch.matmul(torch.softmax(scores, dim=-1), v_win[:, :, :, None])  # [B, H, nb, g, S, d]
    x = x.transpose(2, 3).reshape(b, heads, group, blocks * size, d)[:, :, :, :t]
    return x.reshape(b, heads, group * t, d)


def _conv_forward(self, x, model_state):
    state = _module_state(self, model_state)
    pad = self._effective_kernel_size - self._stride
    if pad == 0:
        return self.conv(x)
    b, c, _ = x.shape
    replicate = self.pad_mode == "replicate"
    if state is None:
        previous = x[..., :1].expand(b, c, pad) if replicate else x.new_zeros(b, c, pad)
    else:
        previous = state["previous"]
        if replicate:
            started = state["started"].reshape(b, 1, 1) > 0
            previous = torch.where(started, previous, x[..., :1].expand(b, c, pad))
    padded = torch.cat([previous, x], dim=-1)
    if state is not None:
        state["previous"] = padded[..., -pad:]
        if replicate:
            state["started"] = torch.ones_like(state["started"])
    return self.conv(padded)


def _conv_transpose_forward(self, x, model_state):
    state = _module_state(self, model_state)
    y = self.convtr(x)
    overlap = self._kernel_size - self._stride
    if overlap == 0:
        return y
    partial = state["partial"]
    length = y.shape[-1]
    head = y[..., :overlap] + partial
    tail = y[..., length - overlap :]
    if self.convtr.bias is not None:
        tail = tail - self.convtr.bias[:, None]
    state["partial"] = tail
    return torch.cat([head, y[..., overlap : length - overlap]], dim=-1)


def _patch_targets():
    from pocket_tts.modules.attention import StreamingMultiheadAttention
    from pocket_tts.modules.conv import StreamingConv1d, StreamingConvTranspose1d

    return [
        (StreamingMultiheadAttention, "forward", _attention_forward),
        (StreamingConv1d, "forward", _conv_forward),
        (StreamingConvTranspose1d, "forward", _conv_transpose_forward),
    ]


@contextlib.contextmanager
def stateless_modules() -> Iterator[None]:
    """Swap upstream's stateful forwards for functional ones; always restore them."""
    check_pocket_tts_version()
    targets = _patch_targets()
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _ in targets]
    try:
        for cls, name, replacement in targets:
            setattr(cls, name, replacement)
        yield
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
