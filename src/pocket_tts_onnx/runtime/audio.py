"""Torch-free audio I/O and voice-prompt preparation.

The voice prompt must reach the Mimi encoder exactly as upstream pocket-tts would feed it
(mixdown, optional truncation, polyphase resampling, ``end_on_pause``), otherwise the
precomputed voice state and therefore the generated voice drift from upstream.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import wave
from pathlib import Path

import numpy as np
import soundfile as sf

from pocket_tts_onnx.errors import InvalidInputError, VoiceError

__all__ = [
    "decode_audio",
    "end_on_pause",
    "fade_in",
    "prepare_voice_audio",
    "read_audio",
    "write_audio",
    "write_wav",
]

logger = logging.getLogger(__name__)


def _check_rate(sample_rate: object, what: str) -> int:
    """Rates must be positive integers: the resampling ratio is derived from their gcd."""
    if isinstance(sample_rate, (bool, np.bool_)):
        raise VoiceError(f"{what} must be a positive integer, got {sample_rate!r}")
    try:
        as_int = int(sample_rate)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise VoiceError(f"{what} must be a positive integer, got {sample_rate!r}") from None
    if as_int != sample_rate or as_int <= 0:
        raise VoiceError(f"{what} must be a positive integer, got {sample_rate!r}")
    return as_int


# Decoded samples a voice prompt may hold, whatever its format or rate: 10 minutes at 48 kHz
# (115 MB as float32). Compressed files (FLAC/OGG of silence) decode to thousands of times
# their size, so the bound is on what is decoded, never on the file.
MAX_DECODED_SAMPLES = 600 * 48_000
# Longest voice prompt in seconds, at any rate: a 1 Hz "recording" of a million samples is
# 11 days of audio, tens of GB once resampled to the model's rate.
MAX_PROMPT_SECONDS = 600
# Frames x channels read per block: the mixdown keeps one block of all channels at a time.
_BLOCK_SAMPLES = 1 << 20


def read_audio(
    path: str | os.PathLike[str], max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Read any file libsndfile understands as mono float32 ``[N]`` plus its sample rate.

    Only the first ``max_seconds`` are decoded (``None``: all of it), and never more than
    ``MAX_DECODED_SAMPLES``. Channels are averaged after converting to float32, which for
    16-bit PCM gives the same numbers as upstream's ``audio_read`` (int16 / 32768, then the
    channel mean).
    """
    path = Path(path)
    if not path.exists():
        raise VoiceError(f"voice audio file not found: {str(path)!r}")
    if not path.is_file():
        raise VoiceError(f"voice audio path is not a file: {str(path)!r}")
    return decode_audio(str(path), f"voice audio file {str(path)!r}", max_seconds)


