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
import contextlib
import ctypes
import logging
import threading
from dataclasses import dataclass

import numpy as np

from pocket_tts_onnx.errors import (
    GenerationError,
    InvalidInputError,
    PocketTTSOnnxError,
    QueueFullError,
)
from pocket_tts_onnx.runtime.core import GenerationCore
from pocket_tts_onnx.runtime.decoding import DecoderThread
from pocket_tts_onnx.runtime.generation import ChunkStream, chunk_max_frames
from pocket_tts_onnx.runtime.kv_buffer import filled_positions
from pocket_tts_onnx.runtime.requests import WAIT, FeedSource, FeedWriter, Request, TextSource
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


def _release_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class _Ready:
    """A request whose voice is loaded in its row, its text prompt not yet fed."""

    request: Request
    chunk: object
    embeddings: np.ndarray
    filled: int
    need: int


class BatchScheduler:
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
            while self._admit():
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
            closing = PocketTTSOnnxError("the scheduler was closed")
            for request in rest:
                self._decoder.finish(request, closing)
            self._decoder.close()

    def _admit(self) -> bool:
        """Drop cancelled streams, start waiting ones while there is room; False once closed."""
        if not self._active and self._lm.buffers.rows:  # idle: memory goes back
            self._lm.buffers.fit(0, 0)
            _release_memory()
        with self._lock:
            while not self._closed and not self._active and not self._waiting:
                self._sweep_parked()
                self._lock.wait(timeout=1.0 if self._parked else None)
            if self._closed:
                return False
            self._sweep_parked()
            for i in reversed(range(len(self._active))):
                if self._active[i].cancelled.is_set():
                    self._remove(i, None)
        self._start_waiting()
        return True

    def _start_waiting(self) -> None:
        """Start as many waiting requests as there are free rows (and K/V budget), their
        text prompts in one batched call."""
        ready = []
        while True:
            with self._lock:
                if len(self._active) + len(ready) >= self.max_streams or not self._waiting:
                    break
                request = self._waiting.popleft()
                self._admitting.append(request)
            admitted = self._prepare(request, ready)
            with self._lock:
                if not admitted:
                    self._admitting.remove(request)
                    self._waiting.appendleft(request)  # no room yet: it goes first
                    break
                if not ready or ready[-1].request is not request:
                    self._admitting.remove(request)  # ended (or parked) without a row
        if ready:
            self._prompt(ready)
        with self._lock:
            self._admitting.clear()

    def _sweep_parked(self) -> None:  # holds the lock
        """End cancelled requests that hold no row (parked, or still waiting)."""
        for request in [r for r in self._parked if r.cancelled.is_set()]:
            self._parked.discard(request)
            self._decoder.finish(request, None)
        if any(r.cancelled.is_set() for r in self._waiting):
            for request in [r for r in self._waiting if r.cancelled.is_set()]:
                self._decoder.finish(request, None)
            self._waiting = collections.deque(r for r in self._waiting if not r.cancelled.is_set())

    def _prepare(self, request: Request, ready: list) -> bool:
        """Take `request`'s next chunk and load its voice into the next free row (appending
        to `ready`); False when the K/V budget has no room for it yet."""
        if request.cancelled.is_set():
            self._decoder.finish(request, None)
            return True
        row = len(self._active) + len(ready)
        try:
            chunk, request.next_chunk = request.next_chunk or self._take(request), None
            if chunk is WAIT:
                return True
            if chunk is None:
                self.counts["completed"] += 1
                self._decoder.finish(request, None)
                return True
            self._check_chunk(chunk)
            filled = filled_positions(self.core.main_spec, request.start)
            need = (
                filled
                + len(chunk.token_ids)
                + chunk_max_frames(chunk, request.config, self.core.manifest)
            )
            if not self._fits(need, [r.need for r in self._active] + [p.need for p in ready]):
                request.next_chunk = chunk
                return False
            buffers = self._lm.buffers
            rows = min(self.max_streams, max(row + 1, 2 * buffers.rows))
            self._lm.limit = max([need] + [r.need for r in self._active] + [p.need for p in ready])
            if row == 0:  # alone: the same buffers every time (bit-identical audio)
                buffers.reset(rows, need)
            else:  # room for the widest row's worst case, allocated once
                buffers.reserve(self._lm.limit, rows=rows, limit=self._lm.limit)
            self._lm.load(row, request.start)
            ready.append(_Ready(request, chunk, self.core.embed(chunk), filled, need))
            return True
        except Exception as e:
            self._fail_start(request, e)
            return True

    def _fail_start(self, request: Request, error: BaseException) -> None:
        if not isinstance(error, PocketTTSOnnxError):  # e.g. out of memory: this request only
            logger.error("starting a text chunk failed: %r", error)
            error = GenerationError(f"prompting the text failed: {error}")
        self.counts["failed"] += 1
        self._decoder.finish(request, error)

    def _prompt(self, ready: list) -> None:
        """Prompt every ready row's text in one batched call (each row exactly as alone: the
        attention is causal and the padding after a shorter prompt is never kept); if that
        fails, one row at a time, so only rows that fail alone end."""
        first = len(self._active)
        try:
            self._lm.prompt_rows(first, [p.embeddings for p in ready])
            failed: dict[int, BaseException] = {}
        except Exception:
            failed = {}
            for i, p in enumerate(ready):
                try:
                    self._lm.load(first + i, p.request.start)
                    self._lm.prompt(first + i, p.embeddings)
                except Exception as e:
                    failed[i] = e
        core = self.core
        for i, p in enumerate(ready):
            request, row = p.request, len(self._active)
            if i in failed or request.cancelled.is_set():
                if row != first + i:
                    self._lm.buffers.move(first + i, row)
                if i in failed:
                    self._fail_start(request, failed[i])
                else:
                    self._decoder.finish(request, None)
                continue
            if row != first + i:  # an earlier one failed: keep the rows packed
                self._lm.buffers.move(first + i, row)
            if request.units is not None:
                request.timing = core.text_timing(request.units.popleft(), p.filled, p.chunk)
            request.need = p.need
            request.text_index += 1
            request.chunk = ChunkStream(
                p.chunk, request.config, core.manifest, core.sampler, request.rng
            )
            request.sequence = np.full((1, 1, core.manifest.latent_dim), np.nan, np.float32)
            self._active.append(request)
            self._decoder.join(request)

    def _take(self, request: Request):
        """The request's next chunk; a text stream with none yet is parked (under the lock,
        so text written meanwhile cannot miss the wake-up in `_offer`)."""
        if not isinstance(request.source, FeedSource):
            return request.source.take()
        with self._lock:
            chunk = request.source.take()
            if chunk is WAIT:
                request.parked = True
                self._parked.add(request)
            return chunk

    def _fits(self, need: int, others: list[int]) -> bool:
        budget = self.max_kv_positions
        if budget is None:
            return True
        if need > budget:
            raise InvalidInputError(
                f"max_frames: this text chunk may need {need} K/V positions, more than the "
                f"server's whole budget ({budget}); ask for fewer max_frames",
                param="max_frames",
            )
        widest = max([need, *others])
        return (len(others) + 1) * widest <= budget

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

    def _word_scores(self, row: int) -> np.ndarray | None:
        """Row `row`'s attention over its text units at the step just made (None when the
        step fell back to row-by-row calls)."""
        queries = self._lm.queries
        if queries is None:
            return None
        timing = self._active[row].timing
        arrays = self._lm.buffers.arrays
        keys = {layer: arrays[f"cache_k_{layer}"][row] for layer, _ in timing.heads}
        return timing.scores(queries[row], keys)

    def _iterate(self) -> None:
        """One flow-LM step for the rows that need it, flow-head steps, decode, leave."""
        active = self._active
        errors: dict[int, BaseException] = {}
        needs_lm = np.array([r.chunk.x is None for r in active])
        if needs_lm.any():
            sequence = np.concatenate([r.sequence for r in active])
            keep = None if needs_lm.all() else needs_lm
            cond, eos = self._steps.lm_step(sequence, keep, errors)
            for i in np.flatnonzero(needs_lm):
                if i in errors or not active[i].chunk.observe(float(eos[i, 0])):
                    continue
                if active[i].timing is not None:
                    active[i].scores = self._word_scores(i)
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
