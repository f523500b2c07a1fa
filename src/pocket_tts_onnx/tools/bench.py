"""`pocket-tts-onnx bench`: upstream PyTorch vs our engine (FP32, INT8) in one invocation.

Each contender runs in its own process (fresh memory accounting, no shared thread pools),
runs alternate between contenders, and the report gives medians and ratios vs upstream.
Upstream is measured on its own streaming path (`generate_audio_stream`, decoder thread
overlapping) with the same intra-op thread count. EOS is disabled so every run makes the
same number of frames. Needs the [export] extra (torch + pocket-tts) for upstream.

Two upstream contenders: `upstream` (FP32) and `upstream-int8`, upstream's own quantize mode
(`TTSModel.load_model(quantize=True)`, `pocket-tts --quantize`) with the backend upstream
picks on the machine; the report names it. Ratios are given against both. A peer:
`sherpa-onnx` (bench_sherpa.py), its own loop on the bundle's INT8 graphs. `NAME@N` runs a
contender with N intra-op threads instead of --threads (e.g. `sherpa-onnx@2`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pocket_tts_onnx.tools.bench_report import (
    KV_LONG,
    KV_SHORT,
    UPSTREAM_CONTENDERS,
    VOICE_SECONDS,
    machine_info,
    report,
    versions,
)
from pocket_tts_onnx.tools.bench_sherpa import SHERPA, sherpa_unfit, sherpa_worker

CONTENDERS = (*UPSTREAM_CONTENDERS, "fp32", "int8", SHERPA)
# sherpa-onnx at 1 and 2 threads joins the defaults when it is installed and fits the bundle.
DEFAULT_CONTENDERS = (*UPSTREAM_CONTENDERS, "fp32", "int8")
SHERPA_DEFAULTS = (SHERPA, f"{SHERPA}@2")
TEXT = "This is a benchmark of streaming speech synthesis on a small computer."
SOAK_TEXT = " ".join(
    f"Paragraph {i} goes on about the weather, the river and the garden in the morning."
    for i in range(400)
)
STEPS = 20


def add_arguments(parser) -> None:
    src = parser.add_argument_group("model (random weights of this architecture by default)")
    src.add_argument(
        "--language", default="english", help="shipped config to benchmark (default: english)"
    )
    src.add_argument(
        "--config", type=Path, help="custom config instead of --language (default: none)"
    )
    src.add_argument(
        "--weights",
        type=Path,
        help="real safetensors weights for --language or --config (default: random weights)",
    )
    src.add_argument(
        "--bundle", type=Path, help="existing bundle of the same model (default: export one)"
    )
    src.add_argument(
        "--demo", action="store_true", help="the tiny demo model (smoke test) (default: off)"
    )
    parser.add_argument(
        "--frames", type=int, default=150, help="frames per run, 12.5 per s (default: 150)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per contender, median reported (default: 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for every contender, as upstream (default: 1)",
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=10.0,
        help="minutes of audio streamed by the INT8 engine for the RSS check, 0 skips it "
        "(default: 10.0)",
    )
    parser.add_argument(
        "--contenders",
        help=f"comma list of {', '.join(CONTENDERS)}, each optionally NAME@THREADS "
        f"(default: {','.join(DEFAULT_CONTENDERS + SHERPA_DEFAULTS)}; the sherpa-onnx ones "
        "only when it is installed and the bundle fits its loop)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results"),
        help="folder for the results JSON and report (default: bench-results)",
    )


def _source_dict(args) -> dict:
    return {
        "language": None if (args.config or args.demo) else args.language,
        "config": str(args.config) if args.config else None,
        "weights": str(args.weights) if args.weights else None,
        "demo": args.demo,
    }


def _model_source(source: dict):
    from pocket_tts_onnx.export.loading import ModelSource

    return ModelSource(
        language=source["language"],
        config=Path(source["config"]) if source["config"] else None,
        weights=Path(source["weights"]) if source["weights"] else None,
        demo=source["demo"],
        random_init=not (source["demo"] or source["weights"]),
        seed=0,
    )


def _voice_audio(sample_rate: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(VOICE_SECONDS * sample_rate)
    envelope = (np.sin(np.linspace(0, 40, n)) > 0).astype(np.float32)
    return (0.2 * rng.standard_normal(n) * envelope).astype(np.float32)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    # VmHWM belongs to this address space; ru_maxrss would carry over the parent's peak
    # through fork + exec.
    return _status_mb("VmHWM")


# Clock of the step micro-benchmarks (LM step, Mimi frame). With one intra-op thread both
# runtimes compute in the calling thread, so its CPU time is used: unlike wall time it barely
# moves when other processes share the cores. With more threads, wall time.
_step_clock = time.perf_counter


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def _result(
    *, audio_s, elapsed, cpu_s, first_ms, voice_s, peak_mb, lm_step_ms, mimi_times, frames
) -> dict:
    """One worker's measurements. `peak_mb` is read right after voice encoding + streaming,
    before the micro-benchmarks (whose 600-position prompt no real run makes);
    `lm_step_ms(kv)` times flow-LM steps at that KV length. `cpu_s` is the CPU time of all
    the worker's threads while streaming: unlike wall time, it barely moves when other
    processes share the cores."""
    return {
        "x_realtime": audio_s / elapsed,
        "cpu_s_per_audio_s": cpu_s / audio_s,
        "first_chunk_ms": first_ms,
        "voice_encode_ms": 1000 * voice_s,
        "lm_step_ms": lm_step_ms(KV_SHORT),
        "lm_step_kv600_ms": lm_step_ms(KV_LONG),
        "mimi_frame_ms": _median_ms(mimi_times),
        "peak_rss_mb": peak_mb,
        "frames": frames,
    }


# --------------------------------------------------------------------------- workers


def _upstream_worker(job: dict) -> dict:
    import torch
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    from pocket_tts_onnx.export.loading import load_model

    torch.set_num_threads(job["threads"])
    model = load_model(_model_source(job["source"])).model
    backend = _upstream_quantize(model) if job["contender"] == "upstream-int8" else None
    model.eos_threshold = float("inf")
    frames = job["frames"]
    model._estimate_max_gen_len = lambda token_count: frames  # exactly `frames` per run
    flow_lm, mimi = model.flow_lm, model.mimi
    audio = torch.from_numpy(_voice_audio(model.sample_rate))[None]
    with torch.no_grad():
        start = time.perf_counter()
        state = model.get_state_for_audio_prompt(audio)
        voice_s = time.perf_counter() - start

        start, cpu_start = time.perf_counter(), time.process_time()
        stream = model.generate_audio_stream(state, TEXT)
        first = next(stream)
        first_ms = 1000 * (time.perf_counter() - start)
        samples = first.numel() + sum(c.numel() for c in stream)
        elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        peak_mb = _peak_rss_mb()

        def lm_step_ms(kv: int) -> float:
            st = init_states(flow_lm, batch_size=1, sequence_length=kv + STEPS + 1)
            model._run_flow_lm_and_increment_step(
                st, audio_conditioning=torch.randn(1, kv, flow_lm.dim)
            )
            x = torch.full((1, 1, flow_lm.ldim), float("nan"))
            times = []
            for _ in range(STEPS):
                t = _step_clock()
                x, _ = model._run_flow_lm_and_increment_step(st, backbone_input_latents=x)
                times.append(_step_clock() - t)
            return _median_ms(times)

        mimi_state = init_states(mimi, batch_size=1, sequence_length=STEPS * 16 + 16)
        steps_per_latent = int(mimi.encoder_frame_rate / mimi.frame_rate)
        times = []
        for _ in range(STEPS):
            latent = torch.randn(1, 1, flow_lm.ldim) * flow_lm.emb_std + flow_lm.emb_mean
            t = _step_clock()
            mimi.decode_from_latent(latent, mimi_state)
            times.append(_step_clock() - t)
            increment_steps(mimi, mimi_state, increment=steps_per_latent)
        result = _result(
            audio_s=samples / model.sample_rate,
            elapsed=elapsed,
            cpu_s=cpu_s,
            first_ms=first_ms,
            voice_s=voice_s,
            peak_mb=peak_mb,
            lm_step_ms=lm_step_ms,
            mimi_times=times,
            frames=samples // int(mimi.frame_size),
        )
    if backend is not None:
        result["backend"] = backend
    return result


def _upstream_quantize(model) -> str:
    """Upstream's INT8 mode, applied as `TTSModel.load_model(quantize=True)` applies it once
    the weights are loaded; returns the backend upstream picked (and torch's engine)."""
    import torch
    from pocket_tts import quantization

    backend = quantization._get_backend()
    quantization.apply_dynamic_int8(model.flow_lm, quantization.RECOMMENDED_CONFIG)
    if backend == "torch.ao":
        backend += f" ({torch.backends.quantized.engine} engine)"
    return backend


def _engine_worker(job: dict) -> dict:
    tts = _load_engine(job)
    m = tts.manifest
    start = time.perf_counter()
    voice = tts.voice_from_audio((_voice_audio(tts.sample_rate), tts.sample_rate))
    voice_s = time.perf_counter() - start
    inf = float("inf")

    start, cpu_start = time.perf_counter(), time.process_time()
    stream = tts.stream(TEXT, voice, eos_threshold=inf, max_frames=job["frames"], seed=0)
    first = next(stream)
    first_ms = 1000 * (time.perf_counter() - start)
    samples = first.samples.size + sum(c.samples.size for c in stream)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = _peak_rss_mb()

    rng = np.random.default_rng(0)
    config = tts.generation_config(eos_threshold=inf)

    def lm_step_ms(kv: int) -> float:
        """The core's flow-LM step (fast-KV rows) plus the flow head, after a kv-long prompt."""
        flow_lm = tts.core.flow_lm(rows=1)
        flow_lm.buffers.reset(1, kv + STEPS + 1)
        flow_lm.prompt(0, rng.standard_normal((1, kv, m.d_model)).astype(np.float32))
        x = np.full((1, 1, m.latent_dim), np.nan, dtype=np.float32)
        times = []
        for _ in range(STEPS):
            t = _step_clock()
            cond, _ = flow_lm.step(x)
            latent = tts.sampler.sample(
                cond, rng, config.temperature, config.noise_clamp, config.lsd_steps
            )
            x = latent[:, None, :]
            times.append(_step_clock() - t)
        return _median_ms(times)

    decoder = tts.new_decoder()
    times = []
    for _ in range(STEPS):
        latent = rng.standard_normal((1, m.latent_dim)).astype(np.float32)
        t = _step_clock()
        decoder.decode([latent])
        times.append(_step_clock() - t)
    result = _result(
        audio_s=samples / tts.sample_rate,
        elapsed=elapsed,
        cpu_s=cpu_s,
        first_ms=first_ms,
        voice_s=voice_s,
        peak_mb=peak_mb,
        lm_step_ms=lm_step_ms,
        mimi_times=times,
        frames=samples // m.samples_per_latent,
    )
    if job.get("soak_minutes"):
        result.update(_soak(tts, voice, job["soak_minutes"]))
    return result


def _load_engine(job: dict):
    """Our engine at the contender's precision."""
    from pocket_tts_onnx import PocketTTSOnnx

    return PocketTTSOnnx.load(job["bundle"], precision=job["contender"], threads=job["threads"])


def _soak(tts, voice, minutes: float) -> dict:
    """Stream a long text (many chunks, EOS off) and read RSS after 1 and `minutes` min."""
    marks = {60.0: None, 60.0 * minutes: None}
    produced = 0.0
    for chunk in tts.stream(SOAK_TEXT, voice, eos_threshold=float("inf"), seed=0):
        produced += chunk.duration
        for mark in marks:
            if marks[mark] is None and produced >= mark:
                marks[mark] = _rss_mb()
        if produced >= max(marks):
            break
    first, last = marks[60.0], marks[60.0 * minutes]
    return {
        "rss_after_1min_mb": first,
        f"rss_after_{minutes:g}min_mb": last,
        "soak_audio_s": produced,
    }


def _sherpa_worker(job: dict) -> dict:
    result = sherpa_worker(job, _voice_audio(24000), TEXT)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def worker_main(job_json: str) -> None:
    global _step_clock
    job = json.loads(job_json)
    if job["threads"] == 1:
        _step_clock = time.thread_time
    if job["contender"] == SHERPA:
        run = _sherpa_worker
    else:
        run = _upstream_worker if job["contender"] in UPSTREAM_CONTENDERS else _engine_worker
    print("BENCH-RESULT " + json.dumps(run(job)), flush=True)


# ---------------------------------------------------------------------- orchestrator


def _run_worker(job: dict) -> dict:
    cmd = [sys.executable, "-m", "pocket_tts_onnx.tools.bench", json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))
    raise RuntimeError(f"{job['contender']} worker failed:\n{proc.stderr[-3000:]}")


