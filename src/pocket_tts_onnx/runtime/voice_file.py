"""Torch-free storage of precomputed voice states.

Encoding a voice prompt runs the Mimi encoder and a pass of the flow LM; saving the
resulting state lets later runs skip both. Our own format is a plain ``.npz`` (loadable
with ``allow_pickle=False``, so opening an untrusted voice file cannot execute code);
upstream's ``export-voice`` ``.safetensors`` files can be read too.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError, VoiceError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "METADATA_KEY",
    "expected_from_spec",
    "load_upstream_voice_safetensors",
    "load_voice_npz",
    "save_voice_npz",
]

#: Reserved npz member holding the metadata as UTF-8 JSON bytes (a uint8 array).
METADATA_KEY = "__metadata__"


def save_voice_npz(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
) -> None:
    """Save a voice state (ordered ``name -> array``) plus string metadata to ``path``.

    The file is written under a temporary name and renamed, so an interrupted save never
    leaves a truncated voice behind. ``path`` is used as given (no ``.npz`` is appended).
    """
    if not arrays:
        raise InvalidInputError("a voice state needs at least one array")
    payload: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"voice state names must be non-empty strings, got {name!r}")
        if name == METADATA_KEY:
            raise InvalidInputError(f"{METADATA_KEY!r} is reserved for the voice metadata")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise InvalidInputError(f"voice state {name!r} has object dtype; it cannot be saved")
        payload[name] = arr
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInputError(
                f"voice metadata must map str to str, got {key!r}: {type(value).__name__}"
            )
    meta_bytes = json.dumps(dict(metadata), ensure_ascii=False, sort_keys=True).encode("utf-8")
    payload[METADATA_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, **payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: Default bound on the decompressed size of a voice file's arrays. The English model's state
#: after a 30 s prompt is ~20 MB; 256 MiB leaves room for ten times that and keeps a hostile
#: file (a few MB of zeros declaring gigabytes) from exhausting memory.
DEFAULT_MAX_BYTES = 256 * 2**20
_MAX_METADATA_BYTES = 2**20

#: ``expected`` maps each state name to (shape, dtype). A shape entry is an int (fixed), a
#: string (a named dynamic axis: every axis with that name must have the same size, e.g. all
#: K/V caches' "kv_len") or None (any size).
Expected = Mapping[str, tuple[Sequence[int | str | None], str | np.dtype]]


def expected_from_spec(spec) -> dict[str, tuple[list[int | str], str]]:
    """``expected`` for the states of a graph spec (`pocket_tts_onnx.specs.GraphSpec`)."""
    return {s.name: (list(s.shape), s.dtype) for s in spec.states}


def load_voice_npz(
    path: str | os.PathLike[str],
    expected: Expected | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a voice saved by :func:`save_voice_npz`: ``(arrays in file order, metadata)``.

    Every member's npy header (dtype, shape) is checked before any array data is
    decompressed: with ``expected``, exactly those states must be present with matching
    dtypes and shapes (an unknown member is refused, never kept); in all cases the declared
    total must stay under ``max_bytes``, object arrays are refused and floats must be finite.
    Anything else raises :class:`VoiceError`.
    """
    path = Path(path)
    _require_file(path)
    where = f"voice file {str(path)!r}"
    try:
        with zipfile.ZipFile(path) as archive:
            members = _check_members(archive, where, expected, max_bytes)
            arrays = {key: _read_member(archive, info, where) for key, info in members.items()}
    except VoiceError:
        raise
    except zipfile.BadZipFile as exc:
        raise VoiceError(
            f"{where} is not a pocket-tts-onnx voice (.npz, from Voice.save or "
            f"`pocket-tts-onnx voice`) nor an upstream .safetensors voice ({exc}); to clone "
            "a voice from audio, use voice_from_audio() or `say --voice ref.wav`"
        ) from exc
    except (OSError, ValueError, EOFError, KeyError, RuntimeError) as exc:
        raise VoiceError(f"cannot read {where}: {exc}") from exc

    meta_arr = arrays.pop(METADATA_KEY, None)
    metadata: dict[str, str] = {}
    if meta_arr is not None:
        try:
            if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
                raise ValueError(f"unexpected dtype {meta_arr.dtype} / shape {meta_arr.shape}")
            decoded = json.loads(meta_arr.tobytes().decode("utf-8"))
            if not isinstance(decoded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()
            ):
                raise ValueError("metadata is not a JSON object of strings")
        except (ValueError, UnicodeDecodeError) as exc:
            raise VoiceError(f"{where} has corrupt metadata: {exc}") from exc
        metadata = decoded
    if not arrays:
        raise VoiceError(f"{where} contains no state arrays")
    for name, arr in arrays.items():
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise VoiceError(
                f"{where}: state {name!r} holds NaN or Inf values; recompute the voice"
            )
    return arrays, metadata


