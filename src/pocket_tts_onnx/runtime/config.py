"""Generation parameters: defined once here, with their limits and help text.

`GenerationConfig` is the only parameter currency: the Python API, the scheduler, the CLI
flags, the HTTP request models and the Wyoming server all derive their parameters from
`PARAMETERS` (built from this dataclass's fields), so a parameter added here reaches every
front end, with the same limits everywhere. The config is frozen, so one validated in the
caller's thread cannot change while the scheduler uses it. numpy scalars are accepted and
stored as Python numbers; bool is never a number here, and only a bool is a switch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.manifest import Manifest

__all__ = ["PARAMETERS", "GenerationConfig", "Param", "parse_param"]

SEED_LIMIT = 2**63
# Above this the noise dominates the model's prediction (upstream's default is 0.7): instead
# of silently making full-scale noise, a higher temperature is refused.
TEMPERATURE_MAX = 2.0
# Flow-head solver steps: upstream uses 1; quality stops improving long before 64.
LSD_STEPS_MAX = 64
# Frames per text chunk (80 ms each): 10,000 is over 13 minutes for one sentence.
MAX_FRAMES_LIMIT = 10_000


@dataclass(frozen=True)
class Param:
    """One generation parameter as every front end sees it."""

    name: str
    kind: type  # int, float or bool (a switch)
    help: str
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # None is a value (with the meaning given in `help`)
    above_minimum: bool = False  # the minimum itself is excluded
    manifest_default: str | None = None  # the manifest `defaults` field it starts from

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def bounds(self) -> str:
        lo = "" if self.minimum is None else (">" if self.above_minimum else ">=")
        parts = []
        if self.minimum is not None:
            parts.append(f"{lo} {_num(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"<= {_num(self.maximum)}")
        return " and ".join(parts)

    def check(self, value):
        """The value as a Python int/float, or InvalidInputError naming this parameter."""
        if value is None and self.optional:
            return None
        if self.kind is bool:
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise InvalidInputError(
                f"{self.name} must be true or false, got {value!r}", param=self.name
            )
        number_ok = _is_int(value) if self.kind is int else _is_real(value)
        ok = number_ok and not (self.kind is float and math.isnan(value))
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.above_minimum else value >= self.minimum
        if ok and self.maximum is not None:
            ok = value <= self.maximum
        if not ok:
            what = "an integer" if self.kind is int else "a number"
            bounds = f" {self.bounds()}" if self.bounds() else ""
            none = " or None" if self.optional else ""
            raise InvalidInputError(
                f"{self.name} must be {what}{bounds}{none}, got {value!r}", param=self.name
            )
        return self.kind(value)


def _num(x: float) -> str:
    if isinstance(x, int):  # exact, e.g. the seed's 2**63 - 1
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _meta(kind: type, help: str, **limits) -> dict:
    return {"param": (kind, help, limits)}


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate; every field is validated at construction (InvalidInputError with
    `param` set to the field's name)."""

    temperature: float = field(
        metadata=_meta(
            float,
            "sampling temperature: 0 is deterministic, above ~1 the voice degrades",
            minimum=0.0,
            maximum=TEMPERATURE_MAX,
            manifest_default="temperature",
        )
    )
    lsd_steps: int = field(
        metadata=_meta(
            int,
            "flow-head solver steps per frame (more: slower, smoother)",
            minimum=1,
            maximum=LSD_STEPS_MAX,
            manifest_default="decode_steps",
        )
    )
    eos_threshold: float = field(
        metadata=_meta(
            float,
            "end-of-speech logit threshold; inf disables EOS (the chunk runs to max_frames)",
            manifest_default="eos_threshold",
        )
    )
    frames_after_eos: int | None = field(
        default=None,
        metadata=_meta(
            int,
            "frames generated after EOS (None: upstream's per-chunk guess)",
            minimum=0,
            maximum=MAX_FRAMES_LIMIT,
            optional=True,
            manifest_default="frames_after_eos",
        ),
    )
    noise_clamp: float | None = field(
        default=None,
        metadata=_meta(
            float,
            "truncate the sampling noise to +-this (None: untruncated)",
            minimum=0.0,
            above_minimum=True,
            optional=True,
            manifest_default="noise_clamp",
        ),
    )
    seed: int | None = field(
        default=None,
        metadata=_meta(
            int,
            "random seed; the same seed gives the same audio (None: fresh entropy)",
            minimum=0,
            maximum=SEED_LIMIT - 1,
            optional=True,
        ),
    )
    max_frames: int | None = field(
        default=None,
        metadata=_meta(
            int,
            "most frames (80 ms each) per text chunk (None: upstream's estimate from the "
            "chunk's length)",
            minimum=1,
            maximum=MAX_FRAMES_LIMIT,
            optional=True,
        ),
    )
    first_chunk_frames: int = field(
        default=1,
        metadata=_meta(
            int,
            "frames in the first streamed audio chunk (1: lowest latency)",
            minimum=1,
            maximum=250,
        ),
    )
    timestamps: bool = field(
        default=False,
        metadata=_meta(
            bool,
            "word timestamps: audio chunks carry each word's start and end (bundles exported "
            "with timestamp heads)",
        ),
    )

    def __post_init__(self) -> None:
        for p in PARAMETERS:
            object.__setattr__(self, p.name, p.check(getattr(self, p.name)))

    @classmethod
    def from_manifest(cls, manifest: Manifest, **overrides) -> GenerationConfig:
        """The manifest's defaults with `overrides` on top (`None` values keep the default)."""
        _check_names(overrides)
        values = {
            p.name: getattr(manifest.defaults, p.manifest_default)
            for p in PARAMETERS
            if p.manifest_default is not None
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides) -> GenerationConfig:
        """A copy with the non-None `overrides` applied (validated again)."""
        _check_names(overrides)
        values = {p.name: getattr(self, p.name) for p in PARAMETERS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return GenerationConfig(**values)


def _check_names(overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(NAMES))
    if unknown:
        raise InvalidInputError(
            f"unknown generation parameter(s) {unknown}; known: {sorted(NAMES)}",
            param=unknown[0],
        )


def _param(f) -> Param:
    kind, help, limits = f.metadata["param"]
    return Param(f.name, kind, help, **limits)


PARAMETERS: tuple[Param, ...] = tuple(_param(f) for f in fields(GenerationConfig))
NAMES = tuple(p.name for p in PARAMETERS)


def parse_param(param: Param, text: str):
    """A parameter from text (CLI flags, form fields): int or float ('inf' allowed for
    floats), true/false for switches; typed errors naming the parameter; range checks happen
    in GenerationConfig."""
    if param.kind is bool:
        word = text.strip().lower() if isinstance(text, str) else None
        if word in ("true", "1"):
            return True
        if word in ("false", "0"):
            return False
        raise InvalidInputError(
            f"{param.name} must be true or false, got {text!r}", param=param.name
        )
    try:
        return param.kind(text) if param.kind is float else int(text, 10)
    except (TypeError, ValueError):
        what = "an integer" if param.kind is int else "a number"
        raise InvalidInputError(
            f"{param.name} must be {what}, got {text!r}", param=param.name
        ) from None


def _static_default(name: str):
    default = GenerationConfig.__dataclass_fields__[name].default
    return None if isinstance(default, type(dataclasses.MISSING)) else default


def parameters_js() -> str:
    """`PARAMETERS` as the web runtime's module (web/src/parameters.js): the browser engine
    validates with the same limits (tests/test_config.py checks the file is current)."""
    import json

    rows = [
        {
            "name": p.name,
            "js": p.name.split("_")[0] + "".join(w.title() for w in p.name.split("_")[1:]),
            "kind": p.kind.__name__,
            "minimum": p.minimum,
            "maximum": p.maximum,
            "aboveMinimum": p.above_minimum,
            "optional": p.optional,
            "manifestDefault": p.manifest_default,
            "default": _static_default(p.name),
            "help": p.help,
        }
        for p in PARAMETERS
    ]
    body = json.dumps(rows, indent=2)
    return (
        "// Generated from src/pocket_tts_onnx/runtime/config.py (GenerationConfig) by\n"
        "// scripts/write_web_parameters.py; tests/test_config.py fails when it is stale.\n"
        f"export const PARAMETERS = {body};\n"
    )
