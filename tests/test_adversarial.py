"""Defects an adversarial pass found, each reproduced: the files a bundle needs cannot be
overwritten by `--out`, odd sample rates cost bounded memory, batched serving bounds its
memory (streams, buffered audio, prompt length), and bundle damage is caught at load."""

from __future__ import annotations

import json
import resource
import shutil
import time

import numpy as np
import pytest

from pocket_tts_onnx import (
    NO_VOICE,
    BatchScheduler,
    BundleError,
    InvalidInputError,
    PocketTTSOnnx,
    QueueFullError,
)
from pocket_tts_onnx.cli import main
from pocket_tts_onnx.runtime.audio import prepare_voice_audio


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, lsd_bundle):
    copy = tmp_path_factory.mktemp("adversarial") / "bundle"
    shutil.copytree(lsd_bundle.bundle, copy)
    return copy


def test_out_inside_the_bundle_is_refused(bundle, capsys):
    before = (bundle / "manifest.json").read_bytes()
    code = main(["say", "Hi.", "--bundle", str(bundle), "--out", str(bundle / "manifest.json")])
    assert code == 2 and "inside the bundle" in capsys.readouterr().err
    assert (bundle / "manifest.json").read_bytes() == before
    assert main(["voice", "x.wav", "--bundle", str(bundle), "--out", str(bundle / "v.npz")]) == 2


def test_unwritable_out_is_one_line(bundle, capsys):
    code = main(
        ["say", "Hi.", "--bundle", str(bundle), "--out", "/proc/x.wav", "--max-frames", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_odd_sample_rates_cost_bounded_time_and_memory():
    audio = np.random.default_rng(0).standard_normal(2000).astype(np.float32) * 0.1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for rate in (1_000_003, 4_000_037, 4_294_967_291):  # primes: no small polyphase ratio
        out = prepare_voice_audio(audio, rate, 24000)
        assert out.dtype == np.float32 and np.isfinite(out).all()
    assert time.perf_counter() - start < 5
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200  # MB


def test_scheduler_limits_are_typed_errors(bundle):
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    with pytest.raises(InvalidInputError, match="max_streams"):
        BatchScheduler(tts, max_streams=10**6)
    scheduler = BatchScheduler(tts, max_streams=2, max_chunk_tokens=64)
    with scheduler, pytest.raises(InvalidInputError, match="max_chunk_tokens"):
        scheduler.submit("a" * 2000)  # one word: the chunker cannot split it
    with BatchScheduler(tts, max_streams=1) as scheduler:
        # 3,500+ characters of words without a full stop: cut at words, not refused.
        words = " ".join(f"word{i % 97}" if i % 5 else "and" for i in range(900))
        stream = scheduler.submit(words, NO_VOICE, max_frames=1)
        stream.cancel()


def test_a_reader_that_stops_reading_has_bounded_buffered_audio(bundle):
    tts = PocketTTSOnnx.load(bundle, precision="fp32")
    with BatchScheduler(tts, max_streams=2, max_buffered_seconds=1.0) as scheduler:
        stream = scheduler.submit(
            "Hello there.", NO_VOICE, eos_threshold=float("inf"), max_frames=400
        )
        deadline = time.monotonic() + 60
        while scheduler.stats()["active"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until it runs
        while scheduler.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)  # not reading: the scheduler stops the stream, freeing its row
        stats = scheduler.stats()
        assert (stats["active"], stats["waiting"], stats["kv_rows"]) == (0, 0, 0)
        with pytest.raises(QueueFullError, match="not read"):
            list(stream)


def test_bundle_damage_is_caught_at_load(bundle, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    step = damaged / "flow_lm_step_int8.onnx"  # opened on first use, checked at load
    step.write_bytes(step.read_bytes()[: step.stat().st_size // 2])
    with pytest.raises(BundleError, match="sha256"):
        PocketTTSOnnx.load(damaged)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["voices"] = [1, 2]
    malformed = tmp_path / "malformed"
    shutil.copytree(bundle, malformed)
    (malformed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="malformed"):
        PocketTTSOnnx.load(malformed)
