"""From a user's text to the token ids of each chunk the model speaks, without torch.

The model was trained on single sentences, so upstream pocket-tts normalises the prompt,
splits long inputs on sentence boundaries (falling back to commas/semicolons/colons for
overlong sentences), packs the pieces into chunks of at most `max_tokens_per_chunk` tokens,
normalises each chunk again and tokenizes it. The ids must match upstream exactly (the
exported graphs embed them with the same table), so this module reproduces that behaviour,
quirks included; each quirk is pointed out where it happens. The cutting into chunks is in
text_split.py; this module holds the rules, the normalisation and the entry points.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pocket_tts_onnx.errors import BundleError, InvalidInputError
from pocket_tts_onnx.text_split import MAX_CHUNK_TOKENS, split_token_ids

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
    return split_token_ids(ids, tokenizer, rules.max_tokens_per_chunk)


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
