"""Same outputs whatever length of zeros a runtime starts each state with.

Runtimes zero-initialise the states of `flow_lm_main` and `mimi_decoder` with every dynamic
axis at some small length: ours at 0, sherpa-onnx at 1 (it replaces each -1 of the session's
input shape by 1). The graphs must ignore such a junk prefix (docs/state-design.md), so a
replay of sherpa-onnx's exact call protocol must give the same numbers at 0, 1 and 3.

`replay_sherpa_protocol` (tests/sherpa_protocol.py) is that protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FAMILIES, ONE_CHUNK, upstream_audio
from sherpa_protocol import replay_sherpa_protocol

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.tokenizer import load_tokenizer
from pocket_tts_onnx.specs import StateSpec

TEXT = "Hello world, this is a small test."
CONVENTIONS = (0, 1, 3)  # length of every dynamic state axis at the start
# Max |delta| allowed between conventions, relative to the output's scale (max |value|, at
# least 1): a masked junk row changes no value, only the reduction lengths inside ONNX
# Runtime's kernels, hence float32 rounding (measured: <= 5e-7 of the scale).
SAME = 1e-6


def _token_ids(bundle: Path, text: str) -> list[int]:
    manifest = Manifest.load(bundle)
    return load_tokenizer(bundle / manifest.tokenizer.file, manifest.tokenizer.kind).encode(text)


def _max_deltas(a: dict, b: dict) -> dict[str, float]:
    """Per output, max |a - b| divided by the output's scale (max |a|, at least 1)."""
    out = {}
    for key in ("conditioning", "eos_logit", "latents", "audio"):
        assert a[key].shape == b[key].shape, key
        if a[key].size:
            scale = max(1.0, float(np.max(np.abs(a[key]))))
            out[key] = float(np.max(np.abs(a[key] - b[key]))) / scale
        else:
            out[key] = 0.0
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_sherpa_protocol_same_under_every_zero_init(bundles, family, voice_audio):
    bundle = bundles[family].bundle
    ids = _token_ids(bundle, TEXT)
    runs = {
        k: replay_sherpa_protocol(bundle, state_length=k, voice_audio=voice_audio, token_ids=ids)
        for k in CONVENTIONS
    }
    ref = runs[0]
    assert np.isfinite(ref["audio"]).all() and ref["latents"].shape[0] == 20
    for k in CONVENTIONS[1:]:
        deltas = _max_deltas(ref, runs[k])
        assert max(deltas.values()) <= SAME, (family, f"dynamic axes at {k} vs 0", deltas)


def test_zero_init_conventions_int8(lsd_bundle, voice_audio):
    bundle = lsd_bundle.bundle
    ids = _token_ids(bundle, TEXT)
    runs = {
        k: replay_sherpa_protocol(
            bundle, precision="int8", state_length=k, voice_audio=voice_audio, token_ids=ids
        )
        for k in CONVENTIONS
    }
    for k in CONVENTIONS[1:]:
        deltas = _max_deltas(runs[0], runs[k])
        assert max(deltas.values()) <= SAME, (f"int8, dynamic axes at {k} vs 0", deltas)


@pytest.fixture()
def states_start_at(monkeypatch):
    """Make our engine start every state with its dynamic axes at `length` instead of 0."""

    def apply(length: int) -> None:
        def shape(spec: StateSpec, batch: int = 1) -> list[int]:
            return [
                d if isinstance(d, int) else batch if d == "batch" else length for d in spec.shape
            ]

        def zeros(spec: StateSpec, *args, **kwargs) -> np.ndarray:
            batch = kwargs.get("batch", args[1] if len(args) > 1 else 1)
            return np.zeros(shape(spec, batch), dtype=spec.dtype)

        monkeypatch.setattr(StateSpec, "initial_shape", property(shape))
        monkeypatch.setattr(StateSpec, "zeros", zeros)

    return apply


@pytest.mark.parametrize("family", ["lsd", "pointwise"])
def test_engine_matches_upstream_under_every_zero_init(
    bundles, family, voice_audio, states_start_at
):
    b = bundles[family]
    ref = upstream_audio(b.upstream(), voice_audio, ONE_CHUNK)
    outputs = {}
    for k in CONVENTIONS:
        states_start_at(k)
        tts = PocketTTSOnnx.load(b.bundle, precision="fp32")
        assert any(v.ndim == 4 and v.shape[2] == k for v in tts.empty_state().values())
        voice = tts.voice_from_audio((voice_audio, 24000))
        outputs[k] = tts.generate(ONE_CHUNK, voice, temperature=0.0)
        assert outputs[k].shape == ref.shape, (family, k)
        assert np.max(np.abs(outputs[k] - ref)) <= 1e-3, (family, k)
    for k in CONVENTIONS[1:]:
        scale = max(1.0, float(np.max(np.abs(outputs[0]))))
        assert np.max(np.abs(outputs[k] - outputs[0])) <= SAME * scale, (family, k)
