"""Cutting a prepared prompt's token ids into the chunks upstream generates one at a time.

Upstream's `split_into_best_sentences`, reproduced token for token: cut after each run of
sentence-mark tokens (not inside a decimal number), cut overlong sentences after clause
marks, then pack the pieces greedily into chunks of at most the model's token limit. The
normalisation around it (`prepare_chunk`) and the entry points are in text.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pocket_tts_onnx.runtime.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# Strings whose tokens, minus the first, are the split points. Upstream drops the first id
# because a SentencePiece-style tokenizer starts the encoding with the word-boundary piece;
# it is dropped even when it is merged with the first mark, which then is no split point.
_SENTENCE_MARKS_PROBE = ".!...?"
_CLAUSE_MARKS_PROBE = ",;:"

# A piece (sentence, or clause of an overlong sentence) of more tokens than this is cut at
# word boundaries into runs of at most `max_tokens_per_chunk` tokens. Upstream keeps such a
# piece whole (text without punctuation has nowhere else to split) and feeds the model a
# chunk far beyond the single sentences it was trained on; below this size our chunks stay
# exactly upstream's. The batch scheduler refuses longer chunks, which now only a single
# word this long can produce.
MAX_CHUNK_TOKENS = 1024


def split_token_ids(ids: list[int], tokenizer: Tokenizer, limit: int) -> Iterator[str]:
    """The chunks (decoded text, not yet prepared) of a prepared prompt's token ids, each of
    at most `limit` tokens where upstream's packing allows it, made as they are taken."""
    sentence_marks = set(tokenizer.encode(_SENTENCE_MARKS_PROBE)[1:])
    clause_marks = set(tokenizer.encode(_CLAUSE_MARKS_PROBE)[1:])
    pieces = _iter_pieces(ids, sentence_marks, clause_marks, tokenizer, limit)
    return _iter_packed(pieces, tokenizer, limit)


def _iter_pieces(
    ids: list[int],
    sentence_marks: set[int],
    clause_marks: set[int],
    tokenizer: Tokenizer,
    limit: int,
) -> Iterator[tuple[int, str]]:
    """(token count, text) of each sentence, overlong ones cut after clause marks."""
    for start, end in _iter_spans(ids, sentence_marks, tokenizer, keep_decimals=True):
        count, sentence = end - start, tokenizer.decode(ids[start:end])
        if count > limit:
            # Re-tokenized from the decoded text, so the counts may differ from the
            # sentence's own tokens (upstream does the same).
            sub_ids = tokenizer.encode(sentence.strip())
            clauses = [
                (b - a, tokenizer.decode(sub_ids[a:b]))
                for a, b in _iter_spans(sub_ids, clause_marks)
            ]
            if len(clauses) > 1:
                for clause in clauses:
                    yield from _cut_at_words(*clause, tokenizer, limit)
                continue
        yield from _cut_at_words(count, sentence, tokenizer, limit)


def _cut_at_words(
    count: int, piece: str, tokenizer: Tokenizer, limit: int
) -> Iterator[tuple[int, str]]:
    """The piece itself, or, beyond MAX_CHUNK_TOKENS, runs of whole words of at most `limit`
    tokens (each word counted on its own; a single longer word stays one run)."""
    if count <= MAX_CHUNK_TOKENS:
        yield count, piece
        return
    run: list[str] = []
    run_count = 0
    for word in piece.split():
        n = len(tokenizer.encode(word))
        if run and run_count + n > limit:
            yield run_count, " ".join(run)
            run, run_count = [], 0
        run.append(word)
        run_count += n
    if run:
        yield run_count, " ".join(run)


def _iter_packed(
    pieces: Iterator[tuple[int, str]], tokenizer: Tokenizer, limit: int
) -> Iterator[str]:
    """Greedy packing of pieces into chunks of at most `limit` tokens, as upstream."""
    current: list[str] = []  # joined with " " when the chunk is complete
    current_count = 0
    for count, piece in pieces:
        if not current or current == [""]:
            # Quirk kept: the test is on the text, so a piece that decoded to "" is
            # replaced (token count included) by the next one.
            current, current_count = [piece], count
        elif current_count + count > limit:
            yield _checked_chunk(" ".join(current).strip(), tokenizer, limit)
            current, current_count = [piece], count
        else:
            current.append(piece)
            current_count += count
    if current and current != [""]:
        yield _checked_chunk(" ".join(current).strip(), tokenizer, limit)


def _checked_chunk(chunk: str, tokenizer: Tokenizer, limit: int) -> str:
    n = len(tokenizer.encode(chunk.strip()))
    if n > limit:
        logger.warning(
            "chunk has %d tokens (limit %d), the model may skip words: %.50r", n, limit, chunk
        )
    return chunk


def _iter_spans(
    ids: list[int],
    marks: set[int],
    tokenizer: Tokenizer | None = None,
    keep_decimals: bool = False,
) -> Iterator[tuple[int, int]]:
    """(start, end) token spans of the pieces: a piece ends after a run of marks, unless the
    next token continues a decimal number. Spans cover `ids` exactly (one empty span if it
    is empty, like upstream)."""
    start = 0
    after_mark = False
    for pos, token in enumerate(ids):
        if token in marks:
            after_mark = True
            continue
        if after_mark and not (
            keep_decimals and tokenizer is not None and _continues_decimal(ids, pos, tokenizer)
        ):
            yield start, pos
            start = pos
        after_mark = False
    yield start, len(ids)


def _continues_decimal(ids: list[int], pos: int, tokenizer: Tokenizer) -> bool:
    """True when the text before `pos` ends in digit + "." and the text from `pos` starts
    with a digit. Both sides are decoded separately, as upstream does; since decoding drops
    a leading word boundary, "3. 5" also counts as a decimal and is not cut.

    Upstream decodes the whole prefix and the whole suffix at every boundary (quadratic in
    the text); only their last two and first character matter, so a few tokens around `pos`
    are decoded instead, widened until they give enough characters that the edges of the
    window (a stripped leading space, a split multi-byte character) cannot reach them.
    """
    before = _decode_window(ids, pos, tokenizer, backwards=True)
    if not (len(before) >= 2 and before[-1] == "." and before[-2].isdigit()):
        return False
    after = _decode_window(ids, pos, tokenizer, backwards=False)
    return bool(after) and after[0].isdigit()


# Characters a decoded window must hold so that its edge effects stay away from the
# characters read (a leading space dropped, up to 3 orphaned UTF-8 bytes, cleanup rules).
_WINDOW_CHARS = 8


def _decode_window(ids: list[int], pos: int, tokenizer: Tokenizer, backwards: bool) -> str:
    """decode(ids[:pos]) (backwards) or decode(ids[pos:]), exact at the end next to `pos`."""
    width = _WINDOW_CHARS
    while True:
        if backwards:
            lo, hi = max(0, pos - width), pos
            whole = lo == 0
        else:
            lo, hi = pos, min(len(ids), pos + width)
            whole = hi == len(ids)
        text = tokenizer.decode(ids[lo:hi])
        if whole or len(text) >= _WINDOW_CHARS:
            return text
        width *= 2
