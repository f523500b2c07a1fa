"""Text written while it is spoken: SentenceFeed's boundaries, and `open_stream` giving the
audio of `stream(full_text)` whenever the sentence boundaries agree."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from pocket_tts_onnx import InvalidInputError, PocketTTSOnnx
from pocket_tts_onnx.text_feed import _complete_end

# Two sentences, each long enough that the whole-text chunker keeps them apart.
LONG = (
    "The farmer watches the quick brown fox from the porch until the sun sets. "
    "Children run across the field with kites that rise and dip in the wind."
)


@pytest.mark.parametrize(
    "text, end",
    [
        ("Hello world. How", 12),
        ("Hello world.", 0),  # the next character decides nothing yet, but a space does
        ("Hello world. ", 12),
        ('He said "stop!" Then', 15),
        ("It costs 3. ", 0),  # "3. 5" is a decimal to the chunker: wait
        ("It costs 3. Five", 11),
        ("It costs 3. 5 dollars", 0),
        ("Wait... what? Yes", 13),
        ("no end at all", 0),
    ],
)
def test_sentence_boundaries(text, end):
    assert _complete_end(text) == end


@pytest.fixture(scope="module")
def tts(lsd_bundle):
    return PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_feed_equals_whole_text_when_sentences_agree(tts):
    params = {"seed": 5, "temperature": 0.7, "max_frames": 30}
    chunks = tts.text_chunks(LONG)
    assert len(chunks) == 2  # the boundaries agree: one chunk per sentence
    whole = np.concatenate([c.samples for c in tts.stream(LONG, **params)])
    stream = tts.open_stream(**params)
    for piece in _pieces(LONG, 7):  # splits words and sentences anywhere
        stream.write(piece)
    stream.end()
    got = list(stream)
    markers = [c for c in got if c.end_of_text]
    assert [c.text_index for c in markers] == [0, 1]
    audio = np.concatenate([c.samples for c in got])
    assert audio.shape == whole.shape and np.max(np.abs(audio - whole)) <= 1e-5


def test_first_sentence_speaks_before_the_text_ends(tts):
    stream = tts.open_stream(seed=1, max_frames=10)
    first_sentence, rest = LONG.split(". ", 1)
    for piece in _pieces(first_sentence + ". ", 9):
        stream.write(piece)
    got = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got and got[0].text_index == 0  # audio while end() has not been called
    stream.write(rest)
    stream.end()
    reader.join(timeout=30)
    assert [c.text_index for c in got if c.end_of_text] == [0, 1]


def test_async_reading_and_bad_use(tts):
    async def read_all(stream):
        return [chunk async for chunk in stream]

    stream = tts.open_stream(seed=2, max_frames=5)
    stream.write("Short one. ")
    stream.write("And the end")
    stream.end()
    chunks = asyncio.run(read_all(stream))
    assert [c.text_index for c in chunks if c.end_of_text] == [0, 1]
    with pytest.raises(InvalidInputError, match="after end") as info:
        stream.write("more")
    assert info.value.param == "text"
    empty = tts.open_stream()
    empty.write("   ")
    with pytest.raises(InvalidInputError, match="empty"):
        empty.end()
    with pytest.raises(InvalidInputError, match="empty"):
        list(empty)
    with pytest.raises(InvalidInputError, match="strings"):
        tts.open_stream().write(b"bytes")
    abandoned = tts.open_stream()
    abandoned.write("Nobody reads this. ")
    abandoned.cancel()
    with pytest.raises(InvalidInputError, match="cancelled"):
        abandoned.write("More text nobody would speak. ")
    list(abandoned)  # ends at once (no hang), with at most the audio made before the cancel


def test_a_long_word_written_piece_by_piece_is_not_retokenized_each_time(tts, monkeypatch):
    from pocket_tts_onnx.text_feed import SentenceFeed

    calls = []
    real = tts.tokenizer.encode
    monkeypatch.setattr(tts.tokenizer, "encode", lambda text: calls.append(len(text)) or real(text))
    feed = SentenceFeed(tts.tokenizer, tts.manifest.text)
    for _ in range(2000):
        assert feed.write("x") == []
    assert calls == []  # nothing to cut at yet: no work per piece
