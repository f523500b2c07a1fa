"""Smoke test of the benchmark harness on the tiny demo model. Asserts on the report's
structure and on values that do not depend on timing."""

from __future__ import annotations

import json

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
