"""Server cases that need the app in this process (a fault-injecting scheduler, a fake web
build) or a clean interpreter (no torch), each still over real HTTP to real uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import serving

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.serve import client

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


running = serving  # uvicorn in a thread, on a free port


class _ExplodingScheduler:
    alive = True

    def submit(self, *args, **kwargs):
        raise RuntimeError("boom: a bug in the scheduler")

    def stats(self):
        return {}

    def close(self):
        pass


def test_server_errors_are_logged_with_the_request_id(serve_bundle, tts, caplog):
    from pocket_tts_onnx.serve.app import create_app

    app = create_app(tts, serve_bundle, scheduler=_ExplodingScheduler())
    with running(app) as port:
        with caplog.at_level("ERROR", logger="pocket_tts_onnx.serve"):
            reply = client.post_json(
                port, "/v1/audio/speech", {"input": "hi"}, headers={"X-Request-ID": "abc-123"}
            )
        assert reply.status == 500
        assert reply.headers["x-request-id"] == "abc-123"
        message = reply.json()["error"]["message"]
        assert "abc-123" in message and "boom" not in message  # no internals leak
        assert any("abc-123" in r.getMessage() and r.exc_info for r in caplog.records)
        bad_id = client.post_json(port, "/v1/audio/speech", {}, headers={"X-Request-ID": "a b"})
        assert bad_id.headers["x-request-id"] != "a b"  # replaced, not echoed


def test_web_page_served_with_its_bundle(serve_bundle, tts, tmp_path):
    from pocket_tts_onnx.serve.app import create_app
    from pocket_tts_onnx.serve.limits import ServeConfig

    (tmp_path / "index.html").write_text("<!doctype html><title>demo</title>")
    app = create_app(tts, serve_bundle, ServeConfig(web_dist=tmp_path))
    with running(app) as port:
        page = client.request(port, "GET", "/")
        assert page.status == 200 and b"demo" in page.body
        assert page.headers["cross-origin-embedder-policy"] == "require-corp"
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        manifest = client.request(port, "GET", "/bundle/manifest.json")
        assert manifest.status == 200 and "graphs" in manifest.json()
        assert client.request(port, "GET", "/bundle/../../etc/passwd").status == 404
        assert client.request(port, "GET", "/bundle/%2e%2e/%2e%2e/etc/passwd").status == 404
        assert client.health(port)["status"] == "ok"  # API routes win over the page


NO_TORCH = """
import sys, threading, time, uvicorn
from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.serve import client
from pocket_tts_onnx.serve.app import create_app
tts = PocketTTSOnnx.load(sys.argv[1])
port = int(sys.argv[2])
server = uvicorn.Server(uvicorn.Config(create_app(tts, sys.argv[1]), port=port,
                                       log_level="error"))
threading.Thread(target=server.run, daemon=True).start()
client.wait_healthy(port)
reply = client.post_json(port, "/v1/audio/speech",
                         {"input": "No torch here.", "response_format": "wav", "max_frames": 4})
