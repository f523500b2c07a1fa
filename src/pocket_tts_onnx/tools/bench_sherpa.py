"""The `sherpa-onnx` contender of `pocket-tts-onnx bench`: sherpa-onnx's own C++ Pocket TTS
loop (`OfflineTts.generate`) running the bundle's INT8 contract graphs.

sherpa-onnx generates every latent of a sentence before it decodes any, then decodes them in
15-frame calls and hands each decoded chunk to the generate callback; its first audio is
that first callback. It also encodes the reference audio in every call (there is no voice
state to keep), so its first audio and throughput include encoding the voice prompt. Its
loop gives no per-step timings: the step and frame rows stay empty for it.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

SHERPA = "sherpa-onnx"
# What sherpa-onnx 2.0.1's Pocket TTS loop hard-codes: the released English model's shapes.
SHERPA_D_MODEL, SHERPA_LATENT_DIM, SHERPA_SAMPLE_RATE = 1024, 32, 24000


def sherpa_installed() -> bool:
    return importlib.util.find_spec("sherpa_onnx") is not None


def sherpa_unfit(bundle: Path) -> str | None:
    """Why sherpa-onnx cannot run this bundle, or None when it can."""
    from pocket_tts_onnx.manifest import Manifest

    if not sherpa_installed():
        return "sherpa-onnx is not installed (pip install sherpa-onnx==2.0.1)"
    m = Manifest.load(bundle)
    if m.sherpa_onnx is None:
        return "the bundle has no sherpa-onnx tokenizer files (its tokenizer is not unigram)"
    if "int8" not in m.precisions:
        return "the bundle has no INT8 graphs (export it with --quantize)"
    shape = (m.d_model, m.latent_dim, m.sample_rate)
    if shape != (SHERPA_D_MODEL, SHERPA_LATENT_DIM, SHERPA_SAMPLE_RATE):
        return (
            f"sherpa-onnx's loop needs d_model {SHERPA_D_MODEL}, latent {SHERPA_LATENT_DIM} "
            f"and {SHERPA_SAMPLE_RATE} Hz; this bundle has {shape}"
        )
    return None


def sherpa_worker(job: dict, voice: np.ndarray, text: str) -> dict:
    """One sherpa-onnx run of exactly `job["frames"]` latents (EOS cannot end it early)."""
    import sherpa_onnx as so

    from pocket_tts_onnx.export.sherpa import SHERPA_GRAPHS
    from pocket_tts_onnx.manifest import Manifest

    bundle = Path(job["bundle"])
    m = Manifest.load(bundle)
    files = {arg: str(bundle / m.graphs[g].files["int8"]) for arg, g in SHERPA_GRAPHS.items()}
    files.update({arg: str(bundle / f) for arg, f in m.sherpa_onnx.files.items()})
    model = so.OfflineTtsModelConfig(
        pocket=so.OfflineTtsPocketModelConfig(**files), num_threads=job["threads"]
    )
    tts = so.OfflineTts(so.OfflineTtsConfig(model=model))
    gen = so.GenerationConfig()
    gen.reference_audio = voice
    gen.reference_sample_rate = SHERPA_SAMPLE_RATE
    gen.num_steps = m.defaults.decode_steps
    gen.silence_scale = 1.0  # keep every sample
    frames = job["frames"]
    # Its loop stops `frames_after_eos` latents after the EOS logit crosses its threshold;
    # allowing `frames` after it makes every run `frames` long, as EOS-off does for ours.
    gen.extra = {"max_frames": str(frames), "frames_after_eos": str(frames), "seed": "0"}

    first: list[float] = []

    def on_chunk(samples, progress) -> int:
        if not first:
            first.append(time.perf_counter())
        return 1

    start, cpu_start = time.perf_counter(), time.process_time()
    audio = tts.generate(text, gen, on_chunk)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    samples = len(audio.samples)
    if not first or samples == 0:
        raise RuntimeError("sherpa-onnx produced no audio")
    audio_s = samples / audio.sample_rate
    return {
        "x_realtime": audio_s / elapsed,
        "cpu_s_per_audio_s": cpu_s / audio_s,
        "first_chunk_ms": 1000 * (first[0] - start),
        "frames": samples // m.samples_per_latent,
        "backend": f"sherpa-onnx {so.__version__}, INT8 graphs",
    }
