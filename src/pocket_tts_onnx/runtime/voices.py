"""Voices: flow-LM states after a voice prompt, their checks, files and the bundle's catalog.

A voice file is untrusted input: it must hold exactly the states the manifest names, each with
the right dtype and shape, finite values, and K/V lengths that agree across layers (and with
the position counter, when the graph has one). Anything else is a VoiceError at load, never an
ONNX Runtime error or NaN audio later.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocket_tts_onnx.errors import BundleError, VoiceError
from pocket_tts_onnx.manifest import Manifest, file_sha256, resolve_in_bundle
from pocket_tts_onnx.runtime.voice_file import save_voice_npz
from pocket_tts_onnx.specs import GraphSpec

__all__ = [
    "NO_VOICE",
    "VOICE_FORMAT",
    "Voice",
    "VoiceCatalog",
    "check_voice_states",
    "readonly",
    "states_from_upstream",
]

VOICE_FORMAT = "pocket-tts-onnx voice v1"


class _NoVoice:
    """`voice=NO_VOICE`: speak without any voice prompt, even if the bundle has a default."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_VOICE"

    def __reduce__(self):
        return (_NoVoice, ())


NO_VOICE = _NoVoice()


@dataclass(frozen=True)
class Voice:
    """flow_lm_main states after a voice prompt. Arrays are read-only: generation copies
    nothing and never mutates them, so one Voice serves any number of calls."""

    states: dict[str, np.ndarray]
    model_id: str

    def save(self, path: str | os.PathLike[str]) -> None:
        save_voice_npz(path, self.states, {"format": VOICE_FORMAT, "model_id": self.model_id})


