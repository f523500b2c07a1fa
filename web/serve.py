"""Serve the browser demo and a bundle on localhost: `python web/serve.py --bundle DIR`.

The built page (web/dist, from `npm --prefix web run build`) is served at / and the bundle
directory at /bundle/. Standard library only; binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.server
import sys
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

DIST = Path(__file__).resolve().parent / "dist"

MIME_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".model": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".map": "application/json",
}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C does not wait for open connections
    verbose = False

    def handle_error(self, request, client_address) -> None:
        """A client that goes away mid-response (closed tab, reload) is normal: no traceback.
        Anything else is one line on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        print(f"error serving {client_address[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def __init__(self, *args, bundle: Path, **kwargs):
        self.bundle = bundle
        super().__init__(*args, directory=str(DIST), **kwargs)

    def translate_path(self, path: str) -> str:
        route = unquote(urlsplit(path).path)
        if route == "/bundle" or route.startswith("/bundle/"):
            # Resolve inside the bundle only: "..", absolute or odd parts are dropped.
            parts = [p for p in route[len("/bundle") :].split("/") if p not in ("", ".", "..")]
            return str(self.bundle.joinpath(*parts))
        return super().translate_path(path)

    def end_headers(self) -> None:
        # Cross-origin isolation lets ONNX Runtime Web use its multi-threaded wasm build.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory to serve")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    if not (args.bundle / "manifest.json").is_file():
        print(f"error: {args.bundle} has no manifest.json: not a bundle", file=sys.stderr)
        return 2
    if not (DIST / "index.html").is_file():
        print(
            f"error: {DIST} is not built: run `npm ci --prefix web && npm --prefix web run build`",
            file=sys.stderr,
        )
        return 2
    handler = partial(Handler, bundle=args.bundle.resolve())
    try:
        server = Server(("127.0.0.1", args.port), handler)
    except OSError as e:
        print(
            f"error: cannot listen on 127.0.0.1:{args.port} ({e.strerror or e}); "
            "pass another --port (0 picks a free one)",
            file=sys.stderr,
        )
        return 2
    server.verbose = args.verbose
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/ (bundle {args.bundle} at /bundle/)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
