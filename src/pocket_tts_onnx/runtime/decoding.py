"""The decoder thread: Mimi runs while the scheduler computes the next flow-LM step.

It owns the batched decoder states (`MimiRows`) and receives the scheduler's row changes and
latents as ordered events, so its rows always mirror the scheduler's. When Mimi is behind
and several steps of the same rows are queued, they are decoded in one call of several frames
(cheaper per frame; only for two or more rows, so a lone stream's audio stays the same to the
bit). Per row it groups the
first `first_chunk_frames` frames of a text chunk into one AudioChunk, applies the one
backpressure policy (a reader too far behind has its stream stopped), and after a text
chunk's last audio puts an `end_of_text` marker. A decode failure is isolated: the batch is
retried row by row and only the rows that still fail end, with the error.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pocket_tts_onnx.errors import GenerationError, QueueFullError
from pocket_tts_onnx.runtime.decoder import MAX_DECODE_FRAMES, MimiRows
from pocket_tts_onnx.runtime.requests import Request
from pocket_tts_onnx.runtime.streams import END, AudioChunk
from pocket_tts_onnx.runtime.timestamps import WordAligner, is_voiced

__all__ = ["MAX_AHEAD", "DecoderThread"]

logger = logging.getLogger(__name__)

MAX_AHEAD = 4
# Most queued steps decoded in one Mimi call: half of MAX_AHEAD, so that while one merged
# call runs, the flow LM queues the next one's steps (the graph takes up to MAX_DECODE_FRAMES).
MERGE_STEPS = min(MAX_AHEAD // 2, MAX_DECODE_FRAMES)


def _too_slow(chunks: int) -> str:
    return (
        f"the stream was stopped: {chunks} audio chunks were made and not read (the reader "
        "is not keeping up); read the stream as it is produced"
    )


@dataclass(eq=False)
class _Row:
    request: Request
    text_index: int
    held: list = field(default_factory=list)  # frames of the first audio chunk
    flushed: bool = False  # the first chunk has been sent
    failed: bool = False
    aligner: WordAligner | None = None  # word timestamps of this text chunk
    words: list = field(default_factory=list)  # word events not sent yet


class DecoderThread:
    """Applies `join` / `decode` / `remove` / `finish` events in order on its own thread."""

    def __init__(self, rows: MimiRows, sample_rate: int, max_backlog: int, shards: bool = True):
        self._rows = rows
        self._sample_rate = sample_rate
        self._max_backlog = max_backlog
        self._table: list[_Row] = []
        self._events: queue.Queue = queue.Queue()
        self.error: GenerationError | None = None  # why the thread stopped, if it failed
        # Decode steps the scheduler may run ahead of Mimi: enough to overlap the two, few
        # enough that a new stream's first frame does not queue behind many others.
        self._ahead = threading.Semaphore(MAX_AHEAD)
        multicore = (os.cpu_count() or 1) >= 2
        self._pool = (
            ThreadPoolExecutor(1, "pocket-tts-mimi-shard") if shards and multicore else None
        )
        self._thread = threading.Thread(target=self._run, name="pocket-tts-mimi", daemon=True)
        self._thread.start()

    # ------------------------------------------------ called by the scheduler thread
    def join(self, request: Request) -> None:
        timing = request.timing
        aligner = WordAligner(timing.units) if timing is not None else None
        self._events.put(("join", (request, request.text_index, aligner)))

    def decode(self, latents: np.ndarray, rows: list[int], scores: list | None = None) -> None:
        """Queue one step's latents (one per row; `scores`: each row's word-unit scores, or
        None); waits while MAX_AHEAD steps are already queued."""
        while not self._ahead.acquire(timeout=1.0):
            if not self.alive:
                return
        self._events.put(("decode", (latents, rows, scores or [None] * len(rows))))

    def remove(self, row: int, marker: bool) -> None:
        """`row` leaves; `marker`: its text chunk is over (flush it, then end_of_text)."""
        self._events.put(("remove", (row, marker)))

    def finish(self, request: Request, error: BaseException | None) -> None:
        """The request is over: its reader gets `error`, or the end."""
        self._events.put(("finish", (request, error)))

    def close(self) -> None:
        if self._thread.is_alive():
            self._events.put(("stop", None))
            if threading.current_thread() is not self._thread:
                self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        handlers = {
            "join": self._join,
            "decode": self._decode,
            "remove": self._remove,
            "finish": self._finish,
        }
        pending = None
        while True:
            kind, value = pending or self._events.get()
            pending = None
            if kind == "stop":
                return
            try:
                if kind == "decode":
                    value, pending = self._merge(*value)
                handlers[kind](*value)
            except Exception as e:  # a fault of this thread: its rows cannot go on
                logger.exception("the decoder thread failed")
                error = self.error = GenerationError(f"decoding failed: {e}")
                for entry in self._table:
                    entry.request.out.put(error)
                return  # the scheduler sees it stopped and ends, so it can be restarted

    def _join(self, request: Request, text_index: int, aligner) -> None:
        self._rows.join()
        self._table.append(_Row(request, text_index, aligner=aligner))

    def _remove(self, row: int, marker: bool) -> None:
        entry = self._table[row]
        if marker and not entry.failed:
            if entry.aligner is not None:
                request = entry.request
                entry.words += entry.aligner.finish(request.samples / self._sample_rate)
            self._flush(entry)
            self._send(entry, np.zeros(0, np.float32), end_of_text=True)
        self._rows.remove(row)
        self._table[row] = self._table[-1]
        self._table.pop()

    def _finish(self, request: Request, error: BaseException | None) -> None:
        request.out.put(error if error is not None else END)

    def _merge(self, latents: np.ndarray, rows: list[int], scores: list):
        """This step plus the queued steps of the same rows right after it, as one call:
        ((latents [n, F, L], rows, scores per frame), the first event not merged)."""
        frames, steps = [latents], [scores]
        pending = None
        while len(rows) >= 2 and len(frames) < MERGE_STEPS:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            kind, value = event
            if kind != "decode" or value[1] != rows:
                pending = event
                break
            frames.append(value[0])
            steps.append(value[2])
        merged = frames[0] if len(frames) == 1 else np.concatenate(frames, axis=1)
        return (merged, rows, steps), pending

    def _decode(self, latents: np.ndarray, rows: list[int], steps: list) -> None:
        try:
            self._decode_rows(latents, rows, steps)
        finally:
            for _ in steps:
                self._ahead.release()

    def _decode_rows(self, latents: np.ndarray, rows: list[int], steps: list) -> None:
        try:
            audio = self._rows.decode(latents, np.asarray(rows), self._pool)
        except Exception:  # isolate: retry each row alone, end only the rows that fail
            pieces = []
            for i, row in enumerate(rows):
                try:
                    pieces.append(self._rows.decode(latents[i : i + 1], np.array([row]))[0])
                except Exception as e:
                    self._fail(self._table[row], e)
                    pieces.append(None)
            for i, row in enumerate(rows):
                if pieces[i] is not None:
                    self._emit_frames(self._table[row], pieces[i], [s[i] for s in steps])
            return
        for i, row in enumerate(rows):
            self._emit_frames(self._table[row], audio[i], [s[i] for s in steps])

    def _emit_frames(self, entry: _Row, audio: np.ndarray, scores: list) -> None:
        """One row's audio of len(scores) frames, emitted frame by frame."""
        size = audio.shape[0] // len(scores)
        for f, frame_scores in enumerate(scores):
            self._emit(entry, audio[f * size : (f + 1) * size], frame_scores)

    def _emit(self, entry: _Row, audio: np.ndarray, scores=None) -> None:
        if entry.failed or entry.request.cancelled.is_set():
            return
        audio = audio.copy()  # a view would pin the whole batch's output
        request = entry.request
        if entry.aligner is not None and scores is not None:
            start = request.samples / self._sample_rate
            entry.words += entry.aligner.frame(scores, is_voiced(audio), start)
        request.samples += audio.shape[0]
        if not entry.flushed:
            entry.held.append(audio)
            if len(entry.held) >= entry.request.config.first_chunk_frames:
                self._flush(entry)
            return
        self._send(entry, audio)

    def _flush(self, entry: _Row) -> None:
        if entry.held:
            held, entry.held = entry.held, []
            self._send(entry, np.concatenate(held) if len(held) > 1 else held[0])
        entry.flushed = True

    def _send(self, entry: _Row, audio: np.ndarray, end_of_text: bool = False) -> None:
        request = entry.request
        if request.cancelled.is_set():
            return
        if request.out.qsize() >= self._max_backlog:  # the reader stopped reading
            request.cancelled.set()
            self._fail(entry, QueueFullError(_too_slow(self._max_backlog)))
            return
        words, entry.words = tuple(entry.words), []
        request.out.put(AudioChunk(audio, self._sample_rate, entry.text_index, end_of_text, words))

    def _fail(self, entry: _Row, error: BaseException) -> None:
        if not isinstance(error, (GenerationError, QueueFullError)):
            error = GenerationError(f"decoding failed for this stream: {error}")
        entry.failed = True
        entry.request.cancelled.set()  # the scheduler drops the row at its next step
        entry.request.out.put(error)
