"""Voice files are untrusted: declared sizes are checked before anything is decompressed,
only the states the caller names are accepted, values must be finite, and no message ever
suggests loading a file unsafely (issue 12)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from pocket_tts_onnx.errors import VoiceError
from pocket_tts_onnx.runtime.voice_file import (
    METADATA_KEY,
    load_upstream_voice_safetensors,
    load_voice_npz,
    save_voice_npz,
)

# Two layers' K/V caches, like flow_lm_main's states, with the dynamic "kv_len" axis.
EXPECTED = {f"state_{i}": ([1, 2, "kv_len", 4], "float32") for i in range(4)}


def _states(kv_len: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((1, 2, kv_len, 4)).astype(np.float32) for n in EXPECTED}


def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _zero_bomb(path: Path, shape, name="state_0") -> Path:
    """A valid one-member npz declaring `shape` float32 zeros, deflated ~1000:1; written
    block by block (flush-separated deflate blocks), never holding the array in memory."""
    header = _npy_header(shape)
    n = int(np.prod(shape)) * 4
    block = 16 << 20
    zeros = bytes(block)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)]
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    z = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    full, rest = divmod(n, block)
    for _ in range(full):
        parts.append(z)
        crc = zlib.crc32(zeros, crc)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts.append(c.compress(bytes(rest)) + c.flush())
    crc = zlib.crc32(bytes(rest), crc)
    data = b"".join(parts)
    fname = f"{name}.npy".encode()
    size = len(header) + n
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(fname), 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        *(0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size, len(fname)),
        *(0, 0, 0, 0, 0, 0),
    )
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(fname), len(local + fname + data), 0
    )
    path.write_bytes(local + fname + data + central + fname + end)
    return path


def _peak_rss_delta_mb(path: Path, expected: dict | None) -> tuple[float, str]:
    """Load `path` in a fresh process; (peak RSS growth in MB during the load, error)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc (Linux)")
    script = f"""
import psutil
from pocket_tts_onnx.runtime.voice_file import load_voice_npz
base = psutil.Process().memory_info().rss
try:
    load_voice_npz({str(path)!r}, expected={expected!r})
    err = "loaded"
except Exception as e:
    err = type(e).__name__ + ": " + str(e)
# VmHWM is this process's own peak (ru_maxrss would include the parent's, across exec).
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print((peak - base) / 1e6)
print(err)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    return float(out[0]), out[1]


@pytest.mark.parametrize(
    "expected", [None, {"state_0": EXPECTED["state_0"]}], ids=["no_expected", "expected"]
)
def test_compressed_zeros_are_refused_before_decompressing(tmp_path, expected):
    # 640 MB of declared zeros in a <1 MB file: the old loader decompressed it all first.
    bomb = _zero_bomb(tmp_path / "bomb.npz", (1, 2, 20_000_000, 4))
    assert bomb.stat().st_size < 2_000_000
    with zipfile.ZipFile(bomb) as z:
        assert z.testzip() is None  # a well-formed archive, not a broken one
    grew, err = _peak_rss_delta_mb(bomb, expected)
    assert err.startswith("VoiceError") and "limit" in err, err
    assert grew < 150, f"peak RSS grew by {grew:.0f} MB while refusing the file"


def test_header_declaring_1e12_elements_is_a_voice_error(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("state_0.npy", _npy_header((10**12,)) + bytes(64))
    with pytest.raises(VoiceError, match="over the .* limit"):
        load_voice_npz(path)
    with pytest.raises(VoiceError):
        load_voice_npz(path, expected=EXPECTED)


def test_unknown_members_are_refused_not_kept(tmp_path):
    path = tmp_path / "extra.npz"
    save_voice_npz(path, {**_states(), "junk": np.zeros((1000, 1000), np.float32)}, {})
    with pytest.raises(VoiceError, match="'junk', which is not a state"):
        load_voice_npz(path, expected=EXPECTED)
    for shadow in ("text_embeddings", "sequence"):  # engine inputs must never come from a file
        path = tmp_path / f"{shadow}.npz"
        save_voice_npz(path, {**_states(), shadow: np.zeros((1, 1, 8), np.float32)}, {})
        with pytest.raises(VoiceError, match=shadow):
            load_voice_npz(path, expected=EXPECTED)


def test_expected_states_shapes_and_lengths(tmp_path):
    good = tmp_path / "good.npz"
    save_voice_npz(good, _states(), {"k": "v"})
    arrays, meta = load_voice_npz(good, expected=EXPECTED)
    assert list(arrays) == list(EXPECTED) and meta == {"k": "v"}

    missing = tmp_path / "missing.npz"
    save_voice_npz(missing, {k: v for k, v in _states().items() if k != "state_3"}, {})
    with pytest.raises(VoiceError, match="lacks state 'state_3'"):
        load_voice_npz(missing, expected=EXPECTED)

    wrong = tmp_path / "wrong.npz"
    save_voice_npz(wrong, {**_states(), "state_1": np.zeros((1, 3, 3, 4), np.float32)}, {})
    with pytest.raises(VoiceError, match="'state_1' has shape \\[1, 3, 3, 4\\]"):
        load_voice_npz(wrong, expected=EXPECTED)

    dtype = tmp_path / "dtype.npz"
    save_voice_npz(dtype, {**_states(), "state_2": np.zeros((1, 2, 3, 4), np.float64)}, {})
    with pytest.raises(VoiceError, match="float64"):
        load_voice_npz(dtype, expected=EXPECTED)

    # K and V (or two layers) holding different numbers of positions.
    ragged = tmp_path / "ragged.npz"
    save_voice_npz(ragged, {**_states(3), "state_1": _states(5)["state_1"]}, {})
    with pytest.raises(VoiceError, match="kv_len=5 .* has 3"):
        load_voice_npz(ragged, expected=EXPECTED)


def test_non_finite_states_are_refused(tmp_path):
    for bad in (np.nan, np.inf):
        states = _states()
        states["state_2"][0, 0, 0, 0] = bad
        path = tmp_path / "nan.npz"
        save_voice_npz(path, states, {})
        with pytest.raises(VoiceError, match="'state_2' holds NaN or Inf"):
            load_voice_npz(path)


def test_upstream_safetensors_non_finite_or_oversized(tmp_path):
    from safetensors.numpy import save_file

    cache = np.zeros((2, 1, 3, 2, 4), np.float32)
    cache[1, 0, 0, 0, 0] = np.nan
    path = tmp_path / "nan.safetensors"
    save_file({"layer/cache": cache}, str(path))
    with pytest.raises(VoiceError, match="NaN or Inf"):
        load_upstream_voice_safetensors(path)
    with pytest.raises(VoiceError, match="over the .* limit"):
        load_upstream_voice_safetensors(path, max_bytes=64)


def test_no_message_suggests_unsafe_loading(tmp_path):
    import soundfile as sf

    wav = tmp_path / "ref.wav"
    sf.write(wav, np.zeros(2400, np.float32), 24000)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    metadata_obj = tmp_path / "meta.npz"
    np.savez(metadata_obj, **{METADATA_KEY: np.array(["x"], dtype=object)})
    for path in (wav, pickled, single, metadata_obj):
        with pytest.raises(VoiceError) as info:
            load_voice_npz(path)
        text = str(info.value).lower()
        assert "allow_pickle" not in text and "unsafe" not in text, text
        assert path.name in str(info.value)
    with pytest.raises(VoiceError, match="voice_from_audio"):
        load_voice_npz(wav)


def test_saved_voice_round_trips_with_metadata(tmp_path):
    path = tmp_path / "v.npz"
    save_voice_npz(path, _states(), {"format": "x", "note": "café"})
    arrays, meta = load_voice_npz(path, expected=EXPECTED)
    assert meta == {"format": "x", "note": "café"}
    with np.load(path, allow_pickle=False) as raw:
        assert json.loads(raw[METADATA_KEY].tobytes()) == meta
