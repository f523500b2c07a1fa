"""The two speech endpoints: OpenAI's `POST /v1/audio/speech` (JSON) and upstream
pocket-tts's `POST /tts` (form fields, streaming WAV), over one scheduler."""

from __future__ import annotations

from typing import Annotated, Literal

from anyio.to_thread import run_sync
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, create_model

from pocket_tts_onnx.errors import GenerationError, InvalidInputError, QueueFullError, VoiceError
from pocket_tts_onnx.serve.params import chosen, form_params, json_fields
from pocket_tts_onnx.serve.plumbing import ApiError, api_error_from, request_id
from pocket_tts_onnx.serve.streaming import CancellableStreamingResponse, StreamPump, next_chunk

router = APIRouter()


class _SpeechBody(BaseModel):
    """OpenAI's body. `model` is accepted and ignored (the server runs its one bundle);
    `instructions` likewise (Pocket TTS has no instruction conditioning)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    input: str
    model: str | None = None
    voice: str | None = None
    response_format: str | None = None
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None


# OpenAI's fields plus every generation parameter (GenerationConfig's fields).
SpeechRequest = create_model("SpeechRequest", __base__=_SpeechBody, **json_fields())


def _check_text(state, text: str, field: str) -> str:
    if not text.strip():
        raise ApiError(400, f"{field} is empty: give the text to speak", field, "empty_text")
    limit = state.config.max_text_chars
    if len(text) > limit:
        raise ApiError(
            413,
            f"{field} has {len(text)} characters, the limit is {limit} (server option "
            "--max-text-chars); split the text into several requests",
            field,
            "text_too_long",
        )
    return text


def _format(state, name: str | None, stream_format: str):
    formats = state.formats
    if name is None:  # OpenAI's default is mp3; streaming wav where mp3 is unavailable
        name = "mp3" if "mp3" in formats else "wav"
    fmt = formats.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ApiError(
            400,
            f"response_format {name!r} is not supported; use one of: {', '.join(formats)}",
            "response_format",
            "unsupported_format",
        )
    if stream_format == "sse" and not fmt.streams:
        streaming = ", ".join(f for f, v in formats.items() if v.streams)
        raise ApiError(
            400,
            f"stream_format 'sse' needs a streamed response_format ({streaming})",
            "stream_format",
        )
    return fmt


def _text_and_format(state, body, stream_format: str):
    """`input`, `speed` and `response_format` of an OpenAI-style body (speech and captioned
    speech), checked in that order."""
    text = _check_text(state, body.input, "input")
    if body.speed != 1.0:
        raise ApiError(400, "speed must be 1.0: Pocket TTS has no speed control", "speed")
    return text, _format(state, body.response_format, stream_format)


async def _voice(state, resolve, arg, param: str):
    """Resolve a voice (name or upload) in a worker thread; errors name the request field."""
    try:
        return await run_sync(resolve, arg, limiter=state.limiter)
    except VoiceError as e:
        raise ApiError(400, str(e), param, "invalid_voice") from e


async def _start(state, request: Request, text: str, voice, params: dict, field="input"):
    """Submit, and wait for the first chunk before any header leaves, so that every input
    error still becomes a 4xx. Returns the pump that streams the rest."""
    rid = request_id(request)
    stream = None
    state.pending += 1
    try:
        stream = await run_sync(
            lambda: state.scheduler.submit(text, voice, **params), limiter=state.limiter
        )
        first = await run_sync(next_chunk, stream, limiter=state.limiter)
    except (InvalidInputError, QueueFullError, GenerationError) as e:
        if stream is not None:
            stream.cancel()
        error = api_error_from(e, state.config.retry_after_s)
        if error.param == "input":  # the text field's name in this endpoint
            error.param = field
        raise error from e
    except BaseException:
        if stream is not None:
            stream.cancel()
        raise
    finally:
        state.pending -= 1
    state.active += 1
    done = []

    def on_done() -> None:
        if not done:
            done.append(True)
            stream.cancel()
            state.active -= 1

    return StreamPump(stream, first, state.sample_rate, state.limiter, on_done, rid)


def _response(pump: StreamPump, fmt, stream_format: str, headers=None):
    if stream_format == "sse":
        body, media = pump.sse(fmt), "text/event-stream"
    else:
        body = pump.raw(fmt) if fmt.streams else pump.whole(fmt)
        media = fmt.media_type
    return CancellableStreamingResponse(
        body, on_close=pump.on_done, media_type=media, headers=headers
    )


@router.post("/v1/audio/speech")
async def speech(body: SpeechRequest, request: Request):
    state = request.app.state.serve
    text, fmt = _text_and_format(state, body, body.stream_format)
    voice = await _voice(state, state.resolve_voice, body.voice, "voice")
    pump = await _start(state, request, text, voice, chosen(body))
    return _response(pump, fmt, body.stream_format)


@router.post("/tts")
async def tts_form(
    request: Request,
    text: Annotated[str, Form()] = "",  # empty or missing: the same 400 as an empty input
    voice_url: Annotated[str | None, Form()] = None,
    voice_wav: Annotated[UploadFile | None, File()] = None,
    params: Annotated[dict, Depends(form_params())] = None,
):
    """Upstream `pocket-tts serve`'s endpoint: same fields, same streaming WAV response, plus
    every generation parameter as an optional form field. `voice_url` is a voice name here
    (this server never fetches URLs)."""
    state = request.app.state.serve
    _check_text(state, text, "text")
    if voice_url is not None and voice_wav is not None:
        raise ApiError(400, "Cannot provide both voice_url and voice_wav", "voice_url")
    if voice_wav is not None:
        data = await voice_wav.read(state.config.max_upload_bytes + 1)
        if len(data) > state.config.max_upload_bytes:
            raise ApiError(
                413,
                f"voice_wav exceeds {state.config.max_upload_bytes} bytes (server option "
                "--max-upload-bytes); upload a shorter prompt (30 s are used at most)",
                "voice_wav",
            )
        voice = await _voice(state, state.upload_voice, data, "voice_wav")
    else:
        if voice_url is not None and voice_url.startswith(("http://", "https://", "hf://")):
            raise ApiError(
                400,
                "this server does not fetch voices from URLs: pass a voice name "
                "(GET /v1/voices) as voice_url, or upload the audio as voice_wav",
                "voice_url",
            )
        voice = await _voice(state, state.resolve_voice, voice_url, "voice_url")
    pump = await _start(state, request, text, voice, params, field="text")
    headers = {"Content-Disposition": "attachment; filename=generated_speech.wav"}
    return _response(pump, state.formats["wav"], "audio", headers)
