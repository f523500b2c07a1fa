"""The torch-free audio path must give the numbers upstream pocket-tts gives; torch and
pocket_tts are imported here only as the reference."""

from __future__ import annotations

import logging
import resource
import time
import wave

import numpy as np
import pytest
import soundfile as sf

from pocket_tts_onnx.errors import InvalidInputError, VoiceError
from pocket_tts_onnx.runtime.audio import (
    decode_audio,
    end_on_pause,
    fade_in,
    prepare_voice_audio,
    read_audio,
    write_wav,
)
from pocket_tts_onnx.runtime.voice_file import (
    METADATA_KEY,
    load_upstream_voice_safetensors,
    load_voice_npz,
    save_voice_npz,
)

torch = pytest.importorskip("torch")
upstream_audio = pytest.importorskip("pocket_tts.data.audio")
upstream_utils = pytest.importorskip("pocket_tts.data.audio_utils")

TARGET = 24_000


def speech_like(rate: int, seconds: float, *, end_on_speech: bool, seed: int = 0) -> np.ndarray:
    """Noise bursts ("words") with pauses, over a faint noise floor."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    out = rng.standard_normal(n).astype(np.float32) * 1e-4
    pos = int(0.1 * rate)
    while pos < n:
        length = int(rng.uniform(0.1, 0.4) * rate)
        burst = rng.standard_normal(length) * rng.uniform(0.05, 0.5)
        burst *= np.hanning(length)
        end = min(pos + length, n)
        out[pos:end] += burst[: end - pos].astype(np.float32)
        pos = end + int(rng.uniform(0.05, 0.3) * rate)
    if end_on_speech:
        tail = int(0.15 * rate)
        out[-tail:] += (rng.standard_normal(tail) * 0.3).astype(np.float32)
    else:
        out[-int(0.6 * rate) :] = rng.standard_normal(int(0.6 * rate)).astype(np.float32) * 1e-4
    return out


def upstream_end_on_pause(wav: np.ndarray, rate: int) -> np.ndarray:
    return upstream_utils.end_on_pause(torch.from_numpy(np.array(wav)), rate).numpy()


def upstream_prepare(mono: np.ndarray, rate: int, truncate: bool = False) -> np.ndarray:
    """get_state_for_audio_prompt's audio path, from an audio_read-style [1, N] tensor."""
    wav = torch.from_numpy(np.array(mono, dtype=np.float32))[None]
    if truncate and wav.shape[-1] > int(30 * rate):
        wav = wav[..., : int(30 * rate)]
    wav = upstream_utils.convert_audio(wav, rate, TARGET, 1)
    return upstream_utils.end_on_pause(wav, TARGET)[0].numpy()


# --- end_on_pause -----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [24_000, 16_000])
@pytest.mark.parametrize("end_on_speech", [True, False])
def test_end_on_pause_matches_upstream(rate, end_on_speech):
    wav = speech_like(rate, 3.0, end_on_speech=end_on_speech)
    ours = end_on_pause(wav, rate)
    ref = upstream_end_on_pause(wav[None], rate)[0]
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert not ours[-int(0.08 * rate) :].any()
    if not end_on_speech:
        assert ours.shape[0] < wav.shape[0]  # the long trailing silence was cut