def decode_audio(source, what: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a path or a binary file object to mono float32 ``[N]`` and its rate, reading
    block by block and stopping after ``max_seconds`` (or ``MAX_DECODED_SAMPLES``), so
    neither a long file nor a decompression bomb can take more memory than the prompt
    uses. ``what`` names the source in error messages."""
    try:
        with sf.SoundFile(source) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            _check_rate(rate, f"{what}: sample rate")
            want = min(MAX_DECODED_SAMPLES, MAX_PROMPT_SECONDS * rate)
            if max_seconds is not None:
                want = min(want, max(1, math.ceil(max_seconds * rate)))
            block = max(1, _BLOCK_SAMPLES // channels)
            pieces, total = [], 0
            while total < want + 1:  # one sample past `want` tells "longer" from "exact"
                data = f.read(min(block, want + 1 - total), dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                mono = data[:, 0] if channels == 1 else data.mean(axis=1, dtype=np.float32)
                pieces.append(np.array(mono, dtype=np.float32))
                total += data.shape[0]
    except VoiceError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        # libsndfile's own words, without the file object's repr or a second full stop.
        detail = (getattr(exc, "error_string", None) or str(exc)).strip().rstrip(".")
        raise VoiceError(
            f"cannot read {what}: {detail}. Use a format libsndfile reads (WAV, FLAC, OGG, "
            "MP3, ...)."
        ) from exc
    if total > want and (max_seconds is None or want < math.ceil(max_seconds * rate)):
        raise VoiceError(
            f"{what} is longer than a voice prompt may be ({want} samples, "
            f"{want / rate:.0f} s at {rate} Hz); use the first 30 s (truncate) or a shorter "
            "recording"
        )
    if total == 0:
        raise VoiceError(f"{what} contains no samples")
    mono = np.concatenate(pieces)[:want]
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _to_mono(audio: object) -> np.ndarray:
    """Accept ``[N]`` or channels-first ``[C, N]`` float audio and return float32 ``[N]``."""
    arr = np.asarray(audio)
    if arr.dtype.kind not in "f":
        raise VoiceError(
            f"voice audio must hold floating-point samples (nominally in [-1, 1]), got dtype "
            f"{arr.dtype}; divide integer PCM by its full scale (e.g. 32768 for int16) first"
        )
    if arr.ndim == 1:
        return arr.astype(np.float32, copy=False)
    if arr.ndim != 2:
        raise VoiceError(
            f"voice audio must be [samples] or [channels, samples], got shape {arr.shape}"
        )
    channels, samples = arr.shape
    if channels > samples:
        raise VoiceError(
            f"voice audio of shape {arr.shape} has more channels than samples; audio must be "
            "channels-first [channels, samples] (transpose a [samples, channels] array)"
        )
    arr = arr.astype(np.float32, copy=False)
    return arr[0] if channels == 1 else arr.mean(axis=0, dtype=np.float32)


# Largest gcd-reduced resampling factor run through upstream's polyphase filter (44.1 kHz ->
# 24 kHz is 80/147); beyond it the filter's taps, memory and time grow with the factor.
MAX_POLYPHASE_FACTOR = 4096


def prepare_voice_audio(
    audio: np.ndarray,
    sample_rate: int,
    target_rate: int,
    truncate_seconds: float | None = None,
    *,
    min_samples: int = 2,
    source: str | None = None,
) -> np.ndarray:
    """Turn a raw voice prompt into the float32 ``[N']`` signal the Mimi encoder expects.

    Same pipeline as upstream ``get_state_for_audio_prompt``: channel mixdown, truncation to
    ``truncate_seconds`` at the source rate (``None`` keeps everything), ``resample_poly``
    with the gcd-reduced ratio, then :func:`end_on_pause`.

    Rejected with :class:`VoiceError`: non-float dtypes, fewer than ``min_samples`` samples
    (counted at the source rate, after truncation) and any NaN/Inf in the kept samples.
    Silence is accepted: ``end_on_pause`` finds no quieter tail, so the whole prompt is kept
    (trimmed to whole 20 ms frames) plus the pause; a warning is logged because the cloned
    voice will then be arbitrary. ``source`` only names the prompt in error messages.
    """
    where = f" ({source})" if source else ""
    src_rate = _check_rate(sample_rate, "voice audio sample rate")
    dst_rate = _check_rate(target_rate, "target sample rate")
    mono = _to_mono(audio)

    if truncate_seconds is not None:
        if not math.isfinite(truncate_seconds) or truncate_seconds <= 0:
            raise VoiceError(f"truncate_seconds must be > 0, got {truncate_seconds!r}")
        mono = mono[: int(truncate_seconds * src_rate)]

    if mono.shape[0] > MAX_PROMPT_SECONDS * src_rate:
        raise VoiceError(
            f"voice audio{where} is {mono.shape[0] / src_rate:.0f} s long; a prompt may be at "
            f"most {MAX_PROMPT_SECONDS} s (30 s are used with truncation)"
        )
    if mono.shape[0] < max(1, min_samples):
        raise VoiceError(
            f"voice audio{where} is too short: {mono.shape[0]} sample(s) at {src_rate} Hz, "
            f"at least {max(1, min_samples)} needed"
        )
    if not np.isfinite(mono).all():
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise VoiceError(f"voice audio{where} contains {bad} NaN/Inf sample(s)")

    if src_rate != dst_rate:
        g = math.gcd(src_rate, dst_rate)
        # Imported here: scipy.signal adds ~75 MB of resident memory, and most prompts need
        # no resampling.
        from scipy.signal import resample_poly

        up, down = dst_rate // g, src_rate // g
        if max(up, down) <= MAX_POLYPHASE_FACTOR:  # every common rate: upstream's filter
            mono = resample_poly(mono, up, down).astype(np.float32, copy=False)
        else:  # an odd rate (e.g. prime): the polyphase filter would need ~20 x max(up, down)
            from scipy.signal import resample  # taps; the FFT method needs memory O(samples)

            length = max(1, round(mono.shape[0] * dst_rate / src_rate))
            mono = resample(mono, length).astype(np.float32, copy=False)

    if not mono.any():
        logger.warning("voice audio%s is silent; the generated voice will be arbitrary", where)
    return end_on_pause(mono, dst_rate)


def end_on_pause(
    wav: np.ndarray,
    sample_rate: int,
    pause_sec: float = 0.08,
    fade_sec: float = 0.02,
    floor_db: float = 35.0,
) -> np.ndarray:
    """Make a prompt ``[..., T]`` end on exactly ``pause_sec`` of silence (upstream behaviour).

    The model was trained on prompts cut inside a pause between words: ending on speech makes
    it continue that word, ending on a long silence delays its onset. Trailing 20 ms frames
    more than ``floor_db`` below the loudest frame are dropped, the last ``fade_sec`` of the
    rest fades to zero and ``pause_sec`` of zeros is appended. Prompts shorter than one
    frame are returned unchanged, as upstream does. Never modifies ``wav`` in place.
    """
    wav = np.asarray(wav, dtype=np.float32)
    frame = max(1, int(0.02 * sample_rate))
    n_frames = wav.shape[-1] // frame
    if n_frames == 0:
        return wav.copy()
    # RMS per frame across every leading (channel) dimension; float64 so loud inputs
    # cannot overflow and the threshold decision is not at the mercy of float32 rounding.
    framed = wav[..., : n_frames * frame].reshape(-1, n_frames, frame).astype(np.float64)
    rms = np.sqrt(np.mean(np.square(framed), axis=(0, 2)))
    db = 20.0 * np.log10(rms + 1e-12)
    loud = np.flatnonzero(db > db.max() - floor_db)
    end = (int(loud[-1]) + 1) * frame
    out = wav[..., :end].copy()
    fade = min(int(fade_sec * sample_rate), end)
    if fade > 0:
        out[..., end - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    pause = np.zeros((*wav.shape[:-1], int(pause_sec * sample_rate)), dtype=np.float32)
    return np.concatenate([out, pause], axis=-1)


def fade_in(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Fade the first 5 ms in, as upstream does on the first decoded chunk.

    A fresh Mimi decoder state starts with a small step that is heard as a click. Works on
    the last axis of ``[..., T]`` and returns a new float32 array.
    """
    out = np.array(audio, dtype=np.float32, copy=True)
    ramp = np.linspace(0.0, 1.0, int(sample_rate) // 200, dtype=np.float32)
    n = min(ramp.shape[0], out.shape[-1])
    if n:
        out[..., :n] *= ramp[:n]
    return out


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write mono 16-bit PCM WAV, replacing ``path`` atomically (see ``write_audio``)."""
    write_audio(path, samples, sample_rate)


def write_audio(
    path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int, fmt=None
) -> None:
    """Write mono audio as 16-bit PCM WAV, or in ``fmt`` (an ``AudioFormat`` of
    ``runtime.encoding``: flac, mp3, opus, raw pcm), replacing ``path`` atomically.

    WAV conversion matches upstream's writer (clip to [-1, 1], scale by 32767, truncate
    toward zero) minus the 200 ms of trailing silence it appends. ``samples`` may be ``[N]``
    or carry leading size-1 axes (``[1, N]``, ``[1, 1, N]``). NaN is rejected rather than
    written as arbitrary PCM, since it always means the generation went wrong.
    """
    rate = int(sample_rate)
    if rate != sample_rate or rate <= 0:
        raise InvalidInputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    arr = np.asarray(samples)
    while arr.ndim > 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InvalidInputError(f"expected mono audio [samples], got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if np.isnan(arr).any():
        raise InvalidInputError(f"refusing to write {str(path)!r}: audio contains NaN samples")
    if fmt is not None and fmt.name != "wav":
        from pocket_tts_onnx.runtime.encoding import encode

        data = encode(arr, rate, fmt)
        _replace_atomically(Path(path), lambda fh: fh.write(data))
        return
    pcm = (np.clip(arr, -1.0, 1.0) * np.float32(32767)).astype("<i2")

    def write(fh) -> None:
        with wave.open(fh, "wb") as wav_out:
            wav_out.setnchannels(1)
            wav_out.setsampwidth(2)
            wav_out.setframerate(rate)
            wav_out.writeframes(pcm.tobytes())

    _replace_atomically(Path(path), write)


def _replace_atomically(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it over `path`."""
    # Same directory so the final os.replace is an atomic rename, never a copy.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
