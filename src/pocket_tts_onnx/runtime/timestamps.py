"""Word timestamps from the flow LM's own attention (the rule of pocket-tts-timestamped 1.4.0).

At each flow-LM step, the calibrated heads' post-RoPE query of the new position is scored
against the keys of the chunk's text positions (softmax over the text tokens), spread onto
the chunk's units (words and punctuation, word_units.py) and averaged over the heads.
`WordAligner` then decides per decoded frame (80 ms) from those scores and from whether the
frame is voiced: a voiced frame opens the next word when none is open, and moves on when a
later word gets more attention than the open one; a silent frame closes the open word when a
later unit dominates, or when it is the last word and only appended punctuation follows.
The scheduler scores (`TextTiming.scores`), the decoder thread aligns (decoding.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocket_tts_onnx.word_units import ChunkUnits

__all__ = ["TextTiming", "WordAligner", "WordEvent", "is_voiced"]

# A frame is silent when its RMS is at most this (float32 1e-3, as the fork).
_SILENCE_RMS = float(np.float32(1e-3))
# Below this attention the open word no longer holds against any later word.
_WEAK_ATTENTION = 0.001


@dataclass(frozen=True)
class WordEvent:
    """A word of the caller's text: `text == original[char_start:char_end]`, the `index`-th
    word. `start` (seconds from the stream's start) is when it begins; `end` is None in the
    event sent when the word starts, and set in the one sent when it ends."""

    text: str
    index: int
    char_start: int
    char_end: int
    start: float
    end: float | None = None


def is_voiced(audio: np.ndarray) -> bool:
    samples = np.asarray(audio, np.float32).reshape(-1)
    if not samples.size:
        return False
    return float(np.dot(samples, samples)) > _SILENCE_RMS**2 * samples.size


class TextTiming:
    """One chunk's text positions [start, end) in its K/V row and how to score them."""

    def __init__(self, units: ChunkUnits, heads, start: int, end: int):
        self.units, self.heads, self.start, self.end = units, tuple(heads), start, end
        self._layers: dict[int, list[int]] = {}
        for layer, head in self.heads:
            self._layers.setdefault(layer, []).append(head)

    def scores(self, queries: np.ndarray, keys: dict[int, np.ndarray]) -> np.ndarray:
        """Per-unit attention [units] from one row's `queries` [L, H, d] and its K buffers
        per layer `keys[layer]` [H_kv, capacity, d]."""
        total = None
        for layer, heads in self._layers.items():
            k = keys[layer]
            group = queries.shape[1] // k.shape[0]
            q = queries[layer, heads]  # [h, d]
            text = k[[h // group for h in heads], self.start : self.end]  # [h, T, d]
            logits = np.einsum("hd,htd->ht", q, text) / np.float32(q.shape[-1] ** 0.5)
            logits = logits - logits.max(axis=-1, keepdims=True)
            weights = np.exp(logits)
            weights /= weights.sum(axis=-1, keepdims=True)
            part = (weights.astype(np.float32) @ self.units.token_to_unit).sum(axis=0)
            total = part if total is None else total + part
        return total / np.float32(len(self.heads))


class WordAligner:
    """The per-frame start/end decisions for one chunk (decoder thread)."""

    def __init__(self, units: ChunkUnits):
        self.units = units.units
        self.words = units.word_units  # unit index of each word, in order
        self.next = 0  # position in `words` of the next word to open
        self.open: int | None = None
        self.open_start = 0.0

    def _event(self, position: int, start: float, end: float | None = None) -> WordEvent:
        w = self.units[self.words[position]].word
        return WordEvent(w.text, w.index, w.begin, w.end, start, end)

    def _open(self, t: float) -> WordEvent:
        self.open, self.open_start, self.next = self.next, t, self.next + 1
        return self._event(self.open, t)

    def _close(self, t: float) -> WordEvent:
        event = self._event(self.open, self.open_start, t)
        self.open = None
        return event

    def _later_word_leads(self, scores: np.ndarray, current: int) -> bool:
        held = scores[current]
        if scores[self.words[self.next]] > held:
            return True
        if held >= _WEAK_ATTENTION:
            return False
        return any(scores[u] > held for u in self.words[self.next + 1 :])

    def frame(self, scores: np.ndarray, voiced: bool, t: float) -> list[WordEvent]:
        """Events of the frame starting at `t` seconds."""
        if not voiced:
            if self.open is None:
                return []
            current = self.words[self.open]
            later = scores[current + 1 :]
            leads = later.size > 0 and float(later.max()) > float(scores[current])
            last = self.open == len(self.words) - 1
            marks_follow = any(
                u.word is None and not u.synthetic for u in self.units[current + 1 :]
            )
            return [self._close(t)] if leads or (last and not marks_follow) else []
        if self.open is None:
            return [self._open(t)] if self.next < len(self.words) else []
        if self.next >= len(self.words):
            return []
        if self._later_word_leads(scores, self.words[self.open]):
            return [self._close(t), self._open(t)]
        return []

    def finish(self, t: float) -> list[WordEvent]:
        """The chunk's audio ended at `t`: the open word ends there."""
        events = [self._close(t)] if self.open is not None else []
        self.next = len(self.words)
        return events