def test_end_on_pause_multichannel_matches_upstream():
    wav = np.stack([speech_like(TARGET, 1.5, end_on_speech=True, seed=s) for s in (1, 2)])
    np.testing.assert_allclose(
        end_on_pause(wav, TARGET), upstream_end_on_pause(wav, TARGET), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("n", [0, 100, 479, 480, 24_000, 24_123])
def test_end_on_pause_silence_matches_upstream(n):
    wav = np.zeros(n, dtype=np.float32)
    ours = end_on_pause(wav, TARGET)
    ref = upstream_end_on_pause(wav[None], TARGET)[0]
    assert ours.shape == ref.shape
    assert not ours.any()


def test_end_on_pause_does_not_modify_input():
    wav = speech_like(TARGET, 1.0, end_on_speech=True)
    before = wav.copy()
    end_on_pause(wav, TARGET)
    np.testing.assert_array_equal(wav, before)


# --- prepare_voice_audio (mixdown + resample + end_on_pause) ----------------------------


@pytest.mark.parametrize("rate", [8_000, 44_100, 96_000, 24_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_prepare_matches_upstream(rate, channels):
    audio = np.stack([speech_like(rate, 1.5, end_on_speech=True, seed=c) for c in range(channels)])
    mono = audio[0] if channels == 1 else audio.T.mean(axis=1)  # audio_read's mixdown
    ref = upstream_prepare(mono, rate)
    ours = prepare_voice_audio(audio if channels > 1 else audio[0], rate, TARGET)
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_prepare_accepts_single_channel_2d():
    wav = speech_like(8_000, 0.5, end_on_speech=True)
    np.testing.assert_array_equal(
        prepare_voice_audio(wav[None], 8_000, TARGET), prepare_voice_audio(wav, 8_000, TARGET)
    )


def test_file_pipeline_matches_upstream(tmp_path):
    rate = 44_100
    stereo = np.stack([speech_like(rate, 2.0, end_on_speech=False, seed=s) for s in (3, 4)])
    path = tmp_path / "voice.wav"
    sf.write(path, stereo.T, rate, subtype="PCM_16")
    ref_wav, ref_rate = upstream_audio.audio_read(path)
    ref = upstream_prepare(ref_wav[0].numpy(), ref_rate, truncate=True)
    mono, got_rate = read_audio(path)
    ours = prepare_voice_audio(mono, got_rate, TARGET, truncate_seconds=30)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_ten_minute_prompt(tmp_path):
    rng = np.random.default_rng(5)
    long = (rng.standard_normal(600 * TARGET, dtype=np.float32) * 0.1).astype(np.float32)
    pause = int(0.08 * TARGET)

    cut = prepare_voice_audio(long, TARGET, TARGET, truncate_seconds=30)
    assert cut.shape[0] <= 30 * TARGET + pause
    ref = upstream_prepare(long, TARGET, truncate=True)
    np.testing.assert_allclose(cut, ref, rtol=0, atol=1e-6)

    full = prepare_voice_audio(long, TARGET, TARGET)
    assert 599 * TARGET < full.shape[0] <= 600 * TARGET + pause

    # Truncation happens before resampling, so a long 44.1 kHz prompt stays cheap.
    cut44 = prepare_voice_audio(np.resize(long, 600 * 44_100), 44_100, TARGET, 30)
    assert cut44.shape[0] <= 30 * TARGET + pause


def test_silent_prompt_is_kept(caplog):
    with caplog.at_level(logging.WARNING):
        out = prepare_voice_audio(np.zeros(16_000, np.float32), 16_000, TARGET)
    assert out.shape == upstream_prepare(np.zeros(16_000, np.float32), 16_000).shape
    assert not out.any()
    assert "silent" in caplog.text


@pytest.mark.parametrize(
    ("audio", "match"),
    [
        (np.array([], np.float32), "too short"),
        (np.array([0.1], np.float32), "too short"),
        (np.array([0.1, np.nan, 0.2] * 100, np.float32), "NaN/Inf"),
        (np.array([0.1, np.inf, 0.2] * 100, np.float32), "NaN/Inf"),
        (np.full((2, 300), -np.inf, np.float32), "NaN/Inf"),
        (np.zeros((300, 2), np.float32), "channels-first"),
        (np.zeros((1, 2, 300), np.float32), "shape"),
        (np.zeros(300, np.int16), "floating-point"),
    ],
)
def test_prepare_rejects_bad_audio(audio, match):
    with pytest.raises(VoiceError, match=match):
        prepare_voice_audio(audio, 16_000, TARGET, source="x.wav")


def test_prepare_rejects_bad_parameters():
    ok = np.zeros(1000, np.float32)
    for rate in (0, -8000, 44_100.5, "x"):
        with pytest.raises(VoiceError, match="sample rate"):
            prepare_voice_audio(ok, rate, TARGET)
    with pytest.raises(VoiceError, match="truncate_seconds"):
        prepare_voice_audio(ok, 16_000, TARGET, truncate_seconds=0)
    with pytest.raises(VoiceError, match="too short"):
        prepare_voice_audio(ok, 16_000, TARGET, min_samples=1920)
    # NaN past the truncation point is never used, so it is not an error.
    tail_nan = np.concatenate([np.full(16_000, 0.1, np.float32), [np.nan]])
    assert np.isfinite(prepare_voice_audio(tail_nan, 16_000, TARGET, truncate_seconds=1)).all()


# --- read_audio --------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2])
def test_read_16bit_wav_equals_upstream(tmp_path, channels):
    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32767, size=(4_000, channels), dtype=np.int16)
    path = tmp_path / "a.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(22_050)
        w.writeframes(pcm.tobytes())
    ours, rate = read_audio(path)
    ref, ref_rate = upstream_audio.audio_read(path)
    assert rate == ref_rate == 22_050
    assert ours.dtype == np.float32 and ours.shape == (4_000,)
    np.testing.assert_array_equal(ours, ref[0].numpy())


@pytest.mark.parametrize(
    ("name", "subtype"),
    [("a.wav", "PCM_24"), ("b.wav", "FLOAT"), ("c.flac", "PCM_16"), ("d.flac", "PCM_24")],
)
def test_read_other_formats(tmp_path, name, subtype):
    rng = np.random.default_rng(8)
    data = (rng.uniform(-0.9, 0.9, size=(3_000, 2))).astype(np.float32)
    path = tmp_path / name
    sf.write(path, data, 48_000, subtype=subtype)
    ours, rate = read_audio(path)
    assert rate == 48_000
    np.testing.assert_allclose(ours, data.mean(axis=1), atol=1e-4)
    if subtype == "FLOAT" and name.endswith(".wav"):
        # Upstream opens every .wav with the stdlib wave module first, which rejects IEEE
        # float WAV (format tag 3) before its soundfile fallback: nothing to compare with.
        with pytest.raises(wave.Error):
            upstream_audio.audio_read(path)
        return
    ref, _ = upstream_audio.audio_read(path)
    np.testing.assert_allclose(ours, ref[0].numpy(), rtol=0, atol=1e-7)


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(VoiceError, match="missing.wav"):
        read_audio(missing)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(VoiceError, match="garbage.wav") as info:
        read_audio(garbage)
    assert ".. " not in str(info.value)  # libsndfile's full stop is not doubled
    with pytest.raises(VoiceError, match="not a file"):
        read_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16_000, subtype="PCM_16")
    with pytest.raises(VoiceError, match="empty.wav.*no samples"):
        read_audio(empty)


def _silent_flac(target, seconds: int, rate: int = 48_000, channels: int = 2) -> None:
    """A FLAC of silence: a few hundred kB that decode to `seconds` of float32 audio."""
    block = np.zeros((rate, channels), np.float32)
    with sf.SoundFile(target, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)


def test_compressed_bomb_decodes_only_what_is_used(tmp_path):
    """10 minutes of stereo silence (~0.2 MB of FLAC) would decode to 230 MB of float32;
    only the 30 s a truncated prompt uses may be decoded."""
    import io
    import tracemalloc

    path = tmp_path / "bomb.flac"
    _silent_flac(path, 600)
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        mono, rate = read_audio(path, max_seconds=30)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        from_bytes, _ = decode_audio(io.BytesIO(path.read_bytes()), "voice_wav", 30)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rate == 48_000 and mono.shape[0] >= 30 * rate and mono.shape[0] <= 30 * rate + 1
    np.testing.assert_array_equal(mono, from_bytes)
    assert peak < 40e6 and peak_bytes < 40e6, (peak, peak_bytes)


def test_untruncated_read_is_bounded(tmp_path, monkeypatch):
    import pocket_tts_onnx.runtime.audio as audio_mod

    path = tmp_path / "long.flac"
    _silent_flac(path, 3, rate=8_000, channels=1)
    monkeypatch.setattr(audio_mod, "MAX_DECODED_SAMPLES", 2 * 8_000)
    with pytest.raises(VoiceError, match="longer than a voice prompt may be .16000 samples"):
        read_audio(path)
    assert read_audio(path, max_seconds=1)[0].shape[0] == 8_000  # truncating is fine


def test_blockwise_mixdown_equals_whole_file(tmp_path, monkeypatch):
    import pocket_tts_onnx.runtime.audio as audio_mod

    rng = np.random.default_rng(9)
    data = rng.uniform(-0.9, 0.9, size=(5_000, 3)).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, data, 16_000, subtype="FLOAT")
    whole, _ = read_audio(path)
    monkeypatch.setattr(audio_mod, "_BLOCK_SAMPLES", 999)  # many small blocks
    np.testing.assert_array_equal(read_audio(path)[0], whole)
    np.testing.assert_array_equal(whole, data.mean(axis=1, dtype=np.float32))


