"""What an fp16 K/V cache (`export --kv-dtype fp16`) costs and buys, against the fp32 cache.

    python scripts/kv_dtype.py --fp32 BUNDLE --fp16 BUNDLE [--precisions int8,fp32]

The two bundles must hold the same weights (the same model id): the same export with and
without `--kv-dtype fp16`. Prints JSON, per precision:
- parity: relative L2 of the end-to-end audio (`generate`, EOS off, fixed frames) and of the
  latents (the flow LM + flow head loop of the first chunk) of the fp16 cache vs the fp32
  cache, same seed, temperature 0 and 0.7, several texts;
- step: `flow_lm_step` time (one step, B rows at K/V length 50 and 600; CPU time of the
  calling thread, 1 intra-op thread), medians over rounds that interleave both caches, and
  the KV600 / KV50 ratio;
- memory: bytes per position of one row, and the K/V positions and rows the server's default
  `--max-kv-mb` admits (serve/scheduler.py `make_scheduler`, the real dtype's bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

TEXTS = (
    "The farmer watches the brown fox from the porch until the sun sets.",
    "Please call me at half past nine; we will talk about the plan then.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
)
KV_LENGTHS = (50, 600)
BATCHES = (1, 8)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / |b| (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def first_chunk_latents(tts, text: str, temperature: float, seed: int, frames: int, nudge=False):
    """`frames` latents [frames, L] of `text`'s first chunk with the default voice: the flow
    LM (the core's K/V rows) and the flow head, as the scheduler runs them for one row.
    `nudge` moves every voice K/V value by one float32 ulp (a control perturbation)."""
    core = tts.core
    config = tts.generation_config(temperature=temperature)
    lm = core.flow_lm(rows=1)
    start = tts.start_state(None)
    if nudge:
        start = {
            k: np.nextafter(v, np.inf) if v.dtype == np.float32 else v for k, v in start.items()
        }
    lm.load(0, start)
    lm.prompt(0, core.embed(next(core.chunks(text))))
    rng = np.random.default_rng(seed)
    x = np.full((1, 1, tts.manifest.latent_dim), np.nan, dtype=np.float32)
    out = []
    for _ in range(frames):
        cond, _ = lm.step(x)
        latent = tts.sampler.sample(
            cond, rng, config.temperature, config.noise_clamp, config.lsd_steps
        )
        out.append(latent)
        x = latent[:, None, :]
    return np.concatenate(out)


def parity(engines: dict, frames: int, reference=None) -> dict:
    """fp16 cache vs fp32 cache; with `reference` (FP32 graphs, fp32 cache) also INT8 vs
    FP32 graphs on the fp32 cache, the error INT8 users already accept, for scale."""
    runs = dict(engines, **({"reference": reference} if reference else {}))
    out = {}
    for temperature in (0.0, 0.7):
        found: dict = {}
        for i, text in enumerate(TEXTS):
            for kind, tts in runs.items():
                params = {"seed": i, "temperature": temperature, "max_frames": frames}
                audio = tts.generate(text, eos_threshold=float("inf"), **params)
                latents = first_chunk_latents(tts, text, temperature, i, frames)
                found.setdefault(kind, []).append((audio, latents))
            nudged = first_chunk_latents(engines["fp32"], text, temperature, i, frames, True)
            found.setdefault("nudged", []).append((None, nudged))

        def compare(a: str, b: str, part: int, cut=slice(None), found=found) -> list[float]:
            return [
                round(rel_l2(x[part][cut], y[part][cut]), 8)
                for x, y in zip(found[a], found[b], strict=True)
            ]

        entry = {
            "audio_rel_l2": compare("fp16", "fp32", 0),
            "latents_rel_l2": compare("fp16", "fp32", 1),
            "latents_rel_l2_first_10_frames": compare("fp16", "fp32", 1, slice(0, 10)),
            "control_one_ulp_voice_latents_rel_l2": compare("nudged", "fp32", 1),
        }
        if reference:
            entry["int8_vs_fp32_graphs_audio_rel_l2"] = compare("fp32", "reference", 0)
            entry["int8_vs_fp32_graphs_latents_rel_l2"] = compare("fp32", "reference", 1)
        out[f"temperature_{temperature:g}"] = entry
    return out


def step_times(engines: dict, rounds: int, steps: int) -> dict:
    """Median CPU ms of one flow_lm_step call per (cache, rows, K/V length), interleaved."""
    rng = np.random.default_rng(0)
    lms, times = {}, {}
    for kind, tts in engines.items():
        for rows in BATCHES:
            for kv in KV_LENGTHS:
                lm = tts.core.flow_lm(rows=rows)
                lm.buffers.reset(rows, kv + steps + 1)
                for arr in lm.buffers.arrays.values():
                    arr[:, :, :kv] = rng.standard_normal((rows, arr.shape[1], kv, arr.shape[3]))
                lms[kind, rows, kv] = lm
                times[kind, rows, kv] = []
    latent_dim = next(iter(engines.values())).manifest.latent_dim
    keys = list(lms)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            lm, rows, kv = lms[key], key[1], key[2]
            lm.buffers.positions[:] = kv
            x = rng.standard_normal((rows, 1, latent_dim)).astype(np.float32)
            for _ in range(steps):
                start = time.thread_time()
                lm.step(x)
                times[key].append(time.thread_time() - start)
    out = {}
    for kind in engines:
        for rows in BATCHES:
            ms = {kv: 1000 * statistics.median(times[kind, rows, kv]) for kv in KV_LENGTHS}
            out[f"{kind}_B{rows}"] = {
                **{f"kv{kv}_ms": round(v, 2) for kv, v in ms.items()},
                "kv600_over_kv50": round(ms[600] / ms[50], 3),
            }
    return out


def budget(engines: dict) -> dict:
    """Bytes per position and what the server's default K/V budget admits, per cache."""
    from pocket_tts_onnx.runtime.generation import chunk_max_frames
    from pocket_tts_onnx.runtime.kv_buffer import filled_positions
    from pocket_tts_onnx.serve.limits import ServeConfig
    from pocket_tts_onnx.serve.scheduler import make_scheduler

    serve = ServeConfig()
    out = {"max_kv_mb": serve.max_kv_mb}
    for kind, tts in engines.items():
        per_position = tts.core.flow_lm(rows=0).buffers.bytes_per_position
        scheduler = make_scheduler(tts, serve)
        try:
            positions = scheduler.current().max_kv_positions
        finally:
            scheduler.close()
        # What one request's first chunk reserves: the bundle's default voice, the chunk's
        # tokens and the frames the scheduler must allow it (upstream's length estimate).
        core = tts.core
        chunk = next(core.chunks(TEXTS[0]))
        parts = {
            "voice": filled_positions(core.main_spec, tts.start_state(None)),
            "tokens": len(chunk.token_ids),
            "frames": chunk_max_frames(chunk, tts.generation_config(), tts.manifest),
        }
        need = sum(parts.values())
        out[kind] = {
            "bytes_per_position": per_position,
            "mb_per_row_at_600": round(600 * per_position / 2**20, 2),
            "budget_positions": positions,
            "first_chunk_positions": parts,
            "rows_at_first_chunk": positions // need,
            "rows_at_600": positions // 600,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", required=True, help="bundle exported with the default fp32 cache")
    p.add_argument("--fp16", required=True, help="the same export with --kv-dtype fp16")
    p.add_argument("--precisions", default="int8,fp32")
    p.add_argument("--frames", type=int, default=60, help="frames per parity run (default: 60)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds (default: 6)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default: 10)")
    args = p.parse_args()

    from pocket_tts_onnx import PocketTTSOnnx

    result = {"load_average_before": os.getloadavg()[0]}
    for precision in args.precisions.split(","):
        engines = {
            kind: PocketTTSOnnx.load(path, precision=precision, threads=1)
            for kind, path in (("fp32", args.fp32), ("fp16", args.fp16))
        }
        if engines["fp32"].model_id != engines["fp16"].model_id:
            raise SystemExit("the two bundles hold different weights (model ids differ)")
        dtypes = {k: t.core.flow_lm_graph.spec.buffers[0].dtype for k, t in engines.items()}
        if dtypes != {"fp32": "float32", "fp16": "float16"}:
            raise SystemExit(f"--fp32/--fp16 bundles store K/V as {dtypes}")
        reference = None
        if precision == "int8":
            reference = PocketTTSOnnx.load(args.fp32, precision="fp32", threads=1)
        result[precision] = {
            "parity": parity(engines, args.frames, reference),
            "step": step_times(engines, args.rounds, args.steps),
            "memory": budget(engines),
        }
        print(json.dumps({precision: result[precision]}), file=sys.stderr, flush=True)
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
