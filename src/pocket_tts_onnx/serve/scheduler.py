"""The server's generation backend: the engine's one scheduler (continuous batching), kept
alive. The scheduler isolates failing streams itself; should it ever stop, `/health` says so
with a 503 and the next request or health check starts a fresh one."""

from __future__ import annotations

import logging
import threading

from pocket_tts_onnx.runtime.batching import BatchScheduler

logger = logging.getLogger(__name__)


class SupervisedScheduler:
    """A `BatchScheduler` that is replaced when it has stopped (not when it is closed)."""

    def __init__(self, factory):
        self._factory = factory
        self._lock = threading.Lock()
        self._scheduler: BatchScheduler = factory()
        self._closed = False
        self.restarts = 0
        self.last_failure: str | None = None

    def current(self) -> BatchScheduler:
        """The running scheduler, restarted first if it stopped."""
        with self._lock:
            if not self._scheduler.alive and not self._closed:
                self.last_failure = "the generation scheduler had stopped; it was restarted"
                logger.error(self.last_failure)
                self._scheduler.close()
                self._scheduler = self._factory()
                self.restarts += 1
            return self._scheduler

    @property
    def alive(self) -> bool:
        return self._scheduler.alive

    def submit(self, text, voice=None, config=None, **params):
        return self.current().submit(text, voice, config, **params)

    def open_stream(self, voice=None, config=None, **params):
        return self.current().open_stream(voice, config, **params)

    def stats(self) -> dict:
        return {**self._scheduler.stats(), "restarts": self.restarts}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._scheduler.close()


def make_scheduler(tts, config) -> SupervisedScheduler:
    """The server's scheduler for `tts` under the limits of `config` (a ServeConfig)."""
    positions = None
    if config.max_kv_mb:
        per_position = tts.core.flow_lm(rows=0).buffers.bytes_per_position
        positions = max(1, int(config.max_kv_mb * 2**20 // per_position))

    def factory() -> BatchScheduler:
        return BatchScheduler(
            tts.core,
            max_streams=config.max_streams,
            max_queue=config.max_queue,
            max_kv_positions=positions,
        )

    return SupervisedScheduler(factory)
