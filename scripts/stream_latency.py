"""Latency of streamed text in: from the last character of the first sentence to its first
audio byte, over Wyoming and over the WebSocket, next to the engine's own.

    python scripts/stream_latency.py --bundle DIR                  # english, random weights
    python scripts/stream_latency.py --bundle DIR --clients 1,8 --runs 10

Each client writes a two-sentence text in small pieces (as an LLM does, a few characters
every `--gap` seconds, without waiting for audio), takes the time when it sends the piece
that ends the first sentence and the time its first audio byte arrives, and reads all audio. With
N clients, all N stream at once. Servers run as subprocesses on 127.0.0.1 (one at a time,
stopped at the end whatever happens); the engine's own latency is `tts.open_stream` in this
process at 1 client. Prints a markdown table (p50/p99 in ms). Random weights: only the
timing is meaningful, the audio is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pocket_tts_onnx import PocketTTSOnnx  # noqa: E402
from pocket_tts_onnx.serve import client as http  # noqa: E402

FIRST = "The old lighthouse stood at the edge of the cliff, its paint peeling in the wind."
SECOND = " Every evening the keeper climbed the stairs and trimmed the wick before sunset."
PIECE_CHARS = 6


def pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def wait_port(port: int, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no server on port {port} after {timeout} s")


class Server:
    """A server subprocess, always stopped on exit."""

    def __init__(self, args: list[str], port: int):
        self.port = port
        cmd = [sys.executable, "-m", "pocket_tts_onnx.cli", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------- clients
class Timing:
    """When the first sentence's last piece left, and when the first audio came back."""

    def __init__(self):
        self.sent = self.heard = None

    def latency(self) -> float:
        if self.sent is None or self.heard is None:
            raise RuntimeError("no audio was received")
        return self.heard - self.sent


async def write_text(send, timing: Timing, gap: float) -> None:
    """Send FIRST then SECOND in pieces, as an LLM keeps writing while audio plays."""
    first = pieces(FIRST)
    for i, piece in enumerate(first + pieces(SECOND)):
        if i == len(first) - 1:
            timing.sent = time.perf_counter()
        await send(piece)
        await asyncio.sleep(gap)


async def wyoming_client(port: int, gap: float) -> float:
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop

    timing = Timing()
    async with AsyncTcpClient("127.0.0.1", port) as client:

        async def writer():
            await client.write_event(SynthesizeStart().event())
            await write_text(
                lambda t: client.write_event(SynthesizeChunk(text=t).event()), timing, gap
            )
            await client.write_event(SynthesizeStop().event())

        async def reader():
            while (event := await client.read_event()) is not None:
                if event.type == "error":
                    raise RuntimeError(f"server error: {event.data}")
                if event.type == "audio-chunk" and event.payload and timing.heard is None:
                    timing.heard = time.perf_counter()
                if event.type == "synthesize-stopped":
                    return
            raise RuntimeError("the server closed the connection before synthesize-stopped")

        await asyncio.gather(writer(), reader())
    return timing.latency()


async def websocket_client(port: int, gap: float) -> float:
    import websockets

    timing = Timing()
    url = f"ws://127.0.0.1:{port}/v1/text-to-speech/default/stream-input"
    async with websockets.connect(url, max_size=None) as ws:

        async def writer():
            await ws.send(json.dumps({"text": " "}))
            await write_text(lambda t: ws.send(json.dumps({"text": t})), timing, gap)
            await ws.send(json.dumps({"text": ""}))

        async def reader():
            async for message in ws:
                body = json.loads(message)
                if body.get("isFinal"):
                    return
                if timing.heard is None and base64.b64decode(body["audio"]):
                    timing.heard = time.perf_counter()
            raise RuntimeError(f"closed before isFinal ({ws.close_code} {ws.close_reason})")

        await asyncio.gather(writer(), reader())
    return timing.latency()


def engine_client(tts, gap: float) -> float:
    """The same text fed to `tts.open_stream` in this process (writer in a thread)."""
    timing = Timing()
    stream = tts.open_stream()

    async def write_all():
        async def send(text):
            stream.write(text)

        await write_text(send, timing, gap)
        stream.end()

    writer = threading.Thread(target=lambda: asyncio.run(write_all()))
    writer.start()
    try:
        for chunk in stream:
            if chunk.samples.shape[0] and timing.heard is None:
                timing.heard = time.perf_counter()
    finally:
        writer.join()
        stream.cancel()
    return timing.latency()


async def round_of(make, n: int) -> list[float]:
    return list(await asyncio.gather(*(make() for _ in range(n))))


def measure(make, clients: int, runs: int) -> list[float]:
    asyncio.run(round_of(make, 1))  # warm-up, not counted
    out = []
    for _ in range(runs):
        out += asyncio.run(round_of(make, clients))
    return out


def row(label: str, clients: int, samples: list[float]) -> str:
    ms = 1000 * np.asarray(samples)
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    return f"| {label} | {clients} | {len(ms)} | {p50:.0f} | {p99:.0f} |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.add_argument("--clients", default="1,8", help="concurrent clients per level (1,8)")
    p.add_argument("--runs", type=int, default=5, help="rounds per level (default: 5)")
    p.add_argument("--gap", type=float, default=0.03, help="seconds between text pieces")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    common = ["--bundle", str(args.bundle), "--precision", args.precision]
    common += ["--max-streams", str(max(levels)), "--log-level", "warning"]
    results: dict[str, dict[int, list[float]]] = {}

    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision)
    random_weights = tts.manifest.random_weights
    engine = [engine_client(tts, args.gap) for _ in range(args.runs + 1)][1:]
    results["engine (open_stream, in process)"] = {1: engine}
    del tts

    port = http.free_port()
    with Server(["wyoming", *common, "--uri", f"tcp://127.0.0.1:{port}"], port):
        results["Wyoming"] = {
            n: measure(lambda: wyoming_client(port, args.gap), n, args.runs) for n in levels
        }
    port = http.free_port()
    with Server(["serve", *common, "--port", str(port), "--no-web"], port):
        results["WebSocket"] = {
            n: measure(lambda: websocket_client(port, args.gap), n, args.runs) for n in levels
        }

    weights = "random weights" if random_weights else "real weights"
    print(
        f"\nLast character of the first sentence -> its first audio byte ({args.bundle.name}, "
        f"{args.precision.upper()}, {weights}; {machine()}, {len(FIRST)}-character sentence "
        f"sent in {PIECE_CHARS}-character pieces every {1000 * args.gap:.0f} ms)\n"
    )
    print("| path | clients | samples | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
    for label, by_level in results.items():
        for n, samples in by_level.items():
            print(row(label, n, samples))
    base = float(np.percentile(engine, 50))
    for label in ("Wyoming", "WebSocket"):
        one = float(np.percentile(results[label][min(levels)], 50))
        print(f"\n{label} p50 at {min(levels)} client(s): {one / base:.2f}x the engine's p50")
    if args.out:
        data = {k: {str(n): v for n, v in d.items()} for k, d in results.items()}
        args.out.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
