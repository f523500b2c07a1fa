"""Pick the generation backend: the batched scheduler when the runtime and the bundle have
it, else the thread-per-stream fallback (same interface)."""

from __future__ import annotations

import logging

from pocket_tts_onnx.errors import InvalidInputError, PocketTTSOnnxError
from pocket_tts_onnx.serve.fallback import FallbackScheduler

logger = logging.getLogger(__name__)

SCHEDULERS = ("auto", "batched", "threads")


def make_scheduler(tts, max_streams: int, max_queue: int, kind: str = "auto"):
    """Returns (scheduler, kind actually used)."""
    if kind not in SCHEDULERS:
        raise InvalidInputError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    if kind in ("auto", "batched"):
        try:
            from pocket_tts_onnx.runtime.batching import BatchScheduler
        except ImportError as e:
            if kind == "batched":
                raise InvalidInputError(
                    f"--scheduler batched: this pocket-tts-onnx has no batched runtime ({e}); "
                    "use --scheduler threads"
                ) from e
        else:
            try:
                return BatchScheduler(tts, max_streams=max_streams, max_queue=max_queue), "batched"
            except PocketTTSOnnxError as e:
                if kind == "batched":
                    raise
                logger.warning("batched generation unavailable (%s); one thread per stream", e)
    return FallbackScheduler(tts, max_streams=max_streams, max_queue=max_queue), "threads"


def scheduler_stats(scheduler) -> dict:
    """What the scheduler reports about itself, if anything."""
    stats = getattr(scheduler, "stats", None)
    if callable(stats):
        try:
            return dict(stats())
        except Exception:  # stats are diagnostics; never fail /health over them
            logger.exception("scheduler stats failed")
    return {}