def readonly(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in arrays.items():
        arr = np.array(value, copy=True)
        arr.flags.writeable = False
        out[name] = arr
    return out


def check_voice_states(
    states: dict[str, np.ndarray], spec: GraphSpec, source, finite: bool = True
) -> None:
    """Exactly the spec's states, right dtype/shape, consistent lengths and (unless `finite`
    is False, for voices already checked at load) finite values."""
    axes: dict[str, tuple[int, str]] = {}
    for s in spec.states:
        if s.name not in states:
            raise VoiceError(f"{source} lacks state {s.name!r}: not a voice for this model")
        got = states[s.name]
        ok = (
            isinstance(got, np.ndarray)
            and got.ndim == len(s.shape)
            and all(isinstance(d, str) or d == g for d, g in zip(s.shape, got.shape, strict=True))
        )
        if not ok or got.dtype != np.dtype(s.dtype):
            shape = list(getattr(got, "shape", ()))
            raise VoiceError(
                f"{source}: state {s.name!r} ({s.upstream_module}) has shape {shape} "
                f"{getattr(got, 'dtype', type(got).__name__)}, this model expects {s.shape} "
                f"{s.dtype}: the voice was made for a different model"
            )
        if finite and got.dtype.kind == "f" and not np.isfinite(got).all():
            raise VoiceError(f"{source}: state {s.name!r} holds NaN/Inf; recompute the voice")
        for axis, name in enumerate(s.shape):
            if isinstance(name, str):
                size = got.shape[axis]
                first = axes.setdefault(name, (size, s.name))
                if first[0] != size:
                    raise VoiceError(
                        f"{source}: state {s.name!r} has {name}={size} but {first[1]!r} has "
                        f"{first[0]}: the file is inconsistent; recompute the voice"
                    )
    wanted = [s.name for s in spec.states]
    extra = sorted(set(states) - set(wanted))
    if extra:  # never kept, never fed: a member named like an input cannot shadow it
        raise VoiceError(
            f"{source} holds {extra}, which are not states of this model (expected exactly "
            f"{wanted}): not a voice for this model"
        )
    lengths = {size for size, _ in axes.values()}
    for s in spec.states:
        if s.upstream_key == "offset":
            position = states[s.name]
            if position.size != 1:
                raise VoiceError(f"{source}: position state {s.name!r} must hold one value")
            value = int(position.reshape(-1)[0])
            if value < 0 or any(value > n for n in lengths):
                raise VoiceError(
                    f"{source}: position {value} in {s.name!r} is outside the cache (0.."
                    f"{min(lengths) if lengths else 0}); recompute the voice"
                )


def states_from_upstream(modules: dict, spec: GraphSpec, source) -> dict[str, np.ndarray]:
    """Upstream keeps one "cache" [2, B, T, H, d] and an "offset" per attention module; ours
    are head-major "cache.k"/"cache.v" halves cut to the filled length, plus (when the graph
    has one) a position counter holding that length."""
    states: dict[str, np.ndarray] = {}
    filled_lengths: dict[int, str] = {}
    for s in spec.states:
        if s.upstream_key == "offset":
            continue
        module = s.upstream_module.split(".", 1)[1]
        entry = modules.get(module)
        if not isinstance(entry, dict) or "cache" not in entry:
            raise VoiceError(f"{source} has no {module}/cache: it is not a voice for this model")
        cache = np.asarray(entry["cache"])
        if cache.ndim != 5 or cache.shape[0] != 2:
            raise VoiceError(
                f"{source}: {module}/cache has shape {list(cache.shape)}, expected "
                "[2, batch, positions, heads, head_dim]: not an upstream voice file"
            )
        offset = np.asarray(entry.get("offset", [cache.shape[2]])).reshape(-1)
        if offset.size < 1 or not np.issubdtype(offset.dtype, np.integer):
            raise VoiceError(f"{source}: {module}/offset must be an integer, got {offset!r}")
        filled = int(offset[0])
        if not 0 <= filled <= cache.shape[2]:
            raise VoiceError(
                f"{source}: {module}/offset {filled} is outside its cache of "
                f"{cache.shape[2]} positions: the file is corrupt"
            )
        filled_lengths.setdefault(filled, module)
        states[s.name] = s.from_upstream_cache(cache, filled)
    if len(filled_lengths) > 1:
        raise VoiceError(f"{source}: attention layers disagree on the filled length")
    filled = next(iter(filled_lengths), 0)
    for s in spec.states:
        if s.upstream_key == "offset":
            states[s.name] = np.full(s.initial_shape or [1], filled, dtype=s.dtype)
    return {s.name: states[s.name] for s in spec.states}


def bundle_voice_path(bundle: Path, manifest: Manifest, name: str) -> Path:
    """The file of bundle voice `name`, checked present and equal to the manifest's sha256
    (BundleError naming the voice and its path inside the bundle otherwise)."""
    entry = manifest.voices[name]
    path = resolve_in_bundle(bundle, entry.file)
    if not path.is_file():
        raise BundleError(f"bundle voice {name!r}: {entry.file} is missing; re-export")
    if file_sha256(path) != entry.sha256:
        raise BundleError(
            f"bundle voice {name!r}: {entry.file} does not match its sha256 in manifest.json "
            "(replaced or corrupted); restore, re-export or re-download the bundle"
        )
    return path


class VoiceCatalog:
    """The bundle's predefined voices by name: sha256-checked against the manifest, loaded
    once and cached (a Voice is read-only, so the cached one is shared)."""

    def __init__(self, manifest: Manifest, bundle: Path | None, loader):
        self._manifest = manifest
        self._bundle = bundle
        self._loader = loader  # path -> Voice (the engine's load_voice, model check off)
        self._cache: dict[str, Voice] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self._manifest.voices)

    @property
    def default(self) -> str | None:
        return self._manifest.default_voice

    def get(self, name: str) -> Voice:
        entry = self._manifest.voices.get(name)
        if entry is None:
            have = ", ".join(self.names) or "none: this bundle has no voices"
            same = [n for n in self.names if isinstance(name, str) and n.lower() == name.lower()]
            hint = f"did you mean {same[0]!r}? (names are case-sensitive) " if same else ""
            raise VoiceError(
                f"voice {name!r} is not in this bundle; {hint}available: {have}; for a file, "
                "use load_voice(path)"
            )
        with self._lock:
            if name in self._cache:
                return self._cache[name]
            if self._bundle is None:
                raise VoiceError(
                    f"voice {name!r}: this engine was built from sessions without a bundle "
                    "folder; pass bundle=... to from_sessions, or use load_voice(path)"
                )
            voice = self._loader(bundle_voice_path(self._bundle, self._manifest, name))
            self._cache[name] = voice
            return voice
