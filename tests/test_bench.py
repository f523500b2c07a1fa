"""Smoke test of the benchmark harness on the tiny demo model. Asserts on the report's
structure and on values that do not depend on timing."""

from __future__ import annotations

import json

from test_sherpa import needs_sherpa

from pocket_tts_onnx.cli import main


def test_bench_harness_on_demo(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--demo",
                "--frames",
                "6",
                "--runs",
                "1",
                "--soak-minutes",
                "0.05",
                "--contenders",
                "upstream,upstream-int8,fp32,int8",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "bench.json").read_text())
    assert set(data["medians"]) == {"upstream", "upstream-int8", "fp32", "int8"}
    # upstream-int8 is upstream's own quantize path; the backend it picked is named.
    assert data["per_run"]["upstream-int8"][0]["backend"].startswith(("torch.ao", "torchao"))
    for contender, med in data["medians"].items():
        assert med["frames"] == 6, contender  # EOS disabled: exactly the requested frames
        for key in (
            "x_realtime",
            "cpu_s_per_audio_s",
            "first_chunk_ms",
            "voice_encode_ms",
            "lm_step_ms",
            "lm_step_kv600_ms",
            "mimi_frame_ms",
            "peak_rss_mb",
        ):
            assert med[key] > 0, (contender, key)
    assert data["ratios"]["upstream"]["throughput_vs_upstream"] == 1.0
    assert data["ratios"]["upstream-int8"]["throughput_vs_upstream-int8"] == 1.0
    ours = data["medians"]["int8"]["x_realtime"]
    for base in ("upstream", "upstream-int8"):
        expected = ours / data["medians"][base]["x_realtime"]
        assert abs(data["ratios"]["int8"][f"throughput_vs_{base}"] - expected) < 1e-9
    assert data["medians"]["int8"]["rss_after_1min_mb"] > 0
    for contender in ("fp32", "int8"):  # the core's fast-KV step, timed like upstream's
        med = data["medians"][contender]
        assert med["lm_step_ms"] > 0 and med["lm_step_kv600_ms"] > 0
    assert data["machine"]["cores"] >= 1 and data["versions"]["onnxruntime"]
    assert data["machine"]["memory_copy_gb_s"] > 0
    table = (out / "bench.md").read_text()
    assert "throughput vs upstream-int8" in table and "peak RSS" in table
    assert "backend" in table and "GB/s" in table and "Targets" in table
    assert "bench.md" in capsys.readouterr().out


def test_bench_rejects_unknown_contender(tmp_path, capsys):
    assert main(["bench", "--demo", "--contenders", "upstream,gpu", "--output", str(tmp_path)]) == 2
    assert "--contenders" in capsys.readouterr().err


@needs_sherpa
def test_bench_sherpa_contender(sherpa_bundle, tmp_path, capsys):
    """sherpa-onnx runs its own loop at 1 and 2 threads on the bundle's INT8 graphs, reported
    beside ours, with the ratios against it."""
    out = tmp_path / "bench"
    frames = 20  # more than one of sherpa-onnx's 15-frame decoder calls
    args = ["bench", "--config", str(sherpa_bundle.config), "--bundle", str(sherpa_bundle.bundle)]
    args += ["--frames", str(frames), "--runs", "1", "--soak-minutes", "0", "--output", str(out)]
    assert main([*args, "--contenders", "int8,sherpa-onnx,sherpa-onnx@2"]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert list(data["medians"]) == ["int8", "sherpa-onnx", "sherpa-onnx@2"]
    for label, threads in (("sherpa-onnx", 1), ("sherpa-onnx@2", 2)):
        med, run = data["medians"][label], data["per_run"][label][0]
        assert med["threads"] == threads
        assert med["frames"] == frames, label  # its EOS rule could not end the run early
        assert run["backend"] == "sherpa-onnx 2.0.1, INT8 graphs"
        for key in ("x_realtime", "cpu_s_per_audio_s", "first_chunk_ms", "peak_rss_mb"):
            assert med[key] > 0, (label, key)
        assert "lm_step_ms" not in med  # its loop gives no step timings
    ours, theirs = data["medians"]["int8"], data["medians"]["sherpa-onnx"]
    expected = ours["x_realtime"] / theirs["x_realtime"]
    assert abs(data["ratios"]["int8"]["throughput_vs_sherpa-onnx"] - expected) < 1e-9
    table = (out / "bench.md").read_text()
    assert "throughput vs sherpa-onnx" in table and "| intra-op threads | 1 | 1 | 2 |" in table
    assert "generate callback" in table  # how its first audio is measured is stated
    capsys.readouterr()


@needs_sherpa
def test_bench_sherpa_refuses_a_bundle_its_loop_cannot_run(tmp_path, capsys):
    # The demo model is 64 wide; sherpa-onnx 2.0.1 hard-codes the released 1024-wide shapes.
    args = ["bench", "--demo", "--contenders", "sherpa-onnx", "--output", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sherpa-onnx" in err and "d_model 1024" in err
