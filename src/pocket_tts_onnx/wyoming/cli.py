"""`pocket-tts-onnx wyoming`: options, then the server. `add_arguments` imports no Wyoming
library, so `pocket-tts-onnx --help` works without the extra."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
from functools import partial
from urllib.parse import urlparse

from pocket_tts_onnx.cli_options import (
    add_engine_arguments,
    add_generation_arguments,
    add_log_level_argument,
    configure_logging,
    generation_overrides,
    load_engine,
    note_random_weights,
)
from pocket_tts_onnx.errors import InvalidInputError, PocketTTSOnnxError

logger = logging.getLogger("pocket_tts_onnx.wyoming")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument(
        "--uri",
        default="tcp://127.0.0.1:10200",
        help="where to listen: tcp://HOST:PORT, unix://PATH or stdio:// (default: "
        "tcp://127.0.0.1:10200, this machine only; tcp://0.0.0.0:10200 lets Home Assistant "
        "on another machine connect - the protocol has no authentication)",
    )
    p.add_argument(
        "--max-streams", type=int, default=8, help="streams generated at once (default: 8)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="streams waiting for a free one before an error event (default: 32)",
    )
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=4096,
        help="characters of text per request or stream (default: 4096)",
    )
    p.add_argument(
        "--max-kv-mb",
        type=int,
        default=1024,
        help="flow-LM K/V memory for all streams together, MB (default: 1024)",
    )
    p.add_argument(
        "--samples-per-chunk",
        type=int,
        default=1024,
        help="audio samples per audio-chunk event, at most (default: 1024)",
    )
    p.add_argument(
        "--language",
        help="language code announced for the voices (default: from the bundle's config, else en)",
    )
    p.add_argument(
        "--zeroconf",
        nargs="?",
        const="pocket-tts-onnx",
        metavar="NAME",
        help="announce the server to Home Assistant over mDNS under NAME (default NAME: "
        "pocket-tts-onnx; needs `pip install zeroconf`; tcp URIs only)",
    )
    add_generation_arguments(p)  # every stream's parameters (a Wyoming request has none)
    add_log_level_argument(p)


def _check(args):
    """The options' errors before anything loads; returns the scheduler's limits (the HTTP
    server's ServeConfig, so both servers check them alike)."""
    from pocket_tts_onnx.serve.limits import ServeConfig

    if args.samples_per_chunk < 1:
        raise InvalidInputError(f"--samples-per-chunk must be >= 1, got {args.samples_per_chunk}")
    limits = ServeConfig(
        max_streams=args.max_streams,
        max_queue=args.max_queue,
        max_text_chars=args.max_text_chars,
        max_kv_mb=args.max_kv_mb,
    )
    uri = urlparse(args.uri)
    if uri.scheme not in ("tcp", "unix", "stdio"):
        raise InvalidInputError(
            f"--uri must be tcp://HOST:PORT, unix://PATH or stdio://: {args.uri}"
        )
    if uri.scheme == "tcp" and (uri.hostname is None or uri.port is None):
        raise InvalidInputError(f"--uri {args.uri}: give a host and a port (tcp://0.0.0.0:10200)")
    if args.zeroconf is not None:
        if uri.scheme != "tcp":
            raise InvalidInputError("--zeroconf announces a TCP server: use a tcp:// --uri")
        if importlib.util.find_spec("zeroconf") is None:
            raise InvalidInputError(
                "--zeroconf needs the zeroconf package: `pip install zeroconf` (or leave out "
                "--zeroconf and add the server in Home Assistant by host and port)"
            )
    return limits


def run(args) -> None:
    limits = _check(args)
    try:
        import wyoming  # noqa: F401
    except ImportError as e:
        raise PocketTTSOnnxError(
            "`wyoming` needs the [wyoming] extra (the wyoming package is not installed): "
            "`pip install -e '.[wyoming]'`"
        ) from e
    from wyoming.server import AsyncServer

    from pocket_tts_onnx.serve.scheduler import make_scheduler
    from pocket_tts_onnx.wyoming.handler import WyomingService
    from pocket_tts_onnx.wyoming.info import build_info, bundle_language

    configure_logging(args)
    tts = load_engine(args)
    language = args.language or bundle_language(tts.manifest) or "en"
    config = tts.generation_config(**generation_overrides(args))
    scheduler = make_scheduler(tts, limits)  # the HTTP server's: all connections share it
    service = WyomingService(
        tts=tts,
        scheduler=scheduler,
        info=build_info(tts, language),
        language=language,
        samples_per_chunk=args.samples_per_chunk,
        max_text_chars=args.max_text_chars,
        config=config,
    )
    print(
        f"wyoming: {args.bundle} ({args.precision}, language {language}, "
        f"voices {', '.join(tts.voices) or 'default'}) on {args.uri}",
        flush=True,
    )
    note_random_weights(tts.manifest)
    try:
        asyncio.run(_serve(AsyncServer.from_uri(args.uri), service, args))
    finally:
        scheduler.close()


async def _serve(server, service, args) -> None:
    from pocket_tts_onnx.wyoming.handler import SpeechHandler

    if args.zeroconf is not None:
        from wyoming.zeroconf import HomeAssistantZeroconf

        uri = urlparse(args.uri)
        host = None if uri.hostname in ("0.0.0.0", "::") else uri.hostname
        announcer = HomeAssistantZeroconf(port=uri.port, name=args.zeroconf, host=host)
        await announcer.register_server()
        logger.info("announced over zeroconf as %s", args.zeroconf)
    await server.run(partial(SpeechHandler, service))
