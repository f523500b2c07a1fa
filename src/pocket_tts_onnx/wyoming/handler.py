"""One Wyoming connection: describe, one-shot and streaming synthesis.

Streaming (`synthesize-start`, `synthesize-chunk`..., `synthesize-stop`) feeds the text to
one incremental engine stream; a sentence starts generating as soon as it is complete, and
its audio leaves as `audio-start`, `audio-chunk`s, `audio-stop` while the client is still
sending text. `synthesize-stopped` follows the last sentence. The `synthesize` event that
clients also send inside a stream (for older servers) is ignored, as the protocol says.

A bad event, voice or text gets an `error` event; the connection stays usable. A stream that
failed swallows its remaining chunks and still answers `synthesize-stop` with
`synthesize-stopped`, so a client waiting for it does not hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from pocket_tts_onnx.errors import PocketTTSOnnxError, QueueFullError, VoiceError
from pocket_tts_onnx.runtime.encoding import pcm16
from pocket_tts_onnx.wyoming.events import BadEvent, read_event
from pocket_tts_onnx.wyoming.info import DEFAULT_VOICE

logger = logging.getLogger("pocket_tts_onnx.wyoming")

_MAX_PAYLOAD_BYTES = 1 << 16  # a TTS server receives no audio


@dataclass(frozen=True)
class WyomingService:
    """What every connection shares: the engine, its scheduler and the server's options."""

    tts: object
    scheduler: object
    info: Info
    language: str
    samples_per_chunk: int = 1024
    max_text_chars: int = 4096
    config: object = None  # GenerationConfig for every stream (None: the bundle's defaults)

    @property
    def max_data_bytes(self) -> int:
        """Largest event data: the text limit in escaped JSON, plus room for the rest."""
        return 6 * self.max_text_chars + 4096


class RequestError(Exception):
    """A request this server refuses, with the error event's code."""

    def __init__(self, text: str, code: str):
        super().__init__(text)
        self.code = code