def _check_members(
    archive: zipfile.ZipFile, where: str, expected: Expected | None, max_bytes: int
) -> dict[str, zipfile.ZipInfo]:
    """Validate names and npy headers of every member; nothing is decompressed but headers."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy") or info.is_dir():
            raise VoiceError(f"{where} has member {info.filename!r}, which is not an .npy array")
        key = info.filename[: -len(".npy")]
        if key in members:
            raise VoiceError(f"{where} holds {key!r} twice: the file was tampered with")
        if expected is not None and key != METADATA_KEY and key not in expected:
            raise VoiceError(
                f"{where} holds {key!r}, which is not a state of this model (expected exactly "
                f"{sorted(expected)}): not a voice for this model"
            )
        members[key] = info
    if expected is not None:
        missing = [name for name in expected if name not in members]
        if missing:
            raise VoiceError(f"{where} lacks state {missing[0]!r}: not a voice for this model")
    total = 0
    axes: dict[str, tuple[int, str]] = {}
    for key, info in members.items():
        dtype, shape = _read_header(archive, info, where, key)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if key == METADATA_KEY:
            if dtype != np.uint8 or len(shape) != 1 or nbytes > _MAX_METADATA_BYTES:
                raise VoiceError(f"{where} has corrupt metadata ({dtype}, shape {list(shape)})")
        elif expected is not None:
            _check_declared(key, dtype, shape, expected[key], axes, where)
        total += nbytes
        if total > max_bytes:
            raise VoiceError(
                f"{where} declares {key!r} of shape {list(shape)} {dtype}: {total / 2**20:.0f} "
                f"MiB in all, over the {max_bytes / 2**20:.0f} MiB limit for a voice (a 30 s "
                "prompt needs ~20 MiB); if the file is genuine, raise max_bytes"
            )
    return members


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, key: str):
    with archive.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"npy format version {version} is not supported")
        except ValueError as exc:
            raise VoiceError(f"{where}: member {key!r} has a corrupt npy header ({exc})") from exc
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None:
        raise VoiceError(
            f"{where}: member {key!r} has dtype {dtype}; a voice holds only numeric arrays "
            "(the file is not a voice, or was crafted to run code when loaded)"
        )
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise VoiceError(f"{where}: member {key!r} declares an invalid shape {shape}")
    return dtype, tuple(shape)


def _check_declared(key, dtype, shape, want, axes, where) -> None:
    want_shape, want_dtype = want
    ok = dtype == np.dtype(want_dtype) and len(shape) == len(want_shape)
    ok = ok and all(
        w is None or isinstance(w, str) or w == g for w, g in zip(want_shape, shape, strict=False)
    )
    if not ok:
        raise VoiceError(
            f"{where}: state {key!r} has shape {list(shape)} {dtype}, this model expects "
            f"{list(want_shape)} {np.dtype(want_dtype)}: the voice was made for a different model"
        )
    for axis, name in enumerate(want_shape):
        if isinstance(name, str):
            first = axes.setdefault(name, (shape[axis], key))
            if first[0] != shape[axis]:
                raise VoiceError(
                    f"{where}: state {key!r} has {name}={shape[axis]} but {first[1]!r} has "
                    f"{first[0]}: the file is inconsistent; recompute the voice"
                )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    with archive.open(info) as fh:
        array = np.lib.format.read_array(fh, allow_pickle=False)
    return array


def load_upstream_voice_safetensors(
    path: str | os.PathLike[str],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, dict[str, np.ndarray]]:
    """Read a voice written by upstream ``pocket-tts export-voice`` (``export_model_state``).

    Keys are ``"<module>/<state>"``; the result is ``{module: {state: array}}``. Old files
    store a ``current_end`` tensor whose length is the step count; like upstream, it becomes
    ``offset = [length]`` (int64).
    """
    path = Path(path)
    _require_file(path)
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load as load_safetensors
    except ImportError as exc:
        raise VoiceError(
            f"reading upstream voice {str(path)!r} needs the 'safetensors' package "
            "(pip install safetensors)"
        ) from exc
    size = path.stat().st_size
    if size > max_bytes:  # safetensors is uncompressed: the file size bounds the arrays
        raise VoiceError(
            f"upstream voice file {str(path)!r} is {size / 2**20:.0f} MiB, over the "
            f"{max_bytes / 2**20:.0f} MiB limit for a voice; if it is genuine, raise max_bytes"
        )
    try:
        flat = load_safetensors(path.read_bytes())
    except KeyError as exc:  # safetensors.numpy has no numpy dtype for it (bfloat16)
        raise VoiceError(
            f"upstream voice file {str(path)!r} holds tensors of dtype {exc}, which numpy "
            "cannot represent; re-export the voice in float32"
        ) from exc
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise VoiceError(f"cannot read upstream voice file {str(path)!r}: {exc}") from exc

    result: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in flat.items():
        parts = key.split("/")
        if len(parts) != 2 or not all(parts):
            raise VoiceError(
                f"upstream voice file {str(path)!r} has key {key!r}; expected '<module>/<state>'"
            )
        module_name, state_key = parts
        if tensor.dtype.kind in "fc" and not np.isfinite(tensor).all():
            raise VoiceError(
                f"upstream voice file {str(path)!r}: {key} holds NaN or Inf; re-export the voice"
            )
        module = result.setdefault(module_name, {})
        if state_key == "current_end":
            module["offset"] = np.array([tensor.shape[0]], dtype=np.int64)
        else:
            module[state_key] = tensor
    if not result:
        raise VoiceError(f"upstream voice file {str(path)!r} contains no tensors")
    return result


def _require_file(path: Path) -> None:
    if not path.exists():
        raise VoiceError(f"voice file not found: {str(path)!r}")
    if not path.is_file():
        raise VoiceError(f"voice path is not a file: {str(path)!r}")