def _ensure_bundle(args, source: dict, progress) -> Path:
    if args.bundle is not None:
        return args.bundle
    from pocket_tts_onnx.export.pipeline import export_bundle
    from pocket_tts_onnx.manifest import Manifest

    name = "demo" if args.demo else (args.config.stem if args.config else args.language)
    bundle = args.output / f"bundle-{name}"
    if (bundle / "manifest.json").is_file() and "int8" in Manifest.load(bundle).graphs[
        "flow_lm_main"
    ].files:
        return bundle
    progress(f"exporting {name} (FP32 + INT8) to {bundle}")
    export_bundle(_model_source(source), bundle, quantize=True, verify=False)
    return bundle


def _parse_contenders(text: str, threads: int) -> dict[str, tuple[str, int]]:
    """`NAME[@THREADS],...` -> {label: (contender, threads)}."""
    from pocket_tts_onnx.errors import InvalidInputError

    out = {}
    for label in (c.strip() for c in text.split(",")):
        if not label:
            continue
        name, _, n = label.partition("@")
        if name not in CONTENDERS or (n and not (n.isdigit() and int(n) >= 1)):
            raise InvalidInputError(
                f"--contenders takes a comma list of {', '.join(CONTENDERS)}, each optionally "
                f"NAME@THREADS with THREADS >= 1; got {label!r}"
            )
        out[label] = (name, int(n) if n else threads)
    if not out:
        raise InvalidInputError("--contenders is empty")
    return out


