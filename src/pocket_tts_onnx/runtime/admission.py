"""Admission: which waiting requests start, in which rows, and their text prompts.

A mixin of `BatchScheduler` (batching.py), kept apart because it is a responsibility of its
own: the K/V budget, the queue order (a request that does not fit stays first), text streams
parked while they wait for a sentence, and the waiting requests' prompts fed together in one
batched call. It uses the scheduler's state (rows, lock, decoder thread, counts) and runs on
the scheduler thread only.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
from dataclasses import dataclass

import numpy as np

from pocket_tts_onnx.errors import GenerationError, InvalidInputError, PocketTTSOnnxError
from pocket_tts_onnx.runtime.generation import ChunkStream, chunk_max_frames
from pocket_tts_onnx.runtime.kv_buffer import filled_positions
from pocket_tts_onnx.runtime.requests import WAIT, FeedSource, Request

__all__ = ["Admission"]

logger = logging.getLogger(__name__)

# Frames a new row has room for before its K/V capacity first doubles.
FIRST_FRAMES_ROOM = 256


def _release_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class _Ready:
    """A request taken for a row: its chunk and what it needs (placed by `_place`)."""

    request: Request
    chunk: object
    embeddings: np.ndarray
    filled: int
    need: int
    start: int  # K/V positions it needs now: its voice, its prompt and a first stretch


class Admission:
    """Admission and prompting for `BatchScheduler`."""

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
        if ready and self._place(ready):
            self._prompt(ready)
        with self._lock:
            self._admitting.clear()

    def _place(self, ready: list) -> bool:
        """Room for every ready row in one allocation (a burst of requests would otherwise
        regrow the K/V buffers once per request, copying them each time), then each row's
        voice loaded; False (every ready request failed) if that allocation fails."""
        first = len(self._active)
        buffers = self._lm.buffers
        try:
            self._lm.limit = max(r.need for r in [*self._active, *ready])
            # Capacity follows the positions in use (a step reads the whole capacity, masked,
            # so room for a neighbour's worst case would slow every row): the prompts and a
            # first stretch of frames now, doubling later, never past the widest `need`.
            start = max(p.start for p in ready)
            if first == 0:  # alone: the same buffers every time (bit-identical audio)
                buffers.reset(len(ready), start)
            else:
                rows = first + len(ready)
                if rows > buffers.rows:  # rows double, as capacity does
                    rows = min(self.max_streams, max(rows, 2 * buffers.rows))
                buffers.reserve(start, rows=rows, limit=self._lm.limit)
            for i, p in enumerate(ready):
                self._lm.load(first + i, p.request.start)
        except Exception as e:  # e.g. out of memory: these requests only
            buffers.positions[first:] = 0  # rows loaded before the failure hold nothing
            for p in ready:
                self._fail_start(p.request, e)
            return False
        return True

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
        """Take `request`'s next chunk (appending it to `ready`); False when the K/V budget
        has no room for it yet."""
        if request.cancelled.is_set():
            self._decoder.finish(request, None)
            return True
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
            start = min(need, filled + len(chunk.token_ids) + FIRST_FRAMES_ROOM)
            ready.append(_Ready(request, chunk, self.core.embed(chunk), filled, need, start))
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
        first_step = None
        try:
            first_step = self._prompt_halves(first, [p.embeddings for p in ready])
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
            request.first_step = first_step  # only ever for a lone new row
            self._active.append(request)
            self._decoder.join(request)

    def _prompt_halves(self, first: int, embeddings: list):
        """Prompts of several new rows as two shards, one on the prompt thread: when many
        requests arrive together, their prompts are the work before anyone's first audio,
        and the second core would otherwise wait. A lone new row's first step rides along
        its prompt (returned, see `FlowLM.prompt_rows`)."""
        if self._prompt_pool is None or len(embeddings) < 2:
            return self._lm.prompt_rows(first, embeddings, bos=len(embeddings) == 1)
        longest = max(e.shape[1] for e in embeddings)
        rows = slice(first, first + len(embeddings))
        self._lm.buffers.reserve(int(self._lm.buffers.positions[rows].max()) + longest)
        half = len(embeddings) // 2  # disjoint rows: the two calls never touch the same data
        other = self._prompt_pool.submit(self._lm.prompt_rows, first + half, embeddings[half:])
        try:
            self._lm.prompt_rows(first, embeddings[:half])
        finally:
            other.result()
        return None

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
