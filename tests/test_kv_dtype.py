"""`export --kv-dtype fp16`: flow_lm_step stores the flow LM's keys and values as float16.

The graph is verified against upstream at export within FP16_KV_RELATIVE_TOLERANCE; the
engine on such a bundle stays within the stated bounds of the fp32-cache engine on the same
weights; the flow LM's rows in a batch equal each row alone to the bit; the manifest records
the dtype and the runtime allocates what it says; the contract graphs (what sherpa-onnx
runs) are unchanged, and the web runtime, whose K/V cache is float32, runs the contract
graph instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import MULTI_CHUNK, ONE_CHUNK

from pocket_tts_onnx import NO_VOICE, PocketTTSOnnx
from pocket_tts_onnx.errors import BundleError, ExportError
from pocket_tts_onnx.manifest import MANIFEST_NAME, Manifest
from pocket_tts_onnx.runtime.batching import BatchScheduler
from pocket_tts_onnx.runtime.kv_buffer import KVBuffers, states_from_buffers
from pocket_tts_onnx.specs import FP16_KV_RELATIVE_TOLERANCE, FP32_RELATIVE_TOLERANCE, GRAPH_NAMES

# Relative L2 of the audio of the fp16 cache vs the fp32 cache (same weights, seed and
# parameters), FP32 graphs. Measured (docs/bench.md): full english model 1.2e-6, tiny test
# model 4e-7. With INT8 graphs any perturbation is amplified (activations are quantized at run
# time: a changed rounding flips), so there the fp16 cache must add no more than INT8's own
# error vs FP32 graphs does (english: 1.0e-3 vs 8.4e-4; tiny: 2.2e-4 vs 1.6e-4).
KV16_FP32_AUDIO_REL_L2 = 1e-5
KV16_INT8_VS_INT8_ERROR = 3.0

WEB = Path(__file__).resolve().parents[1] / "web"
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def kv16(lsd_bundle, tmp_path_factory):
    """The lsd test model (same config and seed as `lsd_bundle`) exported with fp16 K/V."""
    from pocket_tts_onnx.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("kv16") / "bundle"
    _, reports = export_bundle(lsd_bundle.source, out, quantize=True, kv_dtype="fp16")
    return out, {r.graph: r for r in reports}


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_fp16_step_is_verified_against_upstream_within_its_tolerance(kv16, lsd_bundle):
    _, reports = kv16
    step = reports["flow_lm_step"]
    assert step.tolerance == FP16_KV_RELATIVE_TOLERANCE
    # The rounding is there (float16 keys and values), and within the stated tolerance.
    assert lsd_bundle.reports["flow_lm_step"].worst_fp32 < step.worst_fp32
    assert step.worst_fp32 <= FP16_KV_RELATIVE_TOLERANCE
    others = [r for name, r in reports.items() if name != "flow_lm_step"]
    assert all(r.tolerance == FP32_RELATIVE_TOLERANCE for r in others)


def test_manifest_records_the_dtype_and_the_contract_graphs_are_unchanged(kv16, lsd_bundle):
    bundle, _ = kv16
    manifest = Manifest.load(bundle)
    step = manifest.graphs["flow_lm_step"].spec
    assert {b.dtype for b in step.buffers} == {"float16"}
    assert {s.dtype for s in manifest.graphs["flow_lm_main"].spec.states} == {"float32", "int64"}
    # Its weights are read from the contract graph's file, as the fp32-cache step's are.
    assert manifest.graphs["flow_lm_step"].external == {
        "fp32": ["flow_lm_main.onnx"],
        "int8": ["flow_lm_main_int8.onnx"],
    }
    for precision in ("fp32", "int8"):
        tts = PocketTTSOnnx.load(bundle, precision=precision)
        session = tts.core.flow_lm_graph.session
        kinds = {t.name: t.type for t in session.get_inputs() + session.get_outputs()}
        for b in step.buffers:
            assert kinds[b.name] == kinds[b.output_name] == "tensor(float16)"
        assert {a.dtype for a in tts.core.flow_lm(rows=1).buffers.arrays.values()} == {
            np.dtype("float16")
        }
    # Third-party runtimes (sherpa-onnx) read only these: the very same files.
    default = Manifest.load(lsd_bundle.bundle)
    for name in GRAPH_NAMES:
        assert manifest.graphs[name].sha256 == default.graphs[name].sha256, name


def test_bad_kv_dtype_is_a_clear_error(kv16, tmp_path, capsys):
    from pocket_tts_onnx.cli import main
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--demo", "--kv-dtype", "bf16", "--output", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--kv-dtype: invalid choice: 'bf16' (choose from 'fp32', 'fp16')" in err, err
    with pytest.raises(ExportError, match="--kv-dtype must be one of fp32, fp16, got 'bf16'"):
        export_bundle(ModelSource(demo=True), tmp_path / "b", kv_dtype="bf16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # A manifest naming a K/V dtype the runtime cannot allocate is refused at load.
    copy = tmp_path / "copy"
    shutil.copytree(kv16[0], copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["graphs"]["flow_lm_step"]["buffers"][0]["dtype"] = "object"
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="flow_lm_step.*dtype 'object' is not one of"):
        Manifest.load(copy)


def test_engine_with_fp16_kv_matches_the_fp32_cache(kv16, lsd_bundle, voice_audio):
    exact = {p: PocketTTSOnnx.load(lsd_bundle.bundle, precision=p) for p in ("fp32", "int8")}
    half = {p: PocketTTSOnnx.load(kv16[0], precision=p) for p in ("fp32", "int8")}
    voice = exact["fp32"].voice_from_audio((voice_audio, 24000))
    for text in (ONE_CHUNK, MULTI_CHUNK):
        for temperature in (0.0, 0.7):
            params = {"seed": 3, "temperature": temperature, "eos_threshold": float("inf")}
            audio = {
                (kind, p): engines[p].generate(text, voice, max_frames=20, **params)
                for kind, engines in (("exact", exact), ("half", half))
                for p in ("fp32", "int8")
            }
            case = (text[:20], temperature)
            fp32 = _rel_l2(audio["half", "fp32"], audio["exact", "fp32"])
            assert 0 < fp32 <= KV16_FP32_AUDIO_REL_L2, case
            int8 = _rel_l2(audio["half", "int8"], audio["exact", "int8"])
            int8_own = _rel_l2(audio["exact", "int8"], audio["exact", "fp32"])
            assert int8 <= KV16_INT8_VS_INT8_ERROR * int8_own, (case, int8, int8_own)


def test_batched_rows_equal_single_rows_with_fp16_kv(kv16, voice_audio):
    """The flow LM on rows at different positions (voice or none, prompts of different
    lengths fed in one call, steps with a row held back) gives each row what it gets alone,
    to the bit: conditioning, EOS logit and its float16 K/V rows."""
    tts = PocketTTSOnnx.load(kv16[0], precision="fp32")
    m, core = tts.manifest, tts.core
    voice = tts.voice_from_audio((voice_audio, 24000))
    starts = [voice.states, tts.empty_state(), voice.states]
    rng = np.random.default_rng(0)
    prompts = [rng.standard_normal((1, n, m.d_model)).astype(np.float32) for n in (7, 20, 3)]
    steps = [rng.standard_normal((3, 1, m.latent_dim)).astype(np.float32) for _ in range(5)]
    keeps = [np.array([True, i != 2, True]) for i in range(5)]
    batch = core.flow_lm(rows=3)
    for row, start in enumerate(starts):
        batch.load(row, start)
    batch.prompt_rows(0, prompts)
    outs = [batch.step(x, keep) for x, keep in zip(steps, keeps, strict=True)]
    for row in range(3):
        alone = core.flow_lm(rows=1)
        alone.load(0, starts[row])
        alone.prompt(0, prompts[row])
        for x, keep, (cond, eos) in zip(steps, keeps, outs, strict=True):
            if keep[row]:
                one_cond, one_eos = alone.step(x[row : row + 1])
                assert np.array_equal(one_cond, cond[row : row + 1])
                assert np.array_equal(one_eos, eos[row : row + 1])
        used = int(alone.buffers.positions[0])
        assert used == int(batch.buffers.positions[row])
        for name, arr in alone.buffers.arrays.items():
            assert arr.dtype == np.float16
            assert np.array_equal(arr[0, :, :used], batch.buffers.arrays[name][row, :, :used])


def test_scheduler_streams_match_single_streams_with_fp16_kv(kv16, voice_audio):
    """End to end through the scheduler, within the fp32 cache's batching bound (1e-4: the
    decoder may merge queued frames of several rows into one call)."""
    tts = PocketTTSOnnx.load(kv16[0], precision="fp32")
    voice = tts.voice_from_audio((voice_audio, 24000))
    requests = [
        (MULTI_CHUNK, voice, {"seed": 1, "temperature": 0.7}),
        (ONE_CHUNK, NO_VOICE, {"seed": 2, "temperature": 0.0}),
        ("Short one.", voice, {"seed": 3, "max_frames": 5}),
    ]
    results: list = [None] * len(requests)
    with BatchScheduler(tts.core, max_streams=3, max_queue=8) as scheduler:
        streams = [scheduler.submit(t, v, **p) for t, v, p in requests]

        def consume(i):
            results[i] = np.concatenate([c.samples for c in streams[i]])

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    for (text, v, params), got in zip(requests, results, strict=True):
        want = tts.generate(text, v, **params)
        assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-4, text


def test_voices_are_float32_states_either_way(kv16, lsd_bundle, voice_audio, tmp_path):
    exact = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    half = PocketTTSOnnx.load(kv16[0], precision="fp32")
    want = exact.voice_from_audio((voice_audio, 24000))
    got = half.voice_from_audio((voice_audio, 24000))
    for name, ref in want.states.items():
        assert got.states[name].dtype == ref.dtype, name
        scale = max(float(np.abs(ref).max()), 1e-6)
        assert float(np.abs(got.states[name] - ref).max()) / scale <= FP16_KV_RELATIVE_TOLERANCE
    got.save(tmp_path / "half.npz")  # same weights, same model id: the fp32 engine takes it
    assert exact.load_voice(tmp_path / "half.npz").model_id == exact.model_id


def test_fp16_buffers_round_and_saturate_loaded_states(kv16):
    manifest = Manifest.load(kv16[0])
    step, main = manifest.graphs["flow_lm_step"].spec, manifest.graphs["flow_lm_main"].spec
    rng = np.random.default_rng(0)
    states = {s.name: rng.standard_normal(s.shape_with(5)).astype(np.float32) for s in main.states}
    counter = next(s.name for s in main.states if s.upstream_key == "offset")
    states[counter] = np.array([5], dtype=np.int64)
    first = step.buffers[0].state
    states[first][0, 0, 0, 0] = 1e6  # beyond float16: saturates, never inf
    buffers = KVBuffers(step)
    buffers.load(0, states, 5)
    back = states_from_buffers(buffers, 0, main)
    assert back[first].dtype == np.float32 and back[first][0, 0, 0, 0] == 65504.0
    states[first][0, 0, 0, 0] = 0.0
    back[first][0, 0, 0, 0] = 0.0
    for b in step.buffers:
        assert np.array_equal(back[b.state], states[b.state].astype(np.float16).astype(np.float32))


def test_server_kv_budget_counts_float16_bytes(kv16, lsd_bundle):
    from pocket_tts_onnx.serve.limits import ServeConfig
    from pocket_tts_onnx.serve.scheduler import make_scheduler

    positions = {}
    for name, bundle in (("fp32", lsd_bundle.bundle), ("fp16", kv16[0])):
        scheduler = make_scheduler(PocketTTSOnnx.load(bundle), ServeConfig(max_kv_mb=1))
        try:
            positions[name] = scheduler.current().max_kv_positions
        finally:
            scheduler.close()
    assert positions["fp16"] == 2 * positions["fp32"]


@pytest.mark.skipif(
    NODE is None or not (WEB / "node_modules").is_dir(),
    reason="web/node_modules is missing: run `npm ci --prefix web` (needs Node 20+)",
)
def test_web_runtime_runs_the_contract_graph_for_fp16_kv(kv16, lsd_bundle, tmp_path):
    """The browser runtime's K/V cache is float32: on an fp16-KV bundle it runs the contract
    graph flow_lm_main (instead of failing on the step graph's float16 inputs), exactly."""
    plan = {
        "bundle": str(kv16[0]),
        "precision": "fp32",
        "outDir": str(tmp_path),
        "texts": {"short": ONE_CHUNK},
        "voices": {},
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    proc = subprocess.run(
        [NODE, str(WEB / "tests" / "engine.mjs"), str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=WEB,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["fastKv"] is False
    want = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32").generate(
        ONE_CHUNK, NO_VOICE, temperature=0.0
    )
    got = np.fromfile(tmp_path / "step_short_none.f32", dtype="<f4")
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-3
