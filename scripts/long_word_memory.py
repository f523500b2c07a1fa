"""Peak memory and time to first audio for one 5,000-letter word (a single chunk of 5,001
tokens), ours vs upstream, on the full English architecture with random weights.

    python scripts/long_word_memory.py ours BUNDLE int8|fp32
    python scripts/long_word_memory.py upstream

Run each in a fresh process: the peak (VmHWM) is the process's own.
"""

from __future__ import annotations

import os
import sys
import time

WORD = "a" * 5000


def _status_mb(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(key))
    return int(line.split()[1]) // 1024


def ours(bundle: str, precision: str) -> None:
    from pocket_tts_onnx import NO_VOICE, PocketTTSOnnx

    tts = PocketTTSOnnx.load(bundle, precision=precision, threads=1)
    base, start = _status_mb("VmRSS:"), time.perf_counter()
    tts.generate(WORD, NO_VOICE, max_frames=2, temperature=0.0)
    peak = _status_mb("VmHWM:")
    print(f"ours {precision}: +{peak - base} MB peak, {time.perf_counter() - start:.1f} s")


def upstream() -> None:
    import torch
    from pocket_tts.modules.stateful_module import init_states

    from pocket_tts_onnx.export.loading import ModelSource, load_model

    model = load_model(ModelSource(language="english", random_init=True, seed=0)).model
    state = init_states(model.flow_lm, batch_size=1, sequence_length=0)
    base, start = _status_mb("VmRSS:"), time.perf_counter()
    with torch.no_grad():
        next(iter(model.generate_audio_stream(state, WORD)))  # the first audio: after the prompt
    peak = _status_mb("VmHWM:")
    print(f"upstream fp32: +{peak - base} MB peak, {time.perf_counter() - start:.1f} s", flush=True)
    os._exit(0)  # upstream's generation thread is still running; nothing more to measure


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        upstream()
    else:
        ours(sys.argv[2], sys.argv[3])
