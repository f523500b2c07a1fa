"""The HTTP server, driven over real HTTP against a real uvicorn server in a subprocess.

Audio is compared with the single-stream engine (our verified reference) on the same bundle,
same text and seed. Limits are set small so every robustness case is cheap to reach.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_server

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.runtime.encoding import pcm16
from pocket_tts_onnx.serve import client

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

TEXT = "Hello there, this is the server speaking."
FIXED = {"eos_threshold": 1e9, "seed": 3}  # EOS off: exactly max_frames frames
LIMITS = {"max_streams": 2, "max_queue": 2, "max_text_chars": 300, "max_upload_bytes": 300_000}


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory, tts):
    folder = tmp_path_factory.mktemp("voices")
    rng = np.random.default_rng(7)
    audio = (0.2 * rng.standard_normal(24000)).astype(np.float32)
    tts.voice_from_audio((audio, 24000)).save(folder / "spk.npz")
    return folder


@pytest.fixture(scope="module")
def server(serve_bundle, voices_dir, tmp_path_factory):
    """The server (the engine's one batch scheduler) in a subprocess."""
    port = client.free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    args = ["serve", "--bundle", str(serve_bundle), "--port", str(port)]
    args += ["--voices-dir", str(voices_dir), "--no-web", "--log-level", "warning"]
    for name, value in LIMITS.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    with cli_server(args, log, lambda proc: client.wait_healthy(port, proc)):
        assert client.health(port)["scheduler"]["alive"] is True
        yield port


def reference(tts, max_frames: int, voice=None, **kw) -> np.ndarray:
    """What the single-stream engine makes, as the 16-bit samples the server sends."""
    audio = tts.generate(TEXT, voice, max_frames=max_frames, **{**FIXED, **kw})
    return np.frombuffer(pcm16(audio), "<i2")


def assert_same_audio(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    # Batched and streamed calls round floats differently from generate(): the batch parity
    # bound (max |delta| <= 1e-4 = 3.3 LSB) plus one LSB of 16-bit rounding.
    assert np.abs(got.astype(np.int32) - want).max() <= 4


def speech(port, **fields):
    return client.post_json(port, "/v1/audio/speech", {"input": TEXT, **FIXED, **fields})


# ------------------------------------------------------------------------------ the APIs
def test_speech_streams_wav_equal_to_engine(server, tts):
    reply = client.post_json(
        server,
        "/v1/audio/speech",
        {"model": "anything", "input": TEXT, "response_format": "wav", "max_frames": 12, **FIXED},
        headers={"X-Request-ID": "req-42"},
    )
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"] == "audio/wav"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.headers["x-request-id"] == "req-42"
    assert reply.headers["cross-origin-opener-policy"] == "same-origin"
    header = reply.body[:44]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert int.from_bytes(header[24:28], "little") == tts.sample_rate
    got = np.frombuffer(reply.body[44:], "<i2")
    assert got.shape[0] == 12 * tts.sample_rate * 2 // 25  # 12 frames at 12.5 Hz
    assert_same_audio(got, reference(tts, 12))
    # The unknown-length header (0xFFFFFFFF sizes) still reads as a normal file once saved.
    decoded, rate = sf.read(io.BytesIO(reply.body), dtype="int16")
    assert rate == tts.sample_rate and np.array_equal(decoded, got)


def test_pcm_sse_and_encoded_formats(server, tts):
    want = reference(tts, 8)
    pcm = speech(server, response_format="pcm", max_frames=8)
    assert pcm.status == 200 and pcm.headers["content-type"] == "audio/pcm"
    assert_same_audio(np.frombuffer(pcm.body, "<i2"), want)

    sse = speech(server, response_format="pcm", max_frames=8, stream_format="sse")
    assert sse.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in sse.body.decode().split("\n\n") if line]
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_same_audio(np.frombuffer(audio, "<i2"), want)

    formats = client.request(server, "GET", "/v1/voices").json()["formats"]
    assert {"wav", "pcm", "flac"} <= set(formats)
    for name in set(formats) - {"wav", "pcm"}:
        reply = speech(server, response_format=name, max_frames=8)
        assert reply.status == 200, (name, reply.body[:200])
        decoded, rate = sf.read(io.BytesIO(reply.body), dtype="float32")
        assert rate == tts.sample_rate
        if name == "flac":  # lossless: the same 16-bit samples
            assert_same_audio(np.round(decoded * 32768).astype(np.int16), want)
        else:  # lossy codecs pad and delay; the length is what they can promise
            assert abs(decoded.shape[0] - want.shape[0]) < 0.1 * tts.sample_rate


def _timings(words) -> list[tuple]:
    return [(w["word"], w["index"], w["char_start"], w["char_end"]) for w in words]


def _same_times(got: list[dict], want) -> None:
    """Within one frame (80 ms): batched calls round floats differently from generate()."""
    for a, b in zip(got, want, strict=True):
        assert abs(a["start_time"] - b.start) <= 0.08 and abs(a["end_time"] - b.end) <= 0.08


def test_captioned_speech_streams_ndjson_with_word_timings(server, tts):
    """Kokoro-FastAPI's /dev/captioned_speech: NDJSON lines of base64 audio with the words
    that ended so far; the same words as the engine, located in the request's text."""
    _, want = tts.generate(TEXT, max_frames=12, timestamps=True, **FIXED)
    assert want and all(w.end is not None for w in want)
    reply = client.post_json(
        server, "/dev/captioned_speech", {"input": TEXT, "max_frames": 12, **FIXED}
    )
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in reply.body.decode().splitlines()]
    assert len(lines) > 1 and {line["audio_format"] for line in lines} == {"audio/wav"}
    audio = b"".join(base64.b64decode(line["audio"]) for line in lines)
    assert audio[:4] == b"RIFF"
    assert_same_audio(np.frombuffer(audio[44:], "<i2"), reference(tts, 12))
    words = [w for line in lines for w in line["timestamps"]]
    assert _timings(words) == [(w.text, w.index, w.char_start, w.char_end) for w in want]
    assert all(TEXT[w["char_start"] : w["char_end"]] == w["word"] for w in words)
    _same_times(words, want)

    whole = client.post_json(
        server,
        "/dev/captioned_speech",
        {"input": TEXT, "max_frames": 12, "stream": False, "response_format": "flac", **FIXED},
    )
    assert whole.status == 200, whole.body[:300]
    body = whole.json()
    assert body["audio_format"] == "audio/flac"
    decoded, _ = sf.read(io.BytesIO(base64.b64decode(body["audio"])), dtype="int16")
    assert_same_audio(decoded, reference(tts, 12))
    assert _timings(body["timestamps"]) == _timings(words)

    plain = client.post_json(
        server,
        "/dev/captioned_speech",
        {"input": TEXT, "max_frames": 8, "return_timestamps": False, **FIXED},
    )
    lines = [json.loads(line) for line in plain.body.decode().splitlines()]
    assert lines and all(line["timestamps"] == [] for line in lines)


