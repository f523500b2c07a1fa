"""`pocket-tts-onnx serve`: options, then uvicorn. `add_arguments` imports no web library."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from pocket_tts_onnx.cli_options import (
    add_engine_arguments,
    add_log_level_argument,
    configure_logging,
    load_engine,
    note_random_weights,
)
from pocket_tts_onnx.errors import PocketTTSOnnxError
from pocket_tts_onnx.serve.limits import ServeConfig

_DEFAULTS = ServeConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 opens the "
        "server to the network: put it behind a proxy with TLS/auth if it is public)",
    )
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 0-65535 (default: 8000)")
    p.add_argument(
        "--voices-dir",
        type=Path,
        help="folder of precomputed <name>.npz voices (default: only the bundle's voices)",
    )
    p.add_argument(
        "--web-dist",
        type=Path,
        help="built web demo to serve at / (default: the clone's web/dist, if built)",
    )
    p.add_argument("--no-web", action="store_true", help="serve no web page or bundle files")
    lim = p.add_argument_group("limits")
    for name, help_ in (
        ("max_streams", "streams generated at once"),
        ("max_queue", "requests waiting for a stream before 503 + Retry-After"),
        ("max_text_chars", "characters of text per request (413 above)"),
        ("max_upload_bytes", "voice upload size (413 above)"),
        ("voice_cache_size", "computed voices kept in the LRU cache (~18 MB each, english)"),
        (
            "max_kv_mb",
            "flow-LM K/V memory for all streams together, MB (a request waits "
            "for room; 400 if it alone needs more)",
        ),
        ("body_timeout_s", "seconds a request body may take to arrive (408 after)"),
        ("ws_idle_timeout_s", "seconds a WebSocket stream may wait for its next text"),
    ):
        default = getattr(_DEFAULTS, name)
        lim.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=default,
            help=f"{help_} (default: {default})",
        )
    add_log_level_argument(p)


def _port(value: str) -> int:
    """argparse type: a TCP port, refused with a usage line (not a traceback at bind)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def _listen(host: str, port: int) -> socket.socket:
    """The bound listening socket, so that a busy port or a bad host is one clear error
    before anything claims the server is up."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PocketTTSOnnxError(f"--host {host}: cannot resolve it ({e.strerror})") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise PocketTTSOnnxError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port (or "
            "stop the server using it)"
        ) from e
    return sock


def run(args) -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
        import websockets  # noqa: F401  (uvicorn's WebSocket support)
    except ImportError as e:
        raise PocketTTSOnnxError(
            f"`serve` needs the [serve] extra ({e.name} not installed): "
            "`pip install -e '.[serve]'` (fastapi, uvicorn, python-multipart, websockets)"
        ) from e

    from pocket_tts_onnx.serve.app import REPO_WEB_DIST

    web = None if args.no_web else (args.web_dist or REPO_WEB_DIST)
    config = ServeConfig(
        max_streams=args.max_streams,
        max_queue=args.max_queue,
        max_text_chars=args.max_text_chars,
        max_upload_bytes=args.max_upload_bytes,
        voice_cache_size=args.voice_cache_size,
        max_kv_mb=args.max_kv_mb,
        body_timeout_s=args.body_timeout_s,
        ws_idle_timeout_s=args.ws_idle_timeout_s,
        voices_dir=args.voices_dir,
        web_dist=web,
    )
    configure_logging(args)
    sock = _listen(args.host, args.port)  # a busy port fails before the model loads
    try:
        _serve(args, config, sock, uvicorn)
    finally:
        sock.close()


def _serve(args, config: ServeConfig, sock: socket.socket, uvicorn) -> None:
    from pocket_tts_onnx.serve.app import create_app

    tts = load_engine(args)
    app = create_app(tts, args.bundle, config)
    state = app.state.serve
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {args.bundle} ({args.precision}, formats {', '.join(state.formats)}) on "
        f"http://{host}:{port}/",
        flush=True,
    )
    note_random_weights(tts.manifest)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            timeout_graceful_shutdown=5,
            ws_max_size=config.max_ws_message_bytes,
        )
    )
    server.run(sockets=[sock])
