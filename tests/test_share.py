"""Bundle footprint: the variant graphs read their weights from the contract graphs' files
(stored once on disk, FP32 and INT8 alike), and `export --precision int8` ships INT8 only,
with the model id voices are checked against, loadable by the engine.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.errors import BundleError, ExportError
from pocket_tts_onnx.export.share import MIN_SHARED_BYTES, SHARED_WEIGHTS
from pocket_tts_onnx.manifest import Manifest, file_sha256
from pocket_tts_onnx.runtime.sessions import verify_bundle_graph


def _inline_blobs(path) -> dict[str, int]:
    """sha256 -> size of the weights stored inside the model file itself."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        hashlib.sha256(t.raw_data).hexdigest(): len(t.raw_data)
        for t in model.graph.initializer
        if t.HasField("raw_data") and len(t.raw_data) >= MIN_SHARED_BYTES
    }


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_variants_store_no_copy_of_the_contract_weights(lsd_bundle, precision):
    bundle = lsd_bundle.bundle
    manifest = Manifest.load(bundle)
    for variant, contract in SHARED_WEIGHTS.items():
        entry = manifest.graphs[variant]
        contract_file = manifest.graphs[contract].files[precision]
        assert entry.external[precision] == [contract_file]
        held = _inline_blobs(bundle / contract_file)
        copied = set(_inline_blobs(bundle / entry.files[precision])) & set(held)
        assert not copied, f"{variant} {precision} stores {len(copied)} weights again"
        # Every weight it reads is the contract graph's, byte for byte.
        model = onnx.load(str(bundle / entry.files[precision]))  # resolves the external data
        weights = [t for t in model.graph.initializer if len(t.raw_data) >= MIN_SHARED_BYTES]
        assert weights and all(hashlib.sha256(t.raw_data).hexdigest() in held for t in weights)


def test_shared_weights_file_is_checked_for_the_variant(lsd_bundle, tmp_path):
    """The variant's own file is intact; the contract file it reads its weights from was
    altered: opening the variant is refused by the digest, not run with other weights."""
    bundle = tmp_path / "b"
    shutil.copytree(lsd_bundle.bundle, bundle)
    manifest = Manifest.load(bundle)
    weights = bundle / manifest.graphs["flow_lm_main"].files["int8"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    verify_bundle_graph(bundle, manifest, "flow_lm_step", "int8", digest=False)  # present
    with pytest.raises(BundleError, match="flow_lm_main_int8.onnx does not match the sha256"):
        verify_bundle_graph(bundle, manifest, "flow_lm_step", "int8")
    with pytest.raises(BundleError, match="does not match the sha256"):
        PocketTTSOnnx.load(bundle, precision="int8")


@pytest.mark.parametrize(
    ("external", "message"),
    [(["../flow_lm_main.onnx"], "outside the bundle"), (["sub/x.onnx"], "not in the folder")],
)
def test_manifest_refuses_external_files_elsewhere(lsd_bundle, tmp_path, external, message):
    bundle = tmp_path / "b"
    shutil.copytree(lsd_bundle.bundle, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    step = data["graphs"]["flow_lm_step"]
    step["external"]["fp32"] = external
    step["sha256"].update({name: "0" * 64 for name in external})
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        Manifest.load(bundle)


def test_export_precision_option_is_checked(tmp_path):
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle

    with pytest.raises(ExportError, match="--quantize writes INT8"):
        export_bundle(ModelSource(demo=True), tmp_path / "a", quantize=True, precision="fp32")
    with pytest.raises(ExportError, match="must be fp32, int8 or fp32\\+int8"):
        export_bundle(ModelSource(demo=True), tmp_path / "b", precision="int4")


@pytest.fixture(scope="module")
def int8_only(lsd_bundle, tmp_path_factory):
    """The lsd family's model (same config and seed as `lsd_bundle`), INT8 only."""
    from pocket_tts_onnx.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("int8-only") / "bundle"
    _, reports = export_bundle(lsd_bundle.source, out, precision="int8", verify=True)
    return out, reports


def test_int8_only_bundle_holds_int8_only(int8_only, lsd_bundle):
    bundle, reports = int8_only
    manifest = Manifest.load(bundle)
    full = Manifest.load(lsd_bundle.bundle)
    assert manifest.precisions == ("int8",)
    assert not [f.name for f in bundle.glob("*.onnx") if not f.stem.endswith("_int8")]
    # FP32 was verified against upstream during the export, then left out.
    assert {r.graph for r in reports} == set(manifest.graphs)
    assert all(r.worst_fp32 <= r.tolerance for r in reports)
    # The model id is the FP32 flow_lm_main's, as in the FP32+INT8 bundle of the same model.
    main = full.graphs["flow_lm_main"]
    assert manifest.model_id == full.model_id == file_sha256(lsd_bundle.bundle / main.files["fp32"])
    for name, entry in manifest.graphs.items():  # the same INT8 files, byte for byte
        assert entry.sha256 == {
            f: full.graphs[name].sha256[f] for f in entry.bundle_files("int8")
        }, name


def test_int8_only_bundle_generates_and_checks_voices(int8_only, lsd_bundle, tmp_path):
    bundle, _ = int8_only
    tts = PocketTTSOnnx.load(bundle, precision="int8")
    full = PocketTTSOnnx.load(lsd_bundle.bundle, precision="int8")
    assert tts.model_id == full.model_id
    saved = tmp_path / "voice.npz"
    full.voice_from_audio((np.sin(np.arange(24000) / 9).astype(np.float32) * 0.3, 24000)).save(
        saved
    )
    voice = tts.load_voice(saved)  # checked against the recorded model id
    audio = tts.generate("Hello there.", voice, temperature=0.0)
    assert audio.size and np.isfinite(audio).all()
    np.testing.assert_array_equal(audio, full.generate("Hello there.", voice, temperature=0.0))


def test_int8_only_bundle_refuses_fp32_clearly(int8_only):
    bundle, _ = int8_only
    with pytest.raises(BundleError, match="INT8 graphs only, no FP32.*--precision int8"):
        PocketTTSOnnx.load(bundle, precision="fp32")
    with pytest.raises(BundleError, match="INT8 graphs only"):
        PocketTTSOnnx.load(bundle, precision="fp32", verify_checksums=False)


def test_schema_2_manifest_implies_precisions_and_model_id(lsd_bundle):
    """Bundles exported before schema 3 load as they did: every precision their contract
    graphs have, and the FP32 flow_lm_main digest as the model id."""
    data = json.loads((lsd_bundle.bundle / "manifest.json").read_text())
    main = data["graphs"]["flow_lm_main"]
    model_id = main["sha256"][main["files"]["fp32"]]
    data["schema_version"] = 2
    del data["precisions"], data["model_id"]
    for graph in data["graphs"].values():
        del graph["external"]
    manifest = Manifest.from_dict(data)
    assert manifest.precisions == ("fp32", "int8") and manifest.model_id == model_id
    for graph in data["graphs"].values():
        graph["files"].pop("int8")
    assert Manifest.from_dict(data).precisions == ("fp32",)


def test_int8_only_manifest_needs_its_model_id(int8_only):
    bundle, _ = int8_only
    data = json.loads((bundle / "manifest.json").read_text())
    del data["model_id"]
    with pytest.raises(BundleError, match="model_id"):
        Manifest.from_dict(data)
    data["model_id"], data["precisions"] = "x", ["fp32", "int8"]  # it has no FP32 files
    with pytest.raises(BundleError, match="has no fp32 file"):
        Manifest.from_dict(data)
