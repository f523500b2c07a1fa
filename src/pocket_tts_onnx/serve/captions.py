"""Speech with word timings over HTTP: `POST /dev/captioned_speech`, Kokoro-FastAPI's
captioned-speech convention, so its clients (caption and read-along tools) work unchanged.

Body: `input`, `voice`, `response_format` (default wav), `stream` (default true),
`return_timestamps` (default true), plus every generation parameter. Streamed, the response
is NDJSON (one JSON object a line, as each piece of audio is decoded):
`{"audio": "<base64 bytes of response_format>", "audio_format": "<media type>",
"timestamps": [{"word", "start_time", "end_time", "index", "char_start", "char_end"}]}`,
the words that ended up to that audio (times in seconds from the start; `char_start` and
`char_end` locate the word in `input`). A last line with empty audio may carry the final
word. Not streamed: one such object with the whole file and every word.
This endpoint rather than OpenAI's `/v1/audio/speech` because OpenAI's has no timings; the
SSE form of that endpoint also lists them when `timestamps` is true.
"""

from __future__ import annotations

import base64
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, create_model

from pocket_tts_onnx.serve.params import chosen, json_fields
from pocket_tts_onnx.serve.plumbing import ApiError
from pocket_tts_onnx.serve.speech import _start, _text_and_format, _voice
from pocket_tts_onnx.serve.streaming import CancellableStreamingResponse

router = APIRouter()


class _CaptionedBody(BaseModel):
    """Kokoro-FastAPI's fields; `model` is accepted and ignored (one bundle per server)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    input: str
    model: str | None = None
    voice: str | None = None
    response_format: str = "wav"
    stream: bool = True
    return_timestamps: bool = True
    speed: float = 1.0


CaptionedRequest = create_model("CaptionedRequest", __base__=_CaptionedBody, **json_fields())


def _captioned(data: bytes, media: str, words: list[dict]) -> dict:
    """One response object: audio as base64 of `media`, with its words."""
    return {"audio": base64.b64encode(data).decode(), "audio_format": media, "timestamps": words}


def _line(data: bytes, media: str, words: list[dict]) -> bytes:
    return (json.dumps(_captioned(data, media, words)) + "\n").encode()


@router.post("/dev/captioned_speech")
async def captioned_speech(body: CaptionedRequest, request: Request):
    state = request.app.state.serve
    text, fmt = _text_and_format(state, body, "audio")
    if body.stream and not fmt.streams:
        streaming = ", ".join(f for f, v in state.formats.items() if v.streams)
        raise ApiError(
            400, f"stream: response_format {fmt.name} cannot be streamed; use {streaming} or "
            "stream false", "stream",
        )  # fmt: skip
    voice = await _voice(state, state.resolve_voice, body.voice, "voice")
    params = {**chosen(body), "timestamps": body.return_timestamps}
    try:
        pump = await _start(state, request, text, voice, params)
    except ApiError as e:  # e.g. a bundle without timestamp heads: name this body's field
        if e.param == "timestamps":
            e.param = "return_timestamps"
        raise
    if not body.stream:
        try:
            data, words = await pump.whole_file(fmt)
        finally:
            pump.on_done()
        return JSONResponse(_captioned(data, fmt.media_type, words))

    async def lines():
        held: list[dict] = []  # words of zero-sample chunks go with the next audio
        async for data, words in pump.encoded(fmt):
            held += words
            if data:
                yield _line(data, fmt.media_type, held)
                held = []
        if held:
            yield _line(b"", fmt.media_type, held)

    return CancellableStreamingResponse(
        lines(), on_close=pump.on_done, media_type="application/x-ndjson"
    )
