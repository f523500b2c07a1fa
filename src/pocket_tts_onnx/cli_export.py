"""`pocket-tts-onnx export`: options, then the export pipeline and a table of what it wrote
(sizes, parity errors). Needs the [export] extra; the pipeline is imported only to run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pocket_tts_onnx.specs import KV_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model source (default: --language english)")
    src.add_argument(
        "--language",
        help="a config shipped with pocket-tts, e.g. english, french (default: english when "
        "no other source is given)",
    )
    src.add_argument("--config", type=Path, help="a custom pocket-tts YAML config (default: none)")
    src.add_argument(
        "--weights", type=Path, help="safetensors weights for --config (default: none)"
    )
    src.add_argument(
        "--checkpoint", type=Path, help="training checkpoint (.pt) for --config (default: none)"
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights (the architecture only; offline)",
    )
    src.add_argument("--seed", type=int, default=0, help="seed for --random-init (default: 0)")
    src.add_argument(
        "--demo",
        action="store_true",
        help="the embedded tiny random-weight model (offline, seconds)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=Path("onnx"),
        help="bundle directory; your own files in it are kept (default: onnx)",
    )
    p.add_argument("--quantize", action="store_true", help="also write INT8 graphs (default: off)")
    p.add_argument(
        "--precision",
        choices=["fp32", "int8", "fp32+int8"],
        help="graphs to ship; int8 writes an INT8-only bundle, FP32 still exported and "
        "verified, then left out (default: fp32, fp32+int8 with --quantize)",
    )
    p.add_argument(
        "--kv-dtype",
        choices=list(KV_DTYPES),
        default="fp32",
        help="how the runtime's flow-LM K/V cache is stored: fp16 halves its memory per "
        "position at a small parity cost (docs/bench.md); the contract graphs stay fp32 "
        "(default: fp32, exact)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the parity check (default: verify)"
    )
    p.add_argument(
        "--timestamp-heads",
        help="flow-LM heads for word timestamps, e.g. L3H8,L2H0 (default: the calibrated "
        "heads of pocket-tts-timestamped for the configs it covers, else none)",
    )
    p.add_argument(
        "--voices",
        default="all",
        help="predefined voices to ship: all (default: the language's catalog; the default "
        "voice only for custom or random weights), none, or NAME,NAME,...",
    )


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _saved(fp32: float, int8: float) -> str:
    """Size saved by INT8 as a whole percentage; integer rounding never prints "-0%"."""
    return f"{round(100 * (1 - int8 / fp32)) if fp32 else 0}%"


def _bundle_mb(bundle: Path) -> float:
    return sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6


def run(args) -> None:
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle
    from pocket_tts_onnx.export.voices import parse_voices_option

    voices = parse_voices_option(args.voices)  # before the export: a typo fails fast

    language = args.language
    if language is None and args.config is None and not args.demo:
        language = "english"
    source = ModelSource(
        language=language,
        config=args.config,
        weights=args.weights,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        seed=args.seed,
        demo=args.demo,
    )
    start = time.perf_counter()
    manifest, reports = export_bundle(
        source,
        args.output,
        quantize=args.quantize,
        verify=not args.no_verify,
        progress=_progress,
        voices=voices,
        precision=args.precision,
        timestamp_heads=args.timestamp_heads,
        kv_dtype=args.kv_dtype,
    )
    by_graph = {r.graph: r for r in reports}
    w = max(18, *(len(name) + 2 for name in manifest.graphs))
    print(
        f"\n{'graph':<{w}}{'fp32 MB':>9}{'int8 MB':>9}{'saved':>7}{'fp32 err':>11}"
        f"{'tol':>7}{'int8 relL2':>12}"
    )
    for name, entry in manifest.graphs.items():
        mb = {p: _mb(args.output / f) for p, f in entry.files.items()}  # variants: no weights
        sizes = "".join(f"{mb[p]:>9.1f}" if p in mb else f"{'-':>9}" for p in ("fp32", "int8"))
        saved = _saved(mb["fp32"], mb["int8"]) if len(mb) == 2 and not entry.external else "-"
        report = by_graph.get(name)
        err = f"{report.worst_fp32:.2e}" if report else "skipped"
        l2 = max(report.int8_rel_l2.values()) if report and report.int8_rel_l2 else None
        print(
            f"{name:<{w}}{sizes}{saved:>7}{err:>11}{entry.spec.tolerance:>7.0e}"
            + (f"{l2:>12.2e}" if l2 is not None else f"{'-':>12}")
        )
    kind = " + ".join(p.upper() for p in manifest.precisions)
    print(
        f"\nbundle written to {args.output} ({kind}, {_bundle_mb(args.output):.1f} MB) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if manifest.random_weights:
        print("NOTE: random weights - this bundle produces noise, not speech.")
