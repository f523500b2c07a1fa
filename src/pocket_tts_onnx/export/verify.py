"""Exported graphs vs upstream PyTorch.

References come from upstream's own, unpatched code paths: the conditioner, `_encode_audio`,
`flow_lm.backbone` with upstream's streaming `model_state`, the flow net, and
`mimi.decode_from_latent` with upstream's streaming state. Stateful graphs run a streaming
loop (outputs fed back as inputs by name) compared step by step. FP32 must be within the
graph's tolerance relative to the output's scale over the run; INT8 is reported as relative
L2 error against FP32 on the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pocket_tts_onnx.errors import VerificationError
from pocket_tts_onnx.specs import GraphSpec

Step = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (graph inputs, reference outputs)

STREAM_STEPS = 24


@dataclass
class GraphReport:
    graph: str
    cases: int
    steps: int
    fp32_errors: dict[str, float]  # output -> max |delta| / scale
    tolerance: float
    int8_rel_l2: dict[str, float] | None = None

    @property
    def worst_fp32(self) -> float:
        return max(self.fp32_errors.values())

    def to_dict(self) -> dict:
        return {
            "cases": self.cases,
            "steps": self.steps,
            "fp32_relative_max_error": self.fp32_errors,
            "worst_fp32": self.worst_fp32,
            "tolerance": self.tolerance,
            "passed": self.worst_fp32 <= self.tolerance,
            "int8_relative_l2_vs_fp32": self.int8_rel_l2,
        }


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text_conditioner_cases(model) -> Iterator[list[Step]]:
    n_bins = model.flow_lm.conditioner.embed.num_embeddings
    for i, tokens in enumerate((0, 1, 7, 33)):
        ids = torch.randint(0, n_bins, (1, tokens), generator=_rng(i))
        yield [({"token_ids": _np(ids)}, {"embeddings": _np(model.flow_lm.conditioner(ids))})]


def _mimi_encoder_cases(model) -> Iterator[list[Step]]:
    frame = int(model.mimi.frame_size)
    # The last length outlasts the English encoder context (250 steps = 15.6 frames).
    for i, n in enumerate((1, frame - 1, frame, 3 * frame + 17, 6 * frame, 20 * frame + 5)):
        audio = 0.3 * torch.randn(1, 1, n, generator=_rng(10 + i))
        ref = model._encode_audio(audio)
        if model.flow_lm.insert_bos_before_voice:
            ref = torch.cat([model.flow_lm.bos_before_voice, ref], dim=1)
        yield [({"audio": _np(audio)}, {"latents": _np(ref)})]


def _flow_lm_main_cases(model) -> Iterator[list[Step]]:
    """Voice prompt, text prompt, BOS, then latents: upstream's generation call pattern."""
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    flow_lm = model.flow_lm
    gen = _rng(20)
    voice = torch.randn(1, 9, flow_lm.dim, generator=gen)
    text = torch.randn(1, 6, flow_lm.dim, generator=gen)
    empty_seq = torch.empty(1, 0, flow_lm.ldim)
    empty_text = torch.empty(1, 0, flow_lm.dim)
    calls = [
        (empty_seq, voice),
        (empty_seq, text),
        (empty_text, empty_text),  # marker: an S + T = 0 call
        (torch.full((1, 1, flow_lm.ldim), np.nan), empty_text),
    ]
    calls += [
        (torch.randn(1, 1, flow_lm.ldim, generator=gen), empty_text) for _ in range(STREAM_STEPS)
    ]
    state = init_states(flow_lm, batch_size=1, sequence_length=64 + STREAM_STEPS)
    steps = []
    for seq, emb in calls:
        if seq is empty_text:  # the documented S + T = 0 no-op: states must pass through
            steps.append(({"sequence": _np(empty_seq), "text_embeddings": _np(empty_text)}, {}))
            continue
        latents = torch.where(torch.isnan(seq), flow_lm.bos_emb, seq)
        hidden = flow_lm.backbone(flow_lm.input_linear(latents), emb, seq, state)[:, -1]
        increment_steps(flow_lm, state, seq.shape[1] + emb.shape[1])
        refs = {"conditioning": _np(hidden), "eos_logit": _np(flow_lm.out_eos(hidden))}
        steps.append(({"sequence": _np(seq), "text_embeddings": _np(emb)}, refs))
    # The final KV caches must equal upstream's filled part.
    spec_states = _state_refs(model, state)
    steps[-1][1].update(spec_states)
    yield steps


