"""Stand-in tokenizers for random-weight models.

Upstream configs point at tokenizers on a model hub. A random-weight export (tests,
benchmarks, the demo) still needs a tokenizer with the config's exact vocabulary size, so we
train a SentencePiece model on a generated corpus. The manifest records that it is a stand-in.
"""

from __future__ import annotations

import random
from pathlib import Path

_COMMON = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "hello",
    "world",
    "small",
    "fast",
    "speech",
    "voice",
    "model",
    "text",
    "sound",
    "audio",
    "ready",
    "morning",
    "evening",
    "house",
    "music",
    "river",
    "garden",
    "friend",
    "quiet",
    "bright",
    "yesterday",
    "tomorrow",
    "thank",
    "please",
    "sorry",
    "because",
]
_SYLLABLES = [
    "ka",
    "to",
    "ri",
    "me",
    "su",
    "na",
    "lo",
    "pe",
    "vi",
    "da",
    "go",
    "shu",
    "an",
    "el",
    "or",
    "ti",
    "bra",
    "str",
    "ing",
    "ed",
    "qu",
    "ex",
    "ph",
    "th",
    "ch",
    "ou",
    "ai",
    "é",
    "è",
    "ü",
    "ö",
    "ä",
    "ñ",
    "ç",
    "ß",
]
# No "...": a ".." piece makes "..." two equal-score segmentations ("." + ".." or ".." + "."),
# which SentencePiece and tokenizers' Unigram break differently; the stand-in must give the
# same ids in both formats, so "..." stays three "." pieces.
_MARKS = [".", ".", "!", "?", ",", ";", ":", " -", "'s", ")", '"']


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pseudo = [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(6000)
    ]
    lines = []
    for _ in range(n_lines):
        words = [
            rng.choice(_COMMON) if rng.random() < 0.6 else rng.choice(pseudo)
            for _ in range(rng.randint(3, 14))
        ]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), f"{rng.randint(0, 999)}")
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), f"{rng.randint(0, 99)}.{rng.randint(0, 9)}")
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice(_MARKS))
    return lines


def train_standin_tokenizer(vocab_size: int, path: Path, seed: int = 0) -> Path:
    """Train a deterministic SentencePiece unigram model with exactly `vocab_size` pieces."""
    import sentencepiece as spm

    path = Path(path)
    lines = _corpus(max(4000, vocab_size * 6), seed)
    prefix = str(path.with_suffix(""))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        seed_sentencepiece_size=max(100_000, vocab_size * 20),
        minloglevel=2,
    )
    Path(prefix + ".vocab").unlink(missing_ok=True)
    produced = Path(prefix + ".model")
    if produced != path:
        produced.replace(path)
    return path


def sentencepiece_to_tokenizer_json(model_path: Path, json_path: Path) -> Path:
    """Convert a SentencePiece unigram `.model` to a HuggingFace `tokenizer.json` with the same
    ids, the way upstream says its released tokenizer.json files were made: the unigram
    pieces and scores, the model's own normalization table (the Precompiled charsmap of its
    normalizer spec), whitespace collapsing, and the "▁" word-boundary prefix."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(f"{model_path} is not a unigram SentencePiece model")
    spec = proto.normalizer_spec
    vocab = [(p.piece, p.score) for p in proto.pieces]
    byte_fallback = bool(proto.trainer_spec.byte_fallback)
    tok = Tokenizer(models.Unigram(vocab, proto.trainer_spec.unk_id, byte_fallback))
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    # SentencePiece decodes the unknown piece as " ⁇ " and drops the dummy-prefix space.
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    steps = [decoders.Replace(unk, " ⁇ "), decoders.Replace("▁", " ")]
    steps += [decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.save(str(json_path))
    return Path(json_path)


def train_standin_tokenizer_json(vocab_size: int, path: Path, seed: int = 0) -> Path:
    """A stand-in `tokenizer.json`: a trained SentencePiece unigram model, converted."""
    path = Path(path)
    model = train_standin_tokenizer(vocab_size, path.with_name(path.stem + ".model"), seed)
    try:
        return sentencepiece_to_tokenizer_json(model, path)
    finally:
        model.unlink(missing_ok=True)
