"""What a caller holds while audio is made: typed chunks, and the stream they come from.

A stream is read like an iterator (blocking) or with `async for` (an asyncio server's event
loop never blocks: the scheduler wakes it through `call_soon_threadsafe`). One backpressure
policy for every stream: the scheduler never waits for a reader; a reader that leaves more
than the scheduler's `max_buffered_seconds` of audio unread has its stream stopped with
`QueueFullError`, and a cancelled or abandoned stream frees its batch row at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.runtime.config import GenerationConfig

__all__ = ["AudioChunk", "AudioStream", "BatchStream", "Channel", "Scheduler", "TextStream"]

END = object()


@dataclass(frozen=True)
class AudioChunk:
    """A piece of streamed audio: mono float32 samples at `sample_rate`. `text_index` is the
    text chunk (sentence) of the stream it speaks; a zero-sample chunk with `end_of_text`
    follows each text chunk's last audio in text streams (`open_stream`). With timestamps,
    `words` holds the word starts and ends decided up to this audio, in order (the last
    word's end may come in a zero-sample chunk)."""

    samples: np.ndarray
    sample_rate: int
    text_index: int = 0
    end_of_text: bool = False
    words: tuple = ()

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


class Channel:
    """A thread-safe FIFO from the scheduler to one reader, sync or async."""

    def __init__(self):
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def put(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()
            waiter = self._waiter
        if waiter is not None:
            loop, event = waiter
            # A closed loop means nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def qsize(self) -> int:
        return len(self._items)

    def get(self):
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    async def aget(self):
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                event = asyncio.Event()
                self._waiter = (loop, event)
            await event.wait()


class BatchStream(Iterator[AudioChunk]):
    """Audio of one submitted text, as it is made. Iterating blocks until the next chunk;
    `cancel()` (or `close()`) frees the stream's batch row at the next step."""

    def __init__(self, request, wake, markers: bool = False):
        self._request = request
        self._wake = wake
        self._markers = markers  # pass end_of_text markers through
        self._done = False

    @property
    def config(self) -> GenerationConfig:
        return self._request.config

    def _take(self, item) -> AudioChunk | None:
        if item is END:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def __next__(self) -> AudioChunk:
        try:
            while not self._done:
                chunk = self._take(self._request.out.get())
                if chunk is not None and (self._markers or not chunk.end_of_text or chunk.words):
                    return chunk
        except KeyboardInterrupt:  # Ctrl-C while waiting: this stream is over
            self.cancel()
            raise
        raise StopIteration

    def __aiter__(self):
        return self

    async def __anext__(self) -> AudioChunk:
        while not self._done:
            chunk = self._take(await self._request.out.aget())
            if chunk is not None and (self._markers or not chunk.end_of_text or chunk.words):
                return chunk
        raise StopAsyncIteration

    def cancel(self) -> None:
        if not self._done:
            self._request.cancelled.set()
            self._wake()

    close = cancel

    def __del__(self):  # an abandoned stream must not keep its row
        self._request.cancelled.set()


class TextStream(BatchStream):
    """A stream whose text arrives while it is spoken: `write()` pieces (they may split
    words, numbers or sentences anywhere), then `end()`. Each text chunk starts as soon as
    its sentence is complete; iteration yields its audio, then an `end_of_text` marker."""

    def __init__(self, request, wake, feed):
        super().__init__(request, wake, markers=True)
        self._feed = feed

    def write(self, text: str) -> None:
        """Add text; raises InvalidInputError (param "text") for a non-string, after end(),
        or once the stream was cancelled (nothing would speak it)."""
        if self._request.cancelled.is_set():
            raise InvalidInputError("write() on a cancelled stream: open a new one", "text")
        self._feed.write(text)

    def end(self) -> None:
        """No more text: the rest is spoken, then iteration ends. Raises InvalidInputError
        if the whole stream had nothing to speak."""
        self._feed.end()


@runtime_checkable
class AudioStream(Protocol):
    """What every front end reads: AudioChunks, and a way to stop early."""

    def __next__(self) -> AudioChunk: ...

    def cancel(self) -> None: ...


@runtime_checkable
class Scheduler(Protocol):
    """What servers drive: streams in, audio out, its health and load."""

    def submit(self, text: str, voice=None, config: GenerationConfig | None = None, **params): ...

    def open_stream(self, voice=None, config: GenerationConfig | None = None, **params): ...

    def stats(self) -> dict: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...