def _resolve_contenders(args, bundle: Path, progress) -> dict[str, tuple[str, int]]:
    """The requested contenders; sherpa-onnx ones must fit the bundle. By default sherpa-onnx
    joins (1 and 2 threads) when it can run the bundle, and is named as left out otherwise."""
    from pocket_tts_onnx.errors import InvalidInputError

    if args.contenders is not None:
        chosen = _parse_contenders(args.contenders, args.threads)
        if any(name == SHERPA for name, _ in chosen.values()) and (why := sherpa_unfit(bundle)):
            raise InvalidInputError(f"--contenders {SHERPA}: {why}")
        return chosen
    names = DEFAULT_CONTENDERS
    if why := sherpa_unfit(bundle):
        progress(f"{SHERPA} left out: {why}")
    else:
        names += SHERPA_DEFAULTS
    return _parse_contenders(",".join(names), args.threads)


def run_bench(args) -> None:
    from pocket_tts_onnx.errors import InvalidInputError

    if args.contenders is not None:
        _parse_contenders(args.contenders, args.threads)  # fail before any export
    if args.frames < 1 or args.runs < 1 or args.threads < 1:
        raise InvalidInputError("--frames, --runs and --threads must be >= 1")
    args.output.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    source = _source_dict(args)
    bundle = _ensure_bundle(args, source, progress)
    chosen = _resolve_contenders(args, bundle, progress)
    contenders = list(chosen)
    results: dict[str, list[dict]] = {c: [] for c in contenders}
    load_before = os.getloadavg()[0]  # other work on the machine skews every timing
    for run in range(args.runs):
        for label, (name, threads) in chosen.items():  # alternate: drift hits all alike
            progress(f"run {run + 1}/{args.runs}: {label}")
            job = {
                "contender": name,
                "source": source,
                "bundle": str(bundle),
                "frames": args.frames,
                "threads": threads,
            }
            result = _run_worker(job)
            result["threads"] = threads
            results[label].append(result)
    if args.soak_minutes > 0 and "int8" in contenders:
        progress(f"soak: INT8 engine streaming {args.soak_minutes:g} min of audio")
        job = {
            "contender": "int8",
            "source": source,
            "bundle": str(bundle),
            "frames": args.frames,
            "threads": args.threads,
            "soak_minutes": args.soak_minutes,
        }
        soak = _run_worker(job)
        for r in results["int8"]:
            r.update({k: v for k, v in soak.items() if k.startswith(("rss_after", "soak_"))})
    meta = {
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "machine": machine_info(),
        "versions": versions(),
        "threads": args.threads,
        "frames": args.frames,
        "runs": args.runs,
        "source": source,
        "bundle": str(bundle),
    }
    table, data = report(results, meta)
    from pocket_tts_onnx.manifest import Manifest

    random_bundle = Manifest.load(bundle).random_weights
    weights = "random weights, so no speech" if random_bundle else "real weights"
    machine = meta["machine"]
    backends = {r["backend"] for r in results.get("upstream-int8", []) if "backend" in r}
    header = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores "
        f"({', '.join(machine['flags'])}); memory bandwidth {machine['memory_copy_gb_s']:.1f} "
        "GB/s (one-thread numpy copy of 256 MiB, best of 5; read + write traffic is twice "
        f"that); intra-op threads per contender: {args.threads}; {args.frames} frames per "
        f"run, median of {args.runs} runs, contenders alternating, each in its own process; "
        f"{weights}; load average {meta['load_average_1min'][0]:.1f} before, "
        f"{meta['load_average_1min'][1]:.1f} after; step and frame times are "
        + ("CPU time of the computing thread" if args.threads == 1 else "wall time")
        + "."
        + (f" upstream-int8 backend: {', '.join(sorted(backends))}." if backends else "")
        + (_SHERPA_NOTE if any(n == SHERPA for n, _ in chosen.values()) else "")
        + "\n\n"
    )
    (args.output / "bench.md").write_text(header + table)
    (args.output / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n" + header + table)
    print(f"written to {args.output}/bench.md and bench.json")


_SHERPA_NOTE = (
    f" {SHERPA} (2.0.1, its own C++ loop and ONNX Runtime, the bundle's INT8 graphs; `@N`: N "
    "threads) generates every latent of the sentence before decoding any: its first audio is "
    "its first decoded 15-frame chunk (generate callback), and each of its runs includes "
    "encoding the voice prompt, which it does in every call; it exposes no step timings."
)


if __name__ == "__main__":
    worker_main(sys.argv[1])
