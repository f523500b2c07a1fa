"""The torch-free text pipeline must feed the model exactly what upstream pocket-tts feeds it.

Upstream (`pocket_tts.models.text_chunking`, its tokenizer classes and `TTSModel`) is the
oracle; it is imported here only. The tokenizers are trained in a temporary directory on a
generated corpus, so the tests need no download.
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import pytest
from conftest import train_sentencepiece
from text_corpus import corpus, long_text

from pocket_tts_onnx.errors import BundleError, InvalidInputError
from pocket_tts_onnx.runtime.tokenizer import Tokenizer, load_tokenizer
from pocket_tts_onnx.text import (
    TextChunk,
    TextRules,
    estimate_max_frames,
    prepare_chunk,
    split_into_chunks,
    text_to_chunk_tokens,
)

upstream_chunking = pytest.importorskip("pocket_tts.models.text_chunking")
upstream_conditioner = pytest.importorskip("pocket_tts.modules.text_conditioner")

# --------------------------------------------------------------------------------------------
# Tokenizers trained on a generated corpus
# --------------------------------------------------------------------------------------------

_BASE_TEXT = (
    "the a quick brown fox jumps over lazy dog hello world I am fast enough to run on small "
    "CPUs hope you'll like me it's don't Kyutai pocket speech model voice café naïve über "
    "straße Ärger Öl él está señor garçon élève año "
)
_SYLLABLE_TEXT = "ka ri to mu sen la ve do pri an el or stra qu ix bé ü ñ ç ø é à"
_BASE_WORDS = _BASE_TEXT.split()
_SYLLABLES = _SYLLABLE_TEXT.split()


def _training_lines() -> list[str]:
    """Sentences with words, accents, digits, decimals and every punctuation the tests use."""
    rng = random.Random(0)
    words = _BASE_WORDS + [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)
    ]
    ends = [".", "!", "?", "...", ",", ";", ":", " -", " —", " –", '"', "'", "…"]
    tails = ["", " (x)", " [y]", ' "z"', " «w»", " “q”", " ‘r’"]
    lines = []
    for _ in range(3000):
        ws = [rng.choice(words) for _ in range(rng.randint(3, 15))]
        if rng.random() < 0.5:
            ws[0] = ws[0].capitalize()
        number = f"{rng.randint(0, 999)}.{rng.randint(0, 99)}"
        lines.append(
            " ".join(ws)
            + rng.choice(ends)
            + f" {number} {rng.choice(words)}{rng.choice('.!?')}{rng.choice(tails)}"
        )
    return lines


@pytest.fixture(scope="session")
def tokenizer_files(tmp_path_factory) -> dict[str, tuple[str, str, int]]:
    """name -> (kind, path, vocab size) for three differently behaving tokenizers."""
    import sentencepiece as spm
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("tokenizers")
    lines = _training_lines()
    out: dict[str, tuple[str, str, int]] = {}

    spm.set_random_generator_seed(0)
    variants = {
        # Punctuation always a piece of its own: sentence splitting has something to cut on.
        "spm_marks": {
            "vocab_size": 400,
            "user_defined_symbols": ["...", ".", "!", "?", ",", ";", ":"],
        },
        # Plain unigram with byte fallback: "..." is three periods, emoji become bytes.
        "spm_bytes": {"vocab_size": 500, "byte_fallback": True},
    }
    for name, extra in variants.items():
        path = train_sentencepiece(lines, root / f"{name}.model", **extra)
        out[name] = ("sentencepiece", str(path), extra["vocab_size"])

    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    hf.normalizer = normalizers.NFKC()
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"], show_progress=False)
    )
    path = root / "hf_bpe.json"
    hf.save(str(path))
    out["hf_bpe"] = ("tokenizers", str(path), hf.get_vocab_size())
    return out


@pytest.fixture(scope="session", params=["spm_marks", "spm_bytes", "hf_bpe"])
def tokenizer_pair(request, tokenizer_files):
    """(ours, upstream's) loaded from the same file."""
    kind, path, vocab = tokenizer_files[request.param]
    upstream_cls = (
        upstream_conditioner.SentencePieceTokenizer
        if kind == "sentencepiece"
        else upstream_conditioner.JsonTokenizer
    )
    return load_tokenizer(path, kind), upstream_cls(vocab, path)


# --------------------------------------------------------------------------------------------
# Test strings
# --------------------------------------------------------------------------------------------

CORPUS = corpus()
EMPTY_INPUTS = ["", " ", "   ", "\n", "\t\n \r\n", "\u3000", "\x1c\x1d"]

_ENGLISH = {"’": "'", "‘": "'"}
_GERMAN = {
    '"': "",
    "“": "",
    "”": "",
    "„": "",
    "«": "",
    "»": "",
    "’": "'",
    "‘": "'",
    "(": "",
    ")": "",
    "[": "",
    "]": "",
    "–": ",",
    "—": ",",
}
RULES = {
    "defaults": TextRules(),
    "english": TextRules(replace_characters=_ENGLISH),
    "german": TextRules(remove_semicolons=True, replace_characters=_GERMAN),
    "padded": TextRules(pad_with_spaces_for_short_inputs=True, replace_characters=_ENGLISH),
    "no_capitalize": TextRules(capitalize_first_letter=False, replace_characters=_ENGLISH),
    "no_terminal": TextRules(append_terminal_punctuation=False, remove_semicolons=True),
    "tight_chunks": TextRules(max_tokens_per_chunk=12, replace_characters=_GERMAN),
}


# --------------------------------------------------------------------------------------------
# Upstream oracle
# --------------------------------------------------------------------------------------------


def _rule_args(rules: TextRules) -> tuple:
    return (
        rules.pad_with_spaces_for_short_inputs,
        rules.remove_semicolons,
        rules.append_terminal_punctuation,
        rules.capitalize_first_letter,
        rules.replace_characters,
    )


def _upstream_prepare(text: str, rules: TextRules):
    try:
        return upstream_chunking.prepare_text_prompt(text, *_rule_args(rules))
    except ValueError:
        return ValueError


def _upstream_split(text: str, upstream_tok, rules: TextRules):
    try:
        return upstream_chunking.split_into_best_sentences(
            upstream_tok, text, rules.max_tokens_per_chunk, *_rule_args(rules)
        )
    except ValueError:
        return ValueError


def _upstream_feed(chunks: list[str], upstream_tok, rules: TextRules):
    """What generate_audio_stream feeds per chunk, or ValueError where it would raise."""
    fed = []
    for chunk in chunks:
        prepared = _upstream_prepare(chunk, rules)
        if prepared is ValueError:
            return ValueError
        text, guess = prepared
        fed.append((text, upstream_tok(text)[0].tolist(), guess))
    return fed


def _ours(fn, *args):
    try:
        return fn(*args)
    except InvalidInputError:
        return ValueError


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_corpus_is_varied():
    assert len(CORPUS) >= 200
    assert len(set(CORPUS)) > 0.9 * len(CORPUS)
    assert max(len(t) for t in CORPUS) >= 5000


def test_tokenizer_matches_upstream(tokenizer_pair):
    ours, upstream = tokenizer_pair
    assert isinstance(ours, Tokenizer)
    if hasattr(upstream, "sp"):
        assert ours.vocab_size == upstream.sp.vocab_size()
    else:
        assert ours.vocab_size == upstream.tokenizer.get_vocab_size()
    for text in CORPUS:
        ids = ours.encode(text)
        assert ids == upstream.encode(text), text
        assert ours.decode(ids) == upstream.decode(ids), text


@pytest.mark.parametrize("rules_name", list(RULES))
def test_prepare_chunk_matches_upstream(rules_name):
    rules = RULES[rules_name]
    for text in CORPUS + EMPTY_INPUTS:
        expected = _upstream_prepare(text, rules)
        assert _ours(prepare_chunk, text, rules) == expected, (rules_name, text)


@pytest.mark.parametrize("rules_name", list(RULES))
def test_chunks_and_tokens_match_upstream(tokenizer_pair, rules_name):
    ours_tok, upstream_tok = tokenizer_pair
    rules = RULES[rules_name]
    n_multi_chunk = 0
    for text in CORPUS + EMPTY_INPUTS:
        expected_chunks = _upstream_split(text, upstream_tok, rules)
        got_chunks = _ours(split_into_chunks, text, ours_tok, rules)
        assert got_chunks == expected_chunks, (rules_name, text)

        got = _ours(text_to_chunk_tokens, text, ours_tok, rules)
        if expected_chunks is ValueError:
            assert got is ValueError, (rules_name, text)
            continue
        n_multi_chunk += len(expected_chunks) > 1
        fed = _upstream_feed(expected_chunks, upstream_tok, rules)
        if fed is ValueError or not fed or any(not ids for _, ids, _ in fed):
            # Upstream raises, generates nothing, or conditions on zero tokens: we refuse.
            assert got is ValueError, (rules_name, text, fed)
            continue
        assert got == [TextChunk(t, ids, g) for t, ids, g in fed], (rules_name, text)
    # The corpus must actually exercise the splitter.
    assert n_multi_chunk >= 20


def test_decimal_periods_are_not_split(tokenizer_files):
    kind, path, _ = tokenizer_files["spm_marks"]
    tok = load_tokenizer(path, kind)
    rules = TextRules(max_tokens_per_chunk=5)
    assert split_into_chunks("It costs 3.5 euros. Then more.", tok, rules) == [
        "It costs 3.5 euros.",
        "Then more.",
    ]
    # Upstream quirk, reproduced: decoding drops the space, so "3. 5" looks like a decimal.
    assert split_into_chunks("I have 3. 5 apples.", tok, rules) == ["I have 3. 5 apples."]


class _CharTokenizer:
    """One id per character after a start id; "!" decodes to nothing, like a skipped
    special token, so a whole sentence can decode to "" while still counting tokens."""

    vocab_size = 0x110000

    def encode(self, text: str) -> list[int]:
        return [0] + [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids if i not in (0, ord("!")))

    def __call__(self, text: str):
        import torch

        return torch.tensor(self.encode(text))[None, :]


@pytest.mark.parametrize(
    "text",
    ["!! Hello there. Bye now.", "Hi!! !! abc def. ghi jkl mno.", "!!!!!!!!!!!!!!!!!!!! x. y."],
)
def test_pieces_decoding_to_nothing_match_upstream(text):
    # Upstream packs on the decoded text: a piece decoding to "" is replaced, token count
    # included, by the next piece.
    tok = _CharTokenizer()
    for limit in (5, 10, 50):
        rules = TextRules(max_tokens_per_chunk=limit)
        assert split_into_chunks(text, tok, rules) == _upstream_split(text, tok, rules)


@pytest.mark.parametrize("text", EMPTY_INPUTS)
def test_empty_text_raises(tokenizer_files, text):
    kind, path, _ = tokenizer_files["spm_marks"]
    tok = load_tokenizer(path, kind)
    for fn, args in (
        (prepare_chunk, (text, TextRules())),
        (split_into_chunks, (text, tok, TextRules())),
        (text_to_chunk_tokens, (text, tok, TextRules())),
    ):
        with pytest.raises(InvalidInputError, match="empty"):
            fn(*args)


def test_text_emptied_by_replacements_raises(tokenizer_files):
    kind, path, _ = tokenizer_files["hf_bpe"]
    tok = load_tokenizer(path, kind)
    with pytest.raises(InvalidInputError, match="empty"):
        text_to_chunk_tokens(' "“ ( ) ” ', tok, RULES["german"])
    with pytest.raises(ValueError):
        upstream_chunking.prepare_text_prompt(' "“ ( ) ” ', *_rule_args(RULES["german"]))


def test_text_without_known_tokens_raises(tokenizer_files):
    kind, path, _ = tokenizer_files["spm_marks"]
    tok = load_tokenizer(path, kind)
    rules = TextRules(append_terminal_punctuation=False)
    with pytest.raises(InvalidInputError, match="nothing to synthesize"):
        text_to_chunk_tokens("\x07", tok, rules)


def test_non_string_text_raises():
    with pytest.raises(InvalidInputError):
        prepare_chunk(b"bytes", TextRules())  # type: ignore[arg-type]


@pytest.mark.parametrize("frame_rate", [12.5, 25.0, 7.3])
def test_estimate_max_frames_matches_upstream(frame_rate):
    from pocket_tts.models.tts_model import TTSModel

    fake = SimpleNamespace(
        config=SimpleNamespace(mimi=SimpleNamespace(frame_rate=frame_rate)),
        _TOKENS_PER_SECOND_ESTIMATE=TTSModel._TOKENS_PER_SECOND_ESTIMATE,
        _GEN_SECONDS_PADDING=TTSModel._GEN_SECONDS_PADDING,
    )
    for tokens in [0, 1, 2, 3, 7, 12, 49, 50, 51, 99, 150, 1000]:
        expected = TTSModel._estimate_max_gen_len(fake, tokens)
        assert estimate_max_frames(tokens, frame_rate) == expected, tokens
    assert estimate_max_frames(6, 10.0, tokens_per_second=2.0, padding_seconds=1.0) == 40


def test_text_rules_round_trip():
    for rules in RULES.values():
        data = rules.to_dict()
        assert TextRules.from_dict(data) == rules
        assert set(data) == {f.name for f in dataclasses.fields(TextRules)}
    assert TextRules.from_dict({}) == TextRules()
    assert TextRules().max_tokens_per_chunk == 50
    hash(RULES["german"])  # usable as a cache key


def test_text_rules_defaults_match_upstream_config():
    from pocket_tts.default_parameters import MAX_TOKEN_PER_CHUNK
    from pocket_tts.utils.config import Config

    defaults = TextRules()
    assert defaults.max_tokens_per_chunk == MAX_TOKEN_PER_CHUNK
    for name in (
        "pad_with_spaces_for_short_inputs",
        "remove_semicolons",
        "append_terminal_punctuation",
        "capitalize_first_letter",
        "replace_characters",
    ):
        assert getattr(defaults, name) == Config.model_fields[name].default, name


def test_text_rules_are_immutable():
    source = {"’": "'"}
    rules = TextRules(replace_characters=source)
    source["x"] = "y"
    assert rules.replace_characters == {"’": "'"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.remove_semicolons = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "data",
    [
        {"unknown_rule": True},
        {"remove_semicolons": "yes"},
        {"replace_characters": {"ab": "c"}},
        {"replace_characters": {"a": 1}},
        {"replace_characters": ["a"]},
        {"max_tokens_per_chunk": 0},
        {"max_tokens_per_chunk": True},
        {"max_tokens_per_chunk": 10**9},  # beyond MAX_CHUNK_TOKENS: no chunk limit at all
        ["not", "a", "dict"],
    ],
)
def test_text_rules_from_dict_rejects_bad_data(data):
    with pytest.raises(BundleError):
        TextRules.from_dict(data)


def test_load_tokenizer_errors(tmp_path, tokenizer_files):
    missing = tmp_path / "nope.model"
    with pytest.raises(BundleError, match="nope.model"):
        load_tokenizer(missing, "sentencepiece")
    with pytest.raises(BundleError, match="is not a file"):
        load_tokenizer(tmp_path, "tokenizers")

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\xffnot a model at all")
    with pytest.raises(BundleError, match="garbage.bin"):
        load_tokenizer(garbage, "sentencepiece")
    with pytest.raises(BundleError, match="garbage.bin"):
        load_tokenizer(garbage, "tokenizers")

    kind, path, _ = tokenizer_files["spm_marks"]
    with pytest.raises(BundleError, match="unknown tokenizer kind"):
        load_tokenizer(path, "bpe")
    # A SentencePiece model is not a tokenizer.json, and vice versa.
    with pytest.raises(BundleError):
        load_tokenizer(path, "tokenizers")
    _, json_path, _ = tokenizer_files["hf_bpe"]
    with pytest.raises(BundleError):
        load_tokenizer(json_path, "sentencepiece")
    assert (
        load_tokenizer(json_path, "json").vocab_size
        == load_tokenizer(json_path, "tokenizers").vocab_size
    )


# --------------------------------------------------------------------------------------------
# Long texts: linear splitting, lazy chunks
# --------------------------------------------------------------------------------------------


class _CountingTokenizer:
    """Wraps a tokenizer and counts the work asked of it."""

    def __init__(self, inner):
        self._inner = inner
        self.vocab_size = inner.vocab_size
        self.encoded_chars: list[int] = []  # length of each encoded text
        self.decoded_tokens = 0

    def encode(self, text: str) -> list[int]:
        self.encoded_chars.append(len(text))
        return self._inner.encode(text)

    def decode(self, ids: list[int]) -> str:
        self.decoded_tokens += len(ids)
        return self._inner.decode(ids)


def _decimal_heavy(rng: random.Random, count: int) -> list[str]:
    """Numbers next to periods in every arrangement the decimal rule looks at."""
    parts = ["3.5", "3. 5", "3 .5", "12.", ".7", "x.5", "3.x", "😀.5", "3.😀", "é.5", "3.é",
             "1.2.3", "9..9", "9...9", "9.!9", "2. .3", "(3).4", "3.”5", "word", "the", ". ",
             "! ", "? ", " ", "\n", "…5"]  # fmt: skip
    return ["".join(rng.choice(parts) for _ in range(rng.randint(2, 40))) for _ in range(count)]


def _continues_decimal_full(ids, pos, tokenizer) -> bool:
    """Upstream's definition: decode the whole prefix and the whole suffix."""
    before, after = tokenizer.decode(ids[:pos]), tokenizer.decode(ids[pos:])
    return (
        len(before) >= 2
        and before[-1] == "."
        and before[-2].isdigit()
        and bool(after)
        and after[0].isdigit()
    )


def test_decimal_rule_on_a_window_equals_whole_decode(tokenizer_pair):
    from pocket_tts_onnx.text_split import _continues_decimal

    ours, _ = tokenizer_pair
    rng = random.Random(7)
    for tok in (ours, _CharTokenizer()):
        n_decimal = 0
        for text in _decimal_heavy(rng, 60):
            ids = tok.encode(text)
            for pos in range(len(ids) + 1):
                expected = _continues_decimal_full(ids, pos, tok)
                assert _continues_decimal(ids, pos, tok) == expected, (text, pos)
                n_decimal += expected
        assert n_decimal >= 50  # the strings do exercise the rule


def test_decimal_heavy_split_matches_upstream(tokenizer_pair):
    ours, upstream = tokenizer_pair
    rng = random.Random(8)
    for text in _decimal_heavy(rng, 80):
        for rules in (TextRules(max_tokens_per_chunk=6), TextRules()):
            assert _ours(split_into_chunks, text, ours, rules) == _upstream_split(
                text, upstream, rules
            ), text


def test_splitting_is_linear_in_the_text(tokenizer_files):
    # Upstream decodes the whole prefix and suffix at every sentence boundary: 10x the text
    # meant ~100x the work (200,000 characters: 55 s before the first frame).
    kind, path, _ = tokenizer_files["spm_marks"]
    rng = random.Random(3)
    text = long_text(rng, 200_000)
    work = {}
    for n in (20_000, 200_000):
        tok = _CountingTokenizer(load_tokenizer(path, kind))
        chunks = split_into_chunks(text[:n], tok, TextRules())
        assert len(chunks) > n / 1000
        work[n] = tok.decoded_tokens + sum(tok.encoded_chars)
    assert work[200_000] / work[20_000] < 12, work  # linear: ~10


def test_first_chunk_is_ready_before_the_rest_is_split(tokenizer_files):
    from pocket_tts_onnx.text import iter_chunk_tokens

    kind, path, _ = tokenizer_files["spm_marks"]
    text = long_text(random.Random(4), 100_000)
    tok = _CountingTokenizer(load_tokenizer(path, kind))
    rules = TextRules()
    chunks = iter_chunk_tokens(text, tok, rules)
    # One linear pass tokenizes the prepared text; everything else so far is about the
    # first chunk only (a few pieces of at most 50 tokens).
    whole = [n for n in tok.encoded_chars if n > 10_000]
    assert len(whole) == 1
    assert sum(tok.encoded_chars) - whole[0] < 2_000, tok.encoded_chars
    assert tok.decoded_tokens < 20 * rules.max_tokens_per_chunk, tok.decoded_tokens
    first = next(chunks)
    rest = list(chunks)
    assert [first, *rest] == text_to_chunk_tokens(text, tok, rules)
    assert len(rest) > 500 and tok.decoded_tokens > 50_000


def test_long_unpunctuated_text_is_cut_at_words(tokenizer_pair):
    """3,500+ characters of words without a full stop: upstream keeps one chunk of over
    1,024 tokens (refused by the batch scheduler, far beyond a training sentence). Pieces
    that long are cut at word boundaries into runs within the chunk limit; every word is
    kept, in order, and shorter text still splits exactly as upstream."""
    from pocket_tts_onnx.text import MAX_CHUNK_TOKENS

    ours, upstream = tokenizer_pair
    rules = RULES["english"]
    words = [f"word{i % 97}" if i % 5 else "and" for i in range(900)]
    text = " ".join(words)
    assert len(text) > 3_500
    whole = len(ours.encode(text))
    assert whole > MAX_CHUNK_TOKENS  # upstream's single chunk
    assert len(_upstream_split(text, upstream, rules)) == 1
    chunks = split_into_chunks(text, ours, rules)
    assert len(chunks) > 1
    limit = rules.max_tokens_per_chunk
    assert max(len(ours.encode(c)) for c in chunks) <= limit + 2  # a word may re-tokenize
    assert " ".join(chunks).replace(".", "").split() == (text[0].upper() + text[1:]).split()
    # Clauses of such a text are cut the same way; a comma-split text under the cap is not.
    with_commas = ", ".join(" ".join(words[i : i + 300]) for i in range(0, 900, 300))
    assert max(len(ours.encode(c)) for c in split_into_chunks(with_commas, ours, rules)) <= (
        limit + 2
    )
    short = " ".join(words[:60])
    assert split_into_chunks(short, ours, rules) == _upstream_split(short, upstream, rules)
