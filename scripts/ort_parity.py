"""ONNX Runtime parity subset: run a bundle's graphs on their documented edge cases and
end to end, save every output, and compare with the same run on another ONNX Runtime.

Torch-free (numpy, onnxruntime and the runtime's own dependencies), so it runs in a bare venv
holding the oldest onnxruntime the project declares:

    python scripts/ort_parity.py --bundle B --out newest.npz
    python scripts/ort_parity.py --bundle B --out oldest.npz --reference newest.npz

Cases, per precision, with the contract's initial states (zeros, dynamic axes at 0):
text_conditioner T = 0 and T = 5; mimi_encoder N = 1 and N = 2 frames + 37 samples;
flow_lm_main S + T = 0 on empty and on filled states, S = 0 with T = 5, and S = 1 (NaN BOS,
then a latent) with T = 0; flow_lm_flow at batch 1 and 2; mimi_decoder 1 then 3 frames; and
`PocketTTSOnnx.generate` at temperature 0 with a voice. Exits 1 if a case fails to run, or
differs from the reference by more than --tolerance (max |delta|), naming it.

One exception: INT8 end to end is compared by relative L2 error (--int8-generate-rel). INT8
graphs quantize activations at run time, so a last-bit difference between two ONNX Runtime
builds can move a value across a rounding boundary, and the autoregressive loop carries that
on (measured on a 1024-wide model, ORT 1.20.0 vs 1.32.0: max |delta| 5e-5, relative L2
2.5e-5, while every single INT8 call stays within 3e-6 and FP32 end to end within 1e-6).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.manifest import Manifest

TEXT = "Hello world, this is a small test. And a second sentence!"


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # failures are reported below, once, by case
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def graph_cases(bundle: Path, manifest: Manifest, precision: str, rng) -> dict[str, dict]:
    """case name -> (a function running it); every case returns its named outputs."""
    g = {n: manifest.graphs[n] for n in manifest.graphs}
    sess = {n: _session(bundle / e.files[precision]) for n, e in g.items() if n in _CONTRACT}
    L, D, Dz = manifest.latent_dim, manifest.d_model, manifest.head_dim
    f32 = np.float32
    text = rng.standard_normal((1, 5, D)).astype(f32)
    latent = rng.standard_normal((1, 1, L)).astype(f32)
    audio = (0.1 * rng.standard_normal(2 * manifest.samples_per_latent + 37)).astype(f32)
    frames = rng.standard_normal((1, 4, L)).astype(f32)
    c = rng.standard_normal((2, Dz)).astype(f32)
    x = rng.standard_normal((2, L)).astype(f32)
    vocab = manifest.tokenizer.vocab_size
    lm_spec, dec_spec = g["flow_lm_main"].spec, g["mimi_decoder"].spec

    def lm(states, seq, emb):
        out = _run(sess["flow_lm_main"], {"sequence": seq, "text_embeddings": emb, **states})
        return out, {s.name: out[s.output_name] for s in lm_spec.states}

    def flow_lm_main():
        """Each call is its own case (a failing one is reported and skipped): the states
        move on only through the calls that ran."""
        results = {}
        empty_seq, empty_text = np.zeros((1, 0, L), f32), np.zeros((1, 0, D), f32)
        states = lm_spec.initial_states()
        bos = np.full((1, 1, L), np.nan, f32)
        for case, seq, emb, advance in (
            ("S+T=0 empty", empty_seq, empty_text, False),
            ("S=0 T=5", empty_seq, text, True),
            ("S+T=0 filled", empty_seq, empty_text, False),
            ("S=1 BOS T=0", bos, empty_text, True),
            ("S=1 T=0", latent, empty_text, False),
        ):
            try:
                results[case], after = lm(states, seq, emb)
            except Exception as e:
                results[case] = e
                continue
            if advance:
                states = after
        return results

    def flow_lm_flow():
        results = {}
        for b in (1, 2):
            feed = {"c": c[:b], "x": x[:b]}
            times = {"s": 0.25, "t": 0.5}
            feed.update({t: np.full((b, 1), times[t], f32) for t in manifest.flow_time_inputs})
            results[f"batch={b}"] = _run(sess["flow_lm_flow"], feed)
        return results

    def mimi_decoder():
        results, states = {}, dec_spec.initial_states()
        for name, chunk in (("F=1", frames[:, :1]), ("F=3", frames[:, 1:])):
            out = _run(sess["mimi_decoder"], {"latent": chunk, **states})
            states = {s.name: out[s.output_name] for s in dec_spec.states}
            results[name] = out
        return results

    return {
        "text_conditioner": lambda: {
            f"T={t}": _run(sess["text_conditioner"], {"token_ids": ids})
            for t, ids in (
                (0, np.zeros((1, 0), np.int64)),
                (5, (np.arange(5, dtype=np.int64) * 7 % vocab)[None]),
            )
        },
        "mimi_encoder": lambda: {
            f"N={n}": _run(sess["mimi_encoder"], {"audio": audio[None, None, :n]})
            for n in (1, audio.size)
        },
        "flow_lm_main": flow_lm_main,
        "flow_lm_flow": flow_lm_flow,
        "mimi_decoder": mimi_decoder,
    }


_CONTRACT = ("text_conditioner", "mimi_encoder", "flow_lm_main", "flow_lm_flow", "mimi_decoder")


def run_all(bundle: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every output of every case, keyed "precision/graph/case/output"; and the failures."""
    manifest = Manifest.load(bundle)
    results, failures = {}, []
    for precision in ("fp32", "int8"):
        if not all(precision in manifest.graphs[n].files for n in _CONTRACT):
            continue
        rng = np.random.default_rng(0)
        for graph, run in graph_cases(bundle, manifest, precision, rng).items():
            try:
                cases = run()
            except Exception as e:  # report every graph, not just the first failure
                cases = {"*": e}
            for case, outputs in cases.items():
                if isinstance(outputs, Exception):
                    msg = " ".join(str(outputs).split())[:300]
                    failures.append(f"{precision}/{graph}/{case}: {type(outputs).__name__}: {msg}")
                    continue
                for name, value in outputs.items():
                    results[f"{precision}/{graph}/{case}/{name}"] = np.asarray(value)
        try:
            tts = PocketTTSOnnx.load(bundle, precision=precision, threads=1)
            rate = tts.sample_rate
            t = np.arange(2 * rate) / rate
            voice_audio = (0.2 * np.sin(2 * np.pi * 220 * t) * (t % 0.4 < 0.25)).astype(np.float32)
            voice = tts.voice_from_audio((voice_audio, rate))
            results[f"{precision}/generate/voice/audio"] = tts.generate(
                TEXT, voice, temperature=0.0, max_frames=30
            )
        except Exception as e:
            failures.append(f"{precision}/generate: {type(e).__name__}: {str(e)[:400]}")
    return results, failures