class SpeechHandler(AsyncEventHandler):
    def __init__(self, service: WyomingService, reader, writer):
        super().__init__(reader, writer)
        self.service = service
        self._info = service.info.event()
        self._streaming = False  # between synthesize-start and synthesize-stop
        self._voice = None  # the stream's voice
        self._feed = None  # the stream's engine feed, opened at its first text
        self._pump: asyncio.Task | None = None
        self._chars = 0
        self._failed = False

    async def run(self) -> None:
        """The package's loop, with a bounded reader that survives malformed events."""
        service = self.service
        try:
            while True:
                try:
                    event = await read_event(
                        self.reader, service.max_data_bytes, _MAX_PAYLOAD_BYTES
                    )
                except BadEvent as e:
                    await self._error(str(e), "bad_event")
                    continue
                if event is None or not await self.handle_event(event):
                    break
        except ConnectionError:
            pass
        finally:
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        self._abort_stream()

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._dispatch(event)
        except RequestError as e:
            await self._error(str(e), e.code)
        return True

    async def _dispatch(self, event: Event) -> None:
        kind = event.type
        if Describe.is_type(kind):
            await self.write_event(self._info)
        elif Ping.is_type(kind):
            await self.write_event(Pong(text=_text_or_none(event.data)).event())
        elif Synthesize.is_type(kind):
            if not self._streaming:  # inside a stream it only repeats the text
                await self._one_shot(event.data)
        elif SynthesizeStart.is_type(kind):
            await self._start(event.data)
        elif SynthesizeChunk.is_type(kind):
            await self._chunk(event.data)
        elif SynthesizeStop.is_type(kind):
            await self._stop()
        # Other events are dropped, as Wyoming servers do with events they do not handle.

    # --------------------------------------------------------------------- one-shot
    async def _one_shot(self, data: dict) -> None:
        text = _text(data, "synthesize")
        if not text.strip():
            raise RequestError("synthesize: text is empty", "empty_text")
        self._check_length(len(text))
        voice = self._resolve_voice(data)
        feed = self._open(voice)
        try:
            feed.write(text)
            feed.end()
        except PocketTTSOnnxError as e:
            feed.cancel()
            raise _request_error(e) from None
        await self._send_audio(feed, per_sentence=False)

    # -------------------------------------------------------------------- streaming
    async def _start(self, data: dict) -> None:
        if self._streaming:
            self._abort_stream()
            await self._error(
                "synthesize-start during a stream: the previous stream was abandoned",
                "protocol",
            )
        self._streaming, self._failed, self._chars = True, False, 0
        self._feed, self._pump = None, None
        try:
            self._voice = self._resolve_voice(data)
        except RequestError:
            self._failed = True
            raise

    async def _chunk(self, data: dict) -> None:
        if not self._streaming:
            raise RequestError("synthesize-chunk without synthesize-start", "protocol")
        text = _text(data, "synthesize-chunk")
        if self._failed or not text:
            return
        try:
            self._check_length(self._chars + len(text))
            self._chars += len(text)
            if self._feed is None:
                if not text.strip():
                    return  # whitespace before the first word: nothing to say yet
                self._feed = self._open(self._voice)
                self._pump = asyncio.create_task(self._send_audio(self._feed, True))
            self._feed.write(text)
        except (RequestError, PocketTTSOnnxError) as e:
            self._fail_stream()
            raise e if isinstance(e, RequestError) else _request_error(e) from None

    async def _stop(self) -> None:
        if not self._streaming:
            raise RequestError("synthesize-stop without synthesize-start", "protocol")
        feed, pump = self._feed, self._pump
        self._streaming, self._feed, self._pump = False, None, None
        if feed is not None and not self._failed:
            try:
                feed.end()
            except PocketTTSOnnxError as e:
                feed.cancel()
                await self._error(str(e), _request_error(e).code)
        if pump is not None:
            await pump
        await self.write_event(SynthesizeStopped().event())

    def _fail_stream(self) -> None:
        self._failed = True
        if self._feed is not None:
            self._feed.cancel()

    def _abort_stream(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
        if self._pump is not None:
            self._pump.cancel()
        self._streaming, self._feed, self._pump = False, None, None

    # ------------------------------------------------------------------------ audio
    async def _send_audio(self, feed, per_sentence: bool) -> None:
        """Audio events for `feed` as its chunks are decoded: per sentence (streaming) or
        one audio-start/audio-stop around everything (one-shot)."""
        rate = self.service.tts.sample_rate
        fmt = {"rate": rate, "width": 2, "channels": 1}
        step = 2 * self.service.samples_per_chunk
        started = False
        try:
            async for chunk in feed:
                if not started:
                    await self.write_event(AudioStart(**fmt).event())
                    started = True
                if chunk.end_of_text:
                    if per_sentence:
                        await self.write_event(AudioStop().event())
                        started = False
                    continue
                data = pcm16(chunk.samples)
                for i in range(0, len(data), step):
                    await self.write_event(AudioChunk(audio=data[i : i + step], **fmt).event())
        except PocketTTSOnnxError as e:
            self._failed = True
            logger.warning("synthesis failed: %s", e)
            await self._error(str(e), _request_error(e).code)
        except ConnectionError:  # the client left; the read loop ends the connection
            self._failed = True
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: logged in full, the client gets a short error
            self._failed = True
            logger.exception("synthesis failed")
            await self._error("internal error while synthesizing (see the server log)", "failed")
        finally:
            feed.cancel()
        if not per_sentence:
            if not started:
                await self.write_event(AudioStart(**fmt).event())
            await self.write_event(AudioStop().event())

    # ---------------------------------------------------------------------- helpers
    def _open(self, voice):
        service = self.service
        try:
            return service.scheduler.open_stream(voice, config=service.config)
        except PocketTTSOnnxError as e:
            raise _request_error(e) from None

    def _resolve_voice(self, data: dict):
        """A bundle voice name, or None for the bundle's default voice."""
        voice = data.get("voice")
        if voice is None:
            return None
        if not isinstance(voice, dict):
            raise RequestError("voice must be an object with a 'name'", "bad_event")
        name, language = voice.get("name"), voice.get("language")
        names = self.service.tts.voices
        if name is not None:
            if name == DEFAULT_VOICE and not names:
                return None
            if not isinstance(name, str) or name not in names:
                available = ", ".join(names) or DEFAULT_VOICE
                raise RequestError(
                    f"unknown voice {name!r}; this server has: {available}", "unknown_voice"
                )
            return name
        if language is not None and not _same_language(language, self.service.language):
            raise RequestError(
                f"language {language!r} is not spoken here (this server speaks "
                f"{self.service.language})",
                "unknown_voice",
            )
        return None

    def _check_length(self, chars: int) -> None:
        limit = self.service.max_text_chars
        if chars > limit:
            raise RequestError(
                f"text has {chars} characters, the limit is {limit} (server option "
                "--max-text-chars); send it in several requests",
                "text_too_long",
            )

    async def _error(self, text: str, code: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.write_event(Error(text=text, code=code).event())


def _request_error(e: PocketTTSOnnxError) -> RequestError:
    if isinstance(e, QueueFullError):
        return RequestError(f"server busy: {e}", "server_busy")
    if isinstance(e, VoiceError):
        return RequestError(str(e), "unknown_voice")
    return RequestError(str(e), "invalid_input" if isinstance(e, ValueError) else "failed")


def _text(data: dict, event: str) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{event}: 'text' must be a string", "bad_event")
    return text


def _text_or_none(data: dict):
    text = data.get("text")
    return text if isinstance(text, str) else None


def _same_language(asked, ours: str) -> bool:
    """en, en_US and en-US all match en."""
    return isinstance(asked, str) and asked.replace("-", "_").split("_")[0].lower() == ours
