"""Exporter: the five graphs of every tiny family match upstream PyTorch, the bundle is
complete and atomic, and bad inputs fail with typed, readable errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import FAMILIES

from pocket_tts_onnx.errors import (
    ExportError,
    ModelSourceError,
    UnsupportedVersionError,
    VerificationError,
)
from pocket_tts_onnx.export.loading import ModelSource, load_model
from pocket_tts_onnx.export.patches import check_pocket_tts_version, stateless_modules
from pocket_tts_onnx.export.pipeline import export_bundle
from pocket_tts_onnx.export.verify import reference_cases, verify_graph
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.specs import GRAPH_NAMES, VARIANT_NAMES

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_bundle_is_verified_and_quantized(bundles, family):
    b = bundles[family]
    manifest = Manifest.load(b.bundle)
    assert manifest.random_weights and "RANDOM WEIGHTS" in manifest.notes[0]
    assert manifest.flow_type == family
    report = json.loads((b.bundle / "verify_report.json").read_text())
    assert set(report) == set(GRAPH_NAMES + VARIANT_NAMES)
    for name in GRAPH_NAMES + VARIANT_NAMES:
        entry = report[name]
        assert entry["passed"] and entry["worst_fp32"] <= 1e-4, (name, entry)
        int8 = entry["int8_relative_l2_vs_fp32"]
        assert all(np.isfinite(v) for v in int8.values())
        files = manifest.graphs[name].files
        assert (b.bundle / files["fp32"]).is_file() and (b.bundle / files["int8"]).is_file()
    for stateful in ("flow_lm_main", "mimi_decoder"):
        assert report[stateful]["steps"] >= 20
    fp32 = (b.bundle / "flow_lm_main.onnx").stat().st_size
    int8 = (b.bundle / "flow_lm_main_int8.onnx").stat().st_size
    assert int8 < fp32
    graph = onnx.load(str(b.bundle / "flow_lm_main_int8.onnx")).graph
    weights = {i.name for i in graph.initializer}
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and set(n.input) & weights]
    assert weight_matmuls == []  # every weight MatMul became MatMulInteger
    assert any(n.op_type == "MatMulInteger" for n in graph.node)


def test_flow_head_inputs_follow_head_type(bundles):
    expected = {
        "lsd": ["c", "s", "t", "x"],
        "flow_matching": ["c", "t", "x"],
        "drifting": ["c", "x"],
        "pointwise": ["c", "x"],
    }
    for family, names in expected.items():
        session = ort.InferenceSession(str(bundles[family].bundle / "flow_lm_flow.onnx"))
        assert [i.name for i in session.get_inputs()] == names


def test_manifest_round_trip_and_contract(lsd_bundle):
    manifest = Manifest.load(lsd_bundle.bundle)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    main = manifest.graphs["flow_lm_main"].spec
    assert [t.name for t in main.inputs] == ["sequence", "text_embeddings"]
    assert [t.name for t in main.outputs] == ["conditioning", "eos_logit"]
    assert [s.name for s in main.states] == [f"state_{i}" for i in range(len(main.states))]
    session = ort.InferenceSession(str(lsd_bundle.bundle / "flow_lm_main.onnx"))
    assert [o.name for o in session.get_outputs()][2:] == [s.output_name for s in main.states]
    for state in main.states + manifest.graphs["mimi_decoder"].spec.states:
        assert state.initial == "zeros" and state.upstream_module.startswith(("flow_lm.", "mimi."))
    tokenizer = lsd_bundle.bundle / manifest.tokenizer.file
    assert tokenizer.is_file() and manifest.tokenizer.vocab_size == 512


def test_mimi_decoder_state_stays_bounded(lsd_bundle):
    """Minutes of streaming must not grow memory: the KV window stops at context - 1."""
    manifest = Manifest.load(lsd_bundle.bundle)
    spec = manifest.graphs["mimi_decoder"].spec
    session = ort.InferenceSession(str(lsd_bundle.bundle / "mimi_decoder.onnx"))
    states = spec.initial_states()
    rng = np.random.default_rng(0)
    names = [t.name for t in spec.all_outputs]
    for _ in range(60):
        latent = rng.standard_normal((1, 2, manifest.latent_dim)).astype(np.float32)
        out = dict(zip(names, session.run(names, {"latent": latent, **states}), strict=True))
        states = {s.name: out[s.output_name] for s in spec.states}
    caches = [s for s in spec.states if s.upstream_key.startswith("cache.")]
    offsets = [s for s in spec.states if s.upstream_key == "offset"]
    context = yaml.safe_load(lsd_bundle.config.read_text())["mimi"]["transformer"]["context"]
    assert all(states[s.name].shape[2] == context - 1 for s in caches)
    assert int(states[offsets[0].name][0]) == 60 * 2 * 16  # 16 transformer steps per latent


def test_patches_are_scoped():
    from pocket_tts.modules.attention import StreamingMultiheadAttention
    from pocket_tts.modules.conv import StreamingConv1d, StreamingConvTranspose1d

    classes = (StreamingMultiheadAttention, StreamingConv1d, StreamingConvTranspose1d)
    originals = [c.forward for c in classes]
    with pytest.raises(RuntimeError), stateless_modules():
        assert all(c.forward is not o for c, o in zip(classes, originals, strict=True))
        raise RuntimeError("boom")
    assert [c.forward for c in classes] == originals


def test_unknown_pocket_tts_version_is_refused():
    check_pocket_tts_version("4.0.1")
    for bad in ("3.9.0", "4.1.0", "5.0.0", "banana"):
        with pytest.raises(UnsupportedVersionError, match="pocket-tts"):
            check_pocket_tts_version(bad)


def test_verification_can_fail(lsd_bundle):
    """A tolerance of zero must trip the check: the comparison is real."""
    loaded = load_model(lsd_bundle.source)
    manifest = Manifest.load(lsd_bundle.bundle)
    specs = {n: g.spec for n, g in manifest.graphs.items()}
    cases = reference_cases(loaded.model, specs)
    strict = replace(specs["mimi_decoder"], tolerance=0.0)
    with pytest.raises(VerificationError, match="mimi_decoder.*audio_frame"):
        verify_graph(strict, cases["mimi_decoder"], lsd_bundle.bundle / "mimi_decoder.onnx")
    # A graph from another model is caught at the default tolerance.
    with pytest.raises(VerificationError):
        verify_graph(
            specs["text_conditioner"],
            cases["text_conditioner"],
            _other_family_graph(lsd_bundle, "drifting"),
        )


def _other_family_graph(lsd_bundle, family) -> Path:
    return lsd_bundle.bundle.parent / family / "text_conditioner.onnx"


def _save_weights(loaded, path: Path) -> None:
    import safetensors.torch

    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(path)
    )


def test_custom_config_with_local_weights_and_checkpoint(lsd_bundle, tmp_path):
    """The real loading path (config + weights file) on local files, checked against upstream."""
    loaded = load_model(lsd_bundle.source)
    weights = tmp_path / "model.safetensors"
    _save_weights(loaded, weights)
    # voices="none": the default voice of a custom model is alba's recording on the hub.
    manifest, reports = export_bundle(
        ModelSource(config=lsd_bundle.config, weights=weights),
        tmp_path / "from_weights",
        voices="none",
    )
    assert not manifest.random_weights and manifest.notes == []
    assert len(manifest.source["weights_sha256"]) == 64
    assert max(r.worst_fp32 for r in reports) <= 1e-4
    # Same weights as the random-init bundle: identical graph outputs.
    assert (tmp_path / "from_weights" / "text_conditioner.onnx").read_bytes() == (
        lsd_bundle.bundle / "text_conditioner.onnx"
    ).read_bytes()

    checkpoint = tmp_path / "run.pt"
    torch.save({"model": {k: v for k, v in loaded.model.state_dict().items()}}, checkpoint)
    manifest, reports = export_bundle(
        ModelSource(config=lsd_bundle.config, checkpoint=checkpoint),
        tmp_path / "from_ckpt",
        voices="none",
    )
    assert "checkpoint_sha256" in manifest.source
    assert max(r.worst_fp32 for r in reports) <= 1e-4


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda c, t: ModelSource(language="klingon"), "unknown language 'klingon'.*english"),
        (
            lambda c, t: ModelSource(config=t / "nope.yaml", random_init=True),
            "config file not found",
        ),
        (
            lambda c, t: ModelSource(config=c, weights=t / "missing.safetensors"),
            "weights file not found",
        ),
        (lambda c, t: ModelSource(config=c, weights=_garbage(t)), "corrupt or unreadable"),
        (lambda c, t: ModelSource(config=c), "names no weights"),
    ],
)
def test_bad_model_sources(lsd_bundle, tmp_path, make_source, message):
    with pytest.raises(ModelSourceError, match=message):
        export_bundle(make_source(lsd_bundle.config, tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _garbage(tmp: Path) -> Path:
    path = tmp / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(64))
    return path


def test_weights_that_do_not_match_the_config(bundles, tmp_path):
    weights = tmp_path / "pointwise.safetensors"
    _save_weights(load_model(bundles["pointwise"].source), weights)
    with pytest.raises(ModelSourceError, match="do not match the config"):
        export_bundle(ModelSource(config=bundles["lsd"].config, weights=weights), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unwritable_or_foreign_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write|not a directory"):
        export_bundle(ModelSource(demo=True), blocker / "bundle")
    foreign = tmp_path / "my_documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(ModelSource(demo=True), foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_interrupted_export_keeps_previous_bundle(demo_bundle, tmp_path):
    out = shutil.copytree(demo_bundle, tmp_path / "bundle")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupt(message: str) -> None:
        if message.startswith("exporting flow_lm_main"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_bundle(ModelSource(demo=True, seed=3), out, progress=interrupt)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left


def test_hub_failure_is_one_clear_message(tmp_path):
    """No internet: upstream's real download path fails, and we say what to do instead."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "export.py"),
            "--language",
            "english",
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "could not fetch the model files from the model hub" in result.stderr
    assert "--random-init" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_demo_quick_start_command(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "export.py"),
            "--demo",
            "--quantize",
            "--output",
            str(tmp_path / "onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "flow_lm_main" in result.stdout and "noise, not speech" in result.stdout
    assert (tmp_path / "onnx" / "mimi_decoder_int8.onnx").is_file()
