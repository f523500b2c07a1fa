"""The thread-per-stream scheduler the server falls back to: same audio as the engine,
bounded running and waiting streams, cancel frees a slot at once, validation up front."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pocket_tts_onnx import PocketTTSOnnx
from pocket_tts_onnx.errors import InvalidInputError, QueueFullError, VoiceError
from pocket_tts_onnx.serve.fallback import FallbackScheduler
from pocket_tts_onnx.serve.voices import LRUCache

LONG = {"eos_threshold": 1e9, "max_frames": 5000}


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def test_streams_equal_the_engine(tts):
    sched = FallbackScheduler(tts, max_streams=2, max_queue=2)
    try:
        streams = [sched.submit("One two three.", seed=i, max_frames=10) for i in range(3)]
        for i, stream in enumerate(streams):
            got = np.concatenate([c.samples for c in stream])
            want = tts.generate("One two three.", seed=i, max_frames=10)
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-5
        assert wait_for(lambda: sched.stats()["active"] == 0)
    finally:
        sched.close()


def test_bounded_queue_and_cancel(tts):
    sched = FallbackScheduler(tts, max_streams=1, max_queue=1)
    try:
        running = sched.submit("Long text here.", **LONG)
        next(running)  # started, and will block once its buffer is full
        waiting = sched.submit("Waiting text.", **LONG)
        assert sched.stats()["waiting"] == 1
        with pytest.raises(QueueFullError, match="retry later"):
            sched.submit("Rejected.", max_frames=2)
        waiting.cancel()
        assert sched.stats()["waiting"] == 0
        assert list(waiting) == []
        running.cancel()
        assert list(running) == []
        assert wait_for(lambda: sched.stats()["active"] == 0, timeout=2)
        # The slot is free again.
        assert sum(c.samples.shape[0] for c in sched.submit("Again.", max_frames=3)) > 0
    finally:
        sched.close()


def test_bad_input_fails_in_submit_without_taking_a_slot(tts):
    sched = FallbackScheduler(tts, max_streams=1, max_queue=0)
    try:
        with pytest.raises(InvalidInputError, match="temperature"):
            sched.submit("Hi.", temperature=-1.0)
        with pytest.raises(InvalidInputError):
            sched.submit("   ")
        with pytest.raises(VoiceError):
            sched.submit("Hi.", voice="no-such-voice")
        assert sched.stats()["active"] == 0 and sched.stats()["submitted"] == 0
        assert len(list(sched.submit("Hi.", max_frames=2))) > 0
    finally:
        sched.close()


def test_lru_cache_is_bounded():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
