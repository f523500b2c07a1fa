"""Generation parameters, filled from the manifest's defaults and validated once.

`GenerationConfig` is frozen, so a config checked in the caller's thread cannot change while a
worker thread (or a batch scheduler) uses it. numpy scalars are accepted and stored as Python
numbers; bool is never a number here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.manifest import Manifest

__all__ = ["GenerationConfig"]

SEED_LIMIT = 2**63


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. `None` fields mean: frames_after_eos -> upstream's per-chunk guess,
    noise_clamp -> untruncated noise, seed -> fresh entropy, max_frames -> upstream's per-chunk
    length estimate. `first_chunk_frames` is the number of latents `stream` decodes for its
    first audio chunk."""

    temperature: float
    lsd_steps: int
    eos_threshold: float
    frames_after_eos: int | None = None
    noise_clamp: float | None = None
    seed: int | None = None
    max_frames: int | None = None
    first_chunk_frames: int = 1

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise InvalidInputError(f"temperature must be a finite number >= 0, got {t!r}")
        self._set("temperature", float(t))
        self._set("lsd_steps", self._int("lsd_steps", minimum=1))
        eos = self.eos_threshold
        if not _is_real(eos) or math.isnan(eos):
            raise InvalidInputError(
                f"eos_threshold must be a number (inf disables EOS), got {eos!r}"
            )
        self._set("eos_threshold", float(eos))
        self._set("frames_after_eos", self._int("frames_after_eos", minimum=0, optional=True))
        clamp = self.noise_clamp
        if clamp is not None:
            if not _is_real(clamp) or not clamp > 0 or math.isnan(clamp):
                raise InvalidInputError(f"noise_clamp must be a number > 0 or None, got {clamp!r}")
            self._set("noise_clamp", float(clamp))
        seed = self.seed
        if seed is not None:
            if not _is_int(seed) or not 0 <= int(seed) < SEED_LIMIT:
                raise InvalidInputError(
                    f"seed must be an integer in [0, 2**63) or None, got {seed!r}"
                )
            self._set("seed", int(seed))
        self._set("max_frames", self._int("max_frames", minimum=1, optional=True))
        self._set("first_chunk_frames", self._int("first_chunk_frames", minimum=1))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def _int(self, name: str, minimum: int, optional: bool = False) -> int | None:
        value = getattr(self, name)
        if value is None and optional:
            return None
        if not _is_int(value) or int(value) < minimum:
            extra = " or None" if optional else ""
            raise InvalidInputError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")
        return int(value)

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides) -> GenerationConfig:
        """The manifest's defaults with `overrides` on top (`None` values keep the default)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidInputError(
                f"unknown generation parameter(s) {unknown}; known: {sorted(names)}"
            )
        d = manifest.defaults
        values = {
            "temperature": d.temperature,
            "lsd_steps": d.decode_steps,
            "eos_threshold": d.eos_threshold,
            "frames_after_eos": d.frames_after_eos,
            "noise_clamp": d.noise_clamp,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides) -> GenerationConfig:
        """A copy with the non-None `overrides` applied (validated again)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidInputError(f"unknown generation parameter(s) {unknown}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return GenerationConfig(**values)