INT8_GENERATE = "int8/generate/"


def compare(
    ours: dict, reference: dict, tolerance: float, int8_generate_rel: float = 1e-3
) -> list[str]:
    problems = []
    for key in sorted(set(ours) | set(reference)):
        if key not in ours or key not in reference:
            problems.append(f"{key}: only in {'reference' if key in reference else 'this run'}")
            continue
        a, b = ours[key], reference[key]
        if a.shape != b.shape:
            problems.append(f"{key}: shape {a.shape} vs reference {b.shape}")
            continue
        if a.size == 0:
            continue
        if key.startswith(INT8_GENERATE):
            rel = float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))
            if not rel <= int8_generate_rel:
                problems.append(f"{key}: relative L2 {rel:.2e} > {int8_generate_rel:.0e}")
            continue
        if a.dtype.kind in "iub":
            delta = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
        else:
            both_nan = np.isnan(a) & np.isnan(b)
            delta = float(np.max(np.where(both_nan, 0.0, np.abs(a - b))))
        if not delta <= tolerance:
            problems.append(f"{key}: max |delta| {delta:.2e} > {tolerance:.0e}")
    return problems


def summary(ours: dict, reference: dict) -> str:
    """Worst max |delta| of the FP32 and of the INT8 outputs, INT8 generate's relative L2."""
    worst = {"fp32": 0.0, "int8": 0.0}
    rel = 0.0
    for key, a in ours.items():
        b = reference.get(key)
        if b is None or a.shape != b.shape or not a.size or a.dtype.kind != "f":
            continue
        if key.startswith(INT8_GENERATE):
            rel = max(rel, float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12)))
        else:
            precision = key.split("/")[0]
            worst[precision] = max(worst[precision], float(np.nanmax(np.abs(a - b))))
    return (
        f"max |delta| fp32 {worst['fp32']:.2e}, int8 calls {worst['int8']:.2e}; "
        f"int8 generate relative L2 {rel:.2e}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where to save the outputs")
    parser.add_argument("--reference", type=Path, help="outputs of another ORT to compare with")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--int8-generate-rel", type=float, default=1e-3)
    args = parser.parse_args(argv)
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, bundle {args.bundle}")
    results, failures = run_all(args.bundle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **results)
    print(f"{len(results)} outputs saved to {args.out}")
    problems = [f"FAILED {f}" for f in failures]
    if args.reference is not None:
        reference = dict(np.load(args.reference))
        problems += compare(results, reference, args.tolerance, args.int8_generate_rel)
        print(f"compared with {args.reference}: {summary(results, reference)}")
    for p in problems:
        print(p)
    print("parity: FAIL" if problems else "parity: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
