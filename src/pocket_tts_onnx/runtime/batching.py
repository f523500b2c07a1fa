"""Continuous batching: many streams share each model call.

One scheduler thread runs the flow LM (`flow_lm_step`, one call per step for every active
stream, each at its own position) and the flow head (one solve for all rows); a decoder
thread runs Mimi (`mimi_decoder_batched`, one call per step for the same rows) while the
next LM step is computed. Streams join when their text chunk has been prompted and leave
when it ends (EOS, length limit, cancel), at any step. Rows are kept packed: a leaving row
is replaced by the last one, in the K/V buffers and in the decoder alike (the decoder
receives the same row changes as ordered events).

Each stream keeps its own random generator and per-chunk decisions (`ChunkStream`), so its
audio is the single-stream engine's for the same text, voice and seed, whatever else runs.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError, PocketTTSOnnxError, QueueFullError
from pocket_tts_onnx.runtime.buffered_generation import prompt_rows, run_step
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.generation import ChunkStream
from pocket_tts_onnx.runtime.kv_buffer import KVBuffers, filled_positions, join_decoder_row
from pocket_tts_onnx.runtime.streaming import AudioChunk
from pocket_tts_onnx.text import MAX_CHUNK_TOKENS  # the longest chunk the text splitter makes

__all__ = ["BatchScheduler", "BatchStream", "generate_batch"]

_END = object()
# At most this many streams per scheduler (K/V buffers are allocated for all of them).
MAX_STREAMS = 256


def _too_slow(chunks: int) -> str:
    return (
        f"the stream was stopped: {chunks} audio chunks were made and not read (the reader "
        "is not keeping up); read the stream as it is produced"
    )


@dataclass(eq=False)
class _Request:
    chunks: collections.deque
    start: dict[str, np.ndarray]
    filled: int
    config: GenerationConfig
    rng: np.random.Generator
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    chunk: ChunkStream | None = None
    sequence: np.ndarray | None = None
    first_frame: bool = True  # owned by the decoder thread (set by its join event)


class BatchStream(Iterator[AudioChunk]):
    """Audio of one submitted text, as it is made. Iterating blocks until the next chunk;
    `cancel()` (or `close()`) frees the stream's batch row at the next step."""

    def __init__(self, request: _Request, scheduler: BatchScheduler):
        self._request = request
        self._scheduler = scheduler
        self._done = False

    def __next__(self) -> AudioChunk:
        if self._done:
            raise StopIteration
        item = self._request.out.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def cancel(self) -> None:
        if not self._done:
            self._request.cancelled.set()
            self._scheduler._wake()

    close = cancel

    def __del__(self):  # an abandoned stream must not keep its row
        self._request.cancelled.set()


