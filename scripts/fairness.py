"""How much a neighbour asking for many flow-head steps slows another stream (same run).

Times a 150-frame stream (default lsd_steps, EOS off) alone, then beside a neighbour that
uses `--neighbour-steps` solver steps per frame, through one BatchScheduler; prints JSON with
both times and their ratio (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import time

TEXT = "The farmer watches the brown fox from the porch until the sun sets."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--precision", default="int8")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--neighbour-steps", type=int, default=64)
    args = p.parse_args()

    from pocket_tts_onnx import BatchScheduler, PocketTTSOnnx

    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision)
    off = {"eos_threshold": float("inf"), "seed": 0}

    def timed(scheduler) -> float:
        start = time.perf_counter()
        for _ in scheduler.submit(TEXT, max_frames=args.frames, **off):
            pass
        return time.perf_counter() - start

    with BatchScheduler(tts, max_streams=2) as scheduler:
        timed(scheduler)  # warm-up
        alone = timed(scheduler)
        neighbour = scheduler.submit(TEXT, max_frames=10_000, lsd_steps=args.neighbour_steps, **off)
        next(neighbour)
        shared = timed(scheduler)
        neighbour.cancel()
    print(
        json.dumps(
            {
                "alone_s": round(alone, 3),
                "beside_neighbour_s": round(shared, 3),
                "slowdown": round(shared / alone, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
