"""Browser benchmark: a bundle in headless Chromium through the demo page (web/).

    python scripts/web_bench.py [--bundle DIR] [--frames 150] [--runs 3] [--write docs/web-bench.md]

Without --bundle it exports the full-size `english` architecture with random weights and
INT8 (`pocket-tts-onnx export --language english --random-init --quantize`; ~1 min, a few
GB of RAM) into a cache folder. It builds the page, serves it with web/serve.py, drives
Chromium (/usr/bin/chromium) with web/tests/bench.mjs and prints, per configuration, the
load time, x realtime and first-chunk latency (medians over --runs, after a warm-up run;
EOS off, --frames latents per run) and where the time went (ms per call of each graph).
Random weights make noise, not speech: this measures speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
CACHE = ROOT / "bench-results" / "web-bundle-english"
TEXT = "Hello there, this is a benchmark of the browser runtime."

# name -> page query (see web/src/main.js): precision, worker layout, threads per worker.
CONFIGS = {
    "int8": "precision=int8",
    "fp32": "precision=fp32",
    "int8, contract flow_lm_main": "precision=int8&fastkv=0",
    "int8, K/V buffers doubling": "precision=int8&kvslack=0",
    "int8, flow-LM worker 2 threads": "precision=int8&threads=2",
    "int8, one worker": "precision=int8&pipeline=0",
    "int8, one worker, 2 threads": "precision=int8&pipeline=0&threads=2",
    "fp32, one worker": "precision=fp32&pipeline=0",
    "int8, flow-LM worker 2 threads, no spinning": "precision=int8&threads=2&spin=0",
    "int8, one worker, 2 threads, no spinning": "precision=int8&pipeline=0&threads=2&spin=0",
    "int8, decoder 4 latents per call": "precision=int8&dmin=4",
    "int8, flow-LM 2 threads, no spinning, decoder 4 latents": (
        "precision=int8&threads=2&spin=0&dmin=4"
    ),
}


def _export(out: Path) -> Path:
    if (out / "manifest.json").is_file():
        return out
    print(f"exporting full-size english (random weights, INT8) to {out} ...", flush=True)
    cmd = [sys.executable, "-m", "pocket_tts_onnx.cli", "export", "--language", "english"]
    cmd += ["--random-init", "--quantize", "--output", str(out)]
    subprocess.run(cmd, check=True)
    return out


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "")
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores"


def _optimized_copy(bundle: Path, level: str) -> Path:
    """The bundle with every graph file replaced by ONNX Runtime's optimized model (saved
    with optimized_model_filepath at `level`), sha256 updated: measures whether graph
    optimisation saved at export speeds up loading in the browser."""
    import hashlib

    import onnxruntime as ort

    out = bundle.parent / f"{bundle.name}-optimized-{level}"
    if (out / "manifest.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp, ignore=shutil.ignore_patterns("*.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    for graph in manifest["graphs"].values():
        graph.pop("external", None)  # ORT saves the optimized graph with its weights inline
        for file in graph["files"].values():
            options = ort.SessionOptions()
            options.graph_optimization_level = levels[level]
            options.optimized_model_filepath = str(tmp / file)
            ort.InferenceSession(str(bundle / file), options, providers=["CPUExecutionProvider"])
            graph["sha256"][file] = hashlib.sha256((tmp / file).read_bytes()).hexdigest()
    # Voices name the model they belong to (the FP32 flow LM's digest): re-label them.
    import numpy as np

    main = manifest["graphs"]["flow_lm_main"]
    model_id = manifest.get("model_id") or main["sha256"][main["files"]["fp32"]]
    for voice in manifest.get("voices", {}).values():
        with np.load(bundle / voice["file"]) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(bytes(arrays["__metadata__"]).decode("utf-8"))
        meta["model_id"] = model_id
        arrays["__metadata__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
        np.savez(tmp / voice["file"], **arrays)
        voice["sha256"] = hashlib.sha256((tmp / voice["file"]).read_bytes()).hexdigest()
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    tmp.rename(out)
    return out


def _serve(bundle: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(WEB / "serve.py"), "--bundle", str(bundle), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    if not line.startswith("serving "):
        server.terminate()
        sys.exit(f"error: web/serve.py did not start: {line}")
    return server, line.split()[1]


def _bench_mjs(node: str, plan: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
        proc = subprocess.run(
            [node, str(WEB / "tests" / "bench.mjs"), str(Path(tmp) / "plan.json")],
            capture_output=True,
            text=True,
            cwd=WEB,
        )
    if proc.returncode != 0:
        sys.exit(f"error: bench.mjs failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _run_browser(
    bundle: Path,
    configs: dict[str, str],
    frames: int,
    runs: int,
    optimized: Path | None,
    webgpu: bool,
) -> dict:
    node = shutil.which("node")
    if node is None or not (WEB / "node_modules").is_dir():
        sys.exit("error: needs Node 20+ and `npm ci --prefix web`")
    subprocess.run([node, str(WEB / "build.mjs")], check=True, capture_output=True)
    server, url = _serve(bundle)
    servers = [server]
    try:
        plan_configs = [{"name": k, "query": v} for k, v in configs.items()]
        if optimized is not None:
            opt_server, opt_url = _serve(optimized)
            servers.append(opt_server)
            level = optimized.name.rsplit("-", 1)[-1]
            for precision in ("int8", "fp32"):
                plan_configs.append(
                    {
                        "name": f"{precision}, graphs pre-optimized ({level})",
                        "url": opt_url,
                        "query": f"precision={precision}",
                    }
                )
        plan = {
            "url": url,
            "text": TEXT,
            "frames": frames,
            "runs": runs,
            "configs": plan_configs,
        }
        result = _bench_mjs(node, plan)
        if webgpu:
            gpu = [
                {"name": f"{p}, device=webgpu", "query": f"precision={p}&device=webgpu"}
                for p in ("int8", "fp32")
            ]
            extra = _bench_mjs(node, {**plan, "webgpu": True, "configs": gpu})
            result["configs"].update(extra["configs"])
            result["console"] += extra["console"]
        return result
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)


def _summary(entry: dict) -> dict:
    runs = [r["stats"] for r in entry["runs"] if r.get("stats") and not r.get("error")]
    if not runs:
        errors = [r.get("error") for r in entry["runs"]] or [entry.get("loadError")]
        return {"error": next((e for e in errors if e), "no run finished")}
    profile: dict[str, float] = {}
    for name, p in (runs[len(runs) // 2].get("profile") or {}).items():
        profile[name] = p["ms"] / max(p["calls"], 1)
    return {
        "devices": entry.get("devices"),
        "load_s": entry["loadMs"] / 1000,
        "x_realtime": statistics.median(r["realtimeFactor"] for r in runs),
        "first_chunk_ms": statistics.median(r["firstChunkMs"] for r in runs),
        "audio_s": runs[0]["audioS"],
        "ms_per_call": profile,
        "profile_calls": {k: v["calls"] for k, v in (runs[0].get("profile") or {}).items()},
    }


def _native_graph_ms(bundle: Path, precision: str, kv: int, repeats: int) -> dict[str, float]:
    """The calls web/tests/graph-timing.mjs times, in native ONNX Runtime (1 thread)."""
    import time

    import numpy as np
    import onnxruntime as ort

    m = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))

    def session(name: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        file = bundle / m["graphs"][name]["files"][precision]
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    def median_ms(call) -> float:
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    def dims(shape: list, dynamic: int) -> list[int]:
        return [dynamic if isinstance(d, str) else d for d in shape]

    L, D = m["latent_dim"], m["d_model"]
    base = {"sequence": np.zeros((1, 1, L), np.float32), "text_embeddings": np.zeros((1, 0, D))}
    base["text_embeddings"] = base["text_embeddings"].astype(np.float32)
    out = {}
    main = session("flow_lm_main")
    feeds = dict(base)
    for st in m["graphs"]["flow_lm_main"]["states"]:
        if st["upstream_key"] == "offset":
            feeds[st["name"]] = np.array([kv], np.int64)
        else:
            feeds[st["name"]] = np.zeros(dims(st["shape"], kv), np.float32)
    out["flow_lm_main"] = median_ms(lambda: main.run(None, feeds))
    if precision in m["graphs"].get("flow_lm_step", {}).get("files", {}):
        step = session("flow_lm_step")
        step_feeds = {**base, "position": np.array([kv], np.int64)}
        for b in m["graphs"]["flow_lm_step"]["buffers"]:
            step_feeds[b["name"]] = np.zeros((1, b["shape"][1], 2 * kv, b["shape"][3]), b["dtype"])
        out["flow_lm_step"] = median_ms(lambda: step.run(None, step_feeds))
    flow = session("flow_lm_flow")
    dz = m["graphs"]["flow_lm_flow"]["inputs"][0]["shape"][1]
    flow_feeds = {"c": np.zeros((1, dz), np.float32), "x": np.zeros((1, L), np.float32)}
    for name in m.get("flow_time_inputs", []):
        flow_feeds[name] = np.zeros((1, 1), np.float32)
    out["flow_lm_flow"] = median_ms(lambda: flow.run(None, flow_feeds))
    dec = session("mimi_decoder")
    specs = m["graphs"]["mimi_decoder"]["states"]
    names = [o.name for o in dec.get_outputs()]
    state = {
        s["name"]: np.zeros(dims(s["shape"], 0), np.int64 if s["dtype"] == "int64" else np.float32)
        for s in specs
    }
    latent = np.zeros((1, 4, L), np.float32)

    def decode() -> None:
        result = dec.run(None, {**state, "latent": latent})
        state.update({s["name"]: result[names.index("out_" + s["name"])] for s in specs})

    out["mimi_decoder_4_frames"] = median_ms(decode)
    return out


def _graph_ratios(bundle: Path, kv: int, repeats: int) -> list[str]:
    """WebAssembly (Node, onnxruntime-web) vs native ONNX Runtime per graph call, alternating
    in one run, so machine load hits both alike."""
    node = shutil.which("node")
    lines = [
        f"Per call, KV length {kv}, 1 thread, median of {repeats} (WebAssembly: onnxruntime-web "
        "in Node, the browser's kernels without the page):",
        "",
        "| precision | graph | native ORT (ms) | WebAssembly (ms) | WebAssembly / native |",
        "|---|---|---:|---:|---:|",
    ]
    for precision in ("int8", "fp32"):
        native = _native_graph_ms(bundle, precision, kv, repeats)
        proc = subprocess.run(
            [node, str(WEB / "tests" / "graph-timing.mjs"), str(bundle), precision, str(kv)]
            + [str(repeats)],
            capture_output=True,
            text=True,
            cwd=WEB,
            check=True,
        )
        wasm = json.loads(proc.stdout)
        for graph, ms in native.items():
            w = wasm[graph]
            lines.append(f"| {precision} | {graph} | {ms:.1f} | {w:.1f} | {w / ms:.1f}x |")
    return lines


def _table(summaries: dict[str, dict]) -> list[str]:
    graphs = ["flow_lm_main", "flow_lm_step", "flow_lm_flow", "mimi_decoder"]
    head = "| configuration | x realtime | first chunk (ms) | load (s) | "
    head += " | ".join(f"{g} ms/call" for g in graphs) + " |"
    lines = [head, "|---|" + "---:|" * (3 + len(graphs))]
    for name, s in summaries.items():
        devices = s.get("devices") or {}
        if "webgpu" in name:
            on_gpu = sorted(g for g, d in devices.items() if d == "webgpu")
            name += f" (WebGPU sessions: {', '.join(on_gpu) or 'none, fell back to wasm'})"
        if "error" in s:
            lines.append(f"| {name} | error: {s['error']} |" + " |" * (2 + len(graphs)))
            continue
        cells = [f"{s['ms_per_call'][g]:.1f}" if g in s["ms_per_call"] else "-" for g in graphs]
        lines.append(
            f"| {name} | {s['x_realtime']:.2f} | {s['first_chunk_ms']:.0f} | {s['load_s']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: export english)")
    parser.add_argument("--frames", type=int, default=150, help="latents per run (EOS off)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration")
    parser.add_argument("--config", action="append", help="only these configurations")
    parser.add_argument("--write", type=Path, help="write the markdown table here")
    parser.add_argument("--note", default="", help="a line for the report (machine load...)")
    parser.add_argument(
        "--webgpu",
        action="store_true",
        help="also run device=webgpu (SwiftShader, a CPU emulation here: functional only)",
    )
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="instead: time single graph calls, WebAssembly (Node) vs native, and append",
    )
    parser.add_argument(
        "--optimized",
        choices=["basic", "extended"],
        help="also run a copy of the bundle with graphs pre-optimized by ONNX Runtime",
    )
    args = parser.parse_args(argv)

    bundle = args.bundle or _export(CACHE)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    configs = {k: v for k, v in CONFIGS.items() if not args.config or k in args.config}
    if args.graphs:
        lines = _graph_ratios(bundle, kv=100, repeats=args.runs * 5)
        print("\n".join(lines))
        if args.write:
            with args.write.open("a", encoding="utf-8") as f:
                f.write("\n" + "\n".join(lines) + "\n")
        return 0
    optimized = _optimized_copy(bundle, args.optimized) if args.optimized else None
    results = _run_browser(bundle, configs, args.frames, args.runs, optimized, args.webgpu)
    if "failure" in results:
        print(results["failure"], file=sys.stderr)
    summaries = {name: _summary(entry) for name, entry in results["configs"].items()}
    source = manifest.get("source", {})
    lines = [
        f"Machine: {_cpu()}. Chromium {_chromium_version()}, headless, onnxruntime-web "
        f"{_ort_version()} (WebAssembly, SIMD).",
        f"Bundle: {source.get('config', '?')}"
        + (" (random weights: noise, not speech)" if manifest.get("random_weights") else "")
        + f"; {args.frames} latents per run ({args.frames / manifest['frame_rate']:.1f} s of "
        f"audio), EOS off, temperature 0.3, median of {args.runs} runs after a warm-up.",
    ]
    if args.note:
        lines.append(args.note)
    lines += ["", *_table(summaries)]
    print("\n".join(lines))
    if results.get("console"):
        print("\nconsole:\n" + "\n".join(results["console"][:20]), file=sys.stderr)
    if args.write:
        args.write.write_text("\n".join(lines) + "\n", encoding="utf-8")
        raw = args.write.with_suffix(".json")
        raw.write_text(json.dumps({"summaries": summaries, "raw": results}, indent=1))
    return 0


def _chromium_version() -> str:
    try:
        out = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True)
        return out.stdout.split()[1]
    except (OSError, IndexError):
        return "?"


def _ort_version() -> str:
    lock = json.loads((WEB / "package.json").read_text(encoding="utf-8"))
    return lock["dependencies"].get("onnxruntime-web", "?")


if __name__ == "__main__":
    sys.exit(main())
