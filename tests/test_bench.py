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
                "--output",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "bench.json").read_text())
    assert set(data["medians"]) == {"upstream", "fp32", "int8"}
    for contender, med in data["medians"].items():
        assert med["frames"] == 6, contender  # EOS disabled: exactly the requested frames
        for key in (
            "x_realtime",
            "first_chunk_ms",
            "voice_encode_ms",
            "lm_step_ms",
            "lm_step_kv600_ms",
            "mimi_frame_ms",
            "peak_rss_mb",
        ):
            assert med[key] > 0, (contender, key)
    assert data["ratios"]["upstream"]["throughput_vs_upstream"] == 1.0
    assert data["medians"]["int8"]["rss_after_1min_mb"] > 0
    assert data["machine"]["cores"] >= 1 and data["versions"]["onnxruntime"]
    table = (out / "bench.md").read_text()
    assert "throughput vs upstream" in table and "peak RSS" in table
    assert "bench.md" in capsys.readouterr().out


def test_bench_rejects_unknown_contender(tmp_path, capsys):
    assert main(["bench", "--demo", "--contenders", "upstream,gpu", "--output", str(tmp_path)]) == 2
    assert "--contenders" in capsys.readouterr().err
