"""Load test of `pocket-tts-onnx serve`: N concurrent real-HTTP streaming clients.

    python scripts/load_test.py                       # exports english (random weights) first
    python scripts/load_test.py --bundle DIR --levels 1,2,4,8,16 --frames 125
    python scripts/load_test.py --demo --levels 1,2,4 --frames 40     # a quick end-to-end check
    python scripts/load_test.py --bundle DIR --soak-minutes 10 --soak-clients 8
    python scripts/load_test.py --url http://127.0.0.1:8080 --levels 1,4   # a running server

Starts the server as a subprocess on 127.0.0.1 (a free port), or drives one already running
(`--url`, e.g. replicas behind a load balancer: scripts/scale_out.py; no RSS then), streams
a paragraph to every client with EOS off and a fixed length (`max_frames` per text chunk),
and reports per level: aggregate x realtime (audio seconds received / wall time), p50/p99
time to first audio byte, errors, and the server's RSS before/after. Prints a markdown table
and writes JSON. Every loop is bounded; the server is stopped at the end whatever happens.
Random weights: the audio is noise, only the speed is meaningful.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pocket_tts_onnx.serve import client  # noqa: E402

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips "
    "after decades of salt wind. Every evening the keeper climbed the spiral stairs, counted "
    "the steps out of habit, and trimmed the wick before the sun went down over the water."
)


def rss_mb(pid: int | None) -> float:
    if pid is None:  # a server this script did not start (--url)
        return float("nan")
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1e6
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def export_bundle(args) -> Path:
    out = Path(args.export_dir) / ("demo" if args.demo else args.language)
    if (out / "manifest.json").is_file():
        return out
    cmd = [
        sys.executable,
        "-m",
        "pocket_tts_onnx.cli",
        "export",
        "--output",
        str(out),
        "--quantize",
    ]
    cmd += ["--demo"] if args.demo else ["--language", args.language, "--random-init"]
    print("exporting:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, timeout=3600)
    return out


def start_server(args, bundle: Path, port: int, log) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pocket_tts_onnx.cli",
        "serve",
        "--bundle",
        str(bundle),
        "--port",
        str(port),
        "--no-web",
        "--precision",
        args.precision,
        "--max-streams",
        str(args.max_streams),
        "--max-queue",
        str(args.max_queue),
        "--log-level",
        "warning",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}; see its log")
        try:
            client.health(port)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise TimeoutError("server did not answer /health within 600 s")


def one_stream(
    port: int, frames: int, seed: int, sample_rate: int, timeout: float, host: str = "127.0.0.1"
) -> dict:
    """One streamed request; `replica` is the X-Replica header a load balancer may add."""
    payload = {
        "input": PARAGRAPH,
        "response_format": "pcm",
        "max_frames": frames,
        "eos_threshold": 1e9,
        "seed": seed,
    }
    start = time.perf_counter()
    replica = None
    try:
        conn, resp = client.open_stream(port, payload, timeout=timeout, host=host)
        try:
            replica = resp.getheader("X-Replica")
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}: {resp.read()[:200]!r}", "replica": replica}
            first = resp.read(1)
            ttfb = time.perf_counter() - start
            rest = resp.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:  # a cut stream: IncompleteRead
        return {"error": f"{type(e).__name__}: {e}", "replica": replica}
    elapsed = time.perf_counter() - start
    n_bytes = len(first) + len(rest)
    audio_s = n_bytes / 2 / sample_rate
    expected = frames * sample_rate / 12.5
    out = {"ttfb_s": ttfb, "elapsed_s": elapsed, "audio_s": audio_s, "replica": replica}
    if n_bytes // 2 < expected * 0.99:
        out["error"] = f"short audio: {n_bytes // 2} samples, expected {expected:.0f}"
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_level(
    port: int, pid: int | None, n: int, args, sample_rate: int, host: str = "127.0.0.1"
) -> dict:
    results: list[dict] = [{} for _ in range(n)]

    def work(i: int) -> None:
        results[i] = one_stream(port, args.frames, i, sample_rate, args.timeout, host)

    rss_before = rss_mb(pid)
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.timeout + 10)
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r and r]
    errors = [r.get("error", "no result (timeout)") for r in results if "error" in r or not r]
    audio = sum(r["audio_s"] for r in ok)
    ttfb = [r["ttfb_s"] for r in ok]
    return {
        "clients": n,
        "wall_s": wall,
        "audio_s": audio,
        "aggregate_xrt": audio / wall if wall > 0 else float("nan"),
        "per_stream_xrt_median": percentile([r["audio_s"] / r["elapsed_s"] for r in ok], 50),
        "ttfb_p50_s": percentile(ttfb, 50),
        "ttfb_p99_s": percentile(ttfb, 99),
        "errors": len(errors),
        "error_samples": errors[:3],
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_mb(pid),
    }


def soak(port: int, pid: int | None, args, sample_rate: int, host: str = "127.0.0.1") -> dict:
    """`soak_clients` clients stream back to back until the deadline; RSS sampled."""
    deadline = time.monotonic() + 60 * args.soak_minutes
    samples = [(0.0, rss_mb(pid))]
    counts = {"streams": 0, "errors": 0, "audio_s": 0.0}
    lock = threading.Lock()

    def work(i: int) -> None:
        seed = i
        while time.monotonic() < deadline:
            r = one_stream(port, args.frames, seed, sample_rate, args.timeout, host)
            seed += args.soak_clients
            with lock:
                counts["streams"] += 1
                counts["errors"] += "error" in r
                counts["audio_s"] += r.get("audio_s", 0.0)

    threads = [
        threading.Thread(target=work, args=(i,), daemon=True) for i in range(args.soak_clients)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        samples.append((time.monotonic() - t0, rss_mb(pid)))
    for t in threads:
        t.join(timeout=args.timeout + 10)
    rss = [r for _, r in samples]
    half = rss[len(rss) // 2 :] or rss
    return {
        "minutes": args.soak_minutes,
        "clients": args.soak_clients,
        **counts,
        "rss_start_mb": rss[0],
        "rss_end_mb": rss[-1],
        "rss_max_mb": max(rss),
        "rss_second_half_range_mb": max(half) - min(half),
        "rss_samples": samples,
    }


def _rss_cell(r: dict) -> str:
    before, after = r["rss_before_mb"], r["rss_after_mb"]
    return "-" if before != before else f"{before:.0f} -> {after:.0f} MB"  # NaN: not ours


def table(levels: list[dict], base: float | None) -> str:
    lines = [
        "| clients | aggregate x realtime | vs 1 client | per-stream x rt (median) "
        "| first byte p50 | first byte p99 | errors | RSS before -> after |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in levels:
        ratio = r["aggregate_xrt"] / base if base else float("nan")
        lines.append(
            f"| {r['clients']} | {r['aggregate_xrt']:.2f} | {ratio:.2f}x "
            f"| {r['per_stream_xrt_median']:.2f} | {1000 * r['ttfb_p50_s']:.0f} ms "
            f"| {1000 * r['ttfb_p99_s']:.0f} ms | {r['errors']} "
            f"| {_rss_cell(r)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="an exported bundle (default: export one)")
    p.add_argument("--url", help="drive this running server, http://HOST:PORT (default: start one)")
    p.add_argument("--language", default="english", help="architecture to export (random init)")
    p.add_argument("--demo", action="store_true", help="export the tiny demo model instead")
    p.add_argument("--export-dir", default="load-test", help="where exported bundles go")
    p.add_argument("--levels", default="1,2,4,8,16", help="concurrent clients per level")
    p.add_argument("--frames", type=int, default=125, help="frames per stream (12.5 per s)")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.add_argument("--threads", type=int, help="server --threads")
    p.add_argument("--max-streams", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--soak-minutes", type=float, default=0.0)
    p.add_argument("--soak-clients", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("load-test/results.json"))
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.frames < 1 or not levels or min(levels) < 1:
        p.error("--frames and every level must be >= 1")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".server.log")
    if args.url:
        url = urllib.parse.urlsplit(args.url)
        if url.scheme != "http" or not url.hostname or not url.port:
            p.error("--url takes http://HOST:PORT")
        host, port, proc, bundle = url.hostname, url.port, None, args.url
    else:
        bundle = args.bundle or export_bundle(args)
        host, port = "127.0.0.1", client.free_port()
        with open(log_path, "wb") as log:
            proc = start_server(args, bundle, port, log)
    pid = proc.pid if proc else None
    try:
        status = client.health(port, host)
        rate = status["model"]["sample_rate"]
        print(f"server {args.url or f'pid {pid}, port {port}'}", flush=True)
        one_stream(port, min(args.frames, 12), 0, rate, args.timeout, host)  # warm-up
        results = []
        for n in levels:
            r = run_level(port, pid, n, args, rate, host)
            results.append(r)
            print(
                f"{n:>3} clients: {r['aggregate_xrt']:.2f}x realtime, "
                f"p99 first byte {1000 * r['ttfb_p99_s']:.0f} ms, {r['errors']} errors",
                flush=True,
            )
        soak_result = soak(port, pid, args, rate, host) if args.soak_minutes > 0 else None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = next((r["aggregate_xrt"] for r in results if r["clients"] == 1), None)
    report = {
        "bundle": str(bundle),
        "random_weights": status["model"]["random_weights"],
        "precision": None if args.url else args.precision,
        "frames_per_stream": args.frames,
        "cpu_count": os.cpu_count(),
        "levels": results,
        "soak": soak_result,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(table(results, base))
    if soak_result:
        print(
            f"\nsoak {soak_result['minutes']} min x {soak_result['clients']} clients: "
            f"{soak_result['streams']} streams, {soak_result['errors']} errors, RSS "
            f"{soak_result['rss_start_mb']:.0f} -> {soak_result['rss_end_mb']:.0f} MB "
            f"(max {soak_result['rss_max_mb']:.0f}, second-half range "
            f"{soak_result['rss_second_half_range_mb']:.0f} MB)"
        )
    print(f"\nwrote {args.out} (server log {log_path})")
    errors = sum(r["errors"] for r in results) + (soak_result or {}).get("errors", 0)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
