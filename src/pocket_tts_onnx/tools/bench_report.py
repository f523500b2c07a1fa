"""The benchmark's report: the machine it ran on, medians, ratios against both upstream
contenders and the project's targets (pure Python + numpy, used by tools/bench.py)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

UPSTREAM_CONTENDERS = ("upstream", "upstream-int8")
# Contenders the others are compared with, when they ran: upstream, and the peer sherpa-onnx.
BASES = (*UPSTREAM_CONTENDERS, "sherpa-onnx")
VOICE_SECONDS = 5.0
KV_SHORT, KV_LONG = 50, 600


def machine_info() -> dict:
    """CPU model, cores and the ISA extensions that decide INT8/FP32 kernel speed (lscpu when
    present, /proc/cpuinfo otherwise), and the measured memory bandwidth."""
    info: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    except (OSError, subprocess.SubprocessError):
        pass
    model = info.get("Model name", platform.processor())
    flags = set(info.get("Flags", "").split())
    if not flags:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
        except OSError:
            pass
    wanted = ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]  # fmt: skip
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads_per_core": info.get("Thread(s) per core"),
        "hypervisor": info.get("Hypervisor vendor"),
        "flags": [f for f in wanted if f in flags],
        "memory_copy_gb_s": _memory_bandwidth(),
        "python": platform.python_version(),
    }


def _memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """GB/s copied by one thread: numpy copy of a `mib` MiB array (far beyond the caches),
    best of `repeats`. Each byte copied is read once and written once, so the traffic is twice
    this. The flow LM reads its weights and K/V cache every step, so this bounds step time."""
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best / 1e9


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("pocket-tts-onnx", "onnxruntime", "pocket-tts", "torch", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


METRICS = [
    ("threads", "intra-op threads", "{:.0f}"),
    ("x_realtime", "throughput (x realtime)", "{:.2f}"),
    ("cpu_s_per_audio_s", "CPU seconds per audio second, all threads", "{:.3f}"),
    ("first_chunk_ms", "first audio chunk (ms)", "{:.0f}"),
    ("voice_encode_ms", f"voice prompt encoding, {VOICE_SECONDS:.0f} s audio (ms)", "{:.0f}"),
    ("lm_step_ms", f"flow-LM step incl. head, KV {KV_SHORT} (ms)", "{:.2f}"),
    ("lm_step_kv600_ms", f"flow-LM step incl. head, KV {KV_LONG} (ms)", "{:.2f}"),
    ("kv_growth", f"step time KV {KV_LONG} / KV {KV_SHORT}", "{:.2f}"),
    ("mimi_frame_ms", "Mimi decode per 80 ms frame (ms)", "{:.2f}"),
    ("peak_rss_mb", "peak RSS: load, voice, stream (MB)", "{:.0f}"),
]


def report(results: dict[str, list[dict]], meta: dict) -> tuple[str, dict]:
    medians = {}
    for contender, runs in results.items():
        med = {
            k: statistics.median(r[k] for r in runs)
            for k in runs[0]
            if isinstance(runs[0][k], (int, float)) and runs[0][k] is not None
        }
        if "lm_step_ms" in med:  # sherpa-onnx's loop has no step timings
            med["kv_growth"] = med["lm_step_kv600_ms"] / med["lm_step_ms"]
        medians[contender] = med
    bases = [b for b in BASES if b in medians]
    ratios: dict[str, dict[str, float]] = {c: {} for c in medians} if bases else {}
    for base in bases:
        up = medians[base]
        for c, med in medians.items():
            ratios[c].update(
                {
                    f"throughput_vs_{base}": med["x_realtime"] / up["x_realtime"],
                    f"cpu_efficiency_vs_{base}": up["cpu_s_per_audio_s"] / med["cpu_s_per_audio_s"],
                    f"first_chunk_vs_{base}": med["first_chunk_ms"] / up["first_chunk_ms"],
                    f"peak_rss_vs_{base}": med["peak_rss_mb"] / up["peak_rss_mb"],
                }
            )
    names = list(medians)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, fmt in METRICS:
        cells = [fmt.format(medians[c][key]) if key in medians[c] else "-" for c in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for base in bases:
        for key, label in (
            (f"throughput_vs_{base}", f"throughput vs {base}"),
            (f"cpu_efficiency_vs_{base}", f"audio per CPU second vs {base}"),
            (f"first_chunk_vs_{base}", f"first chunk vs {base}"),
            (f"peak_rss_vs_{base}", f"peak RSS vs {base}"),
        ):
            lines.append(
                f"| **{label}** | " + " | ".join(f"{ratios[c][key]:.2f}x" for c in names) + " |"
            )
    soak = {k: v for k, v in medians.get("int8", {}).items() if k.startswith("rss_after")}
    text = "\n".join(lines) + "\n" + _targets(medians, ratios)
    if soak:
        text += (
            "\nINT8 engine RSS while streaming: "
            + ", ".join(
                f"{k.removeprefix('rss_').removesuffix('_mb').replace('_', ' ')}: {v:.0f} MB"
                for k, v in soak.items()
            )
            + "\n"
        )
    return text, {"medians": medians, "ratios": ratios, "per_run": results, **meta}


# The performance targets: (contender, metric, comparison, bound, description).
TARGETS = [
    ("int8", "throughput_vs_upstream-int8", ">=", 3.0, "INT8 throughput >= 3x upstream-int8"),
    ("int8", "first_chunk_vs_upstream-int8", "<=", 1 / 3, "INT8 first chunk <= 1/3 upstream-int8"),
    ("fp32", "throughput_vs_upstream", ">=", 1.5, "FP32 throughput >= 1.5x upstream fp32"),
    ("int8", "kv_growth", "<=", 1.15, f"INT8 step KV {KV_LONG} / KV {KV_SHORT} <= 1.15x"),
    ("int8", "peak_rss_vs_upstream-int8", "<=", 1 / 3, "INT8 peak RSS <= 1/3 upstream-int8"),
]


def _targets(medians: dict, ratios: dict) -> str:
    lines = []
    for contender, key, op, bound, label in TARGETS:
        value = ratios.get(contender, {}).get(key, medians.get(contender, {}).get(key))
        if value is None:
            continue
        met = value >= bound if op == ">=" else value <= bound
        lines.append(f"- {label}: {value:.2f}x, {'met' if met else '**missed**'}")
    return "\nTargets:\n" + "\n".join(lines) + "\n" if lines else ""