def _state_refs(model, state) -> dict[str, np.ndarray]:
    from pocket_tts_onnx.export.graphs import flow_lm_state_specs

    refs = {}
    for spec in flow_lm_state_specs(model.flow_lm):
        if spec.upstream_key == "offset":  # every layer holds the same count
            first = next(v for v in state.values() if "offset" in v)
            refs[spec.output_name] = _np(first["offset"]).reshape(1).astype(np.int64)
            continue
        module_state = state[spec.upstream_module.split(".", 1)[1]]
        filled = int(module_state["offset"].view(-1)[0])
        refs[spec.output_name] = spec.from_upstream_cache(_np(module_state["cache"]), filled)
    return refs


def _flow_lm_flow_cases(model, spec: GraphSpec) -> Iterator[list[Step]]:
    names = [t.name for t in spec.inputs]
    for i, batch in enumerate((1, 3)):
        gen = _rng(30 + i)
        feed = {}
        for t in spec.inputs:
            width = t.shape[1]
            feed[t.name] = (torch.rand if t.name in ("s", "t") else torch.randn)(
                batch, width, generator=gen
            )
        ref = model.flow_lm.flow_net(*(feed[n] for n in names))
        yield [({k: _np(v) for k, v in feed.items()}, {"flow_dir": _np(ref)})]


def _mimi_decoder_cases(model) -> Iterator[list[Step]]:
    """Frames per call vary (1, 2, 3) and the run outlasts the transformer's context."""
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    mimi, flow_lm = model.mimi, model.flow_lm
    per_latent = int(mimi.encoder_frame_rate / mimi.frame_rate)
    sizes = [1 + (i % 3) for i in range(STREAM_STEPS)]
    state = init_states(mimi, batch_size=1, sequence_length=sum(sizes) * per_latent + 8)
    gen = _rng(40)
    steps = []
    for frames in sizes:
        latent = torch.randn(1, frames, flow_lm.ldim, generator=gen)
        audio = mimi.decode_from_latent(latent * flow_lm.emb_std + flow_lm.emb_mean, state)
        increment_steps(mimi, state, increment=per_latent * frames)
        steps.append(({"latent": _np(latent)}, {"audio_frame": _np(audio)}))
    yield steps


def _flow_lm_step_cases(model) -> Iterator[list[Step]]:
    """Two streams with different voice and text prompt lengths (one text prompt fed in two
    blocks, as the engine does for long chunks), prompted one at a time, then stepped
    together from different positions. Each row is compared with upstream running that
    stream alone. Inputs carry a `rows` entry: the batch rows the call runs on."""
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    flow_lm = model.flow_lm
    gen = _rng(50)
    dim, ldim = flow_lm.dim, flow_lm.ldim
    empty_seq, empty_text = torch.empty(1, 0, ldim), torch.empty(1, 0, dim)
    prompts = [
        [torch.randn(1, 9, dim, generator=gen), torch.randn(1, 6, dim, generator=gen)],
        [torch.randn(1, 4, dim, generator=gen), torch.randn(1, 11, dim, generator=gen)],
    ]
    prompts[1][1:] = [prompts[1][1][:, :5], prompts[1][1][:, 5:]]
    states = [init_states(flow_lm, 1, 64 + STREAM_STEPS) for _ in prompts]
    # One hook per RoPE module (layers may share one): it sees every layer's call in order.
    ropes = {id(m): m for m in (la.self_attn.rope for la in flow_lm.transformer.layers)}

    def upstream(row, seq, emb):
        """(conditioning, eos_logit, queries): each layer's post-RoPE query of the last
        position, read where upstream's attention applies RoPE."""
        captured = []
        hooks = [
            r.register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
            for r in ropes.values()
        ]
        try:
            latents = torch.where(torch.isnan(seq), flow_lm.bos_emb, seq)
            hidden = flow_lm.backbone(flow_lm.input_linear(latents), emb, seq, states[row])
        finally:
            for hook in hooks:
                hook.remove()
        hidden = hidden[:, -1]
        increment_steps(flow_lm, states[row], seq.shape[1] + emb.shape[1])
        queries = torch.stack([q[:, -1] for q in captured], dim=1)  # [1, L, H, d]
        return hidden, flow_lm.out_eos(hidden), queries

    steps = []
    for row, embs in enumerate(prompts):
        for emb in embs:
            hidden, eos, queries = upstream(row, empty_seq, emb)
            inputs = {"rows": np.array([row, row + 1]), "sequence": _np(empty_seq)}
            inputs["text_embeddings"] = _np(emb)
            refs = {"conditioning": _np(hidden), "eos_logit": _np(eos), "queries": _np(queries)}
            steps.append((inputs, refs))
    seqs = [torch.full((1, 1, ldim), np.nan)] * 2
    for _ in range(STREAM_STEPS):
        outs = [upstream(row, seqs[row], empty_text) for row in range(2)]
        inputs = {
            "rows": np.array([0, 2]),
            "sequence": _np(torch.cat(seqs)),
            "text_embeddings": np.zeros((2, 0, dim), np.float32),
        }
        refs = {
            name: np.concatenate([_np(out[i]) for out in outs])
            for i, name in enumerate(("conditioning", "eos_logit", "queries"))
        }
        steps.append((inputs, refs))
        seqs = [torch.randn(1, 1, ldim, generator=gen) for _ in range(2)]
    yield steps