class BatchScheduler:
    """Serve many streams from one bundle with batched model calls.

    `submit()` validates in the caller's thread and returns a `BatchStream`; at most
    `max_streams` streams generate at once, `max_queue` more wait (beyond that,
    `QueueFullError`). Needs a bundle exported with the batched graph variants.
    """

    def __init__(
        self,
        tts,
        max_streams: int = 8,
        max_queue: int = 32,
        *,
        max_buffered_seconds: float = 600.0,
        max_chunk_tokens: int = MAX_CHUNK_TOKENS,
    ):
        for name in ("flow_lm_step", "mimi_decoder_batched"):
            if name not in tts.graphs:
                raise PocketTTSOnnxError(
                    f"this bundle has no {name} graph: re-export it with this version to "
                    "serve batched streams"
                )
        limits = (
            ("max_streams", max_streams, 1, MAX_STREAMS),
            ("max_queue", max_queue, 0, 1 << 20),
            ("max_chunk_tokens", max_chunk_tokens, 1, 1 << 20),
        )
        for label, value, least, most in limits:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok or not least <= value <= most:
                raise InvalidInputError(
                    f"{label} must be an integer from {least} to {most}, got {value!r}"
                )
        if not (isinstance(max_buffered_seconds, (int, float)) and max_buffered_seconds > 0):
            raise InvalidInputError(
                f"max_buffered_seconds must be > 0, got {max_buffered_seconds!r}"
            )
        self.max_chunk_tokens = max_chunk_tokens
        self._tts = tts
        self.max_streams, self.max_queue = max_streams, max_queue
        manifest = tts.manifest
        self._step = tts.graphs["flow_lm_step"]
        self._conditioner = tts.graphs["text_conditioner"]
        self._sampler = tts.sampler
        self._main_spec = manifest.graphs["flow_lm_main"].spec  # the spec: no session needed
        try:
            self._buffers = KVBuffers(self._step.spec, rows=max_streams, capacity=256)
        except MemoryError as e:
            raise InvalidInputError(
                f"max_streams={max_streams}: not enough memory for that many streams' K/V "
                "buffers; use fewer"
            ) from e
        self._latent_dim, self._d_model = manifest.latent_dim, manifest.d_model
        self._waiting: collections.deque[_Request] = collections.deque()
        self._active: list[_Request] = []
        self._lock = threading.Condition()
        self._closed = False
        self._failure: BaseException | None = None
        self._decoder = _DecoderThread(tts, int(max_buffered_seconds * manifest.frame_rate))
        self._thread = threading.Thread(target=self._run, name="pocket-tts-batch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    def submit(self, text: str, voice=None, **params) -> BatchStream:
        """Queue `text` for synthesis; parameters as `PocketTTSOnnx.stream`."""
        tts = self._tts
        config = tts.generation_config(**params)
        start = tts.start_state(voice)
        filled = filled_positions(self._main_spec, start)
        chunks = collections.deque(tts.text_chunks(text))
        longest = max(len(c.token_ids) for c in chunks)
        if longest > self.max_chunk_tokens:
            # One prompt this long (a single word of thousands of letters: the chunker cannot
            # split it) would hold every other stream of the batch for seconds.
            raise InvalidInputError(
                f"text: one chunk has {longest} tokens (max_chunk_tokens "
                f"{self.max_chunk_tokens}); a word this long cannot be split into sentences. "
                "Add spaces or punctuation, or synthesize it with PocketTTSOnnx.generate"
            )
        request = _Request(chunks, start, filled, config, np.random.default_rng(config.seed))
        with self._lock:
            if self._closed:
                cause = f": it stopped after {self._failure!r}" if self._failure else ""
                raise PocketTTSOnnxError(f"the scheduler is closed{cause}")
            if self._decoder.error is not None:
                raise PocketTTSOnnxError(f"the scheduler's decoder failed: {self._decoder.error!r}")
            # Requests the worker has not admitted yet into free rows are not queued.
            free = max(0, self.max_streams - len(self._active))
            if len(self._waiting) - free >= self.max_queue:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting (max_queue "
                    f"{self.max_queue}); retry later"
                )
            self._waiting.append(request)
            self._lock.notify()
        return BatchStream(request, self)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"active": len(self._active), "waiting": len(self._waiting)}

    def close(self) -> None:
        """Stop: every unfinished stream ends with an error."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
        self._decoder.close()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ worker
    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def _run(self) -> None:
        try:
            while self._admit():
                if self._active:
                    self._advance()
        except BaseException as e:  # a model failure ends every stream, with the cause
            with self._lock:
                self._closed = True
                self._failure = e
            for request in self._active + list(self._waiting):
                request.out.put(e)
        finally:
            closing = PocketTTSOnnxError("the scheduler was closed")
            for request in self._active + list(self._waiting):
                self._decoder.finish(request, closing)
            self._decoder.close()

    def _admit(self) -> bool:
        """Drop cancelled streams, start new ones; False once closed."""
        with self._lock:
            while not self._closed and not self._active and not self._waiting:
                self._lock.wait()
            if self._closed:
                return False
            for i in reversed(range(len(self._active))):
                if self._active[i].cancelled.is_set():
                    self._remove(i, None)
            while self._waiting and len(self._active) < self.max_streams:
                request = self._waiting.popleft()
                if request.cancelled.is_set():
                    self._decoder.finish(request, None)
                    continue
                self._lock.release()
                try:
                    self._start_chunk(request)
                finally:
                    self._lock.acquire()
        return True

    def _start_chunk(self, request: _Request) -> None:
        """Prompt `request`'s next chunk in the next free row and make it active."""
        if not request.chunks:
            self._decoder.finish(request, None)
            return
        chunk = request.chunks.popleft()
        row = len(self._active)
        try:
            self._buffers.load(row, request.start, request.filled)
            ids = np.asarray(chunk.token_ids, dtype=np.int64)[None, :]
            emb = self._conditioner.run({"token_ids": ids})["embeddings"]
            prompt_rows(self._step, self._buffers, slice(row, row + 1), emb)
        except PocketTTSOnnxError as e:
            self._decoder.finish(request, e)
            return
        tts = self._tts
        request.chunk = ChunkStream(chunk, request.config, tts.manifest, self._sampler, request.rng)
        request.sequence = np.full((1, 1, self._latent_dim), np.nan, dtype=np.float32)
        self._active.append(request)
        self._decoder.join(request)

    def _remove(self, row: int, error: BaseException | None, finished: bool = True) -> _Request:
        """Take `row` out of the batch (the last row moves into its place)."""
        request = self._active[row]
        last = len(self._active) - 1
        if row != last:
            self._buffers.move(last, row)
        self._active[row] = self._active[last]
        self._active.pop()
        self._decoder.remove(row)
        if finished:
            self._decoder.finish(request, error)
        return request

    def _advance(self) -> None:
        """One flow-LM step and one flow-head solve for every active stream."""
        n = len(self._active)
        sequence = np.concatenate([r.sequence for r in self._active])
        no_text = np.zeros((n, 0, self._d_model), dtype=np.float32)
        out = run_step(self._step, self._buffers, slice(0, n), sequence, no_text)
        conditioning, eos = out["conditioning"], out["eos_logit"]
        emitting = [i for i, r in enumerate(self._active) if r.chunk.observe(float(eos[i, 0]))]
        latents: dict[int, np.ndarray] = {}
        by_steps: dict[int, list[int]] = collections.defaultdict(list)
        for i in emitting:
            by_steps[self._active[i].config.lsd_steps].append(i)
        for steps, group in by_steps.items():
            noise = np.concatenate([self._active[i].chunk.noise() for i in group])
            x = self._sampler.solve(conditioning[group], noise, steps)
            for j, i in enumerate(group):
                latents[i] = x[j : j + 1]
        # Rows that ended (EOS, limit, bad latent) leave before the decoder sees this step.
        for i in reversed(range(n)):
            request = self._active[i]
            error = None
            if i in latents:
                try:
                    request.chunk.accept(latents[i])
                    request.sequence = latents[i][:, None, :]
                    continue
                except PocketTTSOnnxError as e:
                    error = e
            if error is None and request.chunks and not request.cancelled.is_set():
                self._remove(i, None, finished=False)
                with self._lock:
                    self._waiting.appendleft(request)  # its next chunk goes first
            else:
                self._remove(i, error)
        if self._active:
            batch = np.stack([r.sequence[:, 0] for r in self._active], axis=0)
            self._decoder.decode(batch, list(self._active))


