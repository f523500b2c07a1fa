"""Continuous batching: every stream of a batch gives the single-stream engine's audio for the
same text, voice and seed, whatever else is in the batch; at temperature 0 the batched FP32
audio is upstream's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_runtime import MULTI_CHUNK, ONE_CHUNK, _upstream_audio

from pocket_tts_onnx import (
    NO_VOICE,
    GenerationError,
    InvalidInputError,
    PocketTTSOnnx,
    QueueFullError,
)
from pocket_tts_onnx.runtime.batching import BatchScheduler


@pytest.fixture(scope="module")
def fp32(lsd_bundle):
    return PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")


def _collect(stream) -> np.ndarray:
    pieces = [c.samples for c in stream]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _run_concurrently(streams) -> list[np.ndarray]:
    results: list = [None] * len(streams)

    def consume(i, s):
        results[i] = _collect(s)

    threads = [threading.Thread(target=consume, args=(i, s)) for i, s in enumerate(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_each_stream_equals_the_single_stream_engine(lsd_bundle, voice_audio, precision):
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision=precision)
    voice = tts.voice_from_audio((voice_audio, 24000))
    requests = [
        (MULTI_CHUNK, voice, {"seed": 1, "temperature": 0.7}),
        (ONE_CHUNK, NO_VOICE, {"seed": 2, "temperature": 0.3, "lsd_steps": 2}),
        ("Short one.", voice, {"seed": 3, "max_frames": 5}),
        ("No end of speech here at all.", voice, {"seed": 4, "eos_threshold": float("inf"),
                                                   "max_frames": 30}),
    ]  # fmt: skip
    with BatchScheduler(tts, max_streams=3, max_queue=8) as scheduler:
        first = [scheduler.submit(t, v, **p) for t, v, p in requests[:3]]
        head = next(first[0])  # the fourth stream joins while the others are running
        late = scheduler.submit(requests[3][0], requests[3][1], **requests[3][2])
        results = _run_concurrently([*first, late])
    results[0] = np.concatenate([head.samples, results[0]])
    for (text, v, params), got in zip(requests, results, strict=True):
        want = tts.generate(text, v, **params)
        assert got.shape == want.shape, (text, got.shape, want.shape)
        assert float(np.max(np.abs(got - want))) <= 1e-4, text


def test_batched_fp32_matches_upstream_at_temperature_zero(lsd_bundle, fp32, voice_audio):
    model = lsd_bundle.upstream()
    refs = [
        _upstream_audio(model, voice_audio, ONE_CHUNK),
        _upstream_audio(model, None, MULTI_CHUNK),
    ]
    voice = fp32.voice_from_audio((voice_audio, 24000))
    with BatchScheduler(fp32, max_streams=4) as scheduler:
        streams = [
            scheduler.submit(ONE_CHUNK, voice, temperature=0.0),
            scheduler.submit(MULTI_CHUNK, NO_VOICE, temperature=0.0),
        ]
        results = _run_concurrently(streams)
    for ref, got in zip(refs, results, strict=True):
        assert got.shape == ref.shape
        assert float(np.max(np.abs(got - ref))) <= 1e-3


def test_cancel_frees_the_row_and_others_are_unaffected(fp32):
    params = {"eos_threshold": float("inf"), "max_frames": 40, "seed": 5}
    with BatchScheduler(fp32, max_streams=2, max_queue=4) as scheduler:
        keep = scheduler.submit(ONE_CHUNK, NO_VOICE, **params)
        drop = scheduler.submit(ONE_CHUNK, NO_VOICE, **params)
        waiting = scheduler.submit("Third stream.", NO_VOICE, seed=6, max_frames=8)
        next(drop)
        drop.cancel()
        list(drop)  # ends (at most the audio made before the cancel is still delivered)
        deadline = time.monotonic() + 10
        while scheduler.stats()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.stats()["waiting"] == 0  # the freed row went to the waiting stream
        kept, third = _run_concurrently([keep, waiting])
    assert np.array_equal(kept.shape, fp32.generate(ONE_CHUNK, NO_VOICE, **params).shape)
    assert np.max(np.abs(kept - fp32.generate(ONE_CHUNK, NO_VOICE, **params))) <= 1e-4
    assert third.shape == fp32.generate("Third stream.", NO_VOICE, seed=6, max_frames=8).shape


def test_queue_limit_and_bad_input_fail_in_the_callers_thread(fp32):
    with BatchScheduler(fp32, max_streams=1, max_queue=1) as scheduler:
        with pytest.raises(InvalidInputError, match="text"):
            scheduler.submit("   ")
        with pytest.raises(InvalidInputError, match="temperature"):
            scheduler.submit(ONE_CHUNK, temperature=-1)
        long = {"eos_threshold": float("inf"), "max_frames": 2000}  # busy until cancelled
        streams = [scheduler.submit(ONE_CHUNK, NO_VOICE, **long)]
        deadline = time.monotonic() + 10
        while scheduler.stats()["active"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        streams.append(scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=3))
        with pytest.raises(QueueFullError, match="max_queue"):
            scheduler.submit(ONE_CHUNK)
        for s in streams:
            s.cancel()
    with pytest.raises(InvalidInputError, match="max_streams"):
        BatchScheduler(fp32, max_streams=0)


def test_generate_batch(fp32):
    texts = [ONE_CHUNK, "Another, shorter text.", MULTI_CHUNK]
    audios = fp32.generate_batch(texts, NO_VOICE, seed=9, temperature=0.5)
    for text, audio in zip(texts, audios, strict=True):
        want = fp32.generate(text, NO_VOICE, seed=9, temperature=0.5)
        assert audio.shape == want.shape and np.max(np.abs(audio - want)) <= 1e-4


def test_close_and_failures_end_every_stream_without_hanging(fp32, monkeypatch):
    from pocket_tts_onnx import PocketTTSOnnxError

    scheduler = BatchScheduler(fp32, max_streams=2)
    stream = scheduler.submit(ONE_CHUNK, NO_VOICE, eos_threshold=float("inf"), max_frames=500)
    next(stream)
    scheduler.close()
    with pytest.raises(PocketTTSOnnxError, match="closed"):
        list(stream)
    with pytest.raises(PocketTTSOnnxError, match="closed"):
        scheduler.submit(ONE_CHUNK)

    # A decoder failure (e.g. out of memory) ends the streams it hits with a typed error,
    # never a hang, and the scheduler goes on serving once the decoder works again.
    decoder = fp32.graphs["mimi_decoder_batched"]
    real_step = decoder.step

    def broken(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(decoder, "step", broken)
    with BatchScheduler(fp32, max_streams=2) as scheduler:
        streams = [scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=5) for _ in range(2)]
        for s in streams:
            with pytest.raises(GenerationError, match="simulated"):
                list(s)
        monkeypatch.setattr(decoder, "step", real_step)
        again = _collect(scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=5, seed=1))
    want = fp32.generate(ONE_CHUNK, NO_VOICE, max_frames=5, seed=1)
    assert again.shape == want.shape and np.max(np.abs(again - want)) <= 1e-4
