"""Words of the caller's text, located in the prepared chunks the model speaks, and the
share of each chunk token that belongs to each word or punctuation mark ("unit").

The rules are those of pocket-tts-timestamped 1.4.0, so its word timestamps and ours agree:
a word is a run of letters/digits (with combining marks, joined across ' and - when a
letter follows); words of the source and of the chunks are paired by their folded form
(NFKC, casefold), or, when the chunking changed the words, only where a folded form is unique
on both sides and in order. Punctuation runs are units too; one the text rules appended
(a final period) is "synthetic". A token's weight is spread over the units it overlaps, in
bytes for SentencePiece and in characters for tokenizer.json, as each reports offsets.
One departure: the fork tokenizes the NFKC form of a chunk, we keep upstream's tokens (same
audio as upstream); they differ only for text NFKC changes (e.g. "…", full-width forms).
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["ChunkUnits", "FeedWords", "SourceWord", "Unit", "map_chunks", "source_words"]

logger = logging.getLogger(__name__)

_FOLD = str.maketrans({"\u2019": "'", "\u2010": "-", "\u2011": "-"})
_JOINERS = frozenset("-\u2010\u2011'\u2019")


@dataclass(frozen=True)
class SourceWord:
    """A word of the caller's text: `text[begin:end]`, the `index`-th word."""

    text: str
    index: int
    begin: int
    end: int


@dataclass(frozen=True)
class Unit:
    """A word (`word` set) or punctuation run at [begin, end) of a chunk's text."""

    begin: int
    end: int
    word: SourceWord | None
    synthetic: bool = False


@dataclass(frozen=True)
class ChunkUnits:
    units: tuple[Unit, ...]
    token_to_unit: np.ndarray  # [tokens, units], float32, rows sum to 1 or 0

    @property
    def word_units(self) -> list[int]:
        return [i for i, u in enumerate(self.units) if u.word is not None]


