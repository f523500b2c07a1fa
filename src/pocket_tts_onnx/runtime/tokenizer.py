"""Text tokenizers for the runtime, without torch.

Upstream wraps the same two backends (a SentencePiece `.model` or a HuggingFace
`tokenizer.json`) in classes that return torch tensors. The runtime only needs plain id
lists, and must produce exactly the ids upstream feeds to the text embedding table, so these
wrappers call the backends the same way (default encode/decode options, nothing added).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from pocket_tts_onnx.errors import BundleError, InvalidInputError

__all__ = [
    "TOKENIZER_KINDS",
    "HFJsonTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "check_text",
    "load_tokenizer",
]

# Accepted values of `kind`; "json" is what upstream's `build_tokenizer` also accepts.
TOKENIZER_KINDS = ("sentencepiece", "tokenizers", "json")


def check_text(text: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from bytes decoded with
    `surrogateescape`): the backends fail on it with an opaque RuntimeError."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"text contains a lone surrogate {text[exc.start]!r} at position {exc.start}: it is "
            "not valid Unicode. Decode the source as UTF-8 (errors='replace' drops bad bytes)."
        ) from None
    return text


@runtime_checkable
class Tokenizer(Protocol):
    """What the text pipeline needs from a tokenizer: text <-> ids, and the table size."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece `.model`, encoded to ids with the backend's default options."""

    kind = "sentencepiece"

    def __init__(self, processor, path: Path | None = None):
        self._sp = processor
        self.path = path

    @property
    def vocab_size(self) -> int:
        return int(self._sp.vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(check_text(text), out_type=int))

    def piece_spans(self, text: str) -> tuple[list[tuple[int, int]], bool]:
        """Each token's [begin, end) in `text`, in UTF-8 bytes (True: byte offsets)."""
        encoded = self._sp.encode(check_text(text), return_type="offset_mapping", return_bytes=True)
        pieces = [p.decode("utf-8", "replace") for p in encoded["pieces"]]
        return _whole_scalars([tuple(o) for o in encoded["offsets"]], pieces), True

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"


class HFJsonTokenizer:
    """A HuggingFace `tokenizer.json`; default `encode`/`decode` options, like upstream."""

    kind = "tokenizers"

    def __init__(self, tokenizer, path: Path | None = None):
        self._tok = tokenizer
        self.path = path

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(check_text(text)).ids)

    def piece_spans(self, text: str) -> tuple[list[tuple[int, int]], bool]:
        """Each token's [begin, end) in `text`, in characters (False: not bytes)."""
        encoded = self._tok.encode(check_text(text))
        return _whole_scalars([tuple(o) for o in encoded.offsets], list(encoded.tokens)), False

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"HFJsonTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(
    path: str | Path,
    kind: str,
    expected_sha256: str | None = None,
    expected_vocab_size: int | None = None,
) -> Tokenizer:
    """Load the tokenizer file of a bundle.

    `kind` is "sentencepiece" (a `.model` file) or "tokenizers" (a HuggingFace
    `tokenizer.json`; "json" is accepted as an alias). Any problem with the file raises
    `BundleError` naming it, since a bad tokenizer means a broken or incomplete bundle.
    With the manifest's `expected_sha256` / `expected_vocab_size` (a bundle's tokenizer
    entry), a swapped tokenizer is refused: it would feed the model wrong ids, or ids past
    the end of its embedding table.
    """
    path = Path(path)
    if kind not in TOKENIZER_KINDS:
        raise BundleError(
            f"unknown tokenizer kind {kind!r} for {path}: expected 'sentencepiece' or 'tokenizers'"
        )
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise BundleError(f"tokenizer file {path} {what}; the bundle is incomplete")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"tokenizer file {path} cannot be read: {exc}") from exc
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise BundleError(
            f"tokenizer file {path} does not match the sha256 in manifest.json: it was replaced "
            "or corrupted; re-export or re-download the bundle"
        )
    tokenizer: Tokenizer
    if kind == "sentencepiece":
        tokenizer = _load_sentencepiece(path, data)
    else:
        tokenizer = _load_hf_json(path, data)
    if expected_vocab_size is not None and tokenizer.vocab_size != expected_vocab_size:
        raise BundleError(
            f"tokenizer file {path} has {tokenizer.vocab_size} pieces but the model's text "
            f"table expects {expected_vocab_size}: it belongs to another model; re-export "
            "the bundle"
        )
    return tokenizer


def _load_sentencepiece(path: Path, data: bytes) -> SentencePieceTokenizer:
    # Imported here so that importing this module (e.g. for the protocol) stays cheap.
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        # Loading from bytes avoids the C++ file API, which mishandles some non-ASCII paths.
        processor.LoadFromSerializedProto(data)
    except Exception as exc:  # the backend raises RuntimeError/OSError/... depending on version
        raise BundleError(
            f"tokenizer file {path} is not a valid SentencePiece model: {exc}"
        ) from exc
    if processor.vocab_size() <= 0:
        raise BundleError(f"tokenizer file {path} is a SentencePiece model with no pieces")
    return SentencePieceTokenizer(processor, path)


def _load_hf_json(path: Path, data: bytes) -> HFJsonTokenizer:
    import tokenizers

    try:
        tokenizer = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on parse errors
        raise BundleError(
            f"tokenizer file {path} is not a valid HuggingFace tokenizer.json: {exc}"
        ) from exc
    return HFJsonTokenizer(tokenizer, path)


def _byte_value(piece: str) -> int | None:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _utf8_length(first: int) -> int:
    for size, low, high in ((2, 0xC2, 0xDF), (3, 0xE0, 0xEF), (4, 0xF0, 0xF4)):
        if low <= first <= high:
            return size
    return 1


def _whole_scalars(spans: list[tuple[int, int]], pieces: list[str]) -> list[tuple[int, int]]:
    """Byte-fallback pieces (<0xE2> ...) of one character all get that character's span."""
    spans = list(spans)
    i = 0
    while i < len(pieces):
        first = _byte_value(pieces[i])
        if first is None:
            i += 1
            continue
        size = _utf8_length(first)
        values = [_byte_value(p) for p in pieces[i : i + size]]
        whole = len(values) == size and all(v is not None for v in values)
        whole = whole and all(0x80 <= v <= 0xBF for v in values[1:])
        end = i + size if whole else i + 1
        begin, stop = min(b for b, _ in spans[i:end]), max(e for _, e in spans[i:end])
        if stop > begin:
            spans[i:end] = [(begin, stop)] * (end - i)
        i = end
    return spans
