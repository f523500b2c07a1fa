"""Subtitles from word timestamps: SubRip (.srt) and WebVTT (.vtt) files for `say --srt/--vtt`.

Cues are short phrases, not single words: a word per cue flashes faster than anyone reads.
A cue closes at the end of a sentence or clause (punctuation between two words in the
caller's text), before a pause of more than PAUSE_S, or at MAX_WORDS / MAX_CHARS; its text
is the caller's own text from its first word to its last (punctuation inside kept).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Cue", "cues", "srt", "vtt"]

MAX_WORDS = 8
MAX_CHARS = 42  # a common subtitle line length
PAUSE_S = 0.5
_BREAKS = frozenset(".!?;:,\u2026\u3002\uff01\uff1f")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def cues(words, text: str) -> list[Cue]:
    """Phrases of finished WordEvents (`end` set, in order) spoken from `text`."""
    out, group = [], []

    def close():
        if group:
            first, last = group[0], group[-1]
            body = " ".join(text[first.char_start : last.char_end].split())
            out.append(Cue(first.start, max(last.end, first.start), body))
            group.clear()

    for word in words:
        if group:
            prev = group[-1]
            between = text[prev.char_end : word.char_start]
            long = word.char_end - group[0].char_start > MAX_CHARS or len(group) >= MAX_WORDS
            if any(c in _BREAKS for c in between) or word.start - prev.end > PAUSE_S or long:
                close()
        group.append(word)
    close()
    return out


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def srt(cues: list[Cue]) -> str:
    blocks = [
        f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(cues, 1)
    ]
    return "\n".join(blocks)


def vtt(cues: list[Cue]) -> str:
    blocks = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{c.text}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)
