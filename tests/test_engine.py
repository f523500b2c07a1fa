"""Torch-free engine: same audio as upstream TTSModel at temperature 0, streaming, voices,
CLI, and clear errors for bad input. Upstream pocket-tts is the oracle here, never imported
by the runtime itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import BLOCK_TORCH, FAMILIES, MULTI_CHUNK, ONE_CHUNK, upstream_audio

import pocket_tts_onnx
from pocket_tts_onnx import (
    NO_VOICE,
    AudioChunk,
    BundleError,
    InvalidInputError,
    PocketTTSOnnx,
    Voice,
    VoiceError,
)
from pocket_tts_onnx.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
PARITY_REPORT = REPO / "test-output" / "parity.json"


def _record(key: str, value) -> None:
    PARITY_REPORT.parent.mkdir(exist_ok=True)
    data = json.loads(PARITY_REPORT.read_text()) if PARITY_REPORT.exists() else {}
    data[key] = value
    PARITY_REPORT.write_text(json.dumps(data, indent=2, sort_keys=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end_parity_with_upstream(bundles, family, voice_audio):
    b = bundles[family]
    model = b.upstream()
    fp32 = PocketTTSOnnx.load(b.bundle, precision="fp32")
    int8 = PocketTTSOnnx.load(b.bundle, precision="int8")
    runs = (
        ("one_chunk", ONE_CHUNK, None),
        ("multi_chunk", MULTI_CHUNK, None),
        ("one_chunk_no_eos", ONE_CHUNK, float("inf")),
    )  # runs to upstream's length estimate
    for name, text, eos in runs:
        ref = upstream_audio(model, voice_audio, text, eos=eos)
        voice = fp32.voice_from_audio((voice_audio, 24000))
        ours = fp32.generate(text, voice, temperature=0.0, eos_threshold=eos)
        assert ours.shape == ref.shape, (family, name)
        err = float(np.max(np.abs(ours - ref)))
        assert err <= 1e-3, (family, name, err)
        quant = int8.generate(
            text, int8.voice_from_audio((voice_audio, 24000)), temperature=0.0, eos_threshold=eos
        )
        n = min(len(quant), len(ref))
        rel = float(np.linalg.norm(quant[:n] - ref[:n]) / max(np.linalg.norm(ref[:n]), 1e-12))
        _record(
            f"{family}/{name}",
            {
                "frames": len(ref) // fp32.manifest.samples_per_latent,
                "fp32_max_abs_error": err,
                "audio_peak": float(np.max(np.abs(ref))),
                "int8_relative_l2_error": rel,
                "int8_same_length": len(quant) == len(ref),
            },
        )
        # INT8 must stay close to upstream (measured <= 4e-4 on these models) and stop at
        # the same frame: a quantization bug shows up as a large error or a different EOS.
        assert len(quant) == len(ref), (family, name, len(quant), len(ref))
        assert rel <= 1e-2, (family, name, rel)


def test_multi_chunk_text_really_has_several_chunks(lsd_bundle):
    from pocket_tts_onnx.text import text_to_chunk_tokens

    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    assert len(text_to_chunk_tokens(MULTI_CHUNK, tts.tokenizer, tts.manifest.text)) >= 3


def test_parity_without_voice_and_with_more_lsd_steps(lsd_bundle):
    model = lsd_bundle.upstream()
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    ref = upstream_audio(model, None, ONE_CHUNK)
    ours = tts.generate(ONE_CHUNK, NO_VOICE, temperature=0.0)
    assert ours.shape == ref.shape and np.max(np.abs(ours - ref)) <= 1e-3
    ref = upstream_audio(model, None, ONE_CHUNK, decode_steps=4)
    ours = tts.generate(ONE_CHUNK, NO_VOICE, temperature=0.0, lsd_steps=4)
    assert ours.shape == ref.shape and np.max(np.abs(ours - ref)) <= 1e-3


def test_upstream_voice_file_loads(lsd_bundle, voice_audio, tmp_path):
    from pocket_tts import export_model_state

    model = lsd_bundle.upstream()
    state = model.get_state_for_audio_prompt(torch.from_numpy(voice_audio)[None])
    path = tmp_path / "voice.safetensors"
    export_model_state(state, path)
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    ref = upstream_audio(model, voice_audio, ONE_CHUNK)
    ours = tts.generate(ONE_CHUNK, tts.load_voice(path), temperature=0.0)
    assert ours.shape == ref.shape and np.max(np.abs(ours - ref)) <= 1e-3


def test_voice_save_load_round_trip(lsd_bundle, voice_audio, tmp_path):
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    voice = tts.voice_from_audio((voice_audio, 24000))
    voice.save(tmp_path / "v.npz")
    np.load(tmp_path / "v.npz", allow_pickle=False)  # no pickle needed
    again = tts.load_voice(tmp_path / "v.npz")
    assert isinstance(again, Voice) and again.states.keys() == voice.states.keys()
    a = tts.generate(ONE_CHUNK, voice, temperature=0.0)
    b = tts.generate(ONE_CHUNK, again, temperature=0.0)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        voice.states["state_0"][...] = 0  # read-only: generation cannot mutate a voice
    spec = tts.graphs["flow_lm_main"].spec
    for s in spec.states:  # the position counter (when the graph has one) round-trips too
        assert again.states[s.name].dtype == np.dtype(s.dtype)
        assert np.array_equal(again.states[s.name], voice.states[s.name])
        if s.upstream_key == "offset":
            assert int(again.states[s.name][0]) == voice.states["state_0"].shape[2]


def test_stream_equals_generate_and_starts_early(lsd_bundle, voice_audio):
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    voice = tts.voice_from_audio((voice_audio, 24000))
    frame = tts.manifest.samples_per_latent
    whole = tts.generate(MULTI_CHUNK, voice, temperature=0.7, seed=11)
    chunks = list(tts.stream(MULTI_CHUNK, voice, temperature=0.7, seed=11))
    assert all(isinstance(c, AudioChunk) and c.sample_rate == tts.sample_rate for c in chunks)
    assert len(chunks) > 1
    streamed = np.concatenate([c.samples for c in chunks])
    # Same latents; decoder calls group frames differently, so only float rounding differs.
    assert streamed.shape == whole.shape and np.max(np.abs(streamed - whole)) < 1e-5
    first = next(iter(tts.stream(MULTI_CHUNK, voice, first_chunk_frames=3, seed=1)))
    assert first.samples.shape[0] >= 3 * frame and first.samples.shape[0] % frame == 0
    other_seed = tts.generate(MULTI_CHUNK, voice, temperature=0.7, seed=12)
    assert not np.array_equal(other_seed[: len(whole)], whole[: len(other_seed)])


def test_closing_the_stream_frees_its_row_and_close_stops_the_threads(lsd_bundle):
    import gc

    gc.collect()  # engines of earlier tests that nobody holds stop their threads now
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    before = threading.active_count()
    stream = tts.stream(MULTI_CHUNK, eos_threshold=float("inf"), max_frames=2000)
    next(stream)
    scheduler = tts._engine_scheduler()
    assert scheduler.stats()["active"] == 1
    stream.close()
    deadline = time.perf_counter() + 5
    while scheduler.stats()["active"] and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert scheduler.stats()["active"] == 0 and scheduler.stats()["kv_rows"] == 0
    tts.close()  # the engine's two threads (flow LM, Mimi) end with it
    assert threading.active_count() == before
    del tts, scheduler, stream
    engine = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    engine.generate(ONE_CHUNK, seed=0)
    assert threading.active_count() == before + 2
    del engine  # an engine nobody holds stops its threads too
    gc.collect()
    deadline = time.perf_counter() + 5
    while threading.active_count() > before and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


@pytest.mark.parametrize("temperature, clamp", [(1.0, 0.5), (0.7, 2.0), (0.3, 0.05)])
def test_truncated_noise_matches_upstream_distribution(temperature, clamp):
    """Our loop-free truncated normal has upstream's distribution (torch's trunc_normal_,
    which upstream's FlowLM calls): same bounds, mean, std and quantiles."""
    from pocket_tts_onnx.runtime.sampling import draw_noise

    n = 200_000
    ours = draw_noise(np.random.default_rng(0), (n,), temperature, clamp)
    ref = torch.empty(n)
    torch.nn.init.trunc_normal_(
        ref, std=temperature**0.5, a=-clamp, b=clamp, generator=torch.Generator().manual_seed(0)
    )
    ref = ref.numpy()
    assert ours.dtype == np.float32 and np.abs(ours).max() <= clamp
    assert abs(ours.mean()) < 0.01 * clamp and abs(ours.std() / ref.std() - 1) < 0.01
    q = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    assert np.allclose(np.quantile(ours, q), np.quantile(ref, q), atol=0.01 * clamp)
    assert not draw_noise(np.random.default_rng(0), (4, 32), 0.0, clamp).any()


