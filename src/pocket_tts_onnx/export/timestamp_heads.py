"""Which flow-LM attention heads say which word is being spoken, per config.

Facts from pocket-tts-timestamped 1.4.0 (MIT, PyPI): each of its config files
(`config/<name>.yaml`) lists `timestamp_heads`, and its README's "Checkpoint support" table
gives their calibration (start/end mean absolute error against CrisperWhisper 2.0 medium over
about 4,800 words, skip rate over about 14,500). Only configs whose weights file and revision
are the same in that fork and in upstream pocket-tts 4.0.1 are listed: the heads were
calibrated on those weights. Upstream's default `english` (the 2026-10 weights) and the
2026-10 small models (other weight revisions in the fork) are not covered: pass
`--timestamp-heads` for them.
"""

from __future__ import annotations

import re

from pocket_tts_onnx.errors import ExportError

__all__ = ["CALIBRATED_HEADS", "FORK", "calibrated_heads", "format_heads", "parse_heads"]

FORK = "pocket-tts-timestamped 1.4.0"

# config name -> (heads, start/end MAE in ms as published by the fork).
CALIBRATED_HEADS: dict[str, tuple[str, float]] = {
    "dutch": ("L4H5,L3H9,L3H14,L2H0", 69.41),
    "dutch_24l": ("L17H13,L17H11", 71.84),
    "english_2026-01": ("L3H8,L2H0", 52.21),
    "english_2026-04": ("L3H8,L2H0", 42.99),
    "english_2026-04_24l": ("L14H10,L17H11,L15H4", 38.01),
    "english_2026-09": ("L3H8,L2H0", 51.23),
    "english_2026-09_2": ("L3H8,L2H0", 41.31),
    "english_2026-09_24l": ("L14H10,L17H11,L15H4", 46.01),
    "english_drifting_26-09": ("L2H15", 39.08),
    "french": ("L3H9", 63.20),
    "french_24l": ("L17H13,L16H9,L18H5,L17H11", 61.30),
    "german": ("L3H14,L3H9,L3H10", 45.57),
    "german_24l": ("L17H11,L15H4", 40.30),
    "italian": ("L3H9,L4H5,L3H10", 63.79),
    "italian_24l": ("L17H13,L13H10,L18H5,L14H10", 64.46),
    "portuguese": ("L3H9,L4H2,L4H5,L3H14,L3H4", 70.79),
    "portuguese_24l": ("L17H13,L18H1,L20H12", 71.98),
    "spanish": ("L3H9,L4H2,L4H5,L3H10", 66.10),
    "spanish_24l": ("L17H13,L17H11,L18H1", 66.92),
}

_HEAD = re.compile(r"L(\d+)H(\d+)")


def parse_heads(text: str, num_layers: int, num_heads: int) -> tuple[tuple[int, int], ...]:
    """ "L3H8,L2H0" -> ((3, 8), (2, 0)), checked against the model's layers and heads."""
    heads = []
    for part in text.split(","):
        match = _HEAD.fullmatch(part.strip())
        if match is None:
            raise ExportError(
                f"--timestamp-heads: {part.strip()!r} is not a head; write LxHy pairs such as "
                "L3H8,L2H0 (layer and head indices from 0)"
            )
        layer, head = int(match[1]), int(match[2])
        if layer >= num_layers or head >= num_heads:
            raise ExportError(
                f"--timestamp-heads: L{layer}H{head} is outside this model ({num_layers} "
                f"layers of {num_heads} heads)"
            )
        if (layer, head) in heads:
            raise ExportError(f"--timestamp-heads: L{layer}H{head} is given twice")
        heads.append((layer, head))
    return tuple(heads)


def format_heads(heads) -> str:
    return ",".join(f"L{layer}H{head}" for layer, head in heads)


def calibrated_heads(config_name: str) -> tuple[str, str] | None:
    """(heads, manifest note) for a config the fork calibrated, else None."""
    entry = CALIBRATED_HEADS.get(config_name)
    if entry is None:
        return None
    heads, mae = entry
    note = (
        f"Word-timestamp heads {heads} from {FORK} (MIT), config {config_name}.yaml "
        f"timestamp_heads; its published start/end error for them is {mae:.2f} ms against "
        "CrisperWhisper 2.0 medium."
    )
    return heads, note
