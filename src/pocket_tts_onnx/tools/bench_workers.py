"""The measuring side of `pocket-tts-onnx bench`: one contender's run, in a process of its
own (`python -m pocket_tts_onnx.tools.bench_workers JOB_JSON`), printed as one
`BENCH-RESULT {json}` line for the orchestrator (tools/bench.py).

Upstream is measured on its own streaming path (`generate_audio_stream`, decoder thread
overlapping), our engine on `PocketTTSOnnx.stream`, sherpa-onnx on its own loop
(bench_sherpa.py); EOS is off so every run makes the same number of frames.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from pocket_tts_onnx.tools.bench_report import KV_LONG, KV_SHORT, UPSTREAM_CONTENDERS, VOICE_SECONDS
from pocket_tts_onnx.tools.bench_sherpa import SHERPA, sherpa_worker

TEXT = "This is a benchmark of streaming speech synthesis on a small computer."
SOAK_TEXT = " ".join(
    f"Paragraph {i} goes on about the weather, the river and the garden in the morning."
    for i in range(400)
)
STEPS = 20


def model_source(source: dict):
    """The export's ModelSource for a source as jobs carry it (JSON: paths as strings)."""
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


def _upstream_worker(job: dict) -> dict:
    import torch
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    from pocket_tts_onnx.export.loading import load_model

    torch.set_num_threads(job["threads"])
    model = load_model(model_source(job["source"])).model
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


if __name__ == "__main__":
    worker_main(sys.argv[1])
