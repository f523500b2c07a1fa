"""The one place the servers' front ends (Wyoming, WebSocket) open an incremental text feed.

TEMPORARY stand-in until the engine's `open_stream` lands: complete sentences are submitted
one by one to the scheduler. It has the interface the engine's TextStream will have
(write / end / cancel, async iteration of chunks with text_index and end_of_text).
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import re
import threading
from dataclasses import dataclass

import numpy as np

_END = object()
_SENTENCE = re.compile(r"[.!?\u2026][\"')\]]*\s")


@dataclass(frozen=True)
class FeedChunk:
    samples: np.ndarray
    sample_rate: int
    text_index: int
    end_of_text: bool = False


class _StandInFeed:
    def __init__(self, scheduler, sample_rate: int, voice, config):
        self._scheduler, self._rate, self._voice = scheduler, sample_rate, voice
        self._params = dataclasses.asdict(config) if config is not None else {}
        self._buffer = ""
        self._sentences: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._current = None
        threading.Thread(target=self._run, daemon=True).start()

    def write(self, text: str) -> None:
        self._buffer += text
        cut = 0
        for m in _SENTENCE.finditer(self._buffer):
            cut = m.end()
        if cut:
            self._sentences.put(self._buffer[:cut])
            self._buffer = self._buffer[cut:]

    def end(self) -> None:
        if self._buffer.strip():
            self._sentences.put(self._buffer)
        self._buffer = ""
        self._sentences.put(_END)

    def cancel(self) -> None:
        self._cancelled.set()
        self._sentences.put(_END)
        if self._current is not None:
            self._current.cancel()

    def _run(self) -> None:
        index = 0
        try:
            while not self._cancelled.is_set():
                sentence = self._sentences.get()
                if sentence is _END:
                    break
                self._current = self._scheduler.submit(sentence, self._voice, **self._params)
                for chunk in self._current:
                    self._out.put(FeedChunk(chunk.samples, self._rate, index))
                self._out.put(FeedChunk(np.zeros(0, np.float32), self._rate, index, True))
                index += 1
        except BaseException as e:
            self._out.put(e)
        self._out.put(_END)

    def __aiter__(self):
        return self

    async def __anext__(self) -> FeedChunk:
        item = await asyncio.to_thread(self._out.get)
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


def open_feed(scheduler, tts, voice=None, config=None):
    """An incremental text feed on `scheduler` for `voice` with GenerationConfig `config`."""
    return _StandInFeed(scheduler, tts.sample_rate, voice, config)
