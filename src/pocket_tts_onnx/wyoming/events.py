"""Reading Wyoming events with bounds.

The `wyoming` package's reader trusts the sender: `data_length` and `payload_length` are
read whole, however large, and any malformed line ends the connection. This reader caps
both, and consumes a bad event completely (so the next read starts at the next event):
the server answers with an `error` event and the connection stays usable.

Framing (wyoming 1.x): one JSON header line; then `data_length` bytes of JSON merged into
the header's `data`; then `payload_length` bytes of payload.
"""

from __future__ import annotations

import asyncio
import json

from wyoming.event import Event

_NEWLINE = b"\n"
_DISCARD_PIECE = 1 << 16


class BadEvent(Exception):
    """An event that could not be read; it has been consumed."""


async def read_event(
    reader: asyncio.StreamReader, max_data_bytes: int, max_payload_bytes: int
) -> Event | None:
    """The next event, None at the end of the connection, or BadEvent."""
    line = await _read_line(reader)
    if line is None:
        return None
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadEvent(f"event header is not JSON ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadEvent("event header must be a JSON object with a string 'type'")
    data_length = _length(header, "data_length")
    payload_length = _length(header, "payload_length")
    data = header.get("data")
    if data is None:
        data = {}
    problem = None if isinstance(data, dict) else "event 'data' must be a JSON object"
    if data_length > max_data_bytes:
        problem = problem or (
            f"event data of {data_length} bytes exceeds the limit of {max_data_bytes} bytes"
        )
        if not await _discard(reader, data_length):
            return None
    elif data_length:
        try:
            extra = json.loads(await reader.readexactly(data_length))
        except asyncio.IncompleteReadError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            extra, problem = {}, problem or f"event data is not JSON ({e})"
        if not isinstance(extra, dict):
            problem = problem or "event data must be a JSON object"
        elif isinstance(data, dict):
            data.update(extra)
    payload = None
    if payload_length > max_payload_bytes:
        problem = problem or (
            f"event payload of {payload_length} bytes exceeds the limit of "
            f"{max_payload_bytes} bytes"
        )
        if not await _discard(reader, payload_length):
            return None
    elif payload_length:
        try:
            payload = await reader.readexactly(payload_length)
        except asyncio.IncompleteReadError:
            return None
    if problem:
        raise BadEvent(f"{header['type']}: {problem}")
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict, key: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        # The bytes that follow cannot be delimited: they will be read as the next
        # header lines and refused one by one.
        raise BadEvent(f"event {key} must be a non-negative integer, got {value!r}")
    return value


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """One header line; a line longer than the reader's limit is consumed and refused."""
    try:
        return await reader.readuntil(_NEWLINE)
    except asyncio.IncompleteReadError as e:
        return e.partial or None
    except asyncio.LimitOverrunError as e:
        consumed = e.consumed
    while True:  # drop the overlong line up to and including its newline
        try:
            await reader.readexactly(consumed)
            await reader.readuntil(_NEWLINE)
            break
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as e:
            consumed = e.consumed
    raise BadEvent("event header line is too long")


async def _discard(reader: asyncio.StreamReader, n: int) -> bool:
    """Skip `n` bytes in bounded pieces; False if the connection ended first."""
    while n > 0:
        piece = await reader.read(min(n, _DISCARD_PIECE))
        if not piece:
            return False
        n -= len(piece)
    return True
