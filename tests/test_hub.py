"""The path real users take, end to end and offline: hub download -> export -> speak by name.

A Hugging Face cache is filled in the real layout (tests/hub_cache.py) and every process runs
with `HF_HUB_CACHE` + `HF_HUB_OFFLINE=1`, so upstream's own `download_if_necessary` fetches the
weights, tokenizer and voice states exactly as it does with internet. Both sides run their
real command lines: `python export.py --quantize` then `pocket-tts-onnx say --voice alba`,
against upstream's `pocket-tts generate --voice alba` on the same cache, at temperature 0.

The shipped config is english_2m_2026-10: its hub layout is the english config's (same repos,
pinned revisions, voices under languages/NAME/embeddings/) with 12M parameters, not 110M.
The full-size english and italian runs are in scripts/hub_end_to_end.py. RANDOM WEIGHTS: the
audio is noise, compared sample by sample, never presented as speech.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from hub_cache import fill_hub_cache, hub_env

from pocket_tts_onnx.manifest import Manifest, file_sha256

pytest.importorskip("pocket_tts")

REPO = Path(__file__).resolve().parents[1]
LANGUAGE = "english_2m_2026-10"
TEXT = "Hello world."
# Upstream writes 16-bit PCM: one step is 1/32767; temperature-0 runs agree far below that.
PCM_TOLERANCE = 3 / 32767


def _ours_cli() -> list[str]:
    script = Path(sys.executable).parent / "pocket-tts-onnx"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pocket_tts_onnx.cli"]


def _run(cmd: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _export(env, cwd: Path, out: Path, *args: str) -> Manifest:
    _run([sys.executable, str(REPO / "export.py"), *args, "--output", str(out)], env, cwd)
    return Manifest.load(out)


def _say(env, cwd: Path, bundle: Path, wav: Path, *args: str) -> np.ndarray:
    cmd = [*_ours_cli(), "say", TEXT, "--bundle", str(bundle), "--out", str(wav)]
    _run([*cmd, "--precision", "fp32", "--temperature", "0", *args], env, cwd)
    return sf.read(wav, dtype="float32")[0]


# pocket-tts 4.0.1's `generate` sometimes aborts at interpreter exit, after the WAV is
# written and closed (a native thread torn down during shutdown): SIGABRT with only this line.
_UPSTREAM_EXIT_ABORT = "terminate called without an active exception"


def _upstream_generate(env, cwd: Path, wav: Path, *args: str) -> np.ndarray:
    cmd = [sys.executable, "-m", "pocket_tts", "generate", "--text", TEXT, "-q"]
    cmd += ["--temperature", "0", "--output-path", str(wav), *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    exit_abort = proc.returncode == -6 and proc.stderr.strip() == _UPSTREAM_EXIT_ABORT
    assert proc.returncode == 0 or exit_abort, f"{cmd} failed:\n{proc.stderr[-3000:]}"
    return sf.read(wav, dtype="float32")[0]  # a truncated file fails the comparison


def _assert_same_audio(ours: np.ndarray, upstream: np.ndarray, sample_rate: int) -> None:
    """Upstream's writer appends 200 ms of silence; everything before it must match."""
    assert len(ours) > 0
    assert len(upstream) == len(ours) + sample_rate // 5, (len(upstream), len(ours))
    assert not upstream[len(ours) :].any()
    err = float(np.max(np.abs(upstream[: len(ours)] - ours)))
    assert err <= PCM_TOLERANCE, err


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    return fill_hub_cache(cache, LANGUAGE, voices=["alba", "marius"], alba_audio=True)


def test_real_export_command_then_say_alba(hub, tmp_path):
    env = hub_env(hub.cache)
    bundle = tmp_path / "onnx"
    manifest = _export(env, tmp_path, bundle, "--language", LANGUAGE, "--quantize")

    # Everything came from the hub files, recorded with digests.
    assert not manifest.random_weights
    assert manifest.source["weights_sha256"] == file_sha256(hub.files["weights"])
    assert manifest.tokenizer.sha256 == file_sha256(hub.files["tokenizer"])
    assert manifest.tokenizer.origin.startswith("hf://kyutai/pocket-tts-without-voice-cloning/")
    assert manifest.voice_cloning
    assert list(manifest.voices) == ["alba", "marius"] and manifest.default_voice == "alba"
    for name, entry in manifest.voices.items():
        assert entry.origin.startswith("hf://kyutai/pocket-tts-without-voice-cloning/")
        assert f"/{LANGUAGE}/embeddings/{name}.safetensors@" in entry.origin
        assert file_sha256(bundle / entry.file) == entry.sha256
    assert any("left out" in note for note in manifest.notes)  # the rest of the catalog

    listing = _run([*_ours_cli(), "voices", "--bundle", str(bundle)], env, tmp_path).stdout
    assert "* alba" in listing and "marius" in listing

    ours = _say(env, tmp_path, bundle, tmp_path / "ours.wav", "--voice", "alba")
    upstream = _upstream_generate(
        env, tmp_path, tmp_path / "up.wav", "--language", LANGUAGE, "--voice", "alba"
    )
    _assert_same_audio(ours, upstream, manifest.sample_rate)

    from pocket_tts_onnx import PocketTTSOnnx

    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    assert set(tts.voices) == {"alba", "marius"}
    audio = tts.generate(TEXT, voice="alba", temperature=0.0)
    # The WAV holds trunc(x * 32767) as int16 (upstream's convention), read back as / 32768.
    pcm = np.trunc(np.clip(audio, -1, 1) * 32767)
    assert np.max(np.abs(pcm - ours * 32768)) <= 1
    # No voice given: upstream's default voice for the language, as `pocket-tts generate`.
    np.testing.assert_array_equal(tts.generate(TEXT, temperature=0.0), audio)
    marius = tts.generate(TEXT, voice="marius", temperature=0.0)
    assert marius.shape != audio.shape or np.abs(marius - audio).max() > 1e-5  # another voice


