"""Server cases that need the app in this process (a fault-injecting scheduler, a fake web
build) or a clean interpreter (no torch), each still over real HTTP to real uvicorn."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.serve import client

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


@contextlib.contextmanager
def running(app):
    """uvicorn serving `app` on a free port in a thread."""
    port = client.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client.wait_healthy(port, timeout=30)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
