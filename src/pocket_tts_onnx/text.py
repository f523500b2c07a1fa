"""From a user's text to the token ids of each chunk the model speaks, without torch.

The model was trained on single sentences, so upstream pocket-tts normalises the prompt,
splits long inputs on sentence boundaries (falling back to commas/semicolons/colons for
overlong sentences), packs the pieces into chunks of at most `max_tokens_per_chunk` tokens,
normalises each chunk again and tokenizes it. The ids must match upstream exactly (the
exported graphs embed them with the same table), so this module reproduces that behaviour,
quirks included; each quirk is pointed out where it happens.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pocket_tts_onnx.errors import BundleError, InvalidInputError

if TYPE_CHECKING:
    from pocket_tts_onnx.runtime.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_MAX_TOKENS_PER_CHUNK",
    "MAX_CHUNK_TOKENS",
    "TextChunk",
    "TextRules",
    "estimate_max_frames",
    "iter_chunk_tokens",
    "iter_chunks",
    "prepare_chunk",
    "split_into_chunks",
    "text_to_chunk_tokens",
]

logger = logging.getLogger(__name__)

# Upstream's MAX_TOKEN_PER_CHUNK (pocket_tts.default_parameters).
DEFAULT_MAX_TOKENS_PER_CHUNK = 50

# Upstream's TTSModel._TOKENS_PER_SECOND_ESTIMATE and _GEN_SECONDS_PADDING.
DEFAULT_TOKENS_PER_SECOND = 3.0
DEFAULT_PADDING_SECONDS = 2.0

# Ending a prompt with one of these counts as a finished sentence.
_SENTENCE_END = ".!?\u2026"
# A trailing one of these is turned into a period rather than kept before it.
_SOFT_END = ",;:-\u2013\u2014"
# Closing quotes/brackets that may follow the sentence end.
_TRAILING_CLOSERS = "\"'\u201d\u2019)]\u00bb"
# After characters are deleted ('"Hi?", she said' -> 'Hi?, she said') a sentence mark can
# end up right before a comma/semicolon/colon; only the sentence mark is kept.
_MARK_THEN_SOFT = re.compile(r"([.!?\u2026])\s*[,;:]")

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

# Upstream pads prompts of fewer than 5 words with 8 spaces when the config asks for it.
_SHORT_PROMPT_WORDS = 5
_SHORT_PROMPT_PADDING = " " * 8


@dataclass(frozen=True)
class TextRules:
    """The text normalisation settings of a model (upstream `Config` fields), as a bundle
    stores them. Defaults are upstream's defaults."""

    pad_with_spaces_for_short_inputs: bool = False
    remove_semicolons: bool = False
    append_terminal_punctuation: bool = True
    capitalize_first_letter: bool = True
    # Excluded from the hash (a dict is unhashable); equality still compares it.
    replace_characters: dict[str, str] = field(default_factory=dict, hash=False)
    max_tokens_per_chunk: int = DEFAULT_MAX_TOKENS_PER_CHUNK

    def __post_init__(self) -> None:
        for name in (
            "pad_with_spaces_for_short_inputs",
            "remove_semicolons",
            "append_terminal_punctuation",
            "capitalize_first_letter",
        ):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(
                    f"TextRules.{name} must be a bool, got {getattr(self, name)!r}"
                )
        mapping = self.replace_characters
        if not isinstance(mapping, dict):
            raise InvalidInputError(
                f"TextRules.replace_characters must be a dict, got {type(mapping).__name__}"
            )
        for key, value in mapping.items():
            # str.maketrans (used upstream) only accepts single characters as keys.
            if not (isinstance(key, str) and len(key) == 1 and isinstance(value, str)):
                raise InvalidInputError(
                    "TextRules.replace_characters must map single characters to strings, "
                    f"got {key!r}: {value!r}"
                )
        limit = self.max_tokens_per_chunk
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_CHUNK_TOKENS
        ):
            raise InvalidInputError(
                f"TextRules.max_tokens_per_chunk must be an int from 1 to {MAX_CHUNK_TOKENS}, "
                f"got {limit!r}"
            )
        # Private copy, so mutating the caller's dict cannot change a frozen object.
        object.__setattr__(self, "replace_characters", dict(mapping))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, the inverse of `from_dict`."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["replace_characters"] = dict(self.replace_characters)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextRules:
        """Read rules from a bundle manifest; missing keys take upstream's defaults.

        Unknown keys are rejected rather than ignored: they mean the bundle was written by a
        newer exporter whose text handling this runtime would silently get wrong.
        """
        if not isinstance(data, dict):
            raise BundleError(f"text rules must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(
                f"unknown text rule(s) {unknown} in the bundle; known rules: {sorted(known)}. "
                "The bundle may come from a newer pocket-tts-onnx."
            )
        try:
            return cls(**data)
        except InvalidInputError as exc:
            raise BundleError(f"invalid text rules in the bundle: {exc}") from exc


