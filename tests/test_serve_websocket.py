"""The WebSocket text-in/audio-out endpoint (serve/websocket.py), driven by a real client
(the `websockets` package) against a real server process on a loopback socket."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
from conftest import cli_server

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.runtime.encoding import pcm16
from pocket_tts_onnx.serve import client

pytest.importorskip("fastapi")
websockets = pytest.importorskip("websockets")

# Two sentences long enough that the engine's chunker keeps them apart (as a stream does).
FIRST = "Hello there, this is the first sentence of a longer text that we speak now."
SECOND = " And here is the second one, which is also rather long."
TEXT = FIRST + SECOND
SETTINGS = {"seed": 5, "eos_threshold": 1e9, "max_frames": 12}  # EOS off: 12 frames a sentence
MAX_TEXT_CHARS = 300
IDLE_S = 2
TIMEOUT = 60


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


@pytest.fixture(scope="module")
def port(serve_bundle, tmp_path_factory):
    port = client.free_port()
    log = tmp_path_factory.mktemp("ws-log") / "server.log"
    args = [
        "serve", "--bundle", str(serve_bundle), "--port", str(port), "--no-web",
        "--max-streams", "2", "--max-queue", "2", "--max-text-chars", str(MAX_TEXT_CHARS),
        "--ws-idle-timeout-s", str(IDLE_S), "--log-level", "warning",
    ]  # fmt: skip
    with cli_server(args, log, lambda proc: client.wait_healthy(port, proc)):
        yield port


def url(port, voice="default", query="") -> str:
    return f"ws://127.0.0.1:{port}/v1/text-to-speech/{voice}/stream-input{query}"


def pieces(text: str, size: int = 7) -> list[str]:
    """How an LLM's tokens arrive: words and punctuation split anywhere."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


async def send(ws, text: str, **extra) -> None:
    await ws.send(json.dumps({"text": text, **extra}))


def audio_of(message: str) -> bytes:
    body = json.loads(message)
    assert body["isFinal"] is False
    return base64.b64decode(body["audio"])


async def until_final(ws) -> list[dict]:
    """The messages that arrive before the final one (`isFinal`: true)."""
    bodies = []
    async for message in ws:
        body = json.loads(message)
        if body["isFinal"]:
            return bodies
        bodies.append(body)
    raise AssertionError("the stream closed without a final message")


def test_pieces_are_spoken_before_the_end_message(port, tts):
    async def go():
        async with websockets.connect(url(port, query="?output_format=pcm_24000")) as ws:
            await send(ws, " ", generation_config=SETTINGS)  # ElevenLabs' opening message
            for piece in pieces(FIRST + SECOND[:4]):  # the first sentence and the next word
                await send(ws, piece)
                await asyncio.sleep(0.05)
            # Nothing more is sent until audio arrives: the end message cannot have caused it.
            audio = audio_of(await asyncio.wait_for(ws.recv(), 30))
            for piece in pieces(SECOND[4:]):
                await send(ws, piece)
            await send(ws, "")
            for body in await until_final(ws):
                audio += base64.b64decode(body["audio"])
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            return audio, ws.close_code

    audio, code = run(go())
    assert code == 1000
    want = np.frombuffer(pcm16(tts.generate(TEXT, **SETTINGS)), "<i2")
    assert len(tts.text_chunks(TEXT)) == 2  # sentence boundaries agree with the stream's
    got = np.frombuffer(audio, "<i2")
    assert got.shape == want.shape
    # Batched calls round floats differently from generate(): at most one 16-bit step.
    assert np.abs(got.astype(np.int32) - want).max() <= 1


def _scheduler(port) -> dict:
    return client.health(port)["scheduler"]


