"""Single-stream speed of the engine's entry points, for same-run comparisons.

Prints JSON: x realtime of `generate`, `stream` and `generate_batch([text])` and the first
chunk latency of `stream`, on one bundle (EOS off, a fixed number of frames per chunk, the
bundle's default voice), plus the first chunk of a short and a long sentence with their
token counts (the text prompt is most of the first chunk's work, so it grows with the tokens;
a random-weight bundle's stand-in tokenizer cuts English into more tokens than a real one).
Run it with two checkouts' `src` on PYTHONPATH to compare them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

TEXT = "The farmer watches the brown fox from the porch until the sun sets."
SHORT = "Hello there."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", default="int8")
    p.add_argument("--frames", type=int, default=150, help="frames per chunk (default: 150)")
    p.add_argument("--runs", type=int, default=3, help="runs per entry point (default: 3)")
    p.add_argument("--threads", type=int, help="intra-op threads per session (default: engine's)")
    args = p.parse_args()

    from pocket_tts_onnx import PocketTTSOnnx

    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision, threads=args.threads)
    params = {"eos_threshold": float("inf"), "max_frames": args.frames, "seed": 0}
    tts.generate("Warm up.", max_frames=4, seed=0)
    audio_s = args.frames * tts.manifest.samples_per_latent / tts.sample_rate
    out: dict = {"frames": args.frames}

    def timed(name, call):
        speeds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            call()
            speeds.append(audio_s / (time.perf_counter() - start))
        out[f"{name}_x_realtime"] = round(statistics.median(speeds), 2)

    timed("generate", lambda: tts.generate(TEXT, **params))
    timed("generate_batch", lambda: tts.generate_batch([TEXT], **params))
    firsts = []

    def stream():
        start = time.perf_counter()
        chunks = iter(tts.stream(TEXT, **params))
        next(chunks)
        firsts.append(1000 * (time.perf_counter() - start))
        for _ in chunks:
            pass

    timed("stream", stream)
    out["stream_first_chunk_ms"] = round(statistics.median(firsts), 1)
    for name, text in (("short", SHORT), ("long", TEXT)):
        tokens = sum(len(c.token_ids) for c in tts.core.chunks(text))
        times = []
        for _ in range(max(5, args.runs)):
            start = time.perf_counter()
            chunks = iter(tts.stream(text, **{**params, "max_frames": 4}))
            next(chunks)
            times.append(1000 * (time.perf_counter() - start))
            for _ in chunks:
                pass
        out[f"first_chunk_{name}"] = {"tokens": tokens, "ms": round(statistics.median(times), 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
