"""Opening a bundle's graphs: damage to any file the manifest names is caught at load."""

from __future__ import annotations

import json
import shutil

import pytest

from pocket_tts_onnx import (
    BundleError,
    PocketTTSOnnx,
)


@pytest.fixture(scope="module")
def bundle(lsd_bundle_copy):
    return lsd_bundle_copy


def test_bundle_damage_is_caught_at_load(bundle, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    step = damaged / "flow_lm_step_int8.onnx"  # opened on first use, checked at load
    step.write_bytes(step.read_bytes()[: step.stat().st_size // 2])
    with pytest.raises(BundleError, match="sha256"):
        PocketTTSOnnx.load(damaged)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["voices"] = [1, 2]
    malformed = tmp_path / "malformed"
    shutil.copytree(bundle, malformed)
    (malformed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="malformed"):
        PocketTTSOnnx.load(malformed)
