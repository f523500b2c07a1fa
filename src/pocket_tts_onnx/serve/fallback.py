"""A scheduler with the `BatchScheduler` interface over the single-stream engine.

Each running request gets a thread iterating `tts.stream(...)` (ONNX Runtime sessions are
safe to call from several threads); at most `max_streams` run, at most `max_queue` wait, and
`submit` raises `QueueFullError` beyond that. Used when the batched scheduler is unavailable
(older bundles without batched graphs), and as the reference the server tests can trust.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque

from pocket_tts_onnx.errors import QueueFullError

logger = logging.getLogger(__name__)

_DONE = object()
# Chunks buffered per stream ahead of a slow reader; the worker then waits, so a client that
# does not read holds a bounded amount of audio (and its slot), never unbounded memory.
_BUFFERED_CHUNKS = 16


class FallbackStream:
    """A blocking iterator of AudioChunk; `cancel()` stops it and frees its slot."""

    def __init__(self, scheduler: FallbackScheduler, chunks):
        self._scheduler = scheduler
        self._source = chunks
        self._chunks: queue.Queue = queue.Queue(maxsize=_BUFFERED_CHUNKS)
        self._cancelled = threading.Event()
        self._finished = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished or self._cancelled.is_set():
            raise StopIteration
        item = self._chunks.get()
        if item is _DONE or self._cancelled.is_set():
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._scheduler._forget_waiting(self)
        with contextlib.suppress(queue.Full):  # wake a reader blocked in __next__
            self._chunks.put_nowait(_DONE)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, item) -> bool:
        """Hand an item to the reader; False once the stream is cancelled."""
        while not self._cancelled.is_set():
            try:
                self._chunks.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        chunks = self._source
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    break
            self._put(_DONE)
        except BaseException as e:  # handed to the reader, raised in its thread
            self._put(e)
        finally:
            chunks.close()  # stops the engine's latent worker at once


class FallbackScheduler:
    """`submit` validates in the caller's thread, then queues or starts the stream."""

    kind = "threads"

    def __init__(self, tts, max_streams: int = 8, max_queue: int = 32):
        self.tts = tts
        self.max_streams = max_streams
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._running: set[FallbackStream] = set()
        self._waiting: deque[FallbackStream] = deque()
        self._closed = False
        self.counts = {"submitted": 0, "completed": 0, "rejected": 0}

    def submit(
        self,
        text,
        voice=None,
        *,
        temperature=None,
        lsd_steps=None,
        seed=None,
        max_frames=None,
        eos_threshold=None,
        frames_after_eos=None,
        noise_clamp=None,
    ):
        params = dict(
            temperature=temperature,
            lsd_steps=lsd_steps,
            seed=seed,
            max_frames=max_frames,
            eos_threshold=eos_threshold,
            frames_after_eos=frames_after_eos,
            noise_clamp=noise_clamp,
        )
        # The engine validates text, voice and parameters when the generator is created, in
        # this (the caller's) thread; work starts at its first next(), in a worker thread.
        stream = FallbackStream(self, self.tts.stream(text, voice, **params))
        with self._lock:
            if self._closed:
                raise QueueFullError("the scheduler is shut down")
            if len(self._running) < self.max_streams:
                self._start(stream)
            elif len(self._waiting) < self.max_queue:
                self._waiting.append(stream)
            else:
                self.counts["rejected"] += 1
                raise QueueFullError(
                    f"{self.max_streams} streams running and {self.max_queue} waiting; retry later"
                )
            self.counts["submitted"] += 1
        return stream

    def _start(self, stream: FallbackStream) -> None:  # holds self._lock
        self._running.add(stream)
        threading.Thread(target=self._work, args=(stream,), daemon=True).start()

    def _work(self, stream: FallbackStream) -> None:
        while stream is not None:
            try:
                stream._run()
            finally:
                with self._lock:
                    self._running.discard(stream)
                    self.counts["completed"] += 1
                    stream = self._waiting.popleft() if self._waiting else None
                    if stream is not None:
                        self._running.add(stream)

    def _forget_waiting(self, stream: FallbackStream) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._waiting.remove(stream)

    def stats(self) -> dict:
        with self._lock:
            return {
                "active": len(self._running),
                "waiting": len(self._waiting),
                "max_streams": self.max_streams,
                "max_queue": self.max_queue,
                **self.counts,
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            streams = list(self._running) + list(self._waiting)
        for stream in streams:
            stream.cancel()