def _folded(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().translate(_FOLD)
    return "".join(c for c in text if c.isalnum() or c in "'-")


def _is_mark(c: str) -> bool:
    return unicodedata.category(c).startswith("M")


def _word_spans(text: str) -> list[tuple[int, int]]:
    spans, i, n = [], 0, len(text)
    while i < n:
        if not text[i].isalnum():
            i += 1
            continue
        begin = i
        while True:
            while i < n and (text[i].isalnum() or _is_mark(text[i])):
                i += 1
            if i + 1 < n and text[i] in _JOINERS and text[i + 1].isalnum():
                i += 1
                continue
            break
        if _folded(text[begin:i]):
            spans.append((begin, i))
    return spans


def source_words(text: str) -> list[SourceWord]:
    return [SourceWord(text[b:e], k, b, e) for k, (b, e) in enumerate(_word_spans(text))]


def _pair_words(words: list[SourceWord], chunk_words: list[tuple[int, int, int]], chunks):
    """[(source word, chunk index, span)] and the chunk words left unpaired."""
    keys = [_folded(w.text) for w in words]
    chunk_keys = [_folded(chunks[c][b:e]) for c, b, e in chunk_words]
    if keys == chunk_keys:
        return [(w, *cw) for w, cw in zip(words, chunk_words, strict=True)], []
    counts, chunk_counts = Counter(keys), Counter(chunk_keys)
    where = {k: j for j, k in enumerate(chunk_keys)}
    pairs, last = [], -1
    for i, k in enumerate(keys):
        if counts[k] == 1 and chunk_counts[k] == 1 and where[k] > last:
            pairs.append((i, where[k]))
            last = where[k]
    paired = {j for _, j in pairs}
    if len(pairs) < len(words):
        logger.warning(
            "word timestamps: %d word(s) not found in the spoken text", len(words) - len(pairs)
        )
    left = [cw for j, cw in enumerate(chunk_words) if j not in paired]
    return [(words[i], *chunk_words[j]) for i, j in pairs], left


def _punctuation(text: str, covered: list[bool]) -> list[tuple[int, int]]:
    runs, i = [], 0
    while i < len(text):
        if covered[i] or not unicodedata.category(text[i]).startswith("P"):
            i += 1
            continue
        j = i + 1
        while j < len(text) and not covered[j] and unicodedata.category(text[j]).startswith("P"):
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _units(source: str, words: list[SourceWord], text: str, mapped, ignored) -> tuple[Unit, ...]:
    units, covered = [], [False] * len(text)
    for word, begin, end in mapped:
        units.append(Unit(begin, end, word))
        covered[begin:end] = [True] * (end - begin)
    for begin, end in ignored:
        units.append(Unit(begin, end, None, synthetic=True))
        covered[begin:end] = [True] * (end - begin)
    for begin, end in _punctuation(text, covered):
        synthetic = False
        if mapped and begin >= mapped[-1][2]:
            last = mapped[-1][0]
            stop = words[last.index + 1].begin if last.index + 1 < len(words) else len(source)
            synthetic = not any(
                unicodedata.category(c).startswith("P") for c in source[last.end : stop]
            )
        units.append(Unit(begin, end, None, synthetic))
    units.sort(key=lambda u: (u.begin, u.end))
    return tuple(units)


def _token_to_unit(text: str, units, spans, in_bytes: bool) -> np.ndarray:
    bounds = [(u.begin, u.end) for u in units]
    if in_bytes:
        offsets = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
        bounds = [(int(offsets[b]), int(offsets[e])) for b, e in bounds]
    matrix = np.zeros((len(spans), len(bounds)), np.float32)
    if not spans or not bounds:
        return matrix
    pb, pe = (np.array([s[k] for s in spans])[:, None] for k in (0, 1))
    ub, ue = (np.array([b[k] for b in bounds])[None, :] for k in (0, 1))
    overlap = np.clip(np.minimum(pe, ue) - np.maximum(pb, ub), 0, None).astype(np.float32)
    totals = overlap.sum(axis=1, keepdims=True)
    return np.where(totals > 0, overlap / np.maximum(totals, 1), overlap).astype(np.float32)


def map_chunks(source: str, chunk_texts: list[str], tokenizer) -> list[ChunkUnits]:
    """The units of each chunk (as spoken: the prepared text) with their source words."""
    words = source_words(source)
    chunk_words = [(c, b, e) for c, t in enumerate(chunk_texts) for b, e in _word_spans(t)]
    pairs, left = _pair_words(words, chunk_words, chunk_texts)
    out = []
    for c, text in enumerate(chunk_texts):
        mapped = [(w, b, e) for w, ci, b, e in pairs if ci == c]
        ignored = [(b, e) for ci, b, e in left if ci == c]
        units = _units(source, words, text, mapped, ignored)
        spans, in_bytes = tokenizer.piece_spans(text)
        out.append(ChunkUnits(units, _token_to_unit(text, units, spans, in_bytes)))
    return out


class FeedWords:
    """Word units of text written in pieces (a text stream): each complete part is mapped
    alone (a part ends at white space, so no word spans two), then its words are moved to
    their offsets and indices in everything written so far."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._words = 0  # words in the parts mapped so far

    def map(self, part: str, offset: int, chunk_texts: list[str]) -> list[ChunkUnits]:
        """`part` (at `offset` of the whole text) spoken as `chunk_texts`."""
        out = []
        for chunk in map_chunks(part, chunk_texts, self._tokenizer):
            units = tuple(
                u
                if u.word is None
                else replace(
                    u,
                    word=replace(
                        u.word,
                        index=u.word.index + self._words,
                        begin=u.word.begin + offset,
                        end=u.word.end + offset,
                    ),
                )
                for u in chunk.units
            )
            out.append(ChunkUnits(units, chunk.token_to_unit))
        self._words += len(source_words(part))
        return out
