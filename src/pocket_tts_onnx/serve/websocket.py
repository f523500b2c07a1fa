"""Text in, audio out over a WebSocket: `/v1/text-to-speech/{voice}/stream-input`.

The messages follow ElevenLabs' input-streaming WebSocket, the convention LLM frameworks
and voice-agent toolkits already speak, so their clients need only the URL changed:
- client: JSON text messages `{"text": "..."}`; the first may also carry
  `"generation_config"` (our GenerationConfig fields: seed, temperature, ...); an empty
  text `{"text": ""}` ends the input. `flush` is accepted and changes nothing: a sentence is
  spoken as soon as it is complete.
- server: `{"audio": "<base64 16-bit little-endian mono PCM>", "isFinal": false}` as each
  piece is decoded, then `{"isFinal": true}` and close 1000.
- word timings: with `"timestamps": true` in `generation_config`, a message also carries
  `"alignment"` for the words that ended up to its audio. ElevenLabs' alignment is per
  character (`chars`, `charStartTimesMs`, `charDurationsMs`); ours is per word, with the
  same naming: `{"words", "wordStartTimesMs", "wordDurationsMs", "charStarts", "charEnds"}`,
  times from the stream's start, `charStarts`/`charEnds` offsets into all the text sent.
  The model's attention locates words, not characters, so per-character times would be
  invented. A last word may come in a message whose `audio` is empty.
Base64 in JSON (not binary frames) because that is the convention's shape; at 24 kHz the
33 % overhead is 16 kB/s. `output_format` may only name the model's own `pcm_<rate>`.

Limits: `--max-text-chars` per stream, `--ws-idle-timeout-s` between text messages before
the end. Refusals send `{"error": {"message", "code", "param"}}` then close: 1008 for a
policy violation (bad message, limit, unknown voice, bad parameter), 1003 for binary
messages, 1013 when the server is full, 1011 when generation fails. A client that
disconnects mid-stream cancels its stream (its batch row is freed at the next step).
"""

from __future__ import annotations

import base64
import json
import logging

import anyio
from anyio.to_thread import run_sync
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from pocket_tts_onnx.errors import InvalidInputError, PocketTTSOnnxError, QueueFullError
from pocket_tts_onnx.runtime.encoding import pcm16
from pocket_tts_onnx.serve.streaming import word_timings

logger = logging.getLogger("pocket_tts_onnx.serve")
router = APIRouter()

DEFAULT_VOICE = "default"  # the path's voice for the bundle's default voice
_KEYS = {"text", "generation_config", "flush", "try_trigger_generation"}


