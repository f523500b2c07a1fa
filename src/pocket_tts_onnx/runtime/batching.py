"""The one generation loop: continuous batching of B rows (a single stream is a batch of one).

One scheduler thread runs the flow LM (`flow_lm_step`, one call per step for every row, each
at its own position) and the flow head (batched solver steps); the decoder thread
(decoding.py) runs Mimi for the same rows while the next step is computed. A request joins
when its text chunk has been prompted and leaves when the chunk ends (EOS, length limit,
cancel, error), at any step; rows stay packed (a leaving row is replaced by the last one, in
the K/V buffers and in the decoder alike).

- Isolation: whatever fails for one row (non-finite values, a model call that fails for that
  row alone) ends that stream with its typed error; the others go on.
- Fairness: a row's flow-head steps are spread over several iterations when they would hold
  the others (only the rows that need more steps run them).
- Memory: K/V capacity follows the active rows' worst case, bounded by `max_kv_positions`
  (rows x positions), and shrinks when long streams leave.

Each stream keeps its own random generator and per-chunk decisions (`ChunkStream`), so its
audio is the same whatever else runs, up to float rounding of batched calls.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pocket_tts_onnx.errors import (
    GenerationError,
    InvalidInputError,
    PocketTTSOnnxError,
    QueueFullError,
)
from pocket_tts_onnx.runtime.admission import Admission
from pocket_tts_onnx.runtime.core import GenerationCore
from pocket_tts_onnx.runtime.decoding import DecoderThread
from pocket_tts_onnx.runtime.requests import FeedSource, FeedWriter, Request, TextSource
from pocket_tts_onnx.runtime.stepping import RowSteps
from pocket_tts_onnx.runtime.streams import BatchStream, TextStream
from pocket_tts_onnx.text import MAX_CHUNK_TOKENS  # the longest chunk the text splitter makes

__all__ = ["MAX_STREAMS", "BatchScheduler"]

logger = logging.getLogger(__name__)

# At most this many streams per scheduler.
MAX_STREAMS = 256


def _int_option(label: str, value, least: int, most: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or not least <= value <= most:
        raise InvalidInputError(
            f"{label} must be an integer from {least} to {most}, got {value!r}", param=label
        )
    return value


class BatchScheduler(Admission):
    """Serve many streams from one bundle with batched model calls.

    `submit()` / `open_stream()` validate in the caller's thread and return a stream; at most
    `max_streams` generate at once and `max_queue` more wait (beyond that, QueueFullError).
    `max_kv_positions` bounds the flow LM's K/V memory (rows x positions; None: unbounded).
    """

    def __init__(
        self,
        core,
        max_streams: int = 8,
        max_queue: int = 32,
        *,
        max_buffered_seconds: float = 600.0,
        max_chunk_tokens: int = MAX_CHUNK_TOKENS,
        max_kv_positions: int | None = None,
    ):
        if not isinstance(core, GenerationCore):  # the engine: use its core
            core = getattr(core, "core", core)
        self.max_streams = _int_option("max_streams", max_streams, 1, MAX_STREAMS)
        self.max_queue = _int_option("max_queue", max_queue, 0, 1 << 20)
        self.max_chunk_tokens = _int_option("max_chunk_tokens", max_chunk_tokens, 1, 1 << 20)
        if max_kv_positions is not None:
            _int_option("max_kv_positions", max_kv_positions, 1, 1 << 40)
        self.max_kv_positions = max_kv_positions
        if not (isinstance(max_buffered_seconds, (int, float)) and max_buffered_seconds > 0):
            raise InvalidInputError(
                f"max_buffered_seconds must be > 0, got {max_buffered_seconds!r}",
                param="max_buffered_seconds",
            )
        self.core = core
        self._lm = core.flow_lm(rows=0)
        self._steps = RowSteps(core.sampler, self._lm)
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._parked: set[Request] = set()
        self._admitting: list[Request] = []  # being prompted into rows
        self._lock = threading.Condition()  # reentrant
        self._closed = False
        self.counts = {"submitted": 0, "completed": 0, "failed": 0, "rejected": 0}
        backlog = int(max_buffered_seconds * core.frame_rate)
        self._decoder = DecoderThread(core.decoder_rows(), core.sample_rate, backlog)
        multicore = (os.cpu_count() or 1) >= 2
        self._prompt_pool = ThreadPoolExecutor(1, "pocket-tts-prompt") if multicore else None
        self._thread = threading.Thread(target=self._run, name="pocket-tts-batch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    def submit(self, text: str, voice=None, config=None, **params) -> BatchStream:
        """Queue `text` for synthesis; `config` and `params` as `PocketTTSOnnx.stream`.
        With `timestamps`, AudioChunks carry word events (the text is chunked whole first)."""
        config = self.core.config(config, **params)
        start = self.core.resolve_voice(voice)
        chunks = self.core.chunks(text)
        units = None
        if config.timestamps:
            chunks, units = self.core.word_units(text, chunks)
        first = next(chunks)
        self._check_chunk(first)
        request = Request(TextSource(first, chunks), start, config, self._rng(config))
        request.units = units
        self._enqueue(request)
        return BatchStream(request, self._wake)

    def open_stream(self, voice=None, config=None, **params) -> TextStream:
        """A stream whose text is written while it is spoken (`write`, then `end`); with
        `timestamps`, word offsets count from the start of everything written."""
        config = self.core.config(config, **params)
        start = self.core.resolve_voice(voice)
        source = FeedSource(self.core.feed())
        request = Request(source, start, config, self._rng(config))
        words = None
        if config.timestamps:
            request.units, words = collections.deque(), self.core.feed_words()
        request.parked = True
        with self._lock:
            self._check_open()
            self._parked.add(request)
            self.counts["submitted"] += 1
        writer = FeedWriter(source, self._check_chunk, lambda: self._offer(request))
        writer.words = None if words is None else (words, request.units)
        return TextStream(request, self._wake, writer)

    @property
    def alive(self) -> bool:
        """False once the scheduler stopped (closed, or its thread died)."""
        return not self._closed and self._thread.is_alive() and self._decoder.alive

    def stats(self) -> dict:
        with self._lock:
            buffers = self._lm.buffers
            return {
                "active": len(self._active) + len(self._admitting),
                "waiting": sum(not r.cancelled.is_set() for r in self._waiting),
                "parked": len(self._parked),
                "max_streams": self.max_streams,
                "max_queue": self.max_queue,
                "kv_rows": buffers.rows,
                "kv_capacity": buffers.capacity,
                "kv_mb": round(buffers.nbytes / 2**20, 1),
                "alive": self.alive,
                **self.counts,
            }

    def close(self) -> None:
        """Stop: every unfinished stream ends with an error."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._decoder.close()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ caller's side
    @staticmethod
    def _rng(config) -> np.random.Generator:
        return np.random.default_rng(config.seed)

    def _check_chunk(self, chunk) -> None:
        n = len(chunk.token_ids)
        if n > self.max_chunk_tokens:
            # One prompt this long (a word of thousands of letters: nothing to split it at)
            # would hold every other stream of the batch for seconds.
            raise InvalidInputError(
                f"text: one chunk has {n} tokens (max_chunk_tokens {self.max_chunk_tokens}): "
                "a word this long cannot be split; add spaces or punctuation",
                param="text",
            )

    def _check_open(self) -> None:
        if not self.alive:
            raise PocketTTSOnnxError("the scheduler is closed")

    def _enqueue(self, request: Request) -> None:
        with self._lock:
            self._check_open()
            # Requests the worker has not admitted yet into free rows are not queued.
            free = max(0, self.max_streams - len(self._active))
            if len(self._waiting) - free >= self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting (max_queue "
                    f"{self.max_queue}); retry later"
                )
            self._waiting.append(request)
            self.counts["submitted"] += 1
            self._lock.notify()

    def _offer(self, request: Request) -> None:
        """New text chunks (or the end) for a text stream: wake it if it was parked."""
        with self._lock:
            if request.parked:
                request.parked = False
                self._parked.discard(request)
                self._waiting.append(request)
                self._lock.notify()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        try:
            while self._decoder.alive and self._admit():
                if not self._active:
                    continue
                try:
                    self._iterate()
                except Exception as e:  # a fault of the loop itself: end these rows only
                    logger.exception("generation step failed; ending the streams in it")
                    error = GenerationError(f"generation failed: {e}")
                    for i in reversed(range(len(self._active))):
                        self._remove(i, error)
        finally:
            with self._lock:
                self._closed = True
                rest = self._active + list(self._waiting) + list(self._parked)
                self._active, self._parked = [], set()
                self._waiting.clear()
            closing = self._decoder.error or PocketTTSOnnxError("the scheduler was closed")
            for request in rest:
                if self._decoder.alive:
                    self._decoder.finish(request, closing)
                else:  # nobody would deliver it
                    request.out.put(closing)
            self._decoder.close()
            if self._prompt_pool is not None:
                self._prompt_pool.shutdown(wait=False)

    def _remove(self, row: int, error: BaseException | None) -> None:
        """Take `row` out of the batch (the last row moves into its place); the request
        goes on with its next chunk, or ends."""
        request = self._active[row]
        last = len(self._active) - 1
        if row != last:
            self._lm.buffers.move(last, row)
        self._active[row] = self._active[last]
        self._active.pop()
        self._lm.buffers.positions[last] = 0
        over = error is not None or request.cancelled.is_set()
        self._decoder.remove(row, marker=not over)
        if over:
            self.counts["failed" if error is not None else "completed"] += 1
            self._decoder.finish(request, error)
        else:
            with self._lock:
                self._waiting.appendleft(request)  # its next chunk goes first
        self._lm.limit = max([r.need for r in self._active], default=0) or None
        if self._lm.limit is not None:  # long streams left: give their memory back
            self._lm.buffers.fit(len(self._active), self._lm.limit)

    def _word_scores(self, row: int, query: np.ndarray | None) -> np.ndarray | None:
        """Row `row`'s attention over its text units at the step just made (`query`: its step's
        queries; None when the step fell back to row-by-row calls)."""
        if query is None:
            return None
        timing = self._active[row].timing
        arrays = self._lm.buffers.arrays
        keys = {layer: arrays[f"cache_k_{layer}"][row] for layer, _ in timing.heads}
        return timing.scores(query, keys)

    def _lm_outputs(self, needs_lm: np.ndarray, errors: dict):
        """(conditioning, eos_logit, queries) of the rows that need a flow-LM step: a row
        just prompted alone already has its first one (made with its prompt); the others
        take one now, in one call."""
        active = self._active
        firsts = {i: r.first_step for i, r in enumerate(active) if r.first_step is not None}
        for i in firsts:
            active[i].first_step = None
        stepped = needs_lm.copy()
        stepped[list(firsts)] = False
        queries: list = [None] * len(active)  # per row, for word timestamps
        if stepped.any():
            sequence = np.concatenate([r.sequence for r in active])
            keep = None if stepped.all() else stepped
            cond, eos = self._steps.lm_step(sequence, keep, errors)
            if self._lm.queries is not None:
                queries = list(self._lm.queries)
        else:  # only rows that stepped with their prompt: no call at all
            sample = next(iter(firsts.values()))
            cond = np.zeros((len(active), sample[0].shape[1]), np.float32)
            eos = np.zeros((len(active), 1), np.float32)
        for i, (c, e, q) in firsts.items():
            cond[i], eos[i] = c[0], e[0]
            queries[i] = None if q is None else q[0]
        return cond, eos, queries

    def _iterate(self) -> None:
        """One flow-LM step for the rows that need it, flow-head steps, decode, leave."""
        active = self._active
        errors: dict[int, BaseException] = {}
        needs_lm = np.array([r.chunk.x is None for r in active])
        if needs_lm.any():
            cond, eos, queries = self._lm_outputs(needs_lm, errors)
            for i in np.flatnonzero(needs_lm):
                if i in errors or not active[i].chunk.observe(float(eos[i, 0])):
                    continue
                if active[i].timing is not None:
                    active[i].scores = self._word_scores(i, queries[i])
                try:
                    active[i].chunk.begin(cond[i : i + 1])
                except PocketTTSOnnxError as e:
                    errors[i] = e
        self._steps.solve([r.chunk for r in active], errors)
        emitted, latents = [], []
        for i, request in enumerate(active):
            chunk = request.chunk
            if i in errors or chunk.x is None or chunk.solving:
                continue
            try:
                latent = chunk.finish()
            except PocketTTSOnnxError as e:
                errors[i] = e
                continue
            request.sequence = latent[:, None, :]
            emitted.append(i)
            latents.append(latent)
        if emitted:
            scores = [active[i].scores for i in emitted]
            self._decoder.decode(np.stack(latents), emitted, scores)
        for i in reversed(range(len(active))):
            chunk = active[i].chunk
            done = chunk.x is None and (chunk.finished or not chunk.active)
            if i in errors or done or active[i].cancelled.is_set():
                self._remove(i, errors.get(i))
