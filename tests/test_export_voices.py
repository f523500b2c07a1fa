"""Voices in the bundle (converted from upstream's voice states, verified against upstream),
the stand-in tokenizer.json, and the tokenizer integrity checks.

Upstream pocket-tts is the oracle: voice states come from `get_state_for_audio_prompt`,
token ids from its own SentencePiece and tokenizer.json classes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pocket_tts_onnx.errors import BundleError, ExportError
from pocket_tts_onnx.export import voices as V
from pocket_tts_onnx.manifest import Manifest, file_sha256
from pocket_tts_onnx.runtime.tokenizer import load_tokenizer
from pocket_tts_onnx.runtime.voice_file import load_voice_npz

torch = pytest.importorskip("torch")
upstream_conditioner = pytest.importorskip("pocket_tts.modules.text_conditioner")


def _upstream_voice(model, name: str = "alba") -> dict:
    prompt = V.synthetic_prompt(int(model.config.mimi.sample_rate), name)
    with torch.no_grad():
        return model.get_state_for_audio_prompt(prompt)


def test_random_weight_bundle_ships_a_labelled_voice_equal_to_upstreams(lsd_bundle):
    manifest = Manifest.load(lsd_bundle.bundle)
    assert manifest.default_voice == "alba" and list(manifest.voices) == ["alba"]
    entry = manifest.voices["alba"]
    assert "synthetic" in entry.origin and "not a real voice" in entry.origin
    path = lsd_bundle.bundle / entry.file
    assert file_sha256(path) == entry.sha256
    states, meta = load_voice_npz(path)
    main = manifest.graphs["flow_lm_main"]
    model_id = main.sha256[main.files["fp32"]]  # what the engine's Voice.save records
    assert meta == {"format": "pocket-tts-onnx voice v1", "model_id": model_id}
    # Against upstream: the same synthetic prompt through upstream's own voice path.
    spec = main.spec
    expected = V.convert_upstream_state(
        spec, V.state_to_numpy(_upstream_voice(lsd_bundle.upstream())), "upstream"
    )
    assert list(states) == [s.name for s in spec.states]
    for s in spec.states:
        assert states[s.name].dtype == np.dtype(s.dtype)
        np.testing.assert_allclose(states[s.name], expected[s.name], rtol=0, atol=1e-5)


def test_conversion_follows_the_spec_and_fills_the_counter(lsd_bundle):
    spec = Manifest.load(lsd_bundle.bundle).graphs["flow_lm_main"].spec
    upstream = V.state_to_numpy(_upstream_voice(lsd_bundle.upstream(), "marius"))
    states = V.convert_upstream_state(spec, upstream, "v")
    filled = int(next(iter(upstream.values()))["offset"][0])
    for s in spec.states:
        if s.upstream_key == "offset":
            assert states[s.name].tolist() == [filled]
        else:
            module = upstream[s.upstream_module.split(".", 1)[1]]
            part = 0 if s.upstream_key == "cache.k" else 1
            np.testing.assert_array_equal(
                states[s.name][0], module["cache"][part, 0, :filled].transpose(1, 0, 2)
            )


def test_verification_catches_a_wrong_conversion(lsd_bundle):
    b = lsd_bundle
    model = b.upstream()
    manifest = Manifest.load(b.bundle)
    spec = manifest.graphs["flow_lm_main"].spec
    onnx = b.bundle / manifest.graphs["flow_lm_main"].files["fp32"]
    voice = V.PlannedVoice("x", _upstream_voice(model), "test")
    states = V.convert_upstream_state(spec, V.state_to_numpy(voice.state), "v")
    assert V.verify_voice(model, spec, onnx, voice, states) <= V.VOICE_TOLERANCE
    kv = [s.name for s in spec.states if s.upstream_key.startswith("cache.")]
    swapped = {**states, kv[0]: states[kv[1]], kv[1]: states[kv[0]]}  # K and V exchanged
    assert V.verify_voice(model, spec, onnx, voice, swapped) > 100 * V.VOICE_TOLERANCE


def test_conversion_rejects_foreign_or_broken_states(lsd_bundle):
    spec = Manifest.load(lsd_bundle.bundle).graphs["flow_lm_main"].spec
    upstream = V.state_to_numpy(_upstream_voice(lsd_bundle.upstream()))
    first = next(iter(upstream))
    wide = {k: dict(v) for k, v in upstream.items()}
    wide[first]["cache"] = np.concatenate([wide[first]["cache"]] * 2, axis=3)  # 2x the heads
    with pytest.raises(ExportError, match="different model"):
        V.convert_upstream_state(spec, wide, "voice 'x'")
    nan = {k: dict(v) for k, v in upstream.items()}
    nan[first]["cache"] = nan[first]["cache"].copy()
    nan[first]["cache"][0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ExportError, match="NaN"):
        V.convert_upstream_state(spec, nan, "voice 'x'")
    with pytest.raises(ExportError, match="cache"):
        V.convert_upstream_state(spec, {"other": {}}, "voice 'x'")


def test_voices_option():
    assert V.parse_voices_option("all") == "all"
    assert V.parse_voices_option("none") == "none"
    assert V.parse_voices_option("alba, marius") == ("alba", "marius")
    for bad in ("", ",", "../x", "a b"):
        with pytest.raises(ExportError, match="--voices"):
            V.parse_voices_option(bad)


def test_default_voice_is_upstreams_rule():
    from pocket_tts.default_parameters import get_default_voice_for_language

    from pocket_tts_onnx.export.loading import available_languages

    for language in available_languages():
        assert V.default_voice_for(language, custom=False) == get_default_voice_for_language(
            language
        )
    assert V.default_voice_for("italian", custom=False) == "giovanni"
    assert V.default_voice_for(None, custom=True) == "alba"
    assert set(V.catalog()) >= {"alba", "giovanni", "lola", "juergen", "rafael", "estelle"}


def test_voices_none_and_named(tmp_path):
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle

    manifest, _ = export_bundle(
        ModelSource(demo=True), tmp_path / "none", verify=False, voices="none"
    )
    assert manifest.voices == {} and manifest.default_voice is None
    assert not (tmp_path / "none" / "voices").exists()
    manifest, _ = export_bundle(
        ModelSource(demo=True), tmp_path / "two", verify=False, voices=("marius", "alba")
    )
    # Upstream's default stays the default when it is shipped, whatever the order given.
    assert list(manifest.voices) == ["marius", "alba"] and manifest.default_voice == "alba"
    a, _ = load_voice_npz(tmp_path / "two" / manifest.voices["alba"].file)
    m, _ = load_voice_npz(tmp_path / "two" / manifest.voices["marius"].file)
    assert any(not np.array_equal(a[k], m[k]) for k in a if a[k].dtype.kind == "f")


# ------------------------------------------------------------------ tokenizer.json stand-in
@pytest.fixture(scope="module")
def standin_pair(tmp_path_factory):
    from pocket_tts_onnx.export.standin_tokenizer import (
        sentencepiece_to_tokenizer_json,
        train_standin_tokenizer,
    )

    root = tmp_path_factory.mktemp("standin")
    model = train_standin_tokenizer(700, root / "t.model")
    return model, sentencepiece_to_tokenizer_json(model, root / "tokenizer.json")


def test_standin_tokenizer_json_gives_upstreams_ids(standin_pair):
    from text_corpus import corpus

    model, path = standin_pair
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["model"]["type"] == "Unigram"
    kinds = [n["type"] for n in data["normalizer"]["normalizers"]]
    assert kinds[0] == "Precompiled"  # the .model's own normalization table
    sp = upstream_conditioner.SentencePieceTokenizer(700, str(model))
    up_json = upstream_conditioner.JsonTokenizer(700, str(path))
    ours = load_tokenizer(path, "tokenizers", file_sha256(path), 700)
    for text in corpus():
        ids = sp.encode(text)
        assert up_json.encode(text) == ids, text
        assert ours.encode(text) == ids, text
        assert up_json.decode(ids) == sp.decode(ids) == ours.decode(ids), text


def test_random_init_of_a_tokenizer_json_config_uses_a_json_standin():
    from pocket_tts_onnx.export.loading import ModelSource, load_model

    loaded = load_model(ModelSource(language="english", random_init=True))
    try:
        assert loaded.tokenizer_kind == "tokenizers"
        assert loaded.tokenizer_path.suffix == ".json"
        assert "converted to tokenizer.json" in loaded.tokenizer_origin
        n_bins = loaded.model.flow_lm.conditioner.embed.num_embeddings - 1
        assert load_tokenizer(loaded.tokenizer_path, "tokenizers").vocab_size == n_bins
    finally:
        loaded._tmp.cleanup()


# ------------------------------------------------------------------ integrity
def test_load_tokenizer_refuses_mismatches(standin_pair):
    model, path = standin_pair
    sha = file_sha256(path)
    assert load_tokenizer(path, "tokenizers", sha, 700).vocab_size == 700
    with pytest.raises(BundleError, match="sha256"):
        load_tokenizer(path, "tokenizers", "0" * 64, 700)
    with pytest.raises(BundleError, match="700 pieces.*expects 512"):
        load_tokenizer(path, "tokenizers", sha, 512)
    with pytest.raises(BundleError, match="expects 512"):
        load_tokenizer(model, "sentencepiece", None, 512)


def test_bundle_with_a_swapped_tokenizer_is_refused(lsd_bundle, tmp_path):
    from pocket_tts_onnx import PocketTTSOnnx
    from pocket_tts_onnx.export.standin_tokenizer import train_standin_tokenizer

    bundle = tmp_path / "b"
    shutil.copytree(lsd_bundle.bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == file_sha256(bundle / manifest["tokenizer"]["file"])
    tok = bundle / manifest["tokenizer"]["file"]
    other = train_standin_tokenizer(manifest["tokenizer"]["vocab_size"] + 100, tmp_path / "o.model")
    shutil.copyfile(other, tok)
    with pytest.raises(BundleError, match="tokenizer.*sha256"):
        PocketTTSOnnx.load(bundle, precision="fp32")
    # Even with the digest updated, a vocabulary of another size is refused: its ids would
    # index past the text table (a raw ONNX Runtime Gather error otherwise).
    manifest["tokenizer"]["sha256"] = file_sha256(tok)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="pieces but the model"):
        PocketTTSOnnx.load(bundle, precision="fp32")
