"""The two tokenizer files sherpa-onnx reads for Pocket TTS, written from the bundle's tokenizer.

sherpa-onnx (`OfflineTtsPocketModelConfig(..., vocab_json, token_scores_json)`) does not parse
SentencePiece or HuggingFace files; it runs its own unigram Viterbi over two JSON objects:
`vocab.json` (piece -> id, every id of the table exactly once, since it indexes an array by
id) and `token_scores.json` (piece -> log-probability score). Both come from the same table
our runtime uses, so only unigram tokenizers are convertible: a BPE model's scores are merge
ranks, which a Viterbi search would misread.
"""

from __future__ import annotations

import json
from pathlib import Path

from pocket_tts_onnx.errors import ExportError
from pocket_tts_onnx.manifest import SherpaOnnxFiles, file_sha256

# OfflineTtsPocketModelConfig argument -> file written beside the graphs.
SHERPA_FILES = {"vocab_json": "vocab.json", "token_scores_json": "token_scores.json"}
# OfflineTtsPocketModelConfig argument -> the graph it loads.
SHERPA_GRAPHS = {
    "lm_flow": "flow_lm_flow",
    "lm_main": "flow_lm_main",
    "encoder": "mimi_encoder",
    "decoder": "mimi_decoder",
    "text_conditioner": "text_conditioner",
}


def unigram_pieces(path: Path, kind: str) -> list[tuple[str, float]] | None:
    """(piece, score) in id order for a unigram tokenizer; None for any other model type.

    `kind` is the manifest's tokenizer kind: "sentencepiece" (a `.model`) or "tokenizers"
    (a HuggingFace `tokenizer.json`, e.g. one converted from a SentencePiece unigram model).
    """
    path = Path(path)
    try:
        if kind == "sentencepiece":
            return _sentencepiece_pieces(path.read_bytes())
        if kind in ("tokenizers", "json"):
            return _tokenizer_json_pieces(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"cannot read the tokenizer {path} for sherpa-onnx's files: {e}") from e
    raise ExportError(f"unknown tokenizer kind {kind!r} for {path}")


def _sentencepiece_pieces(data: bytes) -> list[tuple[str, float]] | None:
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"not a SentencePiece model ({e})") from e
    if proto.trainer_spec.model_type != model_pb2.TrainerSpec.UNIGRAM:
        return None
    sp = SentencePieceProcessor()
    sp.LoadFromSerializedProto(data)
    return [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]


def _tokenizer_json_pieces(data: dict) -> list[tuple[str, float]] | None:
    model = data["model"]
    if model.get("type") != "Unigram":
        return None
    pieces = [(str(piece), float(score)) for piece, score in model["vocab"]]
    if len({p for p, _ in pieces}) != len(pieces):
        raise ValueError("the Unigram vocab repeats a piece; vocab.json needs unique pieces")
    return pieces


def write_sherpa_tokenizer(tokenizer: Path, kind: str, directory: Path) -> SherpaOnnxFiles | None:
    """Write vocab.json and token_scores.json into `directory` and return their manifest
    entry, or None (nothing written) when the tokenizer is not a unigram model."""
    pieces = unigram_pieces(tokenizer, kind)
    if pieces is None:
        return None
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    scores = {piece: score for piece, score in pieces}
    directory = Path(directory)
    for role, content in (("vocab_json", vocab), ("token_scores_json", scores)):
        (directory / SHERPA_FILES[role]).write_text(
            json.dumps(content, ensure_ascii=False, indent=0) + "\n", encoding="utf-8"
        )
    return SherpaOnnxFiles(
        files=dict(SHERPA_FILES),
        sha256={f: file_sha256(directory / f) for f in SHERPA_FILES.values()},
    )
