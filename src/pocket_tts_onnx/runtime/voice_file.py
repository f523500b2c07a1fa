"""Torch-free storage of precomputed voice states.

Encoding a voice prompt runs the Mimi encoder and a pass of the flow LM; saving the
resulting state lets later runs skip both. Our own format is a plain ``.npz`` (loadable
with ``allow_pickle=False``, so opening an untrusted voice file cannot execute code);
upstream's ``export-voice`` ``.safetensors`` files can be read too.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError, VoiceError

__all__ = [
    "METADATA_KEY",
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


def load_voice_npz(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a voice saved by :func:`save_voice_npz`: ``(arrays in file order, metadata)``.

    A file without metadata loads with empty metadata; anything that is not a readable,
    pickle-free npz raises :class:`VoiceError`.
    """
    path = Path(path)
    _require_file(path)
    try:
        raw = path.read_bytes()
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise VoiceError(f"voice file {str(path)!r} is a single .npy array, not an .npz")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except VoiceError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise VoiceError(f"cannot read voice file {str(path)!r}: {exc}") from exc

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
            raise VoiceError(f"voice file {str(path)!r} has corrupt metadata: {exc}") from exc
        metadata = decoded
    if not arrays:
        raise VoiceError(f"voice file {str(path)!r} contains no state arrays")
    return arrays, metadata


def load_upstream_voice_safetensors(
    path: str | os.PathLike[str],
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
