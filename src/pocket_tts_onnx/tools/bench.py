"""`pocket-tts-onnx bench`: upstream PyTorch vs our engine (FP32, INT8) in one invocation.

Each contender runs in its own process (bench_workers.py: fresh memory accounting, no shared
thread pools), runs alternate between contenders, and the report (bench_report.py) gives
medians and ratios vs upstream. Every contender gets the same intra-op thread count. Needs
the [export] extra (torch + pocket-tts) for upstream.

Two upstream contenders: `upstream` (FP32) and `upstream-int8`, upstream's own quantize mode
(`TTSModel.load_model(quantize=True)`, `pocket-tts --quantize`) with the backend upstream
picks on the machine; the report names it. Ratios are given against both. A peer:
`sherpa-onnx` (bench_sherpa.py), its own loop on the bundle's INT8 graphs. `NAME@N` runs a
contender with N intra-op threads instead of --threads (e.g. `sherpa-onnx@2`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pocket_tts_onnx.tools.bench_report import UPSTREAM_CONTENDERS, machine_info, report, versions
from pocket_tts_onnx.tools.bench_sherpa import SHERPA, sherpa_unfit
from pocket_tts_onnx.tools.bench_workers import model_source

CONTENDERS = (*UPSTREAM_CONTENDERS, "fp32", "int8", SHERPA)
# sherpa-onnx at 1 and 2 threads joins the defaults when it is installed and fits the bundle.
DEFAULT_CONTENDERS = (*UPSTREAM_CONTENDERS, "fp32", "int8")
SHERPA_DEFAULTS = (SHERPA, f"{SHERPA}@2")


def add_arguments(parser) -> None:
    src = parser.add_argument_group("model (random weights of this architecture by default)")
    src.add_argument(
        "--language", default="english", help="shipped config to benchmark (default: english)"
    )
    src.add_argument(
        "--config", type=Path, help="custom config instead of --language (default: none)"
    )
    src.add_argument(
        "--weights",
        type=Path,
        help="real safetensors weights for --language or --config (default: random weights)",
    )
    src.add_argument(
        "--bundle", type=Path, help="existing bundle of the same model (default: export one)"
    )
    src.add_argument(
        "--demo", action="store_true", help="the tiny demo model (smoke test) (default: off)"
    )
    parser.add_argument(
        "--frames", type=int, default=150, help="frames per run, 12.5 per s (default: 150)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per contender, median reported (default: 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for every contender, as upstream (default: 1)",
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=10.0,
        help="minutes of audio streamed by the INT8 engine for the RSS check, 0 skips it "
        "(default: 10.0)",
    )
    parser.add_argument(
        "--contenders",
        help=f"comma list of {', '.join(CONTENDERS)}, each optionally NAME@THREADS "
        f"(default: {','.join(DEFAULT_CONTENDERS + SHERPA_DEFAULTS)}; the sherpa-onnx ones "
        "only when it is installed and the bundle fits its loop)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results"),
        help="folder for the results JSON and report (default: bench-results)",
    )


def _source_dict(args) -> dict:
    return {
        "language": None if (args.config or args.demo) else args.language,
        "config": str(args.config) if args.config else None,
        "weights": str(args.weights) if args.weights else None,
        "demo": args.demo,
    }


def _run_worker(job: dict) -> dict:
    cmd = [sys.executable, "-m", "pocket_tts_onnx.tools.bench_workers", json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))
    raise RuntimeError(f"{job['contender']} worker failed:\n{proc.stderr[-3000:]}")


def _ensure_bundle(args, source: dict, progress) -> Path:
    if args.bundle is not None:
        return args.bundle
    from pocket_tts_onnx.export.pipeline import export_bundle
    from pocket_tts_onnx.manifest import Manifest

    name = "demo" if args.demo else (args.config.stem if args.config else args.language)
    bundle = args.output / f"bundle-{name}"
    if (bundle / "manifest.json").is_file() and "int8" in Manifest.load(bundle).graphs[
        "flow_lm_main"
    ].files:
        return bundle
    progress(f"exporting {name} (FP32 + INT8) to {bundle}")
    export_bundle(model_source(source), bundle, quantize=True, verify=False)
    return bundle


def _parse_contenders(text: str, threads: int) -> dict[str, tuple[str, int]]:
    """`NAME[@THREADS],...` -> {label: (contender, threads)}."""
    from pocket_tts_onnx.errors import InvalidInputError

    out = {}
    for label in (c.strip() for c in text.split(",")):
        if not label:
            continue
        name, _, n = label.partition("@")
        if name not in CONTENDERS or (n and not (n.isdigit() and int(n) >= 1)):
            raise InvalidInputError(
                f"--contenders takes a comma list of {', '.join(CONTENDERS)}, each optionally "
                f"NAME@THREADS with THREADS >= 1; got {label!r}"
            )
        out[label] = (name, int(n) if n else threads)
    if not out:
        raise InvalidInputError("--contenders is empty")
    return out


def _resolve_contenders(args, bundle: Path, progress) -> dict[str, tuple[str, int]]:
    """The requested contenders; sherpa-onnx ones must fit the bundle. By default sherpa-onnx
    joins (1 and 2 threads) when it can run the bundle, and is named as left out otherwise."""
    from pocket_tts_onnx.errors import InvalidInputError

    if args.contenders is not None:
        chosen = _parse_contenders(args.contenders, args.threads)
        if any(name == SHERPA for name, _ in chosen.values()) and (why := sherpa_unfit(bundle)):
            raise InvalidInputError(f"--contenders {SHERPA}: {why}")
        return chosen
    names = DEFAULT_CONTENDERS
    if why := sherpa_unfit(bundle):
        progress(f"{SHERPA} left out: {why}")
    else:
        names += SHERPA_DEFAULTS
    return _parse_contenders(",".join(names), args.threads)


def run_bench(args) -> None:
    from pocket_tts_onnx.errors import InvalidInputError

    if args.contenders is not None:
        _parse_contenders(args.contenders, args.threads)  # fail before any export
    if args.frames < 1 or args.runs < 1 or args.threads < 1:
        raise InvalidInputError("--frames, --runs and --threads must be >= 1")
    args.output.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    source = _source_dict(args)
    bundle = _ensure_bundle(args, source, progress)
    chosen = _resolve_contenders(args, bundle, progress)
    contenders = list(chosen)
    results: dict[str, list[dict]] = {c: [] for c in contenders}
    load_before = os.getloadavg()[0]  # other work on the machine skews every timing
    for run in range(args.runs):
        for label, (name, threads) in chosen.items():  # alternate: drift hits all alike
            progress(f"run {run + 1}/{args.runs}: {label}")
            job = {
                "contender": name,
                "source": source,
                "bundle": str(bundle),
                "frames": args.frames,
                "threads": threads,
            }
            result = _run_worker(job)
            result["threads"] = threads
            results[label].append(result)
    if args.soak_minutes > 0 and "int8" in contenders:
        progress(f"soak: INT8 engine streaming {args.soak_minutes:g} min of audio")
        job = {
            "contender": "int8",
            "source": source,
            "bundle": str(bundle),
            "frames": args.frames,
            "threads": args.threads,
            "soak_minutes": args.soak_minutes,
        }
        soak = _run_worker(job)
        for r in results["int8"]:
            r.update({k: v for k, v in soak.items() if k.startswith(("rss_after", "soak_"))})
    meta = {
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "machine": machine_info(),
        "versions": versions(),
        "threads": args.threads,
        "frames": args.frames,
        "runs": args.runs,
        "source": source,
        "bundle": str(bundle),
    }
    table, data = report(results, meta)
    from pocket_tts_onnx.manifest import Manifest

    random_bundle = Manifest.load(bundle).random_weights
    weights = "random weights, so no speech" if random_bundle else "real weights"
    machine = meta["machine"]
    backends = {r["backend"] for r in results.get("upstream-int8", []) if "backend" in r}
    header = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores "
        f"({', '.join(machine['flags'])}); memory bandwidth {machine['memory_copy_gb_s']:.1f} "
        "GB/s (one-thread numpy copy of 256 MiB, best of 5; read + write traffic is twice "
        f"that); intra-op threads per contender: {args.threads}; {args.frames} frames per "
        f"run, median of {args.runs} runs, contenders alternating, each in its own process; "
        f"{weights}; load average {meta['load_average_1min'][0]:.1f} before, "
        f"{meta['load_average_1min'][1]:.1f} after; step and frame times are "
        + ("CPU time of the computing thread" if args.threads == 1 else "wall time")
        + "."
        + (f" upstream-int8 backend: {', '.join(sorted(backends))}." if backends else "")
        + (_SHERPA_NOTE if any(n == SHERPA for n, _ in chosen.values()) else "")
        + "\n\n"
    )
    (args.output / "bench.md").write_text(header + table)
    (args.output / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n" + header + table)
    print(f"written to {args.output}/bench.md and bench.json")


_SHERPA_NOTE = (
    f" {SHERPA} (2.0.1, its own C++ loop and ONNX Runtime, the bundle's INT8 graphs; `@N`: N "
    "threads) generates every latent of the sentence before decoding any: its first audio is "
    "its first decoded 15-frame chunk (generate callback), and each of its runs includes "
    "encoding the voice prompt, which it does in every call; it exposes no step timings."
)
