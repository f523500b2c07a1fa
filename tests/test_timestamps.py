"""Word timestamps: the same events as pocket-tts-timestamped 1.4.0 (the fork, PyTorch) on
the same random weights at temperature 0, for three model families and a dozen texts;
batched streams give the same events as single ones; the start/end rule on synthetic
attention (random weights rarely move past the first words); and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import TIMESTAMP_HEADS, family_config

from pocket_tts_onnx import (
    NO_VOICE,
    BatchScheduler,
    InvalidInputError,
    PocketTTSOnnx,
    TimestampsUnavailableError,
    WordEvent,
)
from pocket_tts_onnx.runtime.timestamps import WordAligner
from pocket_tts_onnx.word_units import ChunkUnits, SourceWord, Unit, source_words

fork = pytest.importorskip("pocket_tts_timestamped")

FAMILIES = tuple(TIMESTAMP_HEADS)  # the session bundles exported with timestamp heads
TEXTS = [
    "Hello world, this is a small test.",
    "hello there",
    "Wait... what?! No way; really: yes.",
    "It costs 3.5 dollars, or 42 cents in 1999.",
    "Don't stop-believing, co-op members!",
    "Café naïve façade, déjà vu.",
    "“Quoted” words (in brackets) and — dashes – too",
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the "
    "clocks were striking thirteen. Please call me at noon; we'll talk then! Did you hear "
    "that? This is the very last sentence here.",
    "One. Two. Three. Four. Five. Six.",
    "   leading and trailing spaces   ",
    "UPPER lower MiXeD CaSe",
    "Numbers 1 2 3 and e-mail-like words, x-ray.",
]
EOS = 2.0  # later than the configs' default: random weights then speak more frames


@pytest.fixture(scope="module")
def models(bundles, tmp_path_factory):
    """Per family: (our fp32 engine on the session bundle, the fork's model with the same
    random weights as upstream's)."""
    from pocket_tts_timestamped.models.mimi import build_mimi
    from pocket_tts_timestamped.models.tts_model import TTSModel, stamp_state_names
    from pocket_tts_timestamped.modules import attention
    from pocket_tts_timestamped.utils.config import load_config

    root = tmp_path_factory.mktemp("timestamps")
    out = {}
    for family in FAMILIES:
        upstream = bundles[family].upstream()
        data = family_config(family)
        data["timestamp_heads"] = [
            {"layer": int(h[1 : h.index("H")]), "head": int(h[h.index("H") + 1 :])}
            for h in TIMESTAMP_HEADS[family].split(",")
        ]
        fork_config = root / f"{family}_fork.yaml"
        fork_config.write_text(yaml.safe_dump(data, allow_unicode=True))
        cfg = load_config(fork_config)
        model = TTSModel._from_pydantic_config(cfg, 0.0, 1, None, EOS, origin=None)
        state = upstream.state_dict()
        model.flow_lm.speaker_proj_weight = torch.nn.Parameter(
            torch.zeros_like(state["flow_lm.speaker_proj_weight"])
        )
        model.mimi = build_mimi(cfg.mimi)
        model.load_state_dict(state, strict=True)
        stamp_state_names(model)
        # Upstream's decoder: one frame per call, linear K/V cache (the fork's windowed one
        # rounds differently, ~1e-7).
        model.max_decoder_frames_per_call = 1
        for m in model.mimi.modules():
            if isinstance(m, attention.StreamingMultiheadAttention):
                m._cache_backend = attention._LinearKVCacheBackend(m.num_kv_heads, m.dim_per_head)
        out[family] = (PocketTTSOnnx.load(bundles[family].bundle, precision="fp32"), model)
    return out


def _fork_events(model, text):
    from pocket_tts_timestamped.modules.stateful_module import init_states
    from pocket_tts_timestamped.timestamps import AudioChunk, WordEnd, WordStart

    state = init_states(model.flow_lm, batch_size=1, sequence_length=0)
    events, samples = [], 0
    with torch.no_grad():
        for e in model.generate_audio_with_timestamps_stream(state, text):
            if isinstance(e, AudioChunk):
                samples += e.audio.shape[-1]
            elif isinstance(e, WordStart):
                events.append((e.word, e.word_index, e.start_time, None))
            elif isinstance(e, WordEnd):
                events.append((e.word, e.word_index, e.start_time, e.end_time))
    return events, samples


def _ours(chunks, text):
    events, samples = [], 0
    for chunk in chunks:
        samples += chunk.samples.shape[0]
        for w in chunk.words:
            assert text[w.char_start : w.char_end] == w.text
            events.append((w.text, w.index, w.start, w.end))
    return events, samples


def _same(ours, ref):
    assert [e[:2] for e in ours] == [e[:2] for e in ref]
    for a, b in zip(ours, ref, strict=True):
        assert abs(a[2] - b[2]) <= 0.08 + 1e-9
        assert (a[3] is None) == (b[3] is None)
        assert a[3] is None or abs(a[3] - b[3]) <= 0.08 + 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_same_word_events_as_the_fork(models, family):
    tts, model = models[family]
    compared = 0
    for text in TEXTS:
        ref, ref_samples = _fork_events(model, text)
        stream = tts.stream(text, NO_VOICE, timestamps=True, temperature=0.0, eos_threshold=EOS)
        ours, samples = _ours(stream, text)
        assert samples == ref_samples, (family, text)
        _same(ours, ref)
        if family == "lsd":  # generate() gives the stream's finished words (any family's)
            audio, words = tts.generate(
                text, NO_VOICE, timestamps=True, temperature=0.0, eos_threshold=EOS
            )
            assert [(w.text, w.index, w.start, w.end) for w in words] == [
                e for e in ours if e[3] is not None
            ]
        compared += len(ref)
    assert compared >= len(TEXTS)  # every text gave at least one word event


def test_batched_streams_give_the_same_events(models):
    tts, _ = models["lsd"]
    single = [
        _ours(tts.stream(t, NO_VOICE, timestamps=True, temperature=0.0, eos_threshold=EOS), t)
        for t in TEXTS[:6]
    ]
    with BatchScheduler(tts, max_streams=4) as scheduler:
        streams = [
            scheduler.submit(t, NO_VOICE, timestamps=True, temperature=0.0, eos_threshold=EOS)
            for t in TEXTS[:6]
        ]
        batched = [_ours(s, t) for s, t in zip(streams, TEXTS[:6], strict=True)]
    for (a, na), (b, nb) in zip(single, batched, strict=True):
        assert na == nb
        _same(a, b)


def _units(text: str, words: list[SourceWord]) -> ChunkUnits:
    """A chunk spoken as `text` (already prepared), punctuation after the words."""
    units = [Unit(w.begin, w.end, w) for w in words]
    units.append(Unit(len(text) - 1, len(text), None, synthetic=True))
    return ChunkUnits(tuple(units), np.eye(len(units), dtype=np.float32))


def test_the_rule_on_synthetic_attention_covers_every_word():
    text = "one two three four."
    words = source_words(text)
    aligner = WordAligner(_units(text, words))
    n = len(words) + 1
    events = []
    t = 0.0
    # Attention walks over the words, two voiced frames each, then silence.
    for position in range(len(words)):
        for _ in range(2):
            scores = np.full(n, 1e-4, np.float32)
            scores[position] = 0.9
            events += aligner.frame(scores, True, t)
            t += 0.08
    silent = np.full(n, 1e-4, np.float32)
    silent[len(words) - 1] = 0.9
    events += aligner.frame(silent, False, t)
    events += aligner.finish(t + 0.08)
    ends = [e for e in events if e.end is not None]
    assert [e.text for e in ends] == ["one", "two", "three", "four"]
    times = [t for e in ends for t in (e.start, e.end)]
    assert times == pytest.approx([0.0, 0.16, 0.16, 0.32, 0.32, 0.48, 0.48, 0.64])
    starts = [e for e in events if e.end is None]
    assert [e.text for e in starts] == ["one", "two", "three", "four"]


def test_weak_attention_moves_to_any_later_word_and_silence_before_speech_is_ignored():
    text = "alpha beta gamma."
    words = source_words(text)
    aligner = WordAligner(_units(text, words))
    assert aligner.frame(np.zeros(4, np.float32), False, 0.0) == []  # nothing open yet
    assert [e.text for e in aligner.frame(np.zeros(4, np.float32), True, 0.08)] == ["alpha"]
    weak = np.array([0.0005, 0.0001, 0.5, 0.0], np.float32)  # "gamma" leads, "beta" does not
    events = aligner.frame(weak, True, 0.16)
    assert [(e.text, e.end) for e in events] == [("alpha", 0.16), ("beta", None)]


def test_word_offsets_survive_capitalisation_punctuation_and_chunking(models):
    tts, _ = models["lsd"]
    text = "  hello   world — it’s 3.5 o'clock"
    core = tts.core
    chunks, units = core.word_units(text, core.chunks(text))
    spans = [(u.word.begin, u.word.end) for cu in units for u in cu.units if u.word]
    assert [text[b:e] for b, e in spans] == ["hello", "world", "it’s", "3", "5", "o'clock"]


def test_a_bundle_without_heads_says_so(lsd_bundle, tmp_path):
    import json
    import shutil

    bundle = shutil.copytree(lsd_bundle.bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["timestamps"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    assert tts.manifest.timestamp_heads == ()
    with pytest.raises(TimestampsUnavailableError, match="--timestamp-heads"):
        tts.stream("Hello.", timestamps=True)
    with pytest.raises(TimestampsUnavailableError, match="--timestamp-heads"):
        tts.open_stream(timestamps=True)
    with pytest.raises(TimestampsUnavailableError, match="--timestamp-heads"):
        tts.generate("Hello.", config=tts.generation_config(timestamps=True))


def test_the_switch_is_a_generation_parameter(models):
    tts, _ = models["lsd"]
    config = tts.generation_config(timestamps=True, temperature=0.0, eos_threshold=EOS)
    audio, words = tts.generate(TEXTS[0], NO_VOICE, config=config)
    assert audio.ndim == 1 and all(isinstance(w, WordEvent) for w in words)
    assert words == tts.generate(TEXTS[0], NO_VOICE, timestamps=True, config=config)[1]
    plain = tts.generate(TEXTS[0], NO_VOICE, config=config, timestamps=False)
    np.testing.assert_array_equal(plain, audio)  # timestamps change no sample
    with pytest.raises(InvalidInputError) as info:
        tts.stream("Hello.", timestamps="yes")
    assert info.value.param == "timestamps"


def _pieces(text: str, rng) -> list[str]:
    cuts = sorted(rng.choice(np.arange(1, len(text)), size=12, replace=False))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("text", [TEXTS[7], TEXTS[8], TEXTS[2]])
def test_text_streams_give_offsets_in_the_whole_written_text(models, text):
    """Written in pieces that split words, the events are the whole text's: each names
    `text[char_start:char_end]` with its index among all words, and equal `stream(text)`'s
    where the feed made the same chunks (so the same audio)."""
    tts, _ = models["lsd"]
    params = {"timestamps": True, "temperature": 0.0, "eos_threshold": EOS}
    stream = tts.open_stream(NO_VOICE, **params)
    for piece in _pieces(text, np.random.default_rng(len(text))):
        stream.write(piece)
    stream.end()
    events = [w for chunk in stream for w in chunk.words]
    assert events
    words = source_words(text)
    for w in events:
        assert (w.text, w.char_start, w.char_end) == (
            words[w.index].text,
            words[w.index].begin,
            words[w.index].end,
        )
    feed = tts.core.feed()
    fed = [
        c.text
        for piece in _pieces(text, np.random.default_rng(len(text)))
        for c in feed.write(piece)
    ]
    fed += [c.text for c in feed.end()]
    if fed == [c.text for c in tts.core.chunks(text)]:
        whole = [w for chunk in tts.stream(text, NO_VOICE, **params) for w in chunk.words]
        assert events == whole


def test_word_event_is_public():
    assert WordEvent("a", 0, 0, 1, 0.0).end is None
