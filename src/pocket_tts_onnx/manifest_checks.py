"""Range checks of a manifest dict before a runtime trusts it: every number, and the
word-timestamp heads against the model's layers. A damaged or hostile manifest becomes an
error naming the field, never a huge allocation, an endless loop or a division by zero."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pocket_tts_onnx.errors import BundleError

if TYPE_CHECKING:
    from pocket_tts_onnx.specs import GraphSpec

# Range of every number in manifest.json: (field, kind, lowest, highest, may be null). The
# bounds are wide enough for any real model and narrow enough that a runtime cannot be made
# to allocate, loop or divide without limit by a damaged or hostile manifest.
_NUMBERS = (
    ("sample_rate", int, 1_000, 384_000, False),
    ("frame_rate", float, 0.1, 1_000.0, False),
    ("samples_per_latent", int, 1, 1 << 20, False),
    ("latent_dim", int, 1, 1 << 16, False),
    ("d_model", int, 1, 1 << 16, False),
    ("head_dim", int, 1, 1 << 16, False),
    ("opset", int, 7, 100, False),
    ("tokenizer.vocab_size", int, 1, 10_000_000, False),
    ("defaults.temperature", float, 0.0, 100.0, False),
    ("defaults.decode_steps", int, 1, 64, False),
    ("defaults.noise_clamp", float, 0.0, 1e6, True),
    ("defaults.eos_threshold", float, -1e9, 1e9, False),
    ("defaults.frames_after_eos", int, 0, 10_000, True),
    ("defaults.frames_after_eos_guess_offset", int, 0, 10_000, False),
    ("defaults.min_frames_before_eos", int, 0, 10_000, False),
    ("defaults.max_length_tokens_per_second", float, 0.01, 1_000.0, False),
    ("defaults.max_length_padding_seconds", float, 0.0, 600.0, False),
    ("defaults.fade_in_seconds", float, 0.0, 1.0, False),
)


def check_numbers(d: dict) -> None:
    """Range-check every number of a manifest dict; BundleError names the field."""
    for name, kind, low, high, nullable in _NUMBERS:
        section, _, leaf = name.rpartition(".")
        where = d.get(section) if section else d
        value = where.get(leaf) if isinstance(where, dict) else None
        if value is None and nullable:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        whole = number and (kind is float or float(value).is_integer())
        if not (whole and math.isfinite(value) and low <= value <= high):
            what = "an integer" if kind is int else "a number"
            raise BundleError(
                f"manifest.json: {name} must be {what} from {low} to {high}"
                + (" or null" if nullable else "")
                + f", got {value!r}; re-export the bundle"
            )
    rate, frames, per = d["sample_rate"], d["frame_rate"], d["samples_per_latent"]
    if abs(rate / per - frames) > 1e-6 * frames:
        raise BundleError(
            f"manifest.json: frame_rate {frames} disagrees with sample_rate / "
            f"samples_per_latent ({rate} / {per}); re-export the bundle"
        )


def timestamp_heads(entry, step: GraphSpec | None) -> tuple[tuple[int, int], ...]:
    """The `timestamps` entry: null, or {"heads": [[layer, head], ...]} within the layers
    and heads of the `queries` output of `step` (flow_lm_step's spec, None if no such graph)."""
    if entry is None:
        return ()
    heads = entry["heads"]
    queries = [t for t in step.outputs if t.name == "queries"] if step else []
    if not queries:
        raise ValueError("timestamps needs a flow_lm_step graph with a queries output")
    layers, per_layer = queries[0].shape[1], queries[0].shape[2]
    if not isinstance(heads, list) or not heads:
        raise ValueError("timestamps.heads must be a non-empty list of [layer, head]")
    out = []
    for pair in heads:
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        if not ok or not (0 <= pair[0] < layers and 0 <= pair[1] < per_layer):
            raise ValueError(
                f"timestamps.heads: {pair!r} is not a [layer, head] of this model "
                f"({layers} layers of {per_layer} heads)"
            )
        out.append((pair[0], pair[1]))
    if len(set(out)) != len(out):
        raise ValueError("timestamps.heads names a head twice")
    return tuple(out)