def test_speech_sse_lists_word_timings_when_asked(server, tts):
    _, want = tts.generate(TEXT, max_frames=12, timestamps=True, **FIXED)
    sse = speech(server, response_format="pcm", max_frames=12, stream_format="sse", timestamps=True)
    assert sse.status == 200, sse.body[:300]
    events = [json.loads(line[6:]) for line in sse.body.decode().split("\n\n") if line]
    words = [w for e in events for w in e.get("timestamps", [])]
    assert _timings(words) == [(w.text, w.index, w.char_start, w.char_end) for w in want]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_same_audio(np.frombuffer(audio, "<i2"), reference(tts, 12))


def test_captioned_speech_refusals(server):
    for fields, param in (
        ({"stream": True, "response_format": "mp3"}, "stream"),
        ({"response_format": "ogg-nope"}, "response_format"),
        ({"return_timestamps": "yes"}, "return_timestamps"),
        ({"input": ""}, "input"),
    ):
        reply = client.post_json(server, "/dev/captioned_speech", {"input": TEXT, **fields})
        if fields.get("response_format") == "mp3" and reply.status == 200:
            continue  # this server streams mp3
        assert reply.status == 400, (fields, reply.body[:200])
        assert reply.json()["error"]["param"] == param, reply.body


def test_upstream_tts_form(server, tts, voices_dir, voice_audio):
    buf = io.BytesIO()
    sf.write(buf, voice_audio, 24000, format="WAV", subtype="PCM_16")
    upload = {"voice_wav": ("ref.wav", buf.getvalue())}
    before = client.health(server)["voice_cache"]
    first = client.post_form(server, "/tts", {"text": "Short one."}, upload)
    assert first.status == 200, first.body[:300]
    assert first.headers["content-type"] == "audio/wav"
    assert "generated_speech.wav" in first.headers["content-disposition"]
    assert first.body[:4] == b"RIFF" and len(first.body) > 44
    again = client.post_form(server, "/tts", {"text": "Short one."}, upload)
    assert again.status == 200
    after = client.health(server)["voice_cache"]
    assert after["size"] == before["size"] + 1  # one voice state for the same upload
    assert after["hits"] >= before["hits"] + 1

    named = client.post_form(server, "/tts", {"text": "Short one.", "voice_url": "spk"})
    assert named.status == 200
    plain = client.post_form(server, "/tts", {"text": "Short one."})
    assert plain.status == 200


