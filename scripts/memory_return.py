"""Does memory come back after a long request? RSS of an idle engine before and after one
long stream (EOS off, `--frames` frames), and its peak, through one BatchScheduler."""

from __future__ import annotations

import argparse
import gc
import json
import time

import psutil

TEXT = "The farmer watches the brown fox from the porch until the sun sets."


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", default="int8")
    p.add_argument("--frames", type=int, default=2000)
    args = p.parse_args()

    from pocket_tts_onnx import BatchScheduler, PocketTTSOnnx

    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision)
    off = {"eos_threshold": float("inf"), "seed": 0}
    with BatchScheduler(tts, max_streams=8) as scheduler:
        for _ in range(2):  # warm-up: short requests
            list(scheduler.submit(TEXT, max_frames=20, **off))
        time.sleep(1.0)
        gc.collect()
        before = rss_mb()
        peak = before
        for _ in scheduler.submit(TEXT, max_frames=args.frames, **off):
            peak = max(peak, rss_mb())
        list(scheduler.submit(TEXT, max_frames=20, **off))  # a short one after it
        time.sleep(1.0)
        gc.collect()
        after = rss_mb()
    print(
        json.dumps(
            {
                "idle_before_mb": round(before),
                "peak_mb": round(peak),
                "idle_after_mb": round(after),
                "after_vs_before": round(after / before, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