class Refusal(Exception):
    def __init__(self, close_code: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.close_code, self.message, self.code, self.param = close_code, message, code, param


class _Session:
    """One stream: a receiving task feeds text, a sending task sends audio; whichever ends
    the session (end of audio, refusal, disconnect) records why and stops the other."""

    def __init__(self, ws: WebSocket, state, voice):
        self.ws, self.state, self.voice = ws, state, voice
        self.feed = None
        self.config = None
        self.opened = anyio.Event()  # the feed exists, or the input ended without text
        self.chars = 0
        self.outcome: Refusal | None = None
        self.scope: anyio.CancelScope | None = None

    def finish(self, outcome: Refusal | None) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.scope.cancel()

    async def receive(self) -> None:
        ended, first = False, True
        timeout = self.state.config.ws_idle_timeout_s
        try:
            while True:
                with anyio.move_on_after(None if ended else timeout) as idle:
                    message = await self.ws.receive()
                if idle.cancelled_caught:
                    raise Refusal(
                        1008, f"no text for {timeout} s (server option --ws-idle-timeout-s)",
                        "idle_timeout",
                    )  # fmt: skip
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                if ended:
                    raise Refusal(1008, "no message may follow the end message", "protocol")
                text = self._parse(message, first)
                first = False
                if text == "":
                    ended = True
                    self._end()
                else:
                    self._write(text)
        except Refusal as refusal:
            self.finish(refusal)
        except WebSocketDisconnect:
            self.finish(None)

    def _parse(self, message: dict, first: bool) -> str:
        raw = message.get("text")
        if raw is None:
            raise Refusal(1003, "send JSON text messages, not binary ones", "binary_message")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise Refusal(1008, f"message is not JSON ({e})", "invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise Refusal(
                1008, 'a message is a JSON object with a string "text"', "protocol", "text"
            )
        unknown = sorted(set(body) - _KEYS)
        if unknown:
            raise Refusal(1008, f"unknown field(s) {unknown}", "unknown_field", unknown[0])
        settings = body.get("generation_config")
        if settings is not None:
            if not first:
                raise Refusal(
                    1008, "generation_config may only come in the first message", "protocol",
                    "generation_config",
                )  # fmt: skip
            self.config = self._config(settings)
        return body["text"]

    def _config(self, settings):
        if not isinstance(settings, dict):
            raise Refusal(1008, "generation_config must be an object", "invalid_value")
        try:
            return self.state.tts.generation_config(**settings)
        except InvalidInputError as e:
            raise Refusal(1008, str(e), "invalid_value", e.param or "generation_config") from None

    def _write(self, text: str) -> None:
        limit = self.state.config.max_text_chars
        self.chars += len(text)
        if self.chars > limit:
            raise Refusal(
                1008, f"the stream's text exceeds {limit} characters (server option "
                "--max-text-chars); open another stream", "text_too_long", "text",
            )  # fmt: skip
        if self.feed is None:
            if not text.strip():
                return  # ElevenLabs' first message is a single space
            try:
                self.feed = self.state.scheduler.open_stream(self.voice, config=self.config)
            except PocketTTSOnnxError as e:
                raise _refusal(e) from None
            self.opened.set()
        try:
            self.feed.write(text)
        except PocketTTSOnnxError as e:
            raise _refusal(e) from None

    def _end(self) -> None:
        if self.feed is not None:
            try:
                self.feed.end()
            except PocketTTSOnnxError as e:
                raise _refusal(e) from None
        self.opened.set()

    async def send(self) -> None:
        await self.opened.wait()
        try:
            if self.feed is not None:
                async for chunk in self.feed:
                    words = word_timings(chunk.words)
                    if chunk.samples.shape[0] or words:
                        audio = base64.b64encode(pcm16(chunk.samples)).decode()
                        message = {"audio": audio, "isFinal": False}
                        if words:
                            message["alignment"] = _alignment(words)
                        await self.ws.send_text(json.dumps(message))
            await self.ws.send_text(json.dumps({"isFinal": True}))
        except PocketTTSOnnxError as e:
            self.finish(_refusal(e, generating=True))
        except (WebSocketDisconnect, OSError):
            self.finish(None)
        except Exception:
            logger.exception("WebSocket stream failed")
            self.finish(Refusal(1011, "internal error (see the server log)", "server_error"))
        else:
            self.finish(Refusal(1000, "", "done"))


def _refusal(e: PocketTTSOnnxError, generating: bool = False) -> Refusal:
    if isinstance(e, QueueFullError):
        return Refusal(1013, f"server busy: {e}", "queue_full")
    if isinstance(e, InvalidInputError) and not generating:
        return Refusal(1008, str(e), "invalid_value", e.param)
    return Refusal(1011, str(e), "generation_failed")


def _alignment(words: list[dict]) -> dict:
    return {
        "words": [w["word"] for w in words],
        "wordStartTimesMs": [round(1000 * w["start_time"]) for w in words],
        "wordDurationsMs": [round(1000 * (w["end_time"] - w["start_time"])) for w in words],
        "charStarts": [w["char_start"] for w in words],
        "charEnds": [w["char_end"] for w in words],
    }


def _reason(text: str) -> str:
    """A close reason fits 123 UTF-8 bytes."""
    data = text.encode()[:123]
    return data.decode(errors="ignore")


@router.websocket("/v1/text-to-speech/{voice}/stream-input")
async def stream_input(ws: WebSocket, voice: str, output_format: str | None = None):
    state = ws.app.state.serve
    await ws.accept()
    session = None
    try:
        wanted = f"pcm_{state.sample_rate}"
        if output_format not in (None, wanted):
            raise Refusal(
                1008, f"output_format {output_format!r} is not available; use {wanted}",
                "unsupported_format", "output_format",
            )  # fmt: skip
        try:
            resolved = (
                None
                if voice == DEFAULT_VOICE
                else await run_sync(state.resolve_voice, voice, limiter=state.limiter)
            )
        except PocketTTSOnnxError as e:
            raise Refusal(1008, str(e), "invalid_voice", "voice") from None
        session = _Session(ws, state, resolved)
        async with anyio.create_task_group() as group:
            session.scope = group.cancel_scope
            group.start_soon(session.receive)
            group.start_soon(session.send)
        outcome = session.outcome
    except Refusal as refusal:
        outcome = refusal
    finally:
        if session is not None and session.feed is not None:
            session.feed.cancel()
    if outcome is None:  # the client left
        return
    try:
        if outcome.close_code != 1000:
            error = {"message": outcome.message, "code": outcome.code, "param": outcome.param}
            await ws.send_text(json.dumps({"error": error}))
        await ws.close(outcome.close_code, _reason(outcome.message))
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass  # the client left meanwhile