def test_voices_health_and_page(server):
    voices = client.request(server, "GET", "/v1/voices").json()
    assert {"name": "spk", "source": "voices-dir"} in voices["voices"]
    status = client.health(server)
    assert status["status"] == "ok" and status["limits"]["max_streams"] == 2
    assert status["model"]["random_weights"] is True
    page = client.request(server, "GET", "/")
    assert page.status == 200 and b"npm" in page.body  # --no-web: says how to build it


# ------------------------------------------------------------------------ robustness
BAD_JSON = [
    ("bad json", b'{"input": "hi",', 400, "body"),
    ("missing input", {"voice": "spk"}, 400, "input"),
    ("empty input", {"input": "   "}, 400, "input"),
    ("input wrong type", {"input": 5}, 400, "input"),
    ("temperature wrong type", {"input": "hi", "temperature": "hot"}, 400, "temperature"),
    ("negative temperature", {"input": "hi", "temperature": -1.0}, 400, "temperature"),
    ("unknown voice", {"input": "hi", "voice": "nobody"}, 400, "voice"),
    ("voice path", {"input": "hi", "voice": "../spk"}, 400, "voice"),
    ("absolute voice path", {"input": "hi", "voice": "/etc/passwd"}, 400, "voice"),
    ("unsupported format", {"input": "hi", "response_format": "aac"}, 400, "response_format"),
    ("speed", {"input": "hi", "speed": 1.5}, 400, "speed"),
    (
        "sse of mp3",
        {"input": "hi", "response_format": "flac", "stream_format": "sse"},
        400,
        "stream_format",
    ),
    ("too many frames", {"input": "hi", "max_frames": 10**6}, 400, "max_frames"),
    ("seed out of range (engine check)", {"input": "hi", "seed": -1}, 400, "seed"),
    ("text over the limit", {"input": "a" * 301}, 413, "input"),
    ("not an object", [1, 2], 400, "body"),
]