assert reply.status == 200, reply.body
bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "pocket_tts")]
assert not bad, bad
server.should_exit = True
print("ok")
"""


def test_server_never_imports_torch(serve_bundle):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(serve_bundle), str(client.free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_cli_binds_localhost_by_default_and_documents_every_option():
    import argparse

    from pocket_tts_onnx.cli import build_parser

    args = build_parser().parse_args(["serve", "--bundle", "b"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_streams == 8
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    assert "0.0.0.0" in serve.format_help()
    for action in serve._actions:
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            continue
        assert action.help and "default" in action.help, action.option_strings
        if action.default is not None:
            assert str(action.default) in action.help, action.option_strings


def test_missing_serve_extra_is_one_line():
    script = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from pocket_tts_onnx.cli import main\n"
        "sys.exit(main(['serve', '--bundle', 'nowhere']))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "[serve] extra" in out.stderr and "pip install" in out.stderr


# ------------------------------------------------------------------ hardening, round 3
def _app(tts, bundle, **limits):
    from pocket_tts_onnx.serve.app import create_app
    from pocket_tts_onnx.serve.limits import ServeConfig

    return create_app(tts, bundle, ServeConfig(**limits))


def _silent_flac(seconds: int, rate: int = 48_000, channels: int = 2) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    block = np.zeros((rate, channels), np.float32)
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)
    return buf.getvalue()


def test_compressed_upload_decodes_only_the_prompt(serve_bundle, tts):
    """20 min of stereo silence as FLAC is ~0.3 MB but 460 MB as float32: only the 30 s a
    voice uses may be decoded."""
    import tracemalloc

    bomb = _silent_flac(1200)
    assert len(bomb) < 1_000_000
    with running(_app(tts, serve_bundle)) as port:
        tracemalloc.start()
        try:
            reply = client.post_form(
                port, "/tts", {"text": "Short one."}, {"voice_wav": ("b.flac", bomb)}
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reply.status == 200, reply.body[:300]
    assert peak < 100e6, f"peak traced memory {peak / 1e6:.0f} MB"


def test_json_bodies_have_their_own_limit(serve_bundle, tts):
    import json

    with running(_app(tts, serve_bundle, max_text_chars=100)) as port:
        nested = json.dumps({"input": "hi", "junk": [[]] * 60_000}).encode()
        assert len(nested) < 10_000_000  # within the upload limit, far above any real request
        reply = client.post_json(port, "/v1/audio/speech", nested)
        assert reply.status == 413, reply.body[:200]
        assert reply.json()["error"]["param"] == "body"
        assert "--max-text-chars" in reply.json()["error"]["message"]
        # The longest text, escaped as JSON's worst case, still fits.
        longest = json.dumps({"input": "\U0001f600" * 100, "max_frames": 2, "seed": 1})
        ok = client.post_json(port, "/v1/audio/speech", longest.encode())
        assert ok.status == 200, ok.body[:300]


def _bundle_copy(serve_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(serve_bundle, copy)
    return copy


def test_tampered_bundle_voice_refuses_to_start(serve_bundle, tmp_path, capsys):
    from pocket_tts_onnx.cli import main
    from pocket_tts_onnx.errors import BundleError
    from pocket_tts_onnx.manifest import Manifest

    bundle = _bundle_copy(serve_bundle, tmp_path)
    name, entry = next(iter(Manifest.load(bundle).voices.items()))
    path = bundle / entry.file
    path.write_bytes(path.read_bytes() + b"tampered")
    tts = PocketTTSOnnx.load(bundle)  # the engine loads voices lazily
    with pytest.raises(BundleError, match=f"voice '{name}'.*sha256"):
        _app(tts, bundle)
    assert main(["serve", "--bundle", str(bundle), "--port", "0"]) == 2
    out = capsys.readouterr()
    assert "serving" not in out.out and "Traceback" not in out.err
    assert f"voice '{name}'" in out.err and len(out.err.strip().splitlines()) == 1


def test_bundle_damaged_while_serving_is_a_named_500(serve_bundle, tmp_path):
    from pocket_tts_onnx.manifest import Manifest

    bundle = _bundle_copy(serve_bundle, tmp_path)
    name, entry = next(iter(Manifest.load(bundle).voices.items()))
    tts = PocketTTSOnnx.load(bundle)
    with running(_app(tts, bundle)) as port:
        path = bundle / entry.file
        path.write_bytes(path.read_bytes() + b"tampered")
        reply = client.post_json(
            port, "/v1/audio/speech", {"input": "hi", "voice": name, "max_frames": 2}
        )
    assert reply.status == 500
    error = reply.json()["error"]
    assert error["code"] == "bundle_damaged" and "internal server error" not in error["message"]
    assert str(tmp_path) not in reply.body.decode()


def test_voices_lists_only_usable_voices_and_no_paths(serve_bundle, tts, tmp_path):
    import numpy as np

    folder = tmp_path / "voices"
    folder.mkdir()
    outside = tmp_path / "outside.npz"
    tts.voice_from_audio((np.full(24_000, 0.1, np.float32), 24_000)).save(outside)
    (folder / "good.npz").write_bytes(outside.read_bytes())
    (folder / "adir.npz").mkdir()
    (folder / "escape.npz").symlink_to(outside)
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with running(_app(tts, serve_bundle, voices_dir=folder)) as port:
        listed = {v["name"] for v in client.request(port, "GET", "/v1/voices").json()["voices"]}
        assert "good" in listed and not {"adir", "escape"} & listed
        for name in ("adir", "escape", "broken", "nobody"):
            reply = client.post_json(port, "/v1/audio/speech", {"input": "hi", "voice": name})
            assert reply.status == 400, (name, reply.body)
            assert str(tmp_path) not in reply.body.decode(), reply.body
        good = client.post_json(
            port, "/v1/audio/speech", {"input": "hi", "voice": "good", "max_frames": 2}
        )
        assert good.status == 200


def test_request_body_that_never_arrives_is_cut_off(serve_bundle, tts):
    import socket
    import time

    with running(_app(tts, serve_bundle, body_timeout_s=1)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b'\r\nContent-Length: 100\r\n\r\n{"input": '
            )
            start = time.monotonic()
            reply = sock.recv(65536)
            waited = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert waited < 5
        assert client.health(port)["status"] == "ok"


def test_get_on_a_post_route_is_405_with_the_page_mounted(serve_bundle, tts, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>demo</title>")
    with running(_app(tts, serve_bundle, web_dist=tmp_path)) as port:
        for path in ("/tts", "/v1/audio/speech"):
            reply = client.request(port, "GET", path)
            assert reply.status == 405, (path, reply.status)
            assert reply.headers["allow"] == "POST"
            assert reply.json()["error"]["code"] == "method_not_allowed"
        assert client.request(port, "GET", "/").status == 200


def test_form_and_encoding_messages(serve_bundle, tts):
    with running(_app(tts, serve_bundle)) as port:
        bad_utf8 = client.post_json(port, "/v1/audio/speech", b'{"input": "caf\xe9"}')
        assert bad_utf8.status == 400
        assert "UTF-8" in bad_utf8.json()["error"]["message"]
        assert bad_utf8.json()["error"]["param"] == "body"

        empty = client.post_form(port, "/tts", {"text": ""})
        speech_empty = client.post_json(port, "/v1/audio/speech", {"input": ""})
        assert empty.status == speech_empty.status == 400
        assert empty.json()["error"]["message"] == speech_empty.json()["error"]["message"].replace(
            "input", "text"
        )

        garbage = client.post_form(
            port, "/tts", {"text": "hi"}, {"voice_wav": ("v.wav", b"not audio" * 20)}
        )
        message = garbage.json()["error"]["message"]
        assert garbage.status == 400 and "BytesIO" not in message and " at 0x" not in message


def test_serve_port_errors_are_one_line(serve_bundle, capsys):
    import socket

    from pocket_tts_onnx.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--bundle", str(serve_bundle), "--port", "99999"])
    assert info.value.code == 2
    assert "0-65535" in capsys.readouterr().err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--bundle", str(serve_bundle), "--port", str(port)]) == 2
    out = capsys.readouterr()
    assert "serving" not in out.out  # said only once the port is ours
    assert f"cannot listen on 127.0.0.1:{port}" in out.err and "Traceback" not in out.err


def test_hostile_bodies_get_short_specific_answers(serve_bundle, tts):
    with running(_app(tts, serve_bundle)) as port:
        deep = client.post_json(port, "/v1/audio/speech", b"[" * 40_000 + b"]" * 40_000)
        assert deep.status == 400 and "nested too deeply" in deep.json()["error"]["message"]
        # A JSON route takes no upload, whatever the content type claims.
        fake = client.request(
            port,
            "POST",
            "/v1/audio/speech",
            b"x" * 200_000,
            {"Content-Type": "multipart/form-data; boundary=zz"},
        )
        assert fake.status == 413
        long_name = client.post_json(port, "/v1/audio/speech", {"input": "hi", "voice": "a" * 9999})
        assert long_name.status == 400 and len(long_name.body) < 1000


def test_one_bad_request_never_stops_the_server_and_a_stopped_scheduler_restarts(serve_bundle, tts):
    from pocket_tts_onnx.serve.app import create_app

    app = create_app(tts, serve_bundle)
    ok = {"input": "Hello there.", "response_format": "wav", "max_frames": 3}
    with running(app) as port:
        for temperature in (1e308, 1e30, 2.5):  # finite but absurd: refused, named
            bad = client.post_json(port, "/v1/audio/speech", {**ok, "temperature": temperature})
            assert bad.status == 400 and bad.json()["error"]["param"] == "temperature"
        assert client.post_json(port, "/v1/audio/speech", ok).status == 200
        assert client.health(port)["status"] == "ok"
        app.state.serve.scheduler._scheduler.close()  # as if the scheduler thread had died
        reply = client.request(port, "GET", "/health")
        assert reply.status == 503 and "stopped" in reply.json()["status"]
        assert client.request(port, "GET", "/health").status == 200  # a new one runs
        assert client.post_json(port, "/v1/audio/speech", ok).status == 200
        assert client.health(port)["scheduler"]["restarts"] == 1


def test_timings_from_a_bundle_without_heads_are_a_400_naming_the_field(serve_bundle, tmp_path):
    """Every way to ask for word timings over HTTP and WebSocket says this bundle has none,
    naming the request's own field, before any audio."""
    import json
    import shutil

    from pocket_tts_onnx.serve.app import create_app

    bundle = shutil.copytree(serve_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["timestamps"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    tts = PocketTTSOnnx.load(bundle)
    app = create_app(tts, bundle)
    with running(app) as port:
        for path, body, param in (
            ("/dev/captioned_speech", {"input": "Hi."}, "return_timestamps"),
            ("/v1/audio/speech", {"input": "Hi.", "timestamps": True}, "timestamps"),
        ):
            reply = client.post_json(port, path, body)
            assert reply.status == 400, reply.body[:300]
            error = reply.json()["error"]
            assert error["param"] == param and "--timestamp-heads" in error["message"], error
        plain = client.post_json(
            port,
            "/dev/captioned_speech",
            {"input": "Hi.", "return_timestamps": False, "max_frames": 2},
        )
        assert plain.status == 200, plain.body[:300]
