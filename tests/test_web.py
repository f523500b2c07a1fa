"""The browser runtime (web/) must give what the Python engine gives.

Token ids are compared in Node on a corpus, for every tokenizer family a bundle can hold, and
on >= 500 unicode-heavy strings per rule set for tokenizer.json files converted from trained
SentencePiece models (Precompiled normalizer). The JS engine runs in Node on both flow-LM
paths (flow_lm_step with preallocated K/V buffers, and the contract graph). The demo page is
then driven in headless Chromium (web/tests/e2e.mjs): its samples at temperature 0 are
compared with `PocketTTSOnnx.generate` for plain text, a multi-chunk text, voices cloned from
uploaded WAV files, a voice .npz written by the CLI and a bundle voice from the dropdown;
errors must be readable on the page, a failed load must clear the voice, the layout must fit
390 px and every control must have a label; screenshots land in test-output/web/.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
OUTPUT = ROOT / "test-output" / "web"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (WEB / "node_modules").is_dir(),
    reason="web/node_modules is missing: run `npm ci --prefix web` (needs Node 20+)",
)
needs_browser = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="/usr/bin/chromium is missing: apt-get install chromium"
)

TEXT = "Hello there, this is a test. It has two sentences."
# More than one text chunk (50 tokens each) for the demo tokenizer.
LONG_TEXT = " ".join(
    f"Sentence number {i} tells a short story about the {w} fox."
    for i, w in enumerate(["quick", "lazy", "brown", "red", "small", "old"])
)
TOLERANCE = 1e-3
TIMESTAMP_HEADS = "L1H1,L0H1"
# Punctuation, numbers, several chunks, unicode (astral characters: JS offsets differ).
TIMESTAMP_TEXTS = {
    "punctuation": "Wait... what?! No way; really: yes.",
    "numbers": "It costs 3.5 dollars, or 42 cents in 1999.",
    "words": "The quick brown fox jumps over the lazy dog. It was a bright cold day in April.",
    "chunks": LONG_TEXT,
    "unicode": "Café naïve façade, déjà vu 🙂 “quoted” — 𝔘𝔫𝔦 ok.",
}


def _no_voice():
    """What the Python engine takes for "no voice prompt" (the page's "none" entry)."""
    import pocket_tts_onnx

    return getattr(pocket_tts_onnx, "NO_VOICE", None)


def _node(script: str, *args: str, timeout: float) -> dict | list:
    proc = subprocess.run(
        [NODE, str(WEB / "tests" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=WEB,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def _node_inline(source: str, timeout: float) -> dict | list:
    """Run a JS module given as text (in web/, so "./src/..." imports work); its JSON."""
    proc = subprocess.run(
        [NODE, "--input-type=module", "-e", source],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=WEB,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


# ------------------------------------------------------------------------------ token ids

_CORPUS = [
    # Words without a full stop, far over MAX_CHUNK_TOKENS: cut at word boundaries.
    " ".join(f"word{i % 97}" if i % 5 else "and" for i in range(900)),
    ", ".join(" ".join(f"w{i}x{j}" for j in range(300)) for i in range(3)),
    "Hello world.",
    "hello world",
    "Hi",
    "one two three four five",
    "Why?! Really?! No way!!!",
    "Wait... what… okay……",
    "Well, then,",
    "Well, then —",
    "He said: ",
    '"Hi?", she said.',
    "“Hi?”, she said.",
    "‘Hi!’; she said",
    "«Bonjour», dit-il",
    "He left (quietly,)",
    "It costs 3.5 euros. Then 4.25 more. And 10.0!",
    "Version 1.2.3 is out. Get it now.",
    "I have 3. 5 apples are red.",
    "Call 555-1234 now. Or 0.5 later.",
    "1. First item. 2. Second item. 3. Third item.",
    "Superscript x² is 4. Circled ① first.",
    "Arabic-Indic ٣.٥ and Devanagari ३.५ digits.",
    "It's a dog's life; isn't it? Yes; it is.",
    "first; second; third; fourth; fifth; sixth.",
    "Line one.\nLine two.\r\nLine three.",
    "Lots   of    spaces   here.",
    "Tabs\tand\ttabs.\x0bvertical\x0cfeed",
    "File\x1cseparators\x1dand\x1eunits\x1fhere.",
    "Next\x85line and no\u00a0break and thin\u2009space and ideographic\u3000space.",
    "Line\u2028separator\u2029paragraph.",
    "Zero\u200bwidth and BOM\ufeffhere.",
    "   leading and trailing   ",
    "Café au lait, s'il vous plaît.",
    "Über straße Ärger Öl.",
    "ßtraße beginnt klein.",
    "ǆemal and ǅ and Ǆ titlecase.",
    "ñandú año señor. ¿Qué? ¡Sí!",
    "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ and ﬁne ligatures.",
    "Combining e\u0301 and precomposed é.",
    "Ⅻ roman numeral and ⅻ small.",
    "Greek Σίσυφος and Cyrillic Привет мир.",
    "日本語のテキスト。中文句子！",
    "עברית ועוד מילים. العربية هنا.",
    "Emoji 🙂 and 👍🏽 and 🇫🇷 flags.",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters.",
    "Math: 2 + 2 = 4, 3 * 3 = 9.",
    "Email me at someone@example.com. Thanks!",
    "URL https://example.com/path?x=1. Done.",
    "ALL CAPS SENTENCE HERE.",
    "a;b;c",
    "Dashes - and – and — everywhere",
    "Quote at end: “done.”",
    "Brackets (a [b] c) end",
    "Hmm... okay... fine...",
    "x" * 300,
    " ".join(["word"] * 80) + ".",
    "Short one. " + ", ".join(f"clause {i}" for i in range(40)) + ". End.",
    LONG_TEXT,
    "",
    "   \n\t  ",
    "\x00\x01\x02",
]


def _training_lines() -> list[str]:
    rng = random.Random(0)
    words = [
        *("the", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello"),
        *("world", "it's", "don't", "café", "naïve", "über", "straße", "señor", "élève"),
        *("año", "one", "two", "three", "sentence", "story", "number"),
    ]
    syllables = ["ka", "ri", "to", "mu", "sen", "la", "ve", "do", "pri", "an", "el", "or"]
    syllables += ["stra", "qu", "ix", "bé", "ü", "ñ", "ç", "é"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    lines = []
    for _ in range(2000):
        ws = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        lines.append(
            " ".join(ws).capitalize()
            + rng.choice([".", "!", "?", "...", ",", ";", ":", "…"])
            + f" {rng.randint(0, 99)}.{rng.randint(0, 9)} {rng.choice(words)}."
        )
    return lines


@pytest.fixture(scope="session")
def tokenizer_cases(tmp_path_factory) -> list[tuple[str, str, str]]:
    """(label, kind, path): the demo model plus one tokenizer of every other family."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from pocket_tts_onnx.export.loading import DEMO_DIR

    root = tmp_path_factory.mktemp("web-tokenizers")
    lines = _training_lines()
    cases = [("demo", "sentencepiece", str(DEMO_DIR / "tokenizer.model"))]
    for label, extra in {
        "spm_bytes": {"vocab_size": 400, "byte_fallback": True},
        "spm_symbols": {"vocab_size": 300, "user_defined_symbols": ["...", ".", "!", "?"]},
        "spm_identity": {
            "vocab_size": 300,
            "normalization_rule_name": "identity",
            "add_dummy_prefix": False,
            "remove_extra_whitespaces": False,
        },
        "spm_casefold": {"vocab_size": 300, "normalization_rule_name": "nfkc_cf"},
    }.items():
        train_sentencepiece(lines, root / f"{label}.model", hard_vocab_limit=False, **extra)
        cases.append((label, "sentencepiece", str(root / f"{label}.model")))

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    )
    bpe.save(str(root / "bpe.json"))
    cases.append(("hf_bpe", "tokenizers", str(root / "bpe.json")))

    # A SentencePiece model converted to tokenizer.json the usual way (Precompiled
    # normalizer, Metaspace, Unigram), as hub tokenizer.json files of such models are.
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(cases[0][2]).read_bytes())
    uni = Tokenizer(
        models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=proto.trainer_spec.unk_id)
    )
    uni.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    uni.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    uni.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    uni.save(str(root / "unigram.json"))
    cases.append(("hf_unigram", "tokenizers", str(root / "unigram.json")))
    return cases


def _python_result(text: str, tokenizer, rules) -> dict:
    from pocket_tts_onnx.errors import InvalidInputError
    from pocket_tts_onnx.text import text_to_chunk_tokens

    ids = tokenizer.encode(text)
    out = {"encode": ids, "decode": tokenizer.decode(ids)}
    try:
        out["chunks"] = [
            {"text": c.text, "ids": c.token_ids, "guess": c.frames_after_eos_guess}
            for c in text_to_chunk_tokens(text, tokenizer, rules)
        ]
    except InvalidInputError:
        out["error"] = True
    return out


def test_js_token_ids_match_python(tokenizer_cases, tmp_path):
    """Same chunks, chunk texts and token ids as `text_to_chunk_tokens`, for every string."""
    from pocket_tts_onnx.runtime.tokenizer import load_tokenizer
    from pocket_tts_onnx.text import TextRules

    rule_sets = [
        TextRules(replace_characters={"‘": "'", "’": "'"}),  # the demo bundle's rules
        TextRules(
            pad_with_spaces_for_short_inputs=True,
            remove_semicolons=True,
            capitalize_first_letter=False,
            max_tokens_per_chunk=20,
        ),
        TextRules(append_terminal_punctuation=False),
    ]
    cases = [
        {
            "tokenizer": path,
            "kind": kind,
            "rules": rules.to_dict(),
            "texts": _CORPUS,
            "label": label,
        }
        for label, kind, path in tokenizer_cases
        for rules in rule_sets
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    js = _node("tokens.mjs", str(tmp_path / "cases.json"), timeout=60)

    mismatches = []
    compared = 0
    for case, js_results in zip(cases, js, strict=True):
        tokenizer = load_tokenizer(case["tokenizer"], case["kind"])
        rules = TextRules.from_dict(case["rules"])
        for text, got in zip(_CORPUS, js_results, strict=True):
            want = _python_result(text, tokenizer, rules)
            got = {**got, "error": True} if "error" in got else got
            compared += 1
            if got != want:
                mismatches.append((case["label"], case["rules"], text, want, got))
    assert not mismatches, f"{len(mismatches)} of {compared} differ; first: {mismatches[0]!r}"[
        :3000
    ]


# ----------------------------------------------- tokenizer.json converted from SentencePiece

_UNICODE_PIECES = [
    *("café", "naïve", "über", "straße", "señor", "élève", "Ærøskøbing", "Łódź", "Ångström"),
    *("e\u0301", "a\u0308\u0301", "n\u0303", "o\u0302\u0323", "Z\u0335", "i\u0307"),
    *("ﬁne", "ﬂow", "ǆemal", "ǅ", "Ǆ", "æ", "œuvre", "ĳ", "ﬀ", "ﬃ", "ﬆ"),
    *("Ｆｕｌｌ", "ＡＢＣ", "ｗｉｄｔｈ", "１２３", "！", "？", "（ｘ）", "ｶﾀｶﾅ", "－"),
    *("“quoted”", "‘single’", "«guillemets»", "„low“", "‹angle›", "「括弧」", "'", '"'),
    *("3.5", "1,234", "x²", "①", "⅓", "٣٫٥", "३.५", "Ⅻ", "ⅻ", "0.25", "10⁻³", "₂"),
    *("🙂", "👍🏽", "🇫🇷", "👨\u200d👩\u200d👧", "❤\ufe0f", "🧑🏿\u200d🚀", "✈", "☃"),
    *("日本語", "中文", "한국어", "ᄀ\u1161", "Привет", "Σίσυφος", "עברית", "العربية"),
    *("\u00a0", "\u3000", "\u2009", "\t", "\u200b", "\ufeff", "\u2028", "\u0085", "  "),
    *("—", "–", "…", "...", "·", "•", "§", "©", "™", "°C", "€", "£", "¥", "%"),
    *("hello", "world", "the", "quick", "brown", "fox", "It's", "don't", "A", "I"),
    *("<unk>", "𝔘𝔫𝔦", "𝟙𝟚", "Ⓐ", "㍿", "㎏", "℃", "№", "ℌ", "ſ", "ẞ"),
]


def _unicode_corpus(n: int = 520) -> list[str]:
    """Deterministic strings heavy in accents, ligatures, full-width forms, quotes, digits,
    emoji and combining marks, joined by assorted whitespace and punctuation."""
    rng = random.Random(12)
    seps = [" ", " ", " ", "  ", "\u00a0", "\u3000", "", ", ", ". ", "! ", "? ", "; ", "\n"]
    out = []
    for _ in range(n):
        words = [rng.choice(_UNICODE_PIECES) for _ in range(rng.randint(1, 9))]
        text = words[0] + "".join(rng.choice(seps) + w for w in words[1:])
        out.append(text + rng.choice(["", ".", "!", "?", "…", " "]))
    return out


@pytest.fixture(scope="session")
def converted_tokenizers(tmp_path_factory) -> list[tuple[str, str]]:
    """tokenizer.json files made the way released ones were: a SentencePiece unigram model
    trained here (nmt_nfkc, its Precompiled charsmap) and converted by tokenizers' own
    SentencePiece converter; plus the layout transformers' SpmConverter writes (Strip, and
    " {2,}" to U+2581 after the charsmap), and a byte-fallback model."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, normalizers
    from tokenizers.implementations import SentencePieceUnigramTokenizer

    # from_spm imports the protobuf module by its bare name.
    sys.modules.setdefault("sentencepiece_model_pb2", sentencepiece_model_pb2)
    root = tmp_path_factory.mktemp("web-converted")
    lines = _training_lines()[:1000] + _unicode_corpus(400)
    out = []
    for label, extra in {
        "nfkc": {"vocab_size": 600},
        "nfkc_bytes": {"vocab_size": 700, "byte_fallback": True},
        "nfkc_cf": {"vocab_size": 500, "normalization_rule_name": "nmt_nfkc_cf"},
    }.items():
        model = train_sentencepiece(lines, root / f"{label}.model", hard_vocab_limit=False, **extra)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model.read_bytes())
        assert proto.normalizer_spec.precompiled_charsmap, "no charsmap: nothing is tested"
        converted = SentencePieceUnigramTokenizer.from_spm(str(model))
        converted.save(str(root / f"{label}.json"))
        assert '"Precompiled"' in (root / f"{label}.json").read_text(encoding="utf-8")
        out.append((f"from_spm_{label}", str(root / f"{label}.json")))
        if label == "nfkc":
            tok = converted._tokenizer
            tok.normalizer = normalizers.Sequence(
                [
                    normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                    normalizers.Strip(left=False, right=True),
                    normalizers.Replace(Regex(" {2,}"), "\u2581"),
                ]
            )
            tok.save(str(root / "spmconverter.json"))
            out.append(("spmconverter_nfkc", str(root / "spmconverter.json")))
    del sentencepiece
    return out


def test_js_tokenizer_json_from_sentencepiece_matches_python(converted_tokenizers, tmp_path):
    """>= 500 unicode-heavy strings per rule set: same ids, decoded text and chunks as
    Python `tokenizers` on converted SentencePiece models (Precompiled normalizer)."""
    from pocket_tts_onnx.runtime.tokenizer import load_tokenizer
    from pocket_tts_onnx.text import TextRules

    corpus = _unicode_corpus()
    assert len(corpus) >= 500
    rule_sets = [
        TextRules(),
        TextRules(capitalize_first_letter=False, max_tokens_per_chunk=20),
        TextRules(append_terminal_punctuation=False, remove_semicolons=True),
    ]
    cases = [
        {"tokenizer": path, "kind": "tokenizers", "rules": r.to_dict(), "texts": corpus}
        for _, path in converted_tokenizers
        for r in rule_sets
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    js = _node("tokens.mjs", str(tmp_path / "cases.json"), timeout=120)
    mismatches, compared = [], 0
    for case, results in zip(cases, js, strict=True):
        tokenizer = load_tokenizer(case["tokenizer"], "tokenizers")
        rules = TextRules.from_dict(case["rules"])
        for text, got in zip(corpus, results, strict=True):
            want = _python_result(text, tokenizer, rules)
            got = {**got, "error": True} if "error" in got else got
            compared += 1
            if got != want:
                mismatches.append((Path(case["tokenizer"]).name, text, want, got))
    assert compared >= 500 * len(rule_sets) * len(converted_tokenizers)
    assert not mismatches, f"{len(mismatches)} of {compared} differ; first: {mismatches[0]!r}"[
        :3000
    ]


# ------------------------------------------------------------------------------ word units


def _utf16(text: str, i: int) -> int:
    """JS string index of Python character offset `i`."""
    return len(text[:i].encode("utf-16-le")) // 2


def _python_units(text: str, tokenizer, rules) -> dict:
    from pocket_tts_onnx.errors import InvalidInputError
    from pocket_tts_onnx.text import text_to_chunk_tokens
    from pocket_tts_onnx.word_units import map_chunks, source_words

    raw = [list(s) for s in tokenizer.piece_spans(text)[0]]
    try:
        chunks = text_to_chunk_tokens(text, tokenizer, rules)
    except InvalidInputError:
        return {"raw": raw, "error": True}
    units = map_chunks(text, [c.text for c in chunks], tokenizer)
    out = []
    for chunk, cu in zip(chunks, units, strict=True):
        spans, in_bytes = tokenizer.piece_spans(chunk.text)
        at = lambda i, t=chunk.text: _utf16(t, i)  # noqa: E731
        out.append(
            {
                "spans": [list(s) for s in spans],
                "inBytes": in_bytes,
                "units": [
                    [at(u.begin), at(u.end), u.word.index if u.word else -1, u.synthetic]
                    for u in cu.units
                ],
                "matrix": cu.token_to_unit.ravel().tolist(),
            }
        )
    words = [[_utf16(text, w.begin), _utf16(text, w.end)] for w in source_words(text)]
    return {"raw": raw, "words": words, "chunks": out}


def test_js_word_units_match_python(tokenizer_cases, converted_tokenizers, tmp_path):
    """Word timestamps locate words the same way in JS: the same source words, chunk units
    (offsets as JS string indices), token spans and token-to-unit shares as `map_chunks`, on
    the corpus and unicode-heavy strings, for SentencePiece models and tokenizer.json files
    converted from them (the families the browser gives timestamps for). The token spans of
    each raw text are compared too: chunk texts are decoded tokens, mostly normalized
    already, so only raw text exercises the normalizers' alignments."""
    from pocket_tts_onnx.runtime.tokenizer import load_tokenizer
    from pocket_tts_onnx.text import TextRules

    tokenizers = [(p, k) for label, k, p in tokenizer_cases if label != "hf_bpe"]
    tokenizers += [(p, "tokenizers") for _, p in converted_tokenizers]
    texts = [t for t in _CORPUS if len(t) < 2000] + _unicode_corpus(150)
    rule_sets = [
        TextRules(replace_characters={"‘": "'", "’": "'"}),
        TextRules(capitalize_first_letter=False, max_tokens_per_chunk=20),
    ]
    cases = [
        {"tokenizer": path, "kind": kind, "rules": r.to_dict(), "texts": texts}
        for path, kind in tokenizers
        for r in rule_sets
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    js = _node("word-units.mjs", str(tmp_path / "cases.json"), timeout=300)
    mismatches, compared, units = [], 0, 0
    for case, results in zip(cases, js, strict=True):
        tokenizer = load_tokenizer(case["tokenizer"], case["kind"])
        rules = TextRules.from_dict(case["rules"])
        for text, got in zip(texts, results, strict=True):
            want = _python_units(text, tokenizer, rules)
            got = {**got, "error": True} if "error" in got else got
            compared += 1
            units += sum(len(c["units"]) for c in want.get("chunks", []))
            if got != want:
                mismatches.append((Path(case["tokenizer"]).name, text, want, got))
    assert units > 3 * compared  # the texts have words and marks: something was located
    assert not mismatches, f"{len(mismatches)} of {compared} differ; first: {mismatches[0]!r}"[
        :4000
    ]


# ------------------------------------------------------------------------------ build


def test_build_keeps_a_bundle_in_dist(tmp_path):
    """`npm run build` replaces only its own files: a bundle exported into web/dist (as an
    older README said to) survives it."""
    keep = WEB / "dist" / "bundle-kept-by-build-test"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "manifest.json").write_text("{}", encoding="utf-8")
    try:
        build = subprocess.run(
            [NODE, str(WEB / "build.mjs")], capture_output=True, text=True, timeout=120
        )
        assert build.returncode == 0, build.stderr[-3000:]
        assert (keep / "manifest.json").read_text(encoding="utf-8") == "{}"
        assert (WEB / "dist" / "index.html").is_file() and (WEB / "dist" / "worker.js").is_file()
    finally:
        shutil.rmtree(keep, ignore_errors=True)


# ------------------------------------------------------------------------------ noise


def test_js_truncated_noise_has_no_redraw_loop():
    """noiseClamp is sampled by inverse CDF: a tiny clamp returns at once (a redraw loop
    never ends), and the distribution is the truncated normal (variance as scipy's)."""
    from scipy.special import erf
    from scipy.stats import truncnorm

    script = """
    import { erf, drawNoise } from "./src/sampling.js";
    import { createRng } from "./src/rng.js";
    const rng = createRng(3);
    const tiny = drawNoise(rng, 64, 0.7, 1e-30);
    const wide = drawNoise(rng, 200000, 1, 1.5);
    let v = 0, max = 0; for (const a of wide) { v += a * a; max = Math.max(max, Math.abs(a)); }
    const grid = [1e-30, 1e-8, 0.01, 0.3, 1, 1.7, 2, 2.5, 4];
    console.log(JSON.stringify({ tiny: Array.from(tiny), variance: v / wide.length,
      max, erf: grid.map(erf), grid }));
    """
    got = _node_inline(script, timeout=30)
    assert all(abs(x) <= 1e-30 for x in got["tiny"]) and any(x != 0 for x in got["tiny"])
    assert got["max"] <= 1.5
    assert abs(got["variance"] - truncnorm(-1.5, 1.5).var()) < 0.01
    want = erf(np.array(got["grid"]))
    assert np.allclose(got["erf"], want, rtol=1e-9, atol=1e-9), (got["erf"], want)


def test_js_parameters_switch_is_checked_and_timestamps_refused(int8_bundle):
    """The one parameter list reaches the browser with its switch (`timestamps`): a non-bool
    is refused like in Python; true is refused with Python's typed error and fix when the
    bundle has no heads, and taken when it has them."""
    script = """
    import { PocketTTS } from "./src/pocket-tts.js";
    const engine = (timestamps) => Object.assign(Object.create(PocketTTS.prototype), {
      manifest: { timestamps, defaults: { temperature: 0.7, decode_steps: 1,
        eos_threshold: -4, frames_after_eos: null, noise_clamp: null } },
      fastKv: true, _hasQueries: true, tokenizer: null });
    const out = {};
    for (const [name, value, heads] of [["off", false, null], ["on", true, null],
        ["bad", "yes", null], ["heads", true, { heads: [[0, 1]] }]]) {
      try {
        out[name] = engine(heads)._params({ timestamps: value }).timestamps;
      } catch (e) { out[name] = `${e.name}: ${e.message} (${e.param})`; }
    }
    out.default = engine(null)._params({}).timestamps;
    console.log(JSON.stringify(out));
    """
    got = _node_inline(script, timeout=60)
    from pocket_tts_onnx import PocketTTSOnnx, TimestampsUnavailableError

    assert got["off"] is False and got["default"] is False and got["heads"] is True
    assert not _manifest(int8_bundle).get("timestamps")
    with pytest.raises(TimestampsUnavailableError) as python:
        PocketTTSOnnx.load(int8_bundle, precision="int8").stream("Hi.", timestamps=True)
    assert got["on"] == f"TimestampsUnavailableError: {python.value} (timestamps)", got
    assert got["bad"].startswith("InvalidInputError: timestamps must be true or false, got yes")


# ------------------------------------------------------------------------- fast-KV engine


@pytest.fixture(scope="session")
def node_engine_runs(bundle, tmp_path_factory) -> dict:
    """The JS engine in Node on both flow-LM paths (flow_lm_step and flow_lm_main), with no
    voice, a bundle voice and a voice cloned in JS; samples are read from `dir`."""
    out = tmp_path_factory.mktemp("web-node-engine")
    prompt = _noise_bursts(24000, 1, seconds=1.5)[:, 0]
    prompt.astype("<f4").tofile(out / "prompt.f32")
    voice = _other_voice(bundle)
    plan = {
        "bundle": str(bundle),
        "precision": "fp32",
        "outDir": str(out),
        "texts": {"short": TEXT, "long": LONG_TEXT},
        "voices": {voice: str(bundle / _manifest(bundle)["voices"][voice]["file"])},
        "cloneFrom": {"f32": str(out / "prompt.f32"), "sampleRate": 24000},
    }
    (out / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    result = _node("engine.mjs", str(out / "plan.json"), timeout=120)
    return {**result, "dir": out, "voice": voice, "prompt": prompt}


def test_js_fast_kv_matches_contract_graph_and_python(node_engine_runs, engine, bundle):
    """flow_lm_step with the runtime's preallocated K/V buffers gives the contract graph's
    audio (and voice states), and the Python engine's."""
    runs = node_engine_runs
    if "flow_lm_step" not in _manifest(bundle)["graphs"]:
        pytest.skip("the exporter writes no flow_lm_step graph yet")
    assert runs["fastKv"] is True and runs["contractFastKv"] is False
    voice_file = bundle / _manifest(bundle)["voices"][runs["voice"]]["file"]
    voices = {
        "none": _no_voice(),
        runs["voice"]: engine.load_voice(voice_file),
        "cloned": engine.voice_from_audio((runs["prompt"], 24000)),
    }
    read = lambda name: np.fromfile(runs["dir"] / f"{name}.f32", dtype="<f4")  # noqa: E731
    for text_name, text in (("short", TEXT), ("long", LONG_TEXT)):
        for voice_name, voice in voices.items():
            step = read(f"step_{text_name}_{voice_name}")
            contract = read(f"contract_{text_name}_{voice_name}")
            assert step.shape == contract.shape and np.abs(step - contract).max() <= 1e-5
            _assert_close(step, engine.generate(text, voice, temperature=0.0))
    assert runs["voiceStates"] and max(runs["voiceStates"].values()) <= 1e-5, runs["voiceStates"]


# ------------------------------------------------------------------------- word timestamps


def _word_rows(text: str, events) -> list[list]:
    """WordEvents as the JS engine reports them (offsets as JS string indices)."""
    return [
        [w.text, w.index, _utf16(text, w.char_start), _utf16(text, w.char_end), w.start, w.end]
        for w in events
    ]


def _same_words(got: list, want: list) -> None:
    assert [e[:4] for e in got] == [e[:4] for e in want]
    for a, b in zip(got, want, strict=True):
        assert a[4] == pytest.approx(b[4], abs=1e-6)
        assert (a[5] is None) == (b[5] is None)
        assert a[5] is None or a[5] == pytest.approx(b[5], abs=1e-6)


def test_js_word_timestamps_match_python(bundle, engine, tmp_path):
    """Word timestamps in JS (timestamps: true) give the Python engine's events: the same
    words in order, character spans and start/end times, for punctuation, numbers, several
    chunks and unicode, at the default EOS and a later one (random weights then speak more
    frames); also through latents() as the decoder worker gets them, and from generate().
    The contract-graph path refuses them (no queries)."""
    eos_thresholds = [None, 2.0]
    plan = {
        "bundle": str(bundle),
        "precision": "fp32",
        "outDir": str(tmp_path),
        "texts": {},
        "timestamps": {"texts": TIMESTAMP_TEXTS, "eosThresholds": eos_thresholds},
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    js = _node("engine.mjs", str(tmp_path / "plan.json"), timeout=300)
    moved, compared = 0, 0
    for name, text in TIMESTAMP_TEXTS.items():
        chunks = len(list(engine.core.chunks(text)))
        for i, eos in enumerate(eos_thresholds):
            got = js["words"][f"{name}#{i}"]
            samples, events = 0, []
            stream = engine.stream(
                text, _no_voice(), timestamps=True, temperature=0.0, eos_threshold=eos
            )
            for chunk in stream:
                samples += chunk.samples.shape[0]
                events += chunk.words
            want = _word_rows(text, events)
            assert got["samples"] == samples, (name, eos)
            for way in ("stream", "pipeline"):
                _same_words(got[way], want)
            _same_words(got["generated"], [e for e in want if e[5] is not None])
            finished = sum(e[5] is not None for e in want)
            moved += finished > chunks  # attention moved past a chunk's first word
            compared += len(want)
    assert compared >= 4 * len(TIMESTAMP_TEXTS) and moved >= 2, (compared, moved)
    assert js["refused"].startswith("TimestampsUnavailableError: timestamps: word timestamps need")


def _synthetic_aligner_cases(rng) -> list[dict]:
    """Chunks of words and marks with attention that walks forward (with noise, silent
    frames and runs of weak attention), as the rule sees them."""
    from pocket_tts_onnx.word_units import SourceWord

    cases = []
    for _ in range(300):
        units = []
        for k in range(int(rng.integers(1, 9))):
            if rng.random() < 0.3:
                units.append((None, bool(rng.random() < 0.3)))
            units.append((SourceWord(f"w{k}", k, 3 * k, 3 * k + 2), False))
        if rng.random() < 0.7:
            units.append((None, bool(rng.random() < 0.5)))
        n, frames, focus = len(units), [], 0.0
        for i in range(int(rng.integers(3, 60))):
            focus = min(n - 1, focus + rng.exponential(0.3))
            scores = rng.random(n).astype(np.float32) * np.float32(0.2)
            scores[int(focus)] += np.float32(0.8)
            if rng.random() < 0.15:  # weak: nothing holds, a later unit may lead
                scores = rng.random(n).astype(np.float32) * np.float32(0.002)
            frames.append((scores / scores.sum(), bool(rng.random() > 0.25), 0.08 * i))
        cases.append({"units": units, "frames": frames, "finish": 0.08 * len(frames)})
    return cases


def _synthetic_score_cases(rng) -> list[dict]:
    from pocket_tts_onnx.word_units import ChunkUnits, SourceWord, Unit

    cases = []
    for _ in range(40):
        layers, heads, kv_heads, d = 3, 4, 2, 8
        start = int(rng.integers(0, 6))
        tokens = int(rng.integers(1, 12))
        capacity = start + tokens + int(rng.integers(0, 5))
        n_units = int(rng.integers(1, 6))
        matrix = rng.random((tokens, n_units)).astype(np.float32)
        matrix[rng.random((tokens, n_units)) < 0.5] = 0
        matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1e-6)
        units = ChunkUnits(
            tuple(Unit(i, i + 1, SourceWord("w", i, i, i + 1)) for i in range(n_units)),
            matrix.astype(np.float32),
        )
        chosen = [(0, 3), (2, 1), (2, 2)][: int(rng.integers(1, 4))]
        queries = rng.standard_normal((layers, heads, d)).astype(np.float32)
        keys = {
            layer: rng.standard_normal((kv_heads, capacity, d)).astype(np.float32)
            for layer, _ in chosen
        }
        cases.append(
            {"units": units, "heads": chosen, "start": start, "queries": queries, "keys": keys}
        )
    return cases


def test_js_word_rule_matches_python_on_synthetic_attention(tmp_path):
    """The start/end rule in JS (WordAligner, voicing, the attention scores) gives the
    Python rule's results on synthetic inputs that reach every word and every branch
    (random weights rarely move past the first words): the expected events are computed
    here by runtime/timestamps.py."""
    from pocket_tts_onnx.runtime.timestamps import TextTiming, WordAligner, is_voiced
    from pocket_tts_onnx.word_units import ChunkUnits, Unit

    rng = np.random.default_rng(18)
    aligner_cases = _synthetic_aligner_cases(rng)
    score_cases = _synthetic_score_cases(rng)
    voiced = [
        (rng.standard_normal(1920) * scale).astype(np.float32)
        for scale in (0.0, 1e-4, 5e-4, 2e-3, 0.1)
    ] + [np.zeros(0, np.float32)]
    payload = {
        "aligner": [
            {
                "units": [
                    {
                        "word": w
                        and {"text": w.text, "index": w.index, "begin": w.begin, "end": w.end},
                        "synthetic": syn,
                    }
                    for w, syn in c["units"]
                ],
                "frames": [{"scores": s.tolist(), "voiced": v, "t": t} for s, v, t in c["frames"]],
                "finish": c["finish"],
            }
            for c in aligner_cases
        ],
        "voiced": [a.tolist() for a in voiced],
        "scores": [
            {
                "units": {
                    "units": [{"word": None, "synthetic": False}] * len(c["units"].units),
                    "tokens": int(c["units"].token_to_unit.shape[0]),
                    "tokenToUnit": c["units"].token_to_unit.ravel().tolist(),
                },
                "heads": [list(h) for h in c["heads"]],
                "start": c["start"],
                "end": c["start"] + int(c["units"].token_to_unit.shape[0]),
                "queries": c["queries"].ravel().tolist(),
                "dims": [1, *c["queries"].shape],
                "keys": {
                    str(layer): {
                        "data": k.ravel().tolist(),
                        "heads": k.shape[0],
                        "capacity": k.shape[1],
                    }
                    for layer, k in c["keys"].items()
                },
            }
            for c in score_cases
        ],
    }
    (tmp_path / "cases.json").write_text(json.dumps(payload), encoding="utf-8")
    js = _node("timestamps.mjs", str(tmp_path / "cases.json"), timeout=60)

    moves = silent_closes = complete = 0
    for case, got in zip(aligner_cases, js["aligner"], strict=True):
        units = ChunkUnits(
            tuple(Unit(0, 0, w, syn) for w, syn in case["units"]), np.zeros((0, 0), np.float32)
        )
        aligner, want = WordAligner(units), []
        for scores, voice, t in case["frames"]:
            events = aligner.frame(scores, voice, t)
            moves += len(events) == 2
            silent_closes += bool(events) and not voice
            want += events
        complete += aligner.open is None and aligner.next == len(units.word_units)
        want += aligner.finish(case["finish"])
        rows = [[e.text, e.index, e.char_start, e.char_end, e.start, e.end] for e in want]
        got = [
            [e["text"], e["index"], e["charStart"], e["charEnd"], e["start"], e["end"]] for e in got
        ]
        _same_words(got, rows)
    assert moves > 100 and silent_closes > 20 and complete > 20, (moves, silent_closes, complete)
    assert js["voiced"] == [is_voiced(a) for a in voiced]
    assert True in js["voiced"] and False in js["voiced"][:-1]
    for case, got in zip(score_cases, js["scores"], strict=True):
        n = case["units"].token_to_unit.shape[0]
        timing = TextTiming(case["units"], case["heads"], case["start"], case["start"] + n)
        want = timing.scores(case["queries"], case["keys"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory) -> Path:
    """The demo model exported with `--precision int8`: INT8 graphs only."""
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("web-int8-only") / "bundle"
    export_bundle(ModelSource(demo=True), out, precision="int8", verify=False)
    return out


def test_js_loads_an_int8_only_bundle(int8_bundle, tmp_path):
    """The JS engine opens an INT8-only bundle (flow_lm_step reading its weights from
    flow_lm_main_int8.onnx), accepts its voice by the recorded model id, matches the Python
    engine, and refuses FP32 with a readable error."""
    from pocket_tts_onnx import PocketTTSOnnx

    manifest = _manifest(int8_bundle)
    voice = manifest["default_voice"]
    plan = {
        "bundle": str(int8_bundle),
        "precision": "int8",
        "outDir": str(tmp_path),
        "texts": {"short": TEXT},
        "voices": {voice: str(int8_bundle / manifest["voices"][voice]["file"])},
    }  # engine.mjs loads the voice with its model id checked
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    runs = _node("engine.mjs", str(tmp_path / "plan.json"), timeout=120)
    assert runs["fastKv"] is True
    python = PocketTTSOnnx.load(int8_bundle, precision="int8")
    voice_file = int8_bundle / manifest["voices"][voice]["file"]
    want = python.generate(TEXT, python.load_voice(voice_file), temperature=0.0)
    for mode in ("step", "contract"):
        _assert_close(np.fromfile(tmp_path / f"{mode}_short_{voice}.f32", dtype="<f4"), want)
    script = f"""
    import {{ readFileSync }} from "node:fs";
    import {{ pathToFileURL, fileURLToPath }} from "node:url";
    import {{ PocketTTS }} from "./src/pocket-tts.js";
    globalThis.fetch = async (url) => new Response(readFileSync(fileURLToPath(url)));
    try {{
      await PocketTTS.load(pathToFileURL({json.dumps(str(int8_bundle))}).href + "/",
        {{ precision: "fp32" }});
      console.log(JSON.stringify({{ error: null }}));
    }} catch (e) {{
      console.log(JSON.stringify({{ error: `${{e.name}}: ${{e.message}}` }}));
    }}
    """
    error = _node_inline(script, timeout=60)["error"]
    assert error and error.startswith("BundleError: this bundle has int8 graphs only, no fp32")


# ------------------------------------------------------------------------------ the page


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The demo bundle with at least two predefined voices: the exporter's own, plus voices
    computed here from noise prompts, listed as the manifest lists them ({name: {file,
    sha256, origin}}, default_voice); with word-timestamp heads (on these random weights
    L1H1,L0H1 move past the first word more often than other pairs)."""
    from pocket_tts_onnx import PocketTTSOnnx
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle
    from pocket_tts_onnx.manifest import file_sha256

    out = tmp_path_factory.mktemp("web-bundle") / "bundle"
    export_bundle(
        ModelSource(demo=True), out, quantize=False, verify=False, timestamp_heads=TIMESTAMP_HEADS
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    voices = manifest.get("voices") or {}
    tts = PocketTTSOnnx.load(out, precision="fp32")
    (out / "voices").mkdir(exist_ok=True)
    for i, name in enumerate(["breeze", "pebble"]):
        prompt = _noise_bursts(24000, 1, seconds=1.0 + i)[:, 0] * (0.5 + i)
        tts.voice_from_audio((prompt, 24000)).save(out / "voices" / f"{name}.npz")
        voices[name] = {
            "file": f"voices/{name}.npz",
            "sha256": file_sha256(out / "voices" / f"{name}.npz"),
            "origin": "computed from random weights (test)",
        }
    manifest["voices"] = voices
    manifest["default_voice"] = manifest.get("default_voice") or "pebble"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def engine(bundle):
    from pocket_tts_onnx import PocketTTSOnnx

    return PocketTTSOnnx.load(bundle, precision="fp32")


def _noise_bursts(rate: int, channels: int, seconds: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(int(rate * seconds)) / rate
    on = ((t % 0.5) < 0.3).astype(np.float32)[:, None]
    return (rng.standard_normal((t.size, channels)) * 0.3 * on).astype(np.float32)


@pytest.fixture(scope="session")
def voice_files(bundle, tmp_path_factory) -> dict[str, Path]:
    """24 kHz mono WAV, 16 kHz stereo WAV and FLAC, and a .npz made from the first by the CLI."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("web-voices")
    files = {"wav24": root / "mono24k.wav", "wav16": root / "stereo16k.wav"}
    sf.write(files["wav24"], _noise_bursts(24000, 1), 24000, subtype="PCM_16")
    sf.write(files["wav16"], _noise_bursts(16000, 2), 16000, subtype="PCM_16")
    files["flac16"] = root / "stereo16k.flac"
    sf.write(files["flac16"], _noise_bursts(16000, 2), 16000)
    files["npz"] = root / "voice.npz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pocket_tts_onnx.cli",
            "voice",
            str(files["wav24"]),
            "--bundle",
            str(bundle),
            "--out",
            str(files["npz"]),
            "--precision",
            "fp32",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return files


@pytest.fixture(scope="session")
def server(bundle):
    build = subprocess.run(
        [NODE, str(WEB / "build.mjs")], capture_output=True, text=True, timeout=120
    )
    assert build.returncode == 0, build.stderr[-3000:]
    proc = subprocess.Popen(
        [sys.executable, str(WEB / "serve.py"), "--bundle", str(bundle), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + proc.stderr.read()
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def page(server, bundle, voice_files, tmp_path_factory) -> dict:
    """Results of one scripted session on the page; samples are read from `dir`."""
    out = tmp_path_factory.mktemp("web-e2e")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    plan = {
        "url": server,
        "precision": "fp32",
        "outDir": str(out),
        "screenshot": str(OUTPUT / "demo.png"),
        "text": TEXT,
        "longText": LONG_TEXT,
        "voices": {name: str(path) for name, path in voice_files.items()},
        "namedVoice": _other_voice(bundle),
    }
    (out / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    results = _node("e2e.mjs", str(out / "plan.json"), timeout=120)
    assert "failure" not in results, results["failure"] + "\n" + "\n".join(results["console"])
    results["dir"] = out
    (OUTPUT / "results.json").write_text(
        json.dumps({k: v for k, v in results.items() if k != "dir"}, indent=2), encoding="utf-8"
    )
    return results


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def _other_voice(bundle: Path) -> str:
    """A bundle voice that is not the default (so selecting it is a real change)."""
    m = _manifest(bundle)
    return next(n for n in sorted(m["voices"]) if n != m["default_voice"])


def _samples(page: dict, name: str) -> np.ndarray:
    run = page["runs"][name]
    assert run["error"] is None, run["error"]
    return np.fromfile(page["dir"] / f"{name}.f32", dtype="<f4")


def _assert_close(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"page made {got.shape[0]} samples, Python {want.shape[0]}"
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"max |page - python| = {diff:.3g}"
    return diff


@needs_browser
def test_page_matches_python_engine(page, engine):
    got = _samples(page, "default")
    _assert_close(got, engine.generate(TEXT, _no_voice(), temperature=0.0))
    assert page["randomWeightsBanner"], "random-weight bundle without the noise warning"


@needs_browser
def test_page_streams_several_chunks(page, engine):
    for name in ("default", "long"):
        run = page["runs"][name]
        assert run["chunks"] > 1, f"{name}: one chunk only, nothing was streamed"
        assert run["stats"]["firstChunkMs"] < run["stats"]["elapsedS"] * 1000
    assert len(engine.tokenizer.encode(LONG_TEXT)) > engine.manifest.text.max_tokens_per_chunk
    _assert_close(_samples(page, "long"), engine.generate(LONG_TEXT, _no_voice(), temperature=0.0))


@needs_browser
def test_page_sampling_with_lsd_steps(page):
    """Temperature 0.7 with 3 LSD steps: a different, finite, non-silent signal."""
    sampled = _samples(page, "sampled")
    plain = _samples(page, "default")
    assert np.isfinite(sampled).all() and np.abs(sampled).max() > 0
    n = min(sampled.size, plain.size)
    assert np.abs(sampled[:n] - plain[:n]).max() > 1e-3


@needs_browser
@pytest.mark.parametrize("name", ["wav24", "wav16"])
def test_page_voice_upload_matches_python(page, engine, voice_files, name):
    """WAV prompts are read and resampled (scipy's resample_poly, mirrored) in the page."""
    assert page["voices"][name]["error"] is None, page["voices"][name]["error"]
    want = engine.generate(TEXT, engine.voice_from_audio(voice_files[name]), temperature=0.0)
    diff = _assert_close(_samples(page, f"voice_{name}"), want)
    # The voice must matter far more than the page/Python difference, or this proves nothing.
    effect = float(np.abs(want - engine.generate(TEXT, _no_voice(), temperature=0.0)).max())
    assert diff < effect / 100, (diff, effect)


@needs_browser
def test_page_voice_upload_decoded_by_browser(page, engine, voice_files):
    """Non-WAV audio goes through the browser's decoder and resampler, not scipy's: the
    voice must load and speak; the difference to Python is recorded, not bounded."""
    assert page["voices"]["flac16"]["error"] is None, page["voices"]["flac16"]["error"]
    got = _samples(page, "voice_flac16")
    assert np.isfinite(got).all() and np.abs(got).max() > 0
    want = engine.generate(TEXT, engine.voice_from_audio(voice_files["flac16"]), temperature=0.0)
    n = min(got.size, want.size)
    diff = float(np.abs(got[:n] - want[:n]).max())
    (OUTPUT / "flac-voice-diff.json").write_text(
        json.dumps({"samples": [int(got.size), int(want.size)], "max_abs_diff": diff})
    )


@needs_browser
def test_page_voice_npz_matches_python(page, engine, voice_files):
    assert page["voices"]["npz"]["error"] is None, page["voices"]["npz"]["error"]
    want = engine.generate(TEXT, engine.load_voice(voice_files["npz"]), temperature=0.0)
    _assert_close(_samples(page, "voice_npz"), want)


@needs_browser
def test_page_highlights_the_spoken_word(page, engine):
    """With "Word timestamps" checked (enabled: the bundle has heads), the page shows the
    text with one span per word and highlights a word while the audio plays; the events it
    got through the decoder worker are the Python engine's, and the audio is unchanged."""
    from pocket_tts_onnx.word_units import source_words

    assert page["timestampsEnabled"]
    run = page["runs"]["timestamps"]
    _assert_close(
        _samples(page, "timestamps"), engine.generate(LONG_TEXT, _no_voice(), temperature=0.0)
    )
    words = [w.text for w in source_words(LONG_TEXT)]
    assert run["spans"] == words
    assert run["highlight"] in words, run["highlight"]
    events = [
        w
        for c in engine.stream(LONG_TEXT, _no_voice(), timestamps=True, temperature=0.0)
        for w in c.words
    ]
    got = [
        [w["text"], w["index"], w["charStart"], w["charEnd"], w["start"], w["end"]]
        for w in run["words"]
    ]
    _same_words(got, _word_rows(LONG_TEXT, events))
    # Only words the events timed were highlighted (on the playback clock).
    assert run["highlighted"] and set(run["highlighted"]) <= {w.index for w in events}


@needs_browser
def test_page_shows_readable_errors(page):
    empty = page["runs"]["empty"]
    assert "empty" in empty["error"] and empty["stats"] is None
    bad = page["badBundle"]
    assert bad["visible"] and "HTTP 404" in bad["error"] and "manifest" in bad["error"]


@needs_browser
def test_page_failed_load_clears_the_voice(page):
    """A voice was in use when the bad bundle URL was loaded: nothing of it may remain."""
    assert page["named"]["voice"] is not None, "no voice was active before the failed load"
    bad = page["badBundle"]
    assert bad["voice"] is None
    assert bad["voiceStatus"].startswith("Voice: none"), bad["voiceStatus"]
    assert bad["voiceOptions"] == 1 and bad["playDisabled"]


@needs_browser
def test_page_voice_dropdown_lists_bundle_voices(page, bundle):
    m = _manifest(bundle)
    menu = page["voiceMenu"]
    assert menu["options"] == ["", *m["voices"]], menu
    assert menu["selected"] == m["default_voice"]
    assert menu["voice"] == {"name": m["default_voice"], "kind": "bundle"}


@needs_browser
def test_page_named_voice_matches_python(page, engine, bundle):
    name = _other_voice(bundle)
    assert page["named"] == {"voice": {"name": name, "kind": "bundle", "ms": None}, "error": None}
    voice = engine.load_voice(bundle / _manifest(bundle)["voices"][name]["file"])
    want = engine.generate(TEXT, voice, temperature=0.0)
    diff = _assert_close(_samples(page, "voice_named"), want)
    effect = float(np.abs(want - engine.generate(TEXT, _no_voice(), temperature=0.0)).max())
    assert diff < effect / 100, (diff, effect)


@needs_browser
def test_page_fits_a_phone_and_labels_every_control(page):
    assert page["phoneWidth"] <= 390, f"page is {page['phoneWidth']} px wide at a 390 px viewport"
    assert page["unlabelled"] == [], f"controls without a label: {page['unlabelled']}"
    assert page["precisionLabel"] == "Precision"


@needs_browser
def test_page_webgpu_option_runs_and_matches_python(server, engine, tmp_path):
    """?device=webgpu on SwiftShader (no GPU here): every session is created on WebGPU and
    the samples match the Python engine (measured ~2e-7)."""
    plan = {"url": server, "precision": "fp32", "text": TEXT, "out": str(tmp_path / "gpu.f32")}
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    result = _node("webgpu.mjs", str(tmp_path / "plan.json"), timeout=180)
    assert "failure" not in result and result["error"] is None, result
    assert set(result["devices"].values()) == {"webgpu"}, result["devices"]
    got = np.fromfile(tmp_path / "gpu.f32", dtype="<f4")
    want = engine.generate(TEXT, _no_voice(), temperature=0.0)
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    (OUTPUT / "webgpu-diff.json").write_text(json.dumps({"max_abs_diff": diff}))
    assert diff <= TOLERANCE, diff


@needs_browser
def test_page_speed_options_keep_the_samples(server, engine, bundle, tmp_path):
    """The speed options web_bench.py compares (two threads without spinning, the decoder
    waiting for more latents per Mimi call; 64 is clamped to the bundle's block size) give
    the Python engine's samples, in fewer decoder calls."""
    query = "threads=2&spin=0&dmin=64"
    plan = {"url": server, "precision": "fp32", "text": TEXT, "out": str(tmp_path / "o.f32")}
    (tmp_path / "plan.json").write_text(json.dumps({**plan, "query": query}), encoding="utf-8")
    result = _node("webgpu.mjs", str(tmp_path / "plan.json"), timeout=180)
    assert "failure" not in result and result["error"] is None, result
    got = np.fromfile(tmp_path / "o.f32", dtype="<f4")
    _assert_close(got, engine.generate(TEXT, _no_voice(), temperature=0.0))
    m = _manifest(bundle)
    frames = got.size // m["samples_per_latent"]
    block = m["defaults"].get("max_decode_frames", 4)
    assert 1 < result["stats"]["chunks"] <= 1 + -(-(frames - 1) // block), result["stats"]


@needs_browser
def test_page_screenshots(page):
    for name in ("demo.png", "demo-error.png", "demo-phone.png", "demo-words.png"):
        data = (OUTPUT / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