def _mimi_decoder_batched_cases(model) -> Iterator[list[Step]]:
    """Row 0 decodes from the start; row 1 joins after 5 calls (a fresh zero row beside
    row 0's filled window: its window rows are masked by position). Each row is compared
    with upstream decoding that stream alone. A `join` input marks the call it joins at."""
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    mimi, flow_lm = model.mimi, model.flow_lm
    per_latent = int(mimi.encoder_frame_rate / mimi.frame_rate)
    sizes = [1 + (i % 3) for i in range(STREAM_STEPS)]
    states = [init_states(mimi, 1, sum(sizes) * per_latent + 8) for _ in range(2)]
    gen = _rng(60)
    steps = []
    for i, frames in enumerate(sizes):
        rows = 1 if i < 5 else 2
        latents, audio = [], []
        for row in range(rows):
            latent = torch.randn(1, frames, flow_lm.ldim, generator=gen)
            out = mimi.decode_from_latent(latent * flow_lm.emb_std + flow_lm.emb_mean, states[row])
            increment_steps(mimi, states[row], increment=per_latent * frames)
            latents.append(_np(latent))
            audio.append(_np(out))
        inputs = {"latent": np.concatenate(latents), "join": np.array(i == 5)}
        steps.append((inputs, {"audio_frame": np.concatenate(audio)}))
    yield steps


def reference_cases(model, specs: dict[str, GraphSpec]) -> dict[str, list[list[Step]]]:
    with torch.no_grad():
        return {
            "text_conditioner": list(_text_conditioner_cases(model)),
            "mimi_encoder": list(_mimi_encoder_cases(model)),
            "flow_lm_main": list(_flow_lm_main_cases(model)),
            "flow_lm_flow": list(_flow_lm_flow_cases(model, specs["flow_lm_flow"])),
            "mimi_decoder": list(_mimi_decoder_cases(model)),
            "flow_lm_step": list(_flow_lm_step_cases(model)),
            "mimi_decoder_batched": list(_mimi_decoder_batched_cases(model)),
        }


def run_buffered(session: ort.InferenceSession, spec: GraphSpec, steps: list[Step]) -> list[dict]:
    """flow_lm_step through the runtime's own FlowLM (the core's K/V rows; small capacity,
    so it grows)."""
    from pocket_tts_onnx.runtime.flow_lm import FlowLM
    from pocket_tts_onnx.runtime.graph import StatefulGraph

    flow_lm = FlowLM(StatefulGraph(session, spec), main_spec=None, rows=2)
    results = []
    for inputs, _ in steps:
        rows = slice(*inputs["rows"])
        results.append(flow_lm.run(rows, inputs["sequence"], inputs["text_embeddings"]))
    return results


