"""Text that arrives while it is spoken (an LLM writing token by token): complete sentences
become text chunks at once, with the same rules as whole text.

The boundary detector is ours, not a sentence-splitting package: the model's own chunker
(text.py, upstream's rules) decides what a chunk is, so a detector that only finds where a
sentence can no longer change keeps the feed's chunks equal to `stream(full_text)`'s whenever
the sentences are long enough not to be packed together. A sentence is complete when a
sentence mark (. ! ? ...) and any closing quotes or brackets are followed by white space; a
period right after a digit waits for the next character, since "3. 5" is a decimal to the
chunker. Text without a sentence end is cut at a clause mark or a space once it exceeds the
model's chunk length, so a run-on sentence still starts speaking.
"""

from __future__ import annotations

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.text import TextChunk, TextRules, iter_chunk_tokens

__all__ = ["SentenceFeed"]

_MARKS = ".!?\u2026"
_CLOSERS = "\"'\u201d\u2019)]\u00bb"
_CLAUSE = ",;:"


def _complete_end(text: str) -> int:
    """Length of the longest prefix of `text` made of complete sentences (0: none)."""
    end = 0
    i, n = 0, len(text)
    while i < n:
        if text[i] not in _MARKS:
            i += 1
            continue
        j = i + 1
        while j < n and (text[j] in _MARKS or text[j] in _CLOSERS):
            j += 1
        if j < n and text[j].isspace():
            k = j
            while k < n and text[k].isspace():
                k += 1
            decimal = text[j - 1] == "." and j >= 2 and text[j - 2].isdigit()
            if not decimal or (k < n and not text[k].isdigit()):
                end = j
        i = j
    return end


class SentenceFeed:
    """Turns written pieces into TextChunks; `write` and `end` return the chunks that became
    complete (possibly none)."""

    def __init__(self, tokenizer, rules: TextRules):
        self._tokenizer, self._rules = tokenizer, rules
        self._buffer = ""
        self._consumed = 0  # characters written before the buffer
        # The text the last write()/end() made its chunks from, and where it starts in
        # everything written (word timestamps map words back to the caller's text).
        self.part: tuple[str, int] = ("", 0)
        self.ended = False
        self.spoken = False  # some chunk was produced

    def write(self, text: str) -> list[TextChunk]:
        if not isinstance(text, str):
            raise InvalidInputError(
                f"text pieces must be strings, got {type(text).__name__}", param="text"
            )
        if self.ended:
            raise InvalidInputError("write() after end(): open a new stream", param="text")
        self._buffer += text
        cut = _complete_end(self._buffer)
        if not cut:
            cut = self._overlong_cut()
        if not cut:
            return []
        head, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return self._chunks(head)

    def end(self) -> list[TextChunk]:
        if self.ended:
            return []
        self.ended = True
        head, self._buffer = self._buffer, ""
        chunks = self._chunks(head)
        if not self.spoken:
            raise InvalidInputError("text is empty: nothing was written to speak", param="text")
        return chunks

    def _overlong_cut(self) -> int:
        """Where to cut a buffer with no sentence end that is longer than one chunk: after
        its last clause mark, else its last space (0: keep waiting)."""
        buffer = self._buffer
        limit = self._rules.max_tokens_per_chunk
        if not any(ch.isspace() for ch in buffer.strip()):
            return 0  # one word so far: nothing to cut at (and no re-tokenizing per piece)
        if len(buffer) < limit or len(self._tokenizer.encode(buffer.strip())) <= limit:
            return 0
        spaces = [i for i, ch in enumerate(buffer) if ch.isspace() and i > 0]
        clauses = [i for i in spaces if buffer[i - 1] in _CLAUSE]
        cuts = clauses or spaces
        return cuts[-1] if cuts else 0

    def _chunks(self, text: str) -> list[TextChunk]:
        self.part = (text, self._consumed)
        self._consumed += len(text)
        if not text.strip():
            return []
        try:
            chunks = list(iter_chunk_tokens(text, self._tokenizer, self._rules))
        except InvalidInputError:  # only characters the tokenizer drops: nothing to say
            return []
        self.spoken = self.spoken or bool(chunks)
        return chunks
