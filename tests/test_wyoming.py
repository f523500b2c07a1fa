"""The Wyoming server, driven as Home Assistant drives it: the `wyoming` package's own
AsyncTcpClient against a real server process on a loopback socket.

Audio is compared with the single-stream engine (our verified reference) on the same bundle,
text and seed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cli_server

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.runtime.encoding import pcm16
from pocket_tts_onnx.serve.client import free_port

pytest.importorskip("wyoming")
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import (  # noqa: E402
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

SEED = 3
MAX_TEXT_CHARS = 300
# Two sentences long enough that the engine's chunker keeps them apart (as a stream does).
FIRST = "Hello there, this is the first sentence of a longer text that we speak now."
SECOND = " And here is the second one, which is also rather long."
TEXT = FIRST + SECOND
SAMPLES_PER_CHUNK = 512
TIMEOUT = 60


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


@pytest.fixture(scope="module")
def reference(tts):
    """The engine's audio for TEXT, as the 16-bit samples the server sends."""
    assert len(tts.text_chunks(TEXT)) == 2  # sentence boundaries agree with a stream's
    return np.frombuffer(pcm16(tts.generate(TEXT, seed=SEED)), "<i2")


@pytest.fixture(scope="module")
def port(serve_bundle, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("wyoming-log") / "server.log"
    args = [
        "wyoming", "--bundle", str(serve_bundle), "--uri", f"tcp://127.0.0.1:{port}",
        "--max-streams", "8", "--max-queue", "8", "--max-text-chars", str(MAX_TEXT_CHARS),
        "--samples-per-chunk", str(SAMPLES_PER_CHUNK), "--seed", str(SEED), "--log-level",
        "warning",
    ]  # fmt: skip

    def listening(proc) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the Wyoming server did not start"
                time.sleep(0.1)

    with cli_server(args, log, listening):
        yield port


def pieces(text: str, size: int = 7) -> list[str]:
    """How an LLM's tokens arrive: words and punctuation split anywhere."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


async def read(client) -> Event:
    event = await client.read_event()
    assert event is not None, "the server closed the connection"
    return event


async def collect(client, until: str) -> tuple[list[Event], bytes]:
    """Events up to and including `until`; the audio payloads joined."""
    events, audio = [], b""
    while True:
        event = await read(client)
        events.append(event)
        if event.type == "audio-chunk":
            audio += event.payload or b""
        if event.type == until:
            return events, audio


def assert_engine_audio(audio: bytes, reference: np.ndarray, batch_mates: bool = False) -> None:
    got = np.frombuffer(audio, "<i2")
    assert got.shape == reference.shape
    # Alone, a stream is the engine's batch of one: within 16-bit rounding (one step). With
    # other streams in its batch, model calls round differently: the batch parity bound
    # (max |delta| <= 1e-4 = 3.3 steps) plus one step of rounding.
    assert np.abs(got.astype(np.int32) - reference).max() <= (4 if batch_mates else 1)


def test_describe_lists_one_streaming_program_with_the_bundle_voices(port, tts):
    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await read(client))

    info = run(go())
    (program,) = info.tts
    assert program.supports_synthesize_streaming
    assert program.installed and program.attribution.url
    assert [v.name for v in program.voices] == (tts.voices or ["default"])
    for voice in program.voices:
        assert voice.languages == ["en"]  # the demo config is English-like: the fallback
        assert voice.attribution.name


def test_one_shot_synthesize_equals_the_engine(port, tts, reference):
    voice = SynthesizeVoice(name=tts.voices[0]) if tts.voices else None

    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=TEXT, voice=voice).event())
            return await collect(client, "audio-stop")

    events, audio = run(go())
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop"
    assert set(kinds[1:-1]) == {"audio-chunk"}
    assert events[0].data | {"timestamp": None} == {
        "rate": tts.sample_rate, "width": 2, "channels": 1, "timestamp": None,
    }  # fmt: skip
    assert all(len(e.payload) <= 2 * SAMPLES_PER_CHUNK for e in events[1:-1])
    assert_engine_audio(audio, reference)


def test_streamed_text_is_spoken_before_synthesize_stop(port, reference):
    """Home Assistant's streaming: text in small pieces with delays; the first sentence's
    audio must arrive while the client is still writing."""

    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            # The first sentence and the next word (its end is then unambiguous).
            for piece in pieces(FIRST + SECOND[:4]):
                await client.write_event(SynthesizeChunk(text=piece).event())
                await asyncio.sleep(0.05)
            # Nothing more is sent until audio arrives: the stop cannot have caused it.
            early = await asyncio.wait_for(collect(client, "audio-chunk"), 30)
            for piece in pieces(SECOND[4:]):
                await client.write_event(SynthesizeChunk(text=piece).event())
                await asyncio.sleep(0.05)
            # Sent by HA for older servers; a streaming server ignores it.
            await client.write_event(Synthesize(text=TEXT).event())
            await client.write_event(SynthesizeStop().event())
            late = await collect(client, "synthesize-stopped")
            return early[0] + late[0], early[1] + late[1]

    events, audio = run(go())
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[1] == "audio-chunk"
    # One audio-start ... audio-stop per sentence, then synthesize-stopped.
    assert kinds.count("audio-start") == kinds.count("audio-stop") == 2
    assert kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    assert_engine_audio(audio, reference)


def send_raw(client, data: bytes):
    client._writer.write(data)


def _event_bytes(kind: str, data: dict | None = None, **header) -> bytes:
    body = json.dumps(data).encode() if data is not None else b""
    head = {"type": kind, **({"data_length": len(body)} if body else {}), **header}
    return json.dumps(head).encode() + b"\n" + body


TOO_MUCH_DATA = json.dumps({"text": "x" * (30 * MAX_TEXT_CHARS)}).encode()
BAD_EVENTS = {
    "not json": b"this is not json\n",
    "not an object": b"[1, 2]\n",
    "no type": b'{"data": {}}\n',
    "data not an object": _event_bytes("synthesize", data=[1]),
    "data not json": b'{"type": "synthesize", "data_length": 3}\nabc',
    "data too large": b'{"type": "synthesize", "data_length": %d}\n' % len(TOO_MUCH_DATA)
    + TOO_MUCH_DATA,
    "header line too long": b'{"type": "synthesize", "pad": "' + b"x" * 100_000 + b'"}\n',
    "text missing": _event_bytes("synthesize", data={"voice": {}}),
    "text not a string": _event_bytes("synthesize", data={"text": 5}),
    "empty text": _event_bytes("synthesize", data={"text": "  "}),
    "text too long": _event_bytes("synthesize", data={"text": "word " * MAX_TEXT_CHARS}),
    "unknown voice": _event_bytes("synthesize", data={"text": "Hi.", "voice": {"name": "nope"}}),
    "voice not an object": _event_bytes("synthesize", data={"text": "Hi.", "voice": "alba"}),
    "other language": _event_bytes("synthesize", data={"text": "Hi.", "voice": {"language": "fr"}}),
    "chunk outside a stream": _event_bytes("synthesize-chunk", data={"text": "Hi."}),
    "stop outside a stream": _event_bytes("synthesize-stop"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_bad_events_get_an_error_and_the_connection_keeps_working(port, case):
    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            send_raw(client, BAD_EVENTS[case])
            error = await read(client)
            await client.write_event(Describe().event())
            return error, await read(client)

    error, after = run(go())
    assert error.type == "error", error
    assert error.data["text"] and error.data["code"]
    assert after.type == "info"


def test_a_stream_over_the_limit_errors_and_still_stops(port):
    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="word " * MAX_TEXT_CHARS).event())
            error = await read(client)
            await client.write_event(SynthesizeChunk(text="More words.").event())
            await client.write_event(SynthesizeStop().event())
            return error, await collect(client, "synthesize-stopped")

    error, (events, audio) = run(go())
    assert error.type == "error" and error.data["code"] == "text_too_long"
    assert [e.type for e in events] == ["synthesize-stopped"] and audio == b""


def test_eight_concurrent_streaming_clients(port, reference):
    async def one():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            for piece in pieces(TEXT):
                await client.write_event(SynthesizeChunk(text=piece).event())
                await asyncio.sleep(0.01)
            await client.write_event(SynthesizeStop().event())
            return (await collect(client, "synthesize-stopped"))[1]

    async def many():
        return await asyncio.gather(*(one() for _ in range(8)))

    for audio in run(many()):
        assert_engine_audio(audio, reference, batch_mates=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--uri", "http://127.0.0.1:10200"], "--uri must be tcp://"),
        (["--uri", "tcp://127.0.0.1"], "give a host and a port"),
        (["--samples-per-chunk", "0"], "--samples-per-chunk must be >= 1"),
        (["--zeroconf", "--uri", "unix:///tmp/x.sock"], "use a tcp:// --uri"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, flags, message):
    """Checked before the bundle loads: a missing bundle does not hide them."""
    result = subprocess.run(
        [sys.executable, "-m", "pocket_tts_onnx.cli", "wyoming", "--bundle", str(tmp_path),
         *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_zeroconf_without_the_package_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("zeroconf") is not None:
        pytest.skip("zeroconf is installed here")
    result = subprocess.run(
        [sys.executable, "-m", "pocket_tts_onnx.cli", "wyoming", "--bundle", str(tmp_path),
         "--uri", "tcp://127.0.0.1:10200", "--zeroconf"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install zeroconf" in result.stderr and "Traceback" not in result.stderr


def test_disconnect_mid_stream_frees_its_row(tts):
    """A client that vanishes mid-sentence cancels its stream (server in this process, to
    read its scheduler's stats; still a real socket)."""
    from functools import partial

    from wyoming.server import AsyncTcpServer

    from pocket_tts_onnx.serve.limits import ServeConfig
    from pocket_tts_onnx.serve.scheduler import make_scheduler
    from pocket_tts_onnx.wyoming.handler import SpeechHandler, WyomingService
    from pocket_tts_onnx.wyoming.info import build_info

    scheduler = make_scheduler(tts, ServeConfig(max_streams=2, max_queue=2))
    # EOS off and 5000 frames: only a cancel can end this stream within the test.
    config = tts.generation_config(seed=SEED, eos_threshold=1e9, max_frames=5000)
    service = WyomingService(tts, scheduler, build_info(tts, "en"), "en", config=config)
    port = free_port()

    async def go():
        server = AsyncTcpServer("127.0.0.1", port)
        await server.start(partial(SpeechHandler, service))
        try:
            client = AsyncTcpClient("127.0.0.1", port)
            await client.connect()
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text=FIRST + SECOND[:4]).event())
            await collect(client, "audio-chunk")
            busy = scheduler.stats()["active"]
            client._writer.transport.abort()  # gone, without a word
            for _ in range(100):
                if scheduler.stats()["active"] == 0:
                    break
                await asyncio.sleep(0.05)
            return busy, scheduler.stats()["active"]
        finally:
            await server.stop()

    try:
        busy, after = run(go())
    finally:
        scheduler.close()
    assert busy == 1 and after == 0