def test_weights_without_voice_cloning(tmp_path_factory, tmp_path):
    """No access to the gated weights: upstream falls back to weights_path_without_voice_cloning
    and the predefined voices are the only voices."""
    cache = tmp_path_factory.mktemp("hf-cache-nocloning")
    hub = fill_hub_cache(cache, LANGUAGE, voices=["alba"], cloning=False)
    env = hub_env(cache)
    bundle = tmp_path / "onnx"
    # --no-verify: what this checks is the weights fallback, and the audio below is compared
    # with upstream's sample by sample (the other two tests run the export's verification).
    manifest = _export(env, tmp_path, bundle, "--language", LANGUAGE, "--no-verify")
    assert not manifest.voice_cloning
    assert manifest.source["weights"].startswith("hf://kyutai/pocket-tts-without-voice-cloning/")
    assert manifest.source["weights_sha256"] == file_sha256(hub.files["weights"])
    assert list(manifest.voices) == ["alba"] and manifest.default_voice == "alba"

    ours = _say(env, tmp_path, bundle, tmp_path / "ours.wav", "--voice", "alba")
    upstream = _upstream_generate(
        env, tmp_path, tmp_path / "up.wav", "--language", LANGUAGE, "--voice", "alba"
    )
    _assert_same_audio(ours, upstream, manifest.sample_rate)

    sf.write(tmp_path / "ref.wav", np.zeros(24000, np.float32), 24000)
    cmd = [*_ours_cli(), "say", TEXT, "--bundle", str(bundle), "--precision", "fp32"]
    cmd += ["--voice", "ref.wav"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "voice cloning" in proc.stderr


def test_custom_config_defaults_to_albas_recording(hub, tmp_path):
    """A custom config cannot use states precomputed with the released weights; like upstream,
    its default voice is alba's recording, fetched from the hub and encoded by the model.
    This config also takes its tokenizer as a hub tokenizer.json (english's, same 4000-piece
    size), so the tokenizer.json format runs the whole real path too."""
    from hub_cache import put_file
    from pocket_tts.utils.config import CONFIGS_DIR

    from pocket_tts_onnx.export.standin_tokenizer import sentencepiece_to_tokenizer_json

    env = hub_env(hub.cache)
    config = yaml.safe_load((CONFIGS_DIR / f"{LANGUAGE}.yaml").read_text())
    english = yaml.safe_load((CONFIGS_DIR / "english.yaml").read_text())
    lookup = english["flow_lm"]["lookup_table"]
    assert lookup["n_bins"] == config["flow_lm"]["lookup_table"]["n_bins"]
    as_json = sentencepiece_to_tokenizer_json(hub.files["tokenizer"], tmp_path / "t.json")
    put_file(hub.cache, lookup["tokenizer_path"], as_json)
    config["flow_lm"]["lookup_table"].update(
        tokenizer="tokenizers", tokenizer_path=lookup["tokenizer_path"]
    )
    weights = tmp_path / "my_model.safetensors"
    shutil.copyfile(hub.files["weights"], weights)
    config["weights_path"] = str(weights)
    config.pop("weights_path_without_voice_cloning", None)
    custom = tmp_path / "my_model.yaml"
    custom.write_text(yaml.safe_dump(config))

    bundle = tmp_path / "onnx"
    manifest = _export(env, tmp_path, bundle, "--config", str(custom))
    assert list(manifest.voices) == ["alba"] and manifest.default_voice == "alba"
    assert manifest.tokenizer.kind == "tokenizers" and manifest.tokenizer.file == "tokenizer.json"
    assert manifest.tokenizer.sha256 == file_sha256(as_json)
    assert manifest.voices["alba"].origin == (
        "encoded at export from hf://kyutai/tts-voices/alba-mackenna/casual.wav"
    )
    ours = _say(env, tmp_path, bundle, tmp_path / "ours.wav")  # the default voice
    upstream = _upstream_generate(env, tmp_path, tmp_path / "up.wav", "--config", str(custom))
    _assert_same_audio(ours, upstream, manifest.sample_rate)
    report = json.loads((bundle / "verify_report.json").read_text())
    assert report  # the graphs were verified as in every export
