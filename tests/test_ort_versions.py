"""ONNX Runtime versions: the manifest records the graphs' real opset, and the parity subset
(scripts/ort_parity.py) runs on this onnxruntime, documented zero-length cases included.

The comparison with the oldest declared onnxruntime needs a second environment, so it is a CI
step, not a test: `bash scripts/ci_ort_matrix.sh` (this subset on both versions, compared).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FAMILIES

from pocket_tts_onnx.export.exporter import OPSET
from pocket_tts_onnx.manifest import Manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import ort_parity  # noqa: E402


def test_manifest_records_the_graphs_opset(lsd_bundle):
    manifest = Manifest.load(lsd_bundle.bundle)
    assert manifest.opset == OPSET
    for name, entry in manifest.graphs.items():
        for file in entry.files.values():
            model = onnx.load(str(lsd_bundle.bundle / file), load_external_data=False)
            default = {o.domain: o.version for o in model.opset_import}.get("")
            assert default == manifest.opset, (name, file, default)


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_subset_runs_here(bundles, family):
    results, failures = ort_parity.run_all(bundles[family].bundle)
    assert not failures, failures
    manifest = Manifest.load(bundles[family].bundle)
    for precision in ("fp32", "int8"):
        key = f"{precision}/flow_lm_main/{{}}/out_{{}}"
        for state in manifest.graphs["flow_lm_main"].spec.states:
            # S + T = 0 feeds nothing: the states come back as they went in.
            before = results[key.format("S=0 T=5", state.name)]
            assert np.array_equal(results[key.format("S+T=0 filled", state.name)], before)
            empty = results[key.format("S+T=0 empty", state.name)]
            assert np.array_equal(empty, state.zeros()), state.name
        for name, value in results.items():
            if name.startswith(precision) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), name


def test_parity_comparison_fails_on_a_difference(lsd_bundle, tmp_path):
    results, _ = ort_parity.run_all(lsd_bundle.bundle)
    nudged = dict(results)
    key = "fp32/generate/voice/audio"
    nudged[key] = results[key] + 2e-5
    assert ort_parity.compare(results, dict(results), 1e-5) == []
    problems = ort_parity.compare(nudged, results, 1e-5)
    assert len(problems) == 1 and key in problems[0]
    del nudged[key]
    assert "only in reference" in ort_parity.compare(nudged, results, 1e-5)[0]
    # INT8 end to end: judged by relative L2 (see scripts/ort_parity.py).
    key = "int8/generate/voice/audio"
    nudged = {**results, key: results[key] * (1 + 1e-4)}
    assert ort_parity.compare(nudged, results, 1e-5, int8_generate_rel=1e-3) == []
    nudged[key] = results[key] * 1.01
    assert key in ort_parity.compare(nudged, results, 1e-5, int8_generate_rel=1e-3)[0]
