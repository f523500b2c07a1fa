"""Audio encodings: the server's response formats and the files `say --out` writes.

wav and pcm stream: a WAV header with unknown length goes out first, then 16-bit PCM as each
chunk is decoded. flac, mp3 and opus are encoded by libsndfile (through soundfile, already a
runtime dependency) after generation, because its encoders need the whole file (they seek
back to write headers); which of them exist depends on the libsndfile build, so they are
probed once at startup.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf

# 0xFFFFFFFF in the RIFF and data sizes means "length unknown": what streaming WAV writers
# (ffmpeg, sox) emit; players read until the connection ends.
UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    streams: bool  # bytes leave as frames are decoded (else: after generation)
    sf_format: str | None = None
    sf_subtype: str | None = None


_ALL = (
    AudioFormat("wav", "audio/wav", True),
    AudioFormat("pcm", "audio/pcm", True),
    AudioFormat("flac", "audio/flac", False, "FLAC", "PCM_16"),
    AudioFormat("mp3", "audio/mpeg", False, "MP3", "MPEG_LAYER_III"),
    AudioFormat("opus", "audio/ogg; codecs=opus", False, "OGG", "OPUS"),
)


# File suffixes and the format each asks for (`say --out speech.mp3`).
SUFFIXES = {
    ".wav": "wav",
    ".flac": "flac",
    ".mp3": "mp3",
    ".opus": "opus",
    ".ogg": "opus",
    ".pcm": "pcm",
    ".raw": "pcm",
}


@lru_cache(maxsize=8)
def supported_formats(sample_rate: int) -> dict[str, AudioFormat]:
    """The formats this machine can produce at `sample_rate`, probed by encoding 10 ms."""
    out = {}
    for fmt in _ALL:
        if fmt.sf_format is None:
            out[fmt.name] = fmt
            continue
        try:
            encode_file(np.zeros(sample_rate // 100, np.float32), sample_rate, fmt)
        except Exception:  # not in this libsndfile build, or not at this rate (opus)
            continue
        out[fmt.name] = fmt
    return out


def wav_header(sample_rate: int) -> bytes:
    """44-byte header of a mono 16-bit PCM WAV of unknown length."""
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )


def pcm16(samples: np.ndarray) -> bytes:
    """float [-1, 1] -> 16-bit little-endian PCM, scaled and truncated as upstream's server
    does (x * 32767 toward zero); NaN becomes 0 rather than an undefined cast."""
    x = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0)
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def encode_file(samples: np.ndarray, sample_rate: int, fmt: AudioFormat) -> bytes:
    """A whole file in a libsndfile format."""
    buf = io.BytesIO()
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    sf.write(buf, x, sample_rate, format=fmt.sf_format, subtype=fmt.sf_subtype)
    return buf.getvalue()


def encode(samples: np.ndarray, sample_rate: int, fmt: AudioFormat) -> bytes:
    """A whole file of `samples` in a non-WAV format: raw 16-bit PCM or a libsndfile one."""
    return pcm16(samples) if fmt.name == "pcm" else encode_file(samples, sample_rate, fmt)
