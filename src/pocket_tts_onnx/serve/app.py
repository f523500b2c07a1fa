"""The FastAPI application: wiring, `/health`, `/v1/voices` and the web demo at `/`.

FastAPI + uvicorn because upstream pocket-tts uses them and they stream well: an async
generator becomes HTTP/1.1 chunked transfer with one chunk per decoded piece, and ASGI
delivers the client's disconnect as an event, so generation stops the moment a listener
leaves. Blocking model work runs in worker threads; the event loop only moves bytes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from pocket_tts_onnx.runtime.encoding import supported_formats
from pocket_tts_onnx.serve.captions import router as captions_router
from pocket_tts_onnx.serve.limits import ServeConfig
from pocket_tts_onnx.serve.plumbing import (
    ApiError,
    RequestContextMiddleware,
    install_error_handlers,
)
from pocket_tts_onnx.serve.scheduler import make_scheduler
from pocket_tts_onnx.serve.speech import router as speech_router
from pocket_tts_onnx.serve.voices import VoiceStore
from pocket_tts_onnx.serve.websocket import router as websocket_router

logger = logging.getLogger("pocket_tts_onnx.serve")

REPO_WEB_DIST = Path(__file__).resolve().parents[3] / "web" / "dist"


class ServeState:
    """Everything the endpoints share. Holds no per-request state between requests."""

    def __init__(self, tts, bundle: Path, config: ServeConfig, scheduler):
        self.tts, self.bundle, self.config = tts, Path(bundle), config
        self.scheduler = scheduler
        self.sample_rate = tts.sample_rate
        self.formats = supported_formats(self.sample_rate)
        self.voices = VoiceStore(tts, bundle, config.voices_dir, config.voice_cache_size)
        self.voices.check_bundle_voices()  # a damaged voice: refuse to start
        # Threads that wait on the model: every running or queued stream may hold one, plus
        # a few for voice encoding; the default pool stays free for everything else.
        self.limiter = anyio.CapacityLimiter(config.max_streams + config.max_queue + 4)
        self.active = 0  # HTTP responses currently streaming
        self.pending = 0  # requests submitted, waiting for their first audio
        self.started = time.time()

    def resolve_voice(self, name: str | None):
        """None: the engine's choice (the bundle's default voice, if it has one)."""
        return None if name is None else self.voices.get(name)

    def upload_voice(self, data: bytes):
        return self.voices.from_upload(data)


def create_app(
    tts,
    bundle: Path,
    config: ServeConfig | None = None,
    scheduler=None,
) -> FastAPI:
    """An app serving one loaded engine. `scheduler` replaces the engine's batch scheduler
    (tests)."""
    config = config or ServeConfig()
    if scheduler is None:
        scheduler = make_scheduler(tts, config)
    state = ServeState(tts, bundle, config, scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(title="pocket-tts-onnx", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.serve = state
    install_error_handlers(app, config.retry_after_s)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=config.max_body_bytes,
        max_json_bytes=config.max_json_bytes,
        body_timeout_s=config.body_timeout_s,
    )
    app.include_router(speech_router)
    app.include_router(captions_router)
    app.include_router(websocket_router)

    @app.get("/health")
    async def health():
        manifest = tts.manifest
        alive = state.scheduler.alive
        if not alive:  # say so (load balancers take the replica out), then start a new one
            current = getattr(state.scheduler, "current", None)
            if current is not None:
                current()
        body = {
            "status": "ok" if alive else "scheduler stopped (restarting)",
            # HTTP side: responses streaming, requests waiting for their first audio.
            "streams": {"active": state.active, "pending": state.pending},
            # Generation side, as the scheduler reports it (active rows, waiting requests).
            "scheduler": state.scheduler.stats(),
            "voice_cache": {
                "size": len(state.voices.cache),
                "hits": state.voices.cache.hits,
                "misses": state.voices.cache.misses,
            },
            "limits": config.public(),
            "model": {
                "sample_rate": state.sample_rate,
                "random_weights": manifest.random_weights,
                "source": getattr(manifest, "source", None),
            },
            "uptime_s": round(time.time() - state.started, 1),
        }
        return body if alive else JSONResponse(body, status_code=503)

    @app.get("/v1/voices")
    async def voices():
        return {
            "voices": state.voices.names(),
            "default": state.voices.default_name,
            "cloning": bool(tts.manifest.voice_cloning),
            "formats": list(state.formats),
        }

    _mount_web(app, bundle, config.web_dist)
    return app


def _mount_web(app: FastAPI, bundle: Path, dist: Path | None) -> None:
    """The browser demo with its bundle at /bundle/ (same layout as web/serve.py)."""
    if dist is not None and (Path(dist) / "index.html").is_file():
        _method_not_allowed(app)  # before the page's catch-all mount at /
        app.mount("/bundle", StaticFiles(directory=bundle), name="bundle")
        app.mount("/", StaticFiles(directory=dist, html=True), name="web")
        return

    @app.get("/", response_class=HTMLResponse)
    async def no_page():
        return (
            "<!doctype html><title>pocket-tts-onnx</title><h1>pocket-tts-onnx serve</h1>"
            "<p>The API is up (POST /v1/audio/speech, POST /tts, POST /dev/captioned_speech, "
            "GET /v1/voices, GET /health)."
            "</p><p>The web demo is not built: run <code>npm ci --prefix web &amp;&amp; npm "
            "--prefix web run build</code> and restart (or pass <code>--web-dist</code>).</p>"
        )


def _method_not_allowed(app: FastAPI) -> None:
    """405 for another method on an API route. Without this a GET /tts falls through to the
    page mounted at / and gets 404, which hides that the route exists."""
    for route in [
        *speech_router.routes,
        *captions_router.routes,
        *app.routes,
    ]:  # included routers are not expanded
        methods = getattr(route, "methods", None)
        if not methods or not isinstance(route, APIRoute):
            continue
        allow = ", ".join(sorted(methods))
        others = sorted({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"} - set(methods))
        app.add_api_route(route.path, _refuser(allow), methods=others, include_in_schema=False)


def _refuser(allow: str):
    async def refuse(request: Request):
        raise ApiError(
            405,
            f"{request.method} is not allowed on {request.url.path}; use {allow}",
            code="method_not_allowed",
            headers={"Allow": allow},
        )

    return refuse


__all__ = ["ApiError", "REPO_WEB_DIST", "ServeState", "create_app"]
