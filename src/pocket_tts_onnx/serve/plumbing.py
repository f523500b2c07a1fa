"""HTTP plumbing: JSON error bodies, request ids, body-size limits, isolation headers.

Every error leaves as JSON `{"error": {"message", "type", "param", "code"}, "request_id"}`
(OpenAI's error shape), never as a traceback; unexpected ones are logged with the request id.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocket_tts_onnx.errors import (
    BundleError,
    GenerationError,
    InvalidInputError,
    QueueFullError,
    VoiceError,
)

logger = logging.getLogger("pocket_tts_onnx.serve")

REQUEST_ID_HEADER = "x-request-id"
# The only routes that take an upload (multipart with a file); every other body is text-sized.
UPLOAD_PATHS = ("/tts",)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiError(Exception):
    """An error with its HTTP status and the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def error_body(status: int, message: str, param=None, code=None, rid: str = "-") -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {
        "error": {"message": message, "type": kind, "param": param, "code": code},
        "request_id": rid,
    }


def error_response(
    request: Request, status: int, message: str, param=None, code=None, headers=None
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, param, code, request_id(request)), status, headers=headers
    )


def api_error_from(exc: Exception, retry_after: int) -> ApiError:
    """Engine/scheduler errors -> HTTP."""
    if isinstance(exc, QueueFullError):
        return ApiError(
            503, f"server busy: {exc}", code="queue_full", headers={"Retry-After": str(retry_after)}
        )
    if isinstance(exc, VoiceError):
        return ApiError(400, str(exc), param="voice", code="invalid_voice")
    if isinstance(exc, InvalidInputError):  # `param`: the GenerationConfig field, or "text"
        param = "input" if exc.param == "text" else exc.param
        return ApiError(400, str(exc), param=param, code="invalid_value")
    if isinstance(exc, GenerationError):
        return ApiError(500, f"generation failed: {exc}", code="generation_failed")
    raise exc


def install_error_handlers(app: FastAPI, retry_after: int) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(request, exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(InvalidInputError)
    async def _invalid(request: Request, exc: InvalidInputError):
        e = api_error_from(exc, retry_after)
        return error_response(request, e.status, e.message, e.param, e.code)

    @app.exception_handler(QueueFullError)
    async def _full(request: Request, exc: QueueFullError):
        e = api_error_from(exc, retry_after)
        return error_response(request, e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "form")]
        param = ".".join(loc) or "body"
        if first.get("type") == "json_invalid":
            message = f"request body is not valid JSON ({first.get('ctx', {}).get('error', '')})"
            param = "body"
        elif first.get("type") == "missing":
            message = f"{param}: field required"
        else:
            message = f"{param}: {first.get('msg', 'invalid value')}"
        return error_response(request, 400, message, param, first.get("type"))

    @app.exception_handler(BundleError)
    async def _bundle(request: Request, exc: BundleError):
        # A bundle file changed under the running server. The details (with the server's
        # paths) go to the log; the client learns what happened, not where.
        rid = request_id(request)
        logger.error("request %s: the bundle is damaged: %s", rid, exc)
        message = (
            "the server's model bundle is damaged (a file no longer matches its manifest); "
            f"the operator must restore or re-export it (request id {rid})"
        )
        return error_response(request, 500, message, code="bundle_damaged")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, RecursionError):
            message = "request body is not valid JSON for this API: it is nested too deeply"
            return error_response(request, 400, message, "body", "json_invalid")
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            message = (
                f"request body is not valid JSON: it is not UTF-8 text (byte "
                f"{cause.object[cause.start]:#04x} at offset {cause.start}); send UTF-8 JSON"
            )
            return error_response(request, 400, message, "body", "json_invalid")
        return error_response(request, exc.status_code, str(exc.detail), headers=exc.headers)


class RequestContextMiddleware:
    """Pure ASGI: a request id (the client's X-Request-ID if sane, else a new one) echoed on
    every response; cross-origin isolation headers (the web page's threaded wasm needs them);
    request bodies refused above their limit (413: `max_body_bytes` for multipart uploads,
    `max_json_bytes` for anything else) or without a length (411), and cut off with 408 when
    they have not arrived in full within `body_timeout_s`."""

    def __init__(
        self, app, max_body_bytes: int, max_json_bytes: int | None = None, body_timeout_s=60
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes if max_json_bytes is not None else max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = rid if _VALID_ID.match(rid) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        extra = [
            (REQUEST_ID_HEADER.encode(), rid.encode()),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-embedder-policy", b"require-corp"),
        ]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            refusal = self._check_length(headers, scope.get("path", ""))
            if refusal is not None:
                status, message = refusal
                body = json.dumps(error_body(status, message, "body", None, rid)).encode()
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_with_headers({"type": "http.response.body", "body": body})
                return None
        started = []

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                started.append(True)
            await send_with_headers(message)

        try:
            return await self.app(scope, self._timed(receive), send_tracked)
        except Exception as exc:
            # Unexpected: log it once with the request id; the client gets JSON, no traceback.
            logger.error("request %s failed", rid, exc_info=exc)
            if started:  # mid-stream: nothing left to say but to end the response
                return None
            body = json.dumps(
                error_body(500, f"internal server error (request id {rid})", None, None, rid)
            ).encode()
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": body})
            return None

    def _timed(self, receive):
        """`receive` with a deadline for the whole body; after the body, unchanged (the
        disconnect of a streaming listener may come any time)."""
        deadline = anyio.current_time() + self.body_timeout_s
        done = False

        async def timed():
            nonlocal done
            if done:
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                message = await receive()
                done = message["type"] != "http.request" or not message.get("more_body")
                return message
            # FastAPI passes an HTTPException raised while it reads the body through as is.
            raise HTTPException(
                408,
                f"the request body did not arrive within {self.body_timeout_s} s (server "
                "option --body-timeout-s)",
                headers={"connection": "close"},
            )

        return timed

    def _check_length(self, headers: dict, path: str) -> tuple[int, str] | None:
        raw = headers.get(b"content-length")
        if raw is None:
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                return 411, "send the request body with a Content-Length header"
            return None
        try:
            length = int(raw)
        except ValueError:
            return 400, "invalid Content-Length header"
        ctype = headers.get(b"content-type", b"").lower()
        if ctype.startswith(b"multipart/form-data") and path in UPLOAD_PATHS:
            limit, option = self.max_body_bytes, "--max-upload-bytes"
        else:  # JSON (or a url-encoded form): text only
            limit, option = self.max_json_bytes, "--max-text-chars"
        if length > limit:
            return 413, (
                f"request body of {length} bytes exceeds the limit of {limit} bytes for this "
                f"content type (server option {option})"
            )
        return None