def run_batched_decoder(
    session: ort.InferenceSession, spec: GraphSpec, steps: list[Step]
) -> list[dict]:
    """mimi_decoder_batched through the runtime's own MimiRows (no fade-in), a stream
    joining mid-way."""
    from pocket_tts_onnx.runtime.decoder import MimiRows
    from pocket_tts_onnx.runtime.graph import StatefulGraph

    rows = MimiRows(StatefulGraph(session, spec), fade_in_length=0)
    rows.join()
    results = []
    for inputs, _ in steps:
        if inputs["join"]:
            rows.join()
        results.append({"audio_frame": rows.decode(inputs["latent"])[:, None]})
    return results


def _runner(spec: GraphSpec):
    if spec.buffers:
        return run_buffered
    if spec.name == "mimi_decoder_batched":
        return run_batched_decoder
    return run_stream


def run_stream(
    session: ort.InferenceSession, spec: GraphSpec, steps: list[Step], dynamic: int = 0
) -> list[dict]:
    """Run one case, starting from all-zero states (dynamic axes at `dynamic`) and looping
    state outputs back by name."""
    from pocket_tts_onnx.runtime.graph import StatefulGraph

    graph = StatefulGraph(session, spec, check_io=False)
    states = graph.initial_states(dynamic)
    results = []
    for inputs, _ in steps:
        out, states = graph.step(inputs, states)
        results.append(out)
    return results


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# Zero-init conventions every stateful contract graph must give the same results under:
# dynamic axes at 0 (ours) and at 1 (sherpa-onnx); rows before the counter are masked.
INIT_CONVENTIONS = (0, 1)


def verify_graph(
    spec: GraphSpec, cases: list[list[Step]], fp32: Path, int8: Path | None = None
) -> GraphReport:
    session = _session(fp32)
    runner = _runner(spec)
    max_err: dict[str, float] = {}
    scale: dict[str, float] = {}
    fp32_outputs = []
    n_steps = 0

    def compare(name: str, got: np.ndarray, ref: np.ndarray, label: str) -> None:
        if got.shape != ref.shape:
            raise VerificationError(
                spec.name, label, float("inf"), spec.tolerance,
                f"shape {got.shape} != upstream {ref.shape}",
            )  # fmt: skip
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        if not np.isfinite(err):
            raise VerificationError(spec.name, label, err, spec.tolerance, "non-finite")
        max_err[label] = max(max_err.get(label, 0.0), err)
        scale[label] = max(scale.get(label, 0.0), float(np.max(np.abs(ref), initial=0.0)))

    for steps in cases:
        outs = runner(session, spec, steps)
        fp32_outputs.append(outs)
        for (_, refs), out in zip(steps, outs, strict=True):
            n_steps += 1
            for name, ref in refs.items():
                compare(name, out[name], ref, name)
        if runner is run_stream and spec.states:
            # Other init conventions: the same outputs (states differ by the junk prefix).
            for dynamic in INIT_CONVENTIONS[1:]:
                alt = run_stream(session, spec, steps, dynamic=dynamic)
                for (_, refs), out in zip(steps, alt, strict=True):
                    for t in spec.outputs:
                        if t.name in refs:
                            compare(t.name, out[t.name], refs[t.name], f"{t.name}@init{dynamic}")
    errors = {name: max_err[name] / max(scale[name], 1e-6) for name in max_err}
    report = GraphReport(spec.name, len(cases), n_steps, errors, spec.tolerance)
    for name, err in errors.items():
        if err > spec.tolerance:
            raise VerificationError(spec.name, name, err, spec.tolerance)
    if int8 is not None:
        report.int8_rel_l2 = _int8_error(spec, cases, fp32_outputs, _session(int8))
    return report


def _int8_error(spec, cases, fp32_outputs, session) -> dict[str, float]:
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for steps, ref_outs in zip(cases, fp32_outputs, strict=True):
        for out, ref in zip(_runner(spec)(session, spec, steps), ref_outs, strict=True):
            for t in spec.outputs:
                a, b = out[t.name].astype(np.float64), ref[t.name].astype(np.float64)
                if not np.all(np.isfinite(a)):
                    raise VerificationError(
                        spec.name,
                        t.name,
                        float("nan"),
                        spec.tolerance,
                        "INT8 graph produced NaN/Inf",
                    )
                num[t.name] = num.get(t.name, 0.0) + float(np.sum((a - b) ** 2))
                den[t.name] = den.get(t.name, 0.0) + float(np.sum(b**2))
    return {k: (num[k] / den[k]) ** 0.5 if den[k] > 0 else 0.0 for k in num}