@dataclass(frozen=True)
class TextChunk:
    """One generation unit: the prompt text upstream tokenizes, its ids, and the
    frames-after-EOS guess from `prepare_chunk` (without upstream's `+2`)."""

    text: str
    token_ids: list[int]
    frames_after_eos_guess: int


def prepare_chunk(text: str, rules: TextRules) -> tuple[str, int]:
    """Normalise a prompt the way upstream's `prepare_text_prompt` does.

    Returns the prepared text and upstream's frames-after-EOS guess: 3 for prompts of at
    most 4 words, else 1. This is the value *before* the `+2` that upstream's
    `generate_audio_stream` adds, so the frames generated after EOS (when the caller gives
    none and the model recommends none) are `guess + 2`.

    Raises `InvalidInputError` when nothing is left to say (empty or whitespace-only text,
    or text that only held characters `replace_characters` deletes).
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
    text = text.strip()
    if rules.replace_characters:
        text = text.translate(str.maketrans(rules.replace_characters))
        # Also collapses all whitespace runs, newlines included; only done when there are
        # replacements (quirk kept: without them, runs of spaces survive, see below).
        text = " ".join(text.split())
        text = _MARK_THEN_SOFT.sub(r"\1", text)
    if not text:
        raise InvalidInputError(
            "text is empty or only whitespace (after character replacements); "
            "there is nothing to synthesize"
        )
    # A single non-overlapping pass, as upstream: four spaces become two, not one.
    text = text.replace("\n", " ").replace("\r", " ").replace("  ", " ")
    if rules.remove_semicolons:
        text = text.replace(";", ",")

    # Counted before capitalisation/punctuation, like upstream.
    guess = 3 if len(text.split()) <= 4 else 1

    if rules.capitalize_first_letter and not text[0].isupper():
        # May change the length ("ß" -> "SS"), as upstream.
        text = text[0].upper() + text[1:]
    if rules.append_terminal_punctuation:
        text = _end_with_sentence_mark(text)
    if rules.pad_with_spaces_for_short_inputs and len(text.split()) < _SHORT_PROMPT_WORDS:
        # The model does badly on very few tokens; leading spaces add some.
        text = _SHORT_PROMPT_PADDING + text
    return text, guess


def _end_with_sentence_mark(text: str) -> str:
    """Make the prompt end like a training sentence, as upstream does.

    Text already ending in . ! ? or an ellipsis (possibly before closing quotes/brackets) is
    kept. A trailing run of commas, semicolons, colons or dashes becomes a period placed
    before the closers; otherwise a period is appended after everything (the splitter only
    cuts on a bare period token, so a period inside the quotes would leave the quote as its
    own chunk).
    """
    body = text.rstrip(_TRAILING_CLOSERS + " ")
    if not body or body[-1] in _SENTENCE_END:
        return text
    if body[-1] in _SOFT_END:
        closers = text[len(body) :].strip()
        return body.rstrip(_SOFT_END + " ") + "." + closers
    return text + "."


def split_into_chunks(text: str, tokenizer: Tokenizer, rules: TextRules) -> list[str]:
    """Split text into the chunks upstream generates one at a time.

    Same result as upstream's `split_into_best_sentences(tokenizer, text,
    rules.max_tokens_per_chunk, ...)`: the whole prompt is prepared and tokenized, cut after
    each run of sentence-mark tokens (except a period between two digits, e.g. "3.5"),
    sentences longer than the limit are re-tokenized and cut after clause marks, then the
    pieces are packed greedily into chunks of at most `max_tokens_per_chunk` tokens (a
    single piece may exceed it). One departure: a piece of more than `MAX_CHUNK_TOKENS`
    tokens is first cut at word boundaries. The chunks are decoded text, not yet prepared.
    """
    return list(iter_chunks(text, tokenizer, rules))


def iter_chunks(text: str, tokenizer: Tokenizer, rules: TextRules) -> Iterator[str]:
    """`split_into_chunks` as an iterator: linear in the text, and each chunk is ready after
    work proportional to it, so the first audio of a book does not wait for the last page.

    The prompt is prepared and tokenized whole here (one linear pass each, and bad input
    raises now, in the caller's thread); cutting, decoding and packing happen as chunks are
    taken.
    """
    prepared, _ = prepare_chunk(text, rules)
    ids = tokenizer.encode(prepared.strip())
    sentence_marks = set(tokenizer.encode(_SENTENCE_MARKS_PROBE)[1:])
    clause_marks = set(tokenizer.encode(_CLAUSE_MARKS_PROBE)[1:])
    pieces = _iter_pieces(ids, sentence_marks, clause_marks, tokenizer, rules.max_tokens_per_chunk)
    return _iter_packed(pieces, tokenizer, rules.max_tokens_per_chunk)


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


def text_to_chunk_tokens(text: str, tokenizer: Tokenizer, rules: TextRules) -> list[TextChunk]:
    """What upstream's `generate_audio_stream` feeds the model: each chunk of
    `split_into_chunks`, prepared again with `prepare_chunk`, then tokenized.

    Raises `InvalidInputError` for empty/whitespace-only text, and also where upstream would
    go on with nothing to condition on: no chunk at all, or a chunk without tokens (text
    made only of characters the tokenizer drops, e.g. control characters).
    """
    return list(iter_chunk_tokens(text, tokenizer, rules))


def iter_chunk_tokens(text: str, tokenizer: Tokenizer, rules: TextRules) -> Iterator[TextChunk]:
    """`text_to_chunk_tokens` as an iterator for streaming: the first chunk is computed
    before this returns (so empty or unspeakable text raises here, in the caller's thread),
    the others as they are taken. A later chunk without tokens raises when it is reached."""
    chunks = iter_chunks(text, tokenizer, rules)
    first = next(chunks, None)
    if first is None:
        raise InvalidInputError(
            "text has no tokens the model knows (only characters the tokenizer drops); "
            "nothing to synthesize"
        )
    head = _chunk_tokens(first, tokenizer, rules)
    return itertools.chain([head], (_chunk_tokens(c, tokenizer, rules) for c in chunks))


def _chunk_tokens(chunk: str, tokenizer: Tokenizer, rules: TextRules) -> TextChunk:
    prepared, guess = prepare_chunk(chunk, rules)
    ids = tokenizer.encode(prepared)
    if not ids:
        raise InvalidInputError(
            f"text chunk {prepared!r} has no tokens the model knows; nothing to synthesize"
        )
    return TextChunk(text=prepared, token_ids=ids, frames_after_eos_guess=guess)


def estimate_max_frames(
    token_count: int,
    frame_rate: float,
    tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
    padding_seconds: float = DEFAULT_PADDING_SECONDS,
) -> int:
    """Upper bound on the frames generated for a chunk, as upstream's `_estimate_max_gen_len`:
    generation stops there even if the model never signals EOS."""
    seconds = token_count / tokens_per_second + padding_seconds
    return math.ceil(seconds * frame_rate)
