"""Export, quantize and verify every config shipped with the installed pocket-tts at full
size with random weights; write a markdown table and JSON (not run in CI: ~15 min here).

    python scripts/export_all_configs.py --output docs/configs.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from pocket_tts_onnx.export.loading import ModelSource, available_languages, load_model
from pocket_tts_onnx.export.pipeline import export_bundle


def _row(name: str, work: Path) -> dict:
    source = ModelSource(language=name, random_init=True, seed=0)
    params = sum(p.numel() for p in load_model(source).model.parameters())
    bundle = work / name
    start = time.perf_counter()
    manifest, reports = export_bundle(source, bundle, quantize=True, verify=True)
    seconds = time.perf_counter() - start
    fp32 = sum((bundle / g.files["fp32"]).stat().st_size for g in manifest.graphs.values())
    int8 = sum((bundle / g.files["int8"]).stat().st_size for g in manifest.graphs.values())
    worst = max(reports, key=lambda r: r.worst_fp32)
    int8_err = max(max(r.int8_rel_l2.values()) for r in reports)
    shutil.rmtree(bundle)
    return {
        "config": name,
        "flow_type": manifest.flow_type,
        "params_m": params / 1e6,
        "export_seconds": seconds,
        "fp32_mb": fp32 / 1e6,
        "int8_mb": int8 / 1e6,
        "worst_fp32_error": worst.worst_fp32,
        "worst_fp32_graph": worst.graph,
        "worst_int8_rel_l2": int8_err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/configs.md"))
    parser.add_argument("--only", nargs="*", help="a subset of config names")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or available_languages():
            rows.append(_row(name, Path(tmp)))
            r = rows[-1]
            print(
                f"{name}: {r['export_seconds']:.0f} s, worst fp32 {r['worst_fp32_error']:.1e}",
                flush=True,
            )
    lines = [
        "| config | head | params (M) | export+quantize+verify (s) | FP32 MB | INT8 MB | "
        "worst FP32 rel. error (graph) | worst INT8 rel. L2 vs FP32 |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['flow_type']} | {r['params_m']:.1f} | "
            f"{r['export_seconds']:.0f} | {r['fp32_mb']:.0f} | {r['int8_mb']:.0f} | "
            f"{r['worst_fp32_error']:.1e} ({r['worst_fp32_graph']}) | "
            f"{r['worst_int8_rel_l2']:.1e} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    args.output.write_text(
        "# Every shipped config, full size, random weights\n\n"
        "Produced by `python scripts/export_all_configs.py` on the 2-core CI machine. Random "
        "weights stand in for the hub weights (unreachable here); compute and export paths do "
        "not depend on weight values. Errors are max |delta| relative to each output's scale "
        "over the verification grid and 20+-step streaming loops.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