def generate_batch(tts, texts, voice, max_streams: int, **params) -> list[np.ndarray]:
    """`PocketTTSOnnx.generate_batch`: every text through one scheduler, whole audio each."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError("texts must be a list of strings (one per audio)")
    voices = list(voice) if isinstance(voice, (list, tuple)) else [voice] * len(texts)
    if len(voices) != len(texts):
        raise InvalidInputError(
            f"voice: {len(voices)} voices for {len(texts)} texts; give one, or one per text"
        )
    if not texts:
        return []
    limit = min(max_streams, len(texts)) if isinstance(max_streams, int) else max_streams
    with BatchScheduler(tts, max_streams=limit, max_queue=len(texts)) as scheduler:
        streams = [scheduler.submit(t, v, **params) for t, v in zip(texts, voices, strict=True)]
        return [
            np.concatenate([c.samples for c in s] or [np.zeros(0, np.float32)]) for s in streams
        ]


class _DecoderThread:
    """Owns the batched Mimi state; applies row changes and decodes in event order."""

    def __init__(self, tts, max_backlog: int):
        self._max_backlog = max_backlog
        self._graph = tts.graphs["mimi_decoder_batched"]
        self._sample_rate = tts.sample_rate
        self._ramp = tts.fade_in_ramp()
        self._events: queue.Queue = queue.Queue()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="pocket-tts-mimi", daemon=True)
        self._thread.start()

    def join(self, request: _Request) -> None:
        self._events.put(("join", request))

    def remove(self, row: int) -> None:
        self._events.put(("remove", row))

    def decode(self, latents: np.ndarray, requests: list[_Request]) -> None:
        self._events.put(("decode", (latents, requests)))

    def finish(self, request: _Request, error: BaseException | None) -> None:
        self._events.put(("finish", (request, error)))

    def close(self) -> None:
        if self._thread.is_alive():
            self._events.put(("stop", None))
            self._thread.join()

    def _run(self) -> None:
        spec = self._graph.spec
        states = spec.initial_states(batch=0)
        while True:
            kind, value = self._events.get()
            if kind == "stop":
                return
            if kind == "join":
                states = join_decoder_row(spec, states)
                value.first_frame = True
            elif kind == "remove":
                last = next(iter(states.values())).shape[0] - 1
                for name, arr in states.items():
                    if value != last:
                        arr[value] = arr[last]
                    states[name] = arr[:last]
            elif kind == "finish":
                request, error = value
                request.out.put(error if error is not None else _END)
            elif kind == "decode":
                latents, requests = value
                if self.error is not None:  # a failed decoder: every stream ends with it
                    for request in requests:
                        request.out.put(self.error)
                    continue
                try:
                    out, states = self._graph.step({"latent": latents}, states)
                except Exception as e:  # e.g. out of memory; the batch state is lost
                    self.error = e
                    for request in requests:
                        request.out.put(e)
                    continue
                for i, request in enumerate(requests):
                    audio = out["audio_frame"][i, 0].copy()  # a view would pin the whole batch
                    if request.first_frame:
                        n = min(self._ramp.shape[0], audio.shape[0])
                        audio[:n] *= self._ramp[:n]
                        request.first_frame = False
                    if request.cancelled.is_set():
                        continue
                    if request.out.qsize() >= self._max_backlog:  # the reader stopped reading
                        request.cancelled.set()
                        request.out.put(QueueFullError(_too_slow(self._max_backlog)))
                        continue
                    request.out.put(AudioChunk(audio, self._sample_rate))