def test_runtime_never_imports_torch(lsd_bundle, voice_audio, tmp_path):
    wav = tmp_path / "ref.wav"
    sf.write(wav, voice_audio, 24000)
    script = (
        BLOCK_TORCH
        + f"""
from pocket_tts_onnx import PocketTTSOnnx
tts = PocketTTSOnnx.load({str(lsd_bundle.bundle)!r}, precision="int8", threads=1)
voice = tts.voice_from_audio({str(wav)!r})
voice.save({str(tmp_path / "v.npz")!r})
voice = tts.load_voice({str(tmp_path / "v.npz")!r})
audio = tts.generate("Hello there. Bye now.", voice, seed=1)
chunks = list(tts.stream("Hello there.", None, seed=1))
from pocket_tts_onnx.cli import main
assert main(["say", "Hi.", "--bundle", {str(lsd_bundle.bundle)!r},
             "--out", {str(tmp_path / "o.wav")!r}]) == 0
assert audio.size > 0 and chunks
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "pocket_tts")]
print("ok")
"""
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_public_api_is_pinned():
    assert sorted(pocket_tts_onnx.__all__) == sorted(
        [
            "AudioChunk",
            "BundleError",
            "ExportError",
            "InvalidInputError",
            "Manifest",
            "ModelSourceError",
            "PocketTTSOnnx",
            # additions: voices by name, validated generation parameters, NaN detection
            "NO_VOICE",
            "GenerationConfig",
            "NonFiniteError",
            "QueueFullError",  # the batch scheduler's "retry later"
            "BatchScheduler",  # continuous batching of many streams
            "BatchStream",
            # additions: one generation core (typed per-stream failure, text streams)
            "GenerationError",
            "TextStream",
            # additions: word timestamps
            "TimestampsUnavailableError",
            "PocketTTSOnnxError",
            "UnsupportedVersionError",
            "VerificationError",
            "Voice",
            "VoiceError",
            "WordEvent",
            "__version__",
        ]
    )
    public = {n for n in dir(PocketTTSOnnx) if not n.startswith("_")}
    assert public == {
        "load",
        "from_sessions",
        "sample_rate",
        "voice_from_audio",
        "load_voice",
        "generate",
        "stream",
        "empty_state",
        # additions: voices by name and the public pieces bench and batching build on
        "voices",
        "default_voice",
        "start_state",
        "graphs",
        "sampler",
        "generation_config",
        "new_decoder",
        "fade_in_ramp",
        "text_chunks",
        "generate_batch",
        # additions: incremental text, the scheduler's narrow core, stopping the threads
        "open_stream",
        "core",
        "close",
    }


def test_from_sessions(lsd_bundle):
    import onnxruntime as ort

    from pocket_tts_onnx.manifest import Manifest
    from pocket_tts_onnx.runtime.tokenizer import load_tokenizer

    manifest = Manifest.load(lsd_bundle.bundle)
    sessions = {
        n: ort.InferenceSession(str(lsd_bundle.bundle / g.files["fp32"]))
        for n, g in manifest.graphs.items()
    }
    tokenizer = load_tokenizer(lsd_bundle.bundle / manifest.tokenizer.file, manifest.tokenizer.kind)
    tts = PocketTTSOnnx.from_sessions(manifest, sessions, tokenizer, bundle=lsd_bundle.bundle)
    loaded = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    ours, reference = tts.generate(ONE_CHUNK, seed=3), loaded.generate(ONE_CHUNK, seed=3)
    # Sessions with ORT's default options (thread pool, arena) round differently.
    assert ours.shape == reference.shape and np.max(np.abs(ours - reference)) < 1e-5


# ------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def tts(bundles):
    return PocketTTSOnnx.load(bundles["lsd"].bundle, precision="int8")


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text(tts, text):
    with pytest.raises(InvalidInputError, match="empty"):
        tts.generate(text)


def test_very_long_text_is_chunked_and_finishes(tts):
    text = " ".join(f"Sentence number {i} is here." for i in range(400))[:10_000]
    assert len(text) == 10_000
    chunks = list(tts.stream(text, max_frames=1, seed=0))
    assert len(chunks) > 20


@pytest.mark.parametrize("text", ["Hello \x00\x07 world\x1b.", "Party time 🎉🎉 now!", "ÀÉÎõü ß."])
def test_control_characters_and_emoji(tts, text):
    audio = tts.generate(text, seed=0, max_frames=5)
    assert audio.dtype == np.float32 and audio.size > 0 and np.isfinite(audio).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lsd_steps": 0}, "lsd_steps"),
        ({"lsd_steps": 1.5}, "lsd_steps"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"noise_clamp": 0.0}, "noise_clamp"),
        ({"frames_after_eos": -1}, "frames_after_eos"),
        ({"max_frames": 0}, "max_frames"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_generation_parameters(tts, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        tts.generate("Hello.", **kwargs)


def test_bundle_errors(lsd_bundle, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        PocketTTSOnnx.load(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="precision"):
        PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp16")
    broken = tmp_path / "broken"
    shutil.copytree(lsd_bundle.bundle, broken)
    (broken / "flow_lm_flow_int8.onnx").unlink()
    with pytest.raises(BundleError, match="flow_lm_flow_int8.onnx is missing"):
        PocketTTSOnnx.load(broken)
    data = bytearray((broken / "mimi_decoder.onnx").read_bytes())
    data[-100] ^= 0xFF
    (broken / "mimi_decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="mimi_decoder.onnx does not match the sha256"):
        PocketTTSOnnx.load(broken, precision="fp32")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer"):
        PocketTTSOnnx.load(broken)
    no_int8 = tmp_path / "fp32_only"
    shutil.copytree(lsd_bundle.bundle, no_int8)
    manifest = json.loads((no_int8 / "manifest.json").read_text())
    for g in manifest["graphs"].values():
        del g["files"]["int8"]
        g["external"].pop("int8", None)
    manifest["precisions"] = ["fp32"]  # what an export without --quantize writes
    (no_int8 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="--quantize"):
        PocketTTSOnnx.load(no_int8, precision="int8")


def test_voice_audio_edge_cases(tts, voice_audio):
    rate = tts.sample_rate
    for bad, message in (
        (np.zeros(1, np.float32), "too short"),
        (np.full(4800, np.nan, np.float32), "NaN"),
        (np.array([0.1, np.inf] * 2400, np.float32), "NaN/Inf"),
    ):
        with pytest.raises(VoiceError, match=message):
            tts.voice_from_audio((bad, rate))
    # Documented behaviour: these work.
    silent = tts.voice_from_audio((np.zeros(rate, np.float32), rate))
    stereo = tts.voice_from_audio((np.stack([voice_audio, voice_audio[::-1]]), rate))
    low = tts.voice_from_audio((voice_audio[::3].copy(), 8000))
    high = tts.voice_from_audio((np.repeat(voice_audio, 4), 96000))
    for voice in (silent, stereo, low, high):
        assert tts.generate("Hi there.", voice, max_frames=3, seed=0).size > 0


def test_ten_minute_voice_is_truncated_to_30_seconds(tts):
    rng = np.random.default_rng(0)
    long_audio = (0.1 * rng.standard_normal(10 * 60 * 24000)).astype(np.float32)
    voice = tts.voice_from_audio((long_audio, 24000))
    frames = voice.states["state_0"].shape[2]  # [1, H, frames, d]
    assert frames <= 30 * tts.manifest.frame_rate + 3  # prompt frames (+ BOS, + pause)


def test_voice_from_another_model(bundles, voice_audio, tmp_path):
    other = PocketTTSOnnx.load(bundles["pointwise"].bundle, precision="fp32")
    other.voice_from_audio((voice_audio, 24000)).save(tmp_path / "other.npz")
    tts = PocketTTSOnnx.load(bundles["lsd"].bundle, precision="fp32")
    # Another layer count: the file's states are not this model's (named in the message).
    with pytest.raises(VoiceError, match="state_.*(different model|not a voice for this model)"):
        tts.load_voice(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(VoiceError):
        tts.load_voice(tmp_path / "junk.npz")
    with pytest.raises(VoiceError, match="Voice"):
        tts.generate("Hello.", voice=np.zeros(3))
    with pytest.raises(VoiceError, match="Voice"):
        next(tts.stream("Hello.", voice=np.zeros(3)))


# ------------------------------------------------------------------------------ CLI


def test_cli_say_and_voice(lsd_bundle, voice_audio, tmp_path, monkeypatch, capsys):
    wav = tmp_path / "ref.wav"
    sf.write(wav, np.stack([voice_audio, voice_audio], axis=1), 24000)  # stereo file
    bundle = str(lsd_bundle.bundle)
    assert cli_main(["voice", str(wav), "--bundle", bundle, "--out", str(tmp_path / "v.npz")]) == 0
    out = tmp_path / "out.wav"
    assert (
        cli_main(
            [
                "say",
                "Hello from the command line.",
                "--bundle",
                bundle,
                "--out",
                str(out),
                "--voice",
                str(tmp_path / "v.npz"),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "x realtime" in printed and "noise, not speech" in printed
    audio, rate = sf.read(out)
    assert rate == 24000 and audio.size > 0
    text_file = tmp_path / "t.txt"
    text_file.write_text("From a file.")
    assert (
        cli_main(
            [
                "say",
                "--text-file",
                str(text_file),
                "--bundle",
                bundle,
                "--out",
                str(out),
                "--precision",
                "fp32",
                "--lsd-steps",
                "2",
            ]
        )
        == 0
    )
    monkeypatch.setattr(sys, "stdin", _FakeStdin("From standard input."))
    assert cli_main(["say", "--bundle", bundle, "--out", str(out), "--max-frames", "4"]) == 0
    assert cli_main(["say", "   ", "--bundle", bundle, "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert cli_main(["say", "Hi.", "--bundle", str(tmp_path / "none")]) == 2


class _FakeStdin:
    def __init__(self, text: str):
        self._text = text

    def isatty(self) -> bool:
        return False

    def read(self) -> str:
        return self._text