def test_decode_error_is_one_clean_sentence():
    import io

    with pytest.raises(VoiceError) as info:
        decode_audio(io.BytesIO(b"not audio" * 50), "voice_wav")
    message = str(info.value)
    assert "BytesIO" not in message and "0x" not in message and ".. " not in message
    assert message.startswith("cannot read voice_wav: ")


# --- fade_in / write_wav -----------------------------------------------------------------


@pytest.mark.parametrize("n", [50, 120, 2_000])
def test_fade_in_matches_upstream(n):
    audio = np.random.default_rng(9).standard_normal((1, 1, n)).astype(np.float32)
    ref = torch.from_numpy(audio.copy())
    ramp = torch.linspace(0, 1, TARGET // 200)
    k = min(ramp.numel(), ref.shape[-1])
    ref[..., :k] *= ramp[:k]
    ours = fade_in(audio, TARGET)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-6)
    assert not np.shares_memory(ours, audio)


def test_write_wav_round_trip(tmp_path):
    rng = np.random.default_rng(10)
    samples = (rng.standard_normal(5_000) * 0.7).astype(np.float32)
    samples[:3] = [1.5, -1.5, 0.0]
    path = tmp_path / "out.wav"
    path.write_bytes(b"old contents")
    write_wav(path, samples[None, None], TARGET)

    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, TARGET)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    ref = (torch.from_numpy(samples).clamp(-1, 1) * 32767).short().numpy()
    np.testing.assert_array_equal(pcm, ref)  # same samples, no trailing silence
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]

    with pytest.raises(InvalidInputError, match="NaN"):
        write_wav(tmp_path / "nan.wav", np.array([0.0, np.nan], np.float32), TARGET)
    with pytest.raises(InvalidInputError, match="mono"):
        write_wav(tmp_path / "st.wav", np.zeros((2, 10), np.float32), TARGET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


# --- voice files -------------------------------------------------------------------------


def test_voice_npz_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    arrays = {
        "transformer.layers.1.self_attn/cache": rng.standard_normal((2, 1, 3, 4, 5)).astype(
            np.float32
        ),
        "transformer.layers.0.self_attn/offset": np.array([42], np.int64),
        "half": rng.standard_normal(7).astype(np.float16),
        "scalar": np.array(3.5),
    }
    metadata = {"model_id": "pocket-tts/en@abc123", "note": "voix café ☕"}
    path = tmp_path / "voice.ptvoice"  # no .npz suffix is appended
    save_voice_npz(path, arrays, metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.ptvoice"]

    got, meta = load_voice_npz(path)
    assert meta == metadata
    assert list(got) == list(arrays)
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype
        np.testing.assert_array_equal(got[name], arr)
    with np.load(path, allow_pickle=False) as raw:  # plain numpy can read it, no pickle
        assert METADATA_KEY in raw.files


def test_voice_npz_errors(tmp_path):
    with pytest.raises(VoiceError, match="nope.npz"):
        load_voice_npz(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(VoiceError, match="bad.npz"):
        load_voice_npz(bad)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(VoiceError, match="pickled.npz"):
        load_voice_npz(pickled)
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(VoiceError, match="single.npy"):
        load_voice_npz(npy)
    with pytest.raises(InvalidInputError, match="reserved"):
        save_voice_npz(tmp_path / "v.npz", {METADATA_KEY: np.zeros(1)}, {})
    with pytest.raises(InvalidInputError, match="str to str"):
        save_voice_npz(tmp_path / "v.npz", {"a": np.zeros(1)}, {"k": 1})  # type: ignore[dict-item]


def test_upstream_safetensors_voice(tmp_path):
    from pocket_tts import export_model_state

    cache = torch.randn(2, 1, 3, 4, 5)
    path = tmp_path / "voice.safetensors"
    export_model_state(
        {
            "mod.a": {"cache": cache, "offset": torch.tensor([3])},
            "mod.b": {"current_end": torch.zeros(7)},
        },
        path,
    )
    got = load_upstream_voice_safetensors(path)
    assert set(got) == {"mod.a", "mod.b"}
    np.testing.assert_array_equal(got["mod.a"]["cache"], cache.numpy())
    assert got["mod.a"]["cache"].dtype == np.float32
    np.testing.assert_array_equal(got["mod.a"]["offset"], [3])
    assert got["mod.b"] == {"offset": got["mod.b"]["offset"]}
    assert got["mod.b"]["offset"].dtype == np.int64
    np.testing.assert_array_equal(got["mod.b"]["offset"], [7])


def test_upstream_safetensors_errors(tmp_path):
    from safetensors.numpy import save_file

    with pytest.raises(VoiceError, match="gone.safetensors"):
        load_upstream_voice_safetensors(tmp_path / "gone.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 3)
    with pytest.raises(VoiceError, match="corrupt.safetensors"):
        load_upstream_voice_safetensors(corrupt)
    flat = tmp_path / "flat.safetensors"
    save_file({"no_slash": np.zeros(2, np.float32)}, str(flat))
    with pytest.raises(VoiceError, match="no_slash"):
        load_upstream_voice_safetensors(flat)
    import safetensors.torch

    bf16 = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"m/x": torch.zeros(3, dtype=torch.bfloat16)}, str(bf16))
    with pytest.raises(VoiceError, match="bf16.safetensors.*BF16"):
        load_upstream_voice_safetensors(bf16)


def test_prompt_duration_is_bounded_at_any_rate(tmp_path):
    """A 1 Hz 'recording' of 100k samples is 28 hours: resampled to the model's rate it
    would be 2.4e9 samples. Refused by duration, from a file or from memory."""
    path = tmp_path / "slow.wav"
    sf.write(path, np.full(100_000, 0.1, np.float32), 1, subtype="PCM_16")
    with pytest.raises(VoiceError, match="longer than a voice prompt may be"):
        read_audio(path)
    assert read_audio(path, max_seconds=30)[0].shape[0] == 30  # truncation is fine
    with pytest.raises(VoiceError, match="at most 600 s"):
        prepare_voice_audio(np.full(100_000, 0.1, np.float32), 1, TARGET)


def test_odd_sample_rates_cost_bounded_time_and_memory():
    audio = np.random.default_rng(0).standard_normal(2000).astype(np.float32) * 0.1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for rate in (1_000_003, 4_000_037, 4_294_967_291):  # primes: no small polyphase ratio
        out = prepare_voice_audio(audio, rate, 24000)
        assert out.dtype == np.float32 and np.isfinite(out).all()
    assert time.perf_counter() - start < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MB