@pytest.mark.parametrize("how", ["close", "drop"])
def test_disconnect_mid_stream_frees_its_row(port, how):
    async def go():
        ws = await websockets.connect(url(port))
        await send(ws, FIRST + " And", generation_config={**SETTINGS, "max_frames": 5000})
        audio_of(await asyncio.wait_for(ws.recv(), 30))  # generating now
        busy = await asyncio.to_thread(_scheduler, port)
        if how == "close":
            await ws.close()
        else:  # the TCP connection vanishes without a close frame
            ws.transport.abort()
        return busy

    busy = run(go())
    assert busy["active"] == 1, busy  # 5000 frames take minutes: only a cancel ends it now
    assert wait_for(lambda: _scheduler(port)["active"] == 0), _scheduler(port)


REFUSALS = {
    "not json": (["not json"], 1008, "invalid_json"),
    "binary": ([b"\x00\x01"], 1003, "binary_message"),
    "not an object": (["[1]"], 1008, "protocol"),
    "text not a string": (['{"text": 3}'], 1008, "protocol"),
    "unknown field": (['{"text": "Hi", "speed": 2}'], 1008, "unknown_field"),
    "bad parameter": (['{"text": " ", "generation_config": {"temperature": -1}}'], 1008,
                      "invalid_value"),
    "unknown parameter": (['{"text": " ", "generation_config": {"sped": 1}}'], 1008,
                          "invalid_value"),
    "max_frames over the cap": (['{"text": " ", "generation_config": {"max_frames": 99999}}'],
                                1008, "invalid_value"),
    "late generation_config": (['{"text": " "}', '{"text": "Hi", "generation_config": {}}'],
                               1008, "protocol"),
    "text too long": ([json.dumps({"text": "word " * MAX_TEXT_CHARS})], 1008, "text_too_long"),
    "idle": (['{"text": "Hello"}'], 1008, "idle_timeout"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_send_an_error_then_close_with_its_code(port, case):
    messages, close_code, code = REFUSALS[case]

    async def go():
        async with websockets.connect(url(port)) as ws:
            for message in messages:
                await ws.send(message)
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return error, ws.close_code

    started = time.monotonic()
    error, got = run(go())
    assert got == close_code
    assert error["error"]["code"] == code and error["error"]["message"]
    if case == "idle":
        assert time.monotonic() - started >= IDLE_S


@pytest.mark.parametrize(
    "path, param", [("nobody/stream-input", "voice"), ("default/stream-input", "output_format")]
)
def test_bad_url_is_refused_with_1008(port, path, param):
    async def go():
        query = "?output_format=pcm_16000" if param == "output_format" else ""
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/v1/text-to-speech/{path}{query}"
        ) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return error, ws.close_code

    error, code = run(go())
    assert code == 1008 and error["error"]["param"] == param


def test_word_alignment_when_asked(port, tts):
    """generation_config {"timestamps": true}: messages carry a word-level `alignment`;
    the words of the engine's text stream, offsets into all the text sent."""

    async def go():
        messages = []
        async with websockets.connect(url(port)) as ws:
            await send(ws, " ", generation_config={**SETTINGS, "timestamps": True})
            for piece in pieces(TEXT):
                await send(ws, piece)
            await send(ws, "")
            messages += await until_final(ws)
        return messages

    messages = run(go())
    stream = tts.open_stream(**SETTINGS, timestamps=True)
    for piece in pieces(TEXT):
        stream.write(piece)
    stream.end()
    want = [w for chunk in stream for w in chunk.words if w.end is not None]
    assert want
    got = [m["alignment"] for m in messages if "alignment" in m]
    words = [w for a in got for w in a["words"]]
    assert words == [w.text for w in want]
    starts = [s for a in got for s in a["charStarts"]]
    ends = [e for a in got for e in a["charEnds"]]
    assert [TEXT[s:e] for s, e in zip(starts, ends, strict=True)] == words
    assert starts == [w.char_start for w in want]
    times = [t for a in got for t in a["wordStartTimesMs"]]
    assert all(abs(t - 1000 * w.start) <= 80 for t, w in zip(times, want, strict=True))