@pytest.mark.parametrize("case", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_speech_requests_are_4xx_naming_the_field(server, case):
    _, payload, status, param = case
    reply = client.post_json(server, "/v1/audio/speech", payload)
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert error["param"] == param, error
    assert "Traceback" not in error["message"]
    assert reply.json()["request_id"] == reply.headers["x-request-id"]
    if param == "response_format":
        assert "wav, pcm" in error["message"]


BAD_FORMS = [
    ("missing text", {}, None, 400, "text"),
    ("empty text", {"text": " "}, None, 400, "text"),
    ("voice url", {"text": "hi", "voice_url": "https://example.com/v.wav"}, None, 400, "voice_url"),
    ("voice path", {"text": "hi", "voice_url": "../../etc/passwd"}, None, 400, "voice_url"),
    ("both voices", {"text": "hi", "voice_url": "spk"}, b"RIFF", 400, "voice_url"),
    ("undecodable upload", {"text": "hi"}, b"not audio", 400, "voice_wav"),
    ("upload over the limit", {"text": "hi"}, b"\0" * 300_001, 413, "voice_wav"),
    ("body over the limit", {"text": "hi"}, b"\0" * 500_000, 413, "body"),
]


@pytest.mark.parametrize("case", BAD_FORMS, ids=[c[0] for c in BAD_FORMS])
def test_bad_tts_forms_are_4xx_naming_the_field(server, case):
    _, fields, upload, status, param = case
    files = {"voice_wav": ("v.wav", upload)} if upload is not None else {}
    reply = client.post_form(server, "/tts", fields, files)
    assert reply.status == status, reply.body
    assert reply.json()["error"]["param"] == param


def test_disconnect_frees_the_stream_and_others_finish(server, tts):
    conn, resp = client.open_stream(
        server, {"input": TEXT, "response_format": "pcm", "max_frames": 5000, **FIXED}
    )
    assert resp.status == 200
    assert len(resp.read(20_000)) == 20_000  # audio arrives while it is still generated
    assert client.health(server)["streams"]["active"] == 1
    other = {}
    thread = threading.Thread(
        target=lambda: other.update(r=speech(server, response_format="pcm", max_frames=20))
    )
    thread.start()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    freed = wait_for(lambda: client.health(server)["scheduler"]["active"] == 0, timeout=5)
    thread.join(timeout=30)
    assert freed, client.health(server)
    assert client.health(server)["streams"]["active"] == 0
    assert other["r"].status == 200
    assert_same_audio(np.frombuffer(other["r"].body, "<i2"), reference(tts, 20))


def _in_scheduler(port) -> int:
    stats = client.health(port)["scheduler"]
    return stats["active"] + stats["waiting"]


def test_queue_full_is_503_with_retry_after(server):
    long = {"input": TEXT, "response_format": "pcm", "max_frames": 5000, **FIXED}
    held = []
    try:
        for _ in range(LIMITS["max_streams"] + LIMITS["max_queue"]):
            conn = client.connect(server)
            conn.request(
                "POST",
                "/v1/audio/speech",
                json.dumps(long).encode(),
                {"Content-Type": "application/json"},
            )
            held.append(conn)
            # One at a time: a scheduler may count a request as waiting until its next step
            # admits it, so a burst could be refused before the slots fill.
            taken = wait_for(lambda: _in_scheduler(server) == len(held), timeout=10)
            assert taken, client.health(server)
        assert client.health(server)["scheduler"]["waiting"] == LIMITS["max_queue"]
        reply = speech(server, max_frames=4)
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["code"] == "queue_full"
    finally:
        for conn in held:
            conn.close()
    assert wait_for(lambda: client.health(server)["scheduler"]["active"] == 0, timeout=10)
    assert client.health(server)["scheduler"]["waiting"] == 0
    assert client.health(server)["streams"] == {"active": 0, "pending": 0}


def test_concurrent_streams_all_complete(server, tts):
    n = LIMITS["max_streams"] + LIMITS["max_queue"]
    replies = [None] * n

    def run(i):
        replies[i] = speech(server, response_format="pcm", max_frames=16, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, reply in enumerate(replies):
        assert reply is not None and reply.status == 200, reply
        assert_same_audio(np.frombuffer(reply.body, "<i2"), reference(tts, 16, seed=i))
