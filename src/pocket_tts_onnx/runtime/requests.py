"""A request as the scheduler holds it, and where its text chunks come from.

Whole text (`submit`) is chunked lazily: the first chunk in the caller's thread (so empty or
unspeakable text raises there), the rest as they are reached. Text that arrives over time
(`open_stream`) is chunked by `SentenceFeed` in the writer's thread; the scheduler parks the
request while it waits for its next sentence, holding no batch row.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.generation import ChunkStream
from pocket_tts_onnx.runtime.streams import Channel
from pocket_tts_onnx.text import TextChunk
from pocket_tts_onnx.text_feed import SentenceFeed

__all__ = ["WAIT", "FeedSource", "FeedWriter", "Request", "TextSource"]

WAIT = object()  # no chunk yet, more text may come


class TextSource:
    """Chunks of a whole text."""

    def __init__(self, first: TextChunk, rest: Iterator[TextChunk]):
        self._chunks = itertools.chain([first], rest)

    def take(self):
        """The next TextChunk, or None at the end (a later unspeakable chunk raises)."""
        return next(self._chunks, None)


class FeedSource:
    """Chunks of text that is still being written."""

    def __init__(self, feed: SentenceFeed):
        self.feed = feed
        self._pending: collections.deque[TextChunk] = collections.deque()
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def add(self, chunks: list[TextChunk], error: BaseException | None = None) -> None:
        with self._lock:
            self._pending.extend(chunks)
            self._error = self._error or error

    def take(self):
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            if self._error is not None:
                raise self._error
            return None if self.feed.ended else WAIT


class FeedWriter:
    """A text stream's writer side: chunks are made in the writer's thread, checked with
    `check` (the scheduler's chunk limit), then `offer` wakes the parked request."""

    def __init__(self, source: FeedSource, check, offer):
        self._source, self._check, self._offer = source, check, offer
        # Word timestamps: (FeedWords, the request's deque of chunk units), or None.
        self.words = None

    def write(self, text: str) -> None:
        chunks = self._source.feed.write(text)
        for chunk in chunks:
            self._check(chunk)
        if chunks:
            self._add_words(chunks)
            self._source.add(chunks)
            self._offer()

    def _add_words(self, chunks: list[TextChunk]) -> None:
        """Queue the chunks' word units before the chunks (the scheduler takes one per
        chunk it starts)."""
        if self.words is not None:
            words, units = self.words
            part, offset = self._source.feed.part
            units.extend(words.map(part, offset, [c.text for c in chunks]))

    def end(self) -> None:
        try:
            chunks = self._source.feed.end()
        except InvalidInputError as e:  # nothing was said: readers get the error too
            self._source.add([], e)
            self._offer()
            raise
        self._add_words(chunks)
        self._source.add(chunks)
        self._offer()


@dataclass(eq=False)
class Request:
    """One stream in the scheduler: its text, voice, parameters and output."""

    source: TextSource | FeedSource
    start: dict[str, np.ndarray]  # the voice's flow-LM states
    config: GenerationConfig
    rng: np.random.Generator
    out: Channel = field(default_factory=Channel)
    cancelled: threading.Event = field(default_factory=threading.Event)
    chunk: ChunkStream | None = None  # the text chunk being generated
    next_chunk: TextChunk | None = None  # taken, waiting for room in the batch
    sequence: np.ndarray | None = None  # the last latent [1, 1, L] (NaN: BOS)
    first_step: tuple | None = None  # BOS step made with the prompt (conditioning, eos, queries)
    text_index: int = -1
    need: int = 0  # K/V positions the current chunk may reach
    parked: bool = False  # waiting for more text, holding no row
    # Word timestamps: each chunk's units still to speak (None: off), the current chunk's
    # text positions, its latest step's unit scores, and the audio samples made so far.
    units: collections.deque | None = None
    timing: object = None
    scores: np.ndarray | None = None
    samples: int = 0
