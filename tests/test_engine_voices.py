"""Voices by name (issue 8, runtime side) and voice-file checks: a bundle's voices load by
name with their sha256 checked and are cached; None means the default voice, NO_VOICE none;
upstream voice files fill the position counter; malformed files fail with VoiceError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pocket_tts_onnx import NO_VOICE, BundleError, PocketTTSOnnx, VoiceError
from pocket_tts_onnx.cli import main as cli_main
from pocket_tts_onnx.manifest import file_sha256

TEXT = "Hello world, this is a small test."


@pytest.fixture()
def voiced_bundle(lsd_bundle, voice_audio, tmp_path):
    """A copy of the tiny bundle with our own voice entry "tester" as the default."""
    bundle = tmp_path / "bundle"
    shutil.copytree(lsd_bundle.bundle, bundle)
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    (bundle / "voices").mkdir(exist_ok=True)
    voice = tts.voice_from_audio((voice_audio, 24000))
    voice.save(bundle / "voices" / "tester.npz")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("voices", {})["tester"] = {
        "file": "voices/tester.npz",
        "sha256": file_sha256(bundle / "voices" / "tester.npz"),
        "origin": "test: voice_from_audio on noise bursts",
    }
    manifest["default_voice"] = "tester"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle, voice


def test_voice_by_name_and_default(voiced_bundle):
    bundle, voice = voiced_bundle
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    assert "tester" in tts.voices and tts.default_voice == "tester"
    by_object = tts.generate(TEXT, voice, seed=1, max_frames=6)
    by_name = tts.generate(TEXT, "tester", seed=1, max_frames=6)
    by_default = tts.generate(TEXT, None, seed=1, max_frames=6)
    streamed = np.concatenate([c.samples for c in tts.stream(TEXT, "tester", seed=1, max_frames=6)])
    assert np.array_equal(by_object, by_name) and np.array_equal(by_name, by_default)
    assert np.max(np.abs(streamed - by_name)) < 1e-5
    none = tts.generate(TEXT, NO_VOICE, seed=1, max_frames=6)
    assert not np.array_equal(none, by_name)
    assert all(not v.size for v in tts.start_state(NO_VOICE).values() if v.dtype.kind == "f")
    assert tts.start_state("tester") is tts.start_state("tester")  # loaded once, cached
    assert repr(NO_VOICE) == "NO_VOICE"


def test_unknown_name_lists_the_voices(voiced_bundle):
    tts = PocketTTSOnnx.load(voiced_bundle[0], precision="fp32")
    with pytest.raises(VoiceError, match=r"'nobody'.*available:.*tester"):
        tts.generate(TEXT, "nobody")
    with pytest.raises(VoiceError, match="tester"):
        tts.stream(TEXT, "nobody")


def test_voice_file_sha_and_path_are_checked(voiced_bundle):
    bundle, _ = voiced_bundle
    path = bundle / "voices" / "tester.npz"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    with pytest.raises(BundleError, match="sha256"):
        tts.generate(TEXT, "tester")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["voices"]["tester"]["file"] = "../outside.npz"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):  # at load or at first use
        PocketTTSOnnx.load(bundle, precision="fp32").generate(TEXT, "tester")


def test_default_voice_needs_the_bundle_folder(voiced_bundle):
    bundle, _ = voiced_bundle
    loaded = PocketTTSOnnx.load(bundle, precision="fp32")
    sessions = {n: loaded.graphs[n].session for n in ("text_conditioner", "mimi_encoder",
                "flow_lm_step", "flow_lm_flow", "mimi_decoder_batched")}  # fmt: skip
    bare = PocketTTSOnnx.from_sessions(loaded.manifest, sessions, loaded.tokenizer)
    with pytest.raises(VoiceError, match="bundle="):
        bare.generate(TEXT)
    assert bare.generate(TEXT, NO_VOICE, max_frames=2, seed=0).size > 0
    with_bundle = PocketTTSOnnx.from_sessions(
        loaded.manifest, sessions, loaded.tokenizer, bundle=bundle
    )
    assert with_bundle.generate(TEXT, max_frames=2, seed=0).size > 0


def test_cli_say_with_a_voice_name(voiced_bundle, tmp_path, capsys):
    bundle = str(voiced_bundle[0])
    out = tmp_path / "o.wav"
    args = ["say", "Hi there.", "--bundle", bundle, "--out", str(out), "--max-frames", "3"]
    assert cli_main([*args, "--voice", "tester"]) == 0 and out.stat().st_size > 44
    assert cli_main([*args, "--voice", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "voices: alba, tester" in err and "pocket-tts-onnx voices" in err, err
    assert cli_main([*args, "--voice", str(tmp_path / "missing.wav")]) == 2


def _upstream_voice(lsd_bundle, voice_audio):
    model = lsd_bundle.upstream()
    return model.get_state_for_audio_prompt(torch.from_numpy(voice_audio)[None])


def test_upstream_voice_fills_the_position_counter(lsd_bundle, voice_audio, tmp_path):
    from pocket_tts import export_model_state

    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    export_model_state(_upstream_voice(lsd_bundle, voice_audio), tmp_path / "v.safetensors")
    voice = tts.load_voice(tmp_path / "v.safetensors")
    ours = tts.voice_from_audio((voice_audio, 24000))
    spec = tts.graphs["flow_lm_main"].spec
    assert [s.name for s in spec.states] == list(voice.states)
    for s in spec.states:
        assert voice.states[s.name].dtype == np.dtype(s.dtype)
        assert np.allclose(voice.states[s.name], ours.states[s.name], atol=1e-4)
    voice.save(tmp_path / "v.npz")
    again = tts.load_voice(tmp_path / "v.npz")
    assert all(np.array_equal(again.states[k], v) for k, v in voice.states.items())


def test_malformed_upstream_voice_files(lsd_bundle, voice_audio, tmp_path):
    from safetensors.numpy import save_file

    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    state = _upstream_voice(lsd_bundle, voice_audio)
    flat = {f"{m}/{k}": v.numpy() for m, d in state.items() for k, v in d.items()}
    module = next(m for m, d in state.items() if "cache" in d)
    cases = {
        "negative": {f"{module}/offset": np.array([-3], np.int64)},
        "beyond": {f"{module}/offset": np.array([10**6], np.int64)},
        "four_d": {f"{module}/cache": flat[f"{module}/cache"][0]},
    }
    for name, change in cases.items():
        save_file({**flat, **change}, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(VoiceError, match=module):
            tts.load_voice(tmp_path / f"{name}.safetensors")


def test_unknown_voice_name_hints_at_case(voiced_bundle):
    bundle, _ = voiced_bundle
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    with pytest.raises(VoiceError, match=r"did you mean 'tester'\? \(names are case-sensitive\)"):
        tts.generate(TEXT, "TESTER", max_frames=2)
    with pytest.raises(VoiceError) as info:
        tts.generate(TEXT, "nobody", max_frames=2)
    assert "did you mean" not in str(info.value) and "tester" in str(info.value)
