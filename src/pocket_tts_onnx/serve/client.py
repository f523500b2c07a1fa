"""A minimal standard-library HTTP client for this server: the tests and the load test use
it, and it shows what a client needs (no dependency beyond Python)."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import time
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def connect(port: int, host: str = "127.0.0.1", timeout: float = 30.0):
    return http.client.HTTPConnection(host, port, timeout=timeout)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
    host: str = "127.0.0.1",
) -> Reply:
    conn = connect(port, host=host, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def post_json(port: int, path: str, payload, headers: dict | None = None, **kw) -> Reply:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(
        port, "POST", path, body, {"Content-Type": "application/json", **(headers or {})}, **kw
    )


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]):
    """(body, content type) of a multipart/form-data request."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post_form(port: int, path: str, fields: dict, files: dict | None = None, **kw) -> Reply:
    body, ctype = multipart(fields, files or {})
    return request(port, "POST", path, body, {"Content-Type": ctype}, **kw)


def open_stream(
    port: int, payload: dict, path: str = "/v1/audio/speech", timeout=30.0, host="127.0.0.1"
):
    """Start a request and return (connection, response) with the body unread."""
    conn = connect(port, host=host, timeout=timeout)
    conn.request(
        "POST",
        path,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    return conn, conn.getresponse()


def health(port: int, host: str = "127.0.0.1") -> dict:
    return request(port, "GET", "/health", timeout=10, host=host).json()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for test and load-test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc=None, timeout: float = 60.0) -> dict:
    """Poll /health until it answers; fails early if the server process `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            return health(port)
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"server on port {port} did not answer /health within {timeout} s")
