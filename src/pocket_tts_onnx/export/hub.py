"""Reaching the model hub without a retry storm.

huggingface_hub retries an unreachable hub for ~25 s before it fails; an export that needs hub
files first checks within seconds whether the hub answers, and if not, runs offline (cached
files still load, missing ones fail at once with the usual message).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import urllib.parse

logger = logging.getLogger(__name__)

__all__ = ["hub_names", "hub_reachable", "offline_if_hub_unreachable"]


def hub_names(data: dict) -> bool:
    """Does a config name any file on the hub (hf://...)?"""

    def walk(node) -> bool:
        if isinstance(node, dict):
            return any(walk(v) for v in node.values())
        return isinstance(node, str) and node.startswith("hf://")

    return walk(data)


_PROBES: dict[str, tuple[float, bool]] = {}  # endpoint -> (time, reachable), for a minute


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub? Bounded even when DNS hangs."""
    from huggingface_hub import constants

    cached = _PROBES.get(constants.ENDPOINT)
    if cached is not None and time.monotonic() - cached[0] < 60:
        return cached[1]

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    _PROBES[constants.ENDPOINT] = (time.monotonic(), bool(result))
    return bool(result)


@contextlib.contextmanager
def offline_if_hub_unreachable(needed: bool = True):
    """huggingface_hub retries an unreachable hub for ~25 s before failing. When hub files are
    `needed` and the hub does not answer within seconds, switch it to offline mode inside the
    block: cached files still load, missing ones fail at once with the usual message."""
    if os.environ.get("HF_HUB_OFFLINE") or not needed:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    if not hub_reachable():
        logger.info("model hub unreachable: using only locally cached files")
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
