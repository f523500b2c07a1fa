"""manifest.json is checked at load: every number within its range and the model numbers in
agreement with the graph specs, so a damaged or hostile manifest is one BundleError naming
the field, never a raw onnxruntime error, a hang or a MemoryError at generation."""

from __future__ import annotations

import json
import shutil

import pytest

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.errors import BundleError
from pocket_tts_onnx.manifest import MANIFEST_NAME, Manifest

BAD_NUMBERS = [
    ("sample_rate", 0, "sample_rate"),
    ("sample_rate", 1e30, "sample_rate"),
    ("sample_rate", 24000.5, "sample_rate"),
    ("frame_rate", float("nan"), "frame_rate"),
    ("frame_rate", 12.0, "frame_rate"),  # disagrees with sample_rate / samples_per_latent
    ("samples_per_latent", -1, "samples_per_latent"),
    ("latent_dim", 33, "latent_dim"),
    ("d_model", 65, "d_model"),
    ("head_dim", 0, "head_dim"),
    ("d_model", True, "d_model"),
    ("opset", "17", "opset"),
    ("defaults.fade_in_seconds", 1e9, "defaults.fade_in_seconds"),
    ("defaults.decode_steps", 10**9, "defaults.decode_steps"),
    ("defaults.temperature", float("inf"), "defaults.temperature"),
    ("defaults.max_length_padding_seconds", -1.0, "defaults.max_length_padding_seconds"),
    ("defaults.frames_after_eos", 2.5, "defaults.frames_after_eos"),
    ("tokenizer.vocab_size", 0, "tokenizer.vocab_size"),
    ("graphs.flow_lm_flow.inputs.0.shape", ["batch", 10**12], "flow_lm_flow"),
]


def _edit(data: dict, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    for key in path:
        data = data[int(key)] if isinstance(data, list) else data[key]
    data[int(leaf) if isinstance(data, list) else leaf] = value


@pytest.fixture()
def bundle_copy(serve_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(serve_bundle, copy)
    return copy


@pytest.mark.parametrize(("field", "value", "named"), BAD_NUMBERS, ids=[c[0] for c in BAD_NUMBERS])
def test_bad_numbers_are_refused_at_load_naming_the_field(bundle_copy, field, value, named):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    _edit(data, field, value)
    path.write_text(json.dumps(data))  # NaN/Infinity as Python's json writes them
    with pytest.raises(BundleError, match=named.replace(".", r"\.")):
        Manifest.load(bundle_copy)
    with pytest.raises(BundleError, match=named.replace(".", r"\.")):
        PocketTTSOnnx.load(bundle_copy, verify_checksums=False)


def test_optional_numbers_may_be_null_and_real_manifests_load(bundle_copy):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["defaults"].update(noise_clamp=None, frames_after_eos=None)
    path.write_text(json.dumps(data))
    manifest = Manifest.load(bundle_copy)
    assert manifest.defaults.noise_clamp is None and manifest.sample_rate == 24_000
