"""From a scheduler stream (blocking iterator of AudioChunk) to HTTP bytes.

FastAPI/Starlette's StreamingResponse sends each yielded piece as an HTTP/1.1 chunk as soon
as it exists, and ASGI reports a client's disconnect as a message: this response listens for
it during the whole stream and cancels the generation at once, so a listener who hangs up
frees its batch row (or thread) immediately instead of when the text is done.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable

import anyio
import numpy as np
from anyio.to_thread import run_sync
from starlette.responses import StreamingResponse

from pocket_tts_onnx.runtime.encoding import AudioFormat, encode_file, pcm16, wav_header

logger = logging.getLogger("pocket_tts_onnx.serve")


def next_chunk(stream):
    """next() that returns None at the end (StopIteration cannot cross a thread boundary)."""
    return next(stream, None)


class CancellableStreamingResponse(StreamingResponse):
    """StreamingResponse that always watches for the client's disconnect and then calls
    `on_close` (the stream's cancel) before anything else; `on_close` also runs at the end."""

    def __init__(self, content, on_close: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    self._on_close()
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self.stream_response(send)
                except OSError:  # the client went away while we were sending
                    self._on_close()
                group.cancel_scope.cancel()
        finally:
            self._on_close()


class StreamPump:
    """Pulls chunks from a blocking stream in worker threads (bounded by `limiter`) and
    turns them into the bytes of one response format."""

    def __init__(self, stream, first, sample_rate: int, limiter, on_done, rid: str):
        self.stream, self.first = stream, first
        self.sample_rate, self.limiter = sample_rate, limiter
        self.on_done, self.rid = on_done, rid
        self.samples_sent = 0

    async def audio_chunks(self) -> AsyncIterator:
        """The stream's AudioChunks (zero-sample ones too: they may carry word ends)."""
        chunk = self.first
        try:
            while chunk is not None:
                self.samples_sent += chunk.samples.shape[0]
                yield chunk
                chunk = await run_sync(next_chunk, self.stream, limiter=self.limiter)
        except Exception:  # headers are sent: the only honest signal left is a short body
            logger.exception("request %s: generation failed mid-stream", self.rid)
        finally:
            self.on_done()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        async for chunk in self.audio_chunks():
            if chunk.samples.shape[0]:
                yield chunk.samples

    async def encoded(self, fmt: AudioFormat) -> AsyncIterator[tuple[bytes, list[dict]]]:
        """(bytes of a streamed format, the words that ended up to them) per chunk; the WAV
        header goes with the first piece."""
        header = wav_header(self.sample_rate) if fmt.name == "wav" else b""
        async for chunk in self.audio_chunks():
            data = pcm16(chunk.samples) if chunk.samples.shape[0] else b""
            yield header + data, word_timings(chunk.words)
            header = b""

    async def raw(self, fmt: AudioFormat) -> AsyncIterator[bytes]:
        async for data, _ in self.encoded(fmt):
            if data:
                yield data

    async def whole(self, fmt: AudioFormat) -> AsyncIterator[bytes]:
        yield (await self.whole_file(fmt))[0]

    async def whole_file(self, fmt: AudioFormat) -> tuple[bytes, list[dict]]:
        """The whole audio in `fmt` and every word's timing."""
        pieces, words = [], []
        async for chunk in self.audio_chunks():
            pieces.append(chunk.samples)
            words += word_timings(chunk.words)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        data = await run_sync(encode_file, audio, self.sample_rate, fmt, limiter=self.limiter)
        return data, words

    async def sse(self, fmt: AudioFormat) -> AsyncIterator[bytes]:
        """OpenAI's stream_format="sse": speech.audio.delta events (base64 audio bytes),
        then speech.audio.done. With `timestamps`, a delta also lists the words that ended
        up to its audio (`timestamps`, as in /dev/captioned_speech)."""
        async for data, words in self.encoded(fmt):
            if not data and not words:
                continue
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            if words:
                event["timestamps"] = words
            yield f"data: {json.dumps(event)}\n\n".encode()
        done = {"type": "speech.audio.done", "audio_seconds": self.samples_sent / self.sample_rate}
        yield f"data: {json.dumps(done)}\n\n".encode()


def word_timings(events) -> list[dict]:
    """Finished words in Kokoro-FastAPI's captioned-speech shape (`word`, `start_time`,
    `end_time` in seconds), plus where each word is in the request's text."""
    return [
        {
            "word": w.text,
            "start_time": round(w.start, 4),
            "end_time": round(w.end, 4),
            "index": w.index,
            "char_start": w.char_start,
            "char_end": w.char_end,
        }
        for w in events
        if w.end is not None
    ]
