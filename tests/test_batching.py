"""Continuous batching: every stream of a batch gives the single-stream engine's audio for the
same text, voice and seed, whatever else is in the batch; at temperature 0 the batched FP32
audio is upstream's."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
from conftest import MULTI_CHUNK, ONE_CHUNK, upstream_audio

from pocket_tts_onnx import (
    NO_VOICE,
    BatchScheduler,
    GenerationError,
    InvalidInputError,
    PocketTTSOnnx,
    PocketTTSOnnxError,
    QueueFullError,
)


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
    fp32 = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32") if precision == "int8" else None
    for (text, v, params), got in zip(requests, results, strict=True):
        want = tts.generate(text, v, **params)
        assert got.shape == want.shape, (text, got.shape, want.shape)
        bound = 1e-4  # FP32: float rounding of batched calls
        if fp32 is not None:
            # INT8 quantizes each call's activations with one scale for all its rows, so a
            # batched row moves by about what INT8 itself moves from FP32 (measured: the
            # same order); a row mixed up with another would move by the signal itself.
            fp32_voice = fp32.voice_from_audio((voice_audio, 24000)) if v is voice else v
            quantization = float(np.max(np.abs(want - fp32.generate(text, fp32_voice, **params))))
            bound = 3 * quantization
        assert float(np.max(np.abs(got - want))) <= bound, text


def test_batched_fp32_matches_upstream_at_temperature_zero(lsd_bundle, fp32, voice_audio):
    model = lsd_bundle.upstream()
    refs = [
        upstream_audio(model, voice_audio, ONE_CHUNK),
        upstream_audio(model, None, MULTI_CHUNK),
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


def test_a_failed_kv_allocation_ends_only_the_requests_it_was_for(fp32, monkeypatch):
    """Out of memory while giving a burst its K/V rows: those requests end with a typed
    error naming it, the scheduler goes on, and the next request is served exactly."""
    from pocket_tts_onnx.runtime.kv_buffer import KVBuffers

    real_reset = KVBuffers.reset
    failures = []

    def reset(self, rows, capacity):
        if not failures:
            failures.append(rows)
            raise MemoryError("simulated")
        return real_reset(self, rows, capacity)

    monkeypatch.setattr(KVBuffers, "reset", reset)
    with BatchScheduler(fp32, max_streams=2) as scheduler:
        with scheduler._lock:
            streams = [scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=5) for _ in range(2)]
        for s in streams:
            with pytest.raises(GenerationError, match="simulated"):
                list(s)
        again = _collect(scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=5, seed=1))
        assert scheduler.stats()["failed"] == 2
    assert failures == [2]
    want = fp32.generate(ONE_CHUNK, NO_VOICE, max_frames=5, seed=1)
    assert again.shape == want.shape and np.max(np.abs(again - want)) <= 1e-4


# ------------------------------------------------------------- one bad row, one core
def test_a_failing_row_ends_only_its_own_stream(fp32, voice_audio):
    """A NaN voice (conditioning NaN at its first step) and a flow head that fails for one
    row end those streams with typed errors; the other rows finish with the single-stream
    engine's audio and the scheduler keeps serving."""
    from pocket_tts_onnx import NonFiniteError, Voice

    voice = fp32.voice_from_audio((voice_audio, 24000))
    poisoned = {k: np.array(v) for k, v in voice.states.items()}
    poisoned["state_0"][0, 0, -1, 0] = np.nan
    good = {"seed": 4, "temperature": 0.7, "eos_threshold": float("inf"), "max_frames": 12}
    want = fp32.generate(ONE_CHUNK, voice, **good)
    sampler = fp32.core.sampler
    real_advance = sampler.advance

    def advance(cond, x, done, total):  # a flow-head call that fails for lsd_steps=7 rows
        if (total == 7).any():
            raise RuntimeError("simulated flow-head failure")
        return real_advance(cond, x, done, total)

    sampler.advance = advance
    try:
        with BatchScheduler(fp32, max_streams=4) as scheduler:
            streams = [
                scheduler.submit(ONE_CHUNK, voice, **good),
                scheduler.submit(ONE_CHUNK, Voice(poisoned, fp32.model_id), seed=1),
                scheduler.submit(ONE_CHUNK, voice, lsd_steps=7, seed=2),
                scheduler.submit(MULTI_CHUNK, voice, **good),
            ]
            outcomes = []
            for stream in streams:
                try:
                    outcomes.append(_collect(stream))
                except Exception as e:
                    outcomes.append(e)
            assert isinstance(outcomes[1], NonFiniteError)
            assert isinstance(outcomes[2], GenerationError) and "simulated" in str(outcomes[2])
            want_multi = fp32.generate(MULTI_CHUNK, voice, **good)
            for got, ref in ((outcomes[0], want), (outcomes[3], want_multi)):
                assert got.shape == ref.shape and np.max(np.abs(got - ref)) <= 1e-4
            assert scheduler.alive
            again = _collect(scheduler.submit(ONE_CHUNK, voice, **good))
            assert np.max(np.abs(again - want)) <= 1e-4
    finally:
        sampler.advance = real_advance


def test_many_solver_steps_do_not_hold_the_other_rows(fp32, monkeypatch):
    """A row asking for 64 flow-head steps per frame solves them over several iterations:
    a neighbour with 1 step gets a frame every iteration, not every 64 head calls."""
    from pocket_tts_onnx.runtime import stepping

    monkeypatch.setattr(stepping, "SOLVE_SHARE", 0.0)  # the extra steps: none beyond the least
    calls = []  # per flow-head call: does the 1-step row take part?
    sampler = fp32.core.sampler
    real_advance = sampler.advance

    def advance(cond, x, done, total):
        calls.append(bool((total == 1).any()))
        return real_advance(cond, x, done, total)

    monkeypatch.setattr(sampler, "advance", advance)
    off = {"eos_threshold": float("inf"), "max_frames": 20}
    with BatchScheduler(fp32, max_streams=2) as scheduler:
        slow = scheduler.submit(ONE_CHUNK, NO_VOICE, lsd_steps=64, seed=1, **off)
        fast = scheduler.submit(ONE_CHUNK, NO_VOICE, lsd_steps=1, seed=2, **off)
        fast_audio, slow_audio = _collect(fast), _collect(slow)
    fast_calls = [i for i, fast_row in enumerate(calls) if fast_row]
    assert len(fast_calls) == 20  # one head call per frame of the 1-step row
    span = fast_calls[-1] - fast_calls[0] + 1
    assert span <= 2 * 20, span  # held by the 64-step row, it would be about 20 x 64
    for audio, steps, seed in ((fast_audio, 1, 2), (slow_audio, 64, 1)):
        want = fp32.generate(ONE_CHUNK, NO_VOICE, lsd_steps=steps, seed=seed, **off)
        assert audio.shape == want.shape and np.max(np.abs(audio - want)) <= 1e-4


@contextlib.contextmanager
def _slow_mimi():
    """Mimi made the slower stage (the flow LM queues steps ahead of it); yields the frames
    of each Mimi call."""
    from pocket_tts_onnx.runtime.decoder import MimiRows

    frames_per_call = []
    real_decode = MimiRows.decode

    def slow_decode(self, latents, rows=None, pool=None):
        frames_per_call.append(latents.shape[1])
        time.sleep(0.02)
        return real_decode(self, latents, rows, pool)

    MimiRows.decode = slow_decode
    try:
        yield frames_per_call
    finally:
        MimiRows.decode = real_decode


def test_steps_queued_behind_mimi_are_decoded_together_with_the_same_audio(fp32):
    """When Mimi is behind, queued steps of the same rows go through one call of several
    frames; every stream still gets the single-stream engine's audio (and word times)."""
    off = {"eos_threshold": float("inf"), "max_frames": 24}
    with _slow_mimi() as frames_per_call, BatchScheduler(fp32, max_streams=3) as scheduler:
        streams = [scheduler.submit(ONE_CHUNK, NO_VOICE, seed=s, **off) for s in (1, 2, 3)]
        results = _run_concurrently(streams)
    assert max(frames_per_call) >= 2, frames_per_call
    for seed, got in zip((1, 2, 3), results, strict=True):
        want = fp32.generate(ONE_CHUNK, NO_VOICE, seed=seed, **off)
        assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1e-4


def test_a_lone_stream_is_never_merged(fp32):
    """One row: every step is its own Mimi call, so its audio is the same to the bit."""
    off = {"eos_threshold": float("inf"), "max_frames": 12, "seed": 5}
    with _slow_mimi() as frames_per_call:
        got = fp32.generate(ONE_CHUNK, NO_VOICE, **off)
    assert frames_per_call and set(frames_per_call) == {1}
    assert np.array_equal(got, fp32.generate(ONE_CHUNK, NO_VOICE, **off))


def test_a_lone_new_row_takes_its_first_step_with_its_prompt(fp32, monkeypatch):
    """The BOS step rides along the prompt's call (one flow-LM call less before the first
    audio); rows prompted together take it in the next batched step. Both give the same
    audio (test_engine compares `generate` with upstream)."""
    from pocket_tts_onnx.runtime.flow_lm import FlowLM

    calls = []  # (latents fed, text tokens fed, rows) per flow-LM call
    real_run = FlowLM.run

    def run(self, rows, sequence, text, keep=None, lengths=None):
        calls.append((sequence.shape[1], text.shape[1], sequence.shape[0]))
        return real_run(self, rows, sequence, text, keep, lengths)

    monkeypatch.setattr(FlowLM, "run", run)
    off = {"eos_threshold": float("inf"), "max_frames": 3, "seed": 1}
    alone = fp32.generate(ONE_CHUNK, NO_VOICE, **off)
    assert calls[0][:2] == (1, calls[0][1]) and calls[0][1] > 0, calls
    assert [c for c in calls if c[1] == 0] == [(1, 0, 1)] * 2, calls  # frames 2 and 3
    calls.clear()
    with BatchScheduler(fp32, max_streams=2) as scheduler:
        with scheduler._lock:  # both wait, so they are prompted together
            streams = [scheduler.submit(ONE_CHUNK, NO_VOICE, **off) for _ in range(2)]
        together = _run_concurrently(streams)
    prompts = [c for c in calls if c[1] > 0]
    assert prompts and all(c[0] == 0 for c in prompts), calls  # no BOS in their prompts
    assert calls[len(prompts)] == (1, 0, 2), calls  # it comes in the first batched step
    for got in together:
        assert got.shape == alone.shape and np.max(np.abs(got - alone)) <= 1e-4


def test_a_burst_of_requests_is_given_its_rows_in_one_allocation(fp32, monkeypatch):
    """Requests arriving together get their K/V rows at once, not by regrowing (and copying)
    the buffers once per request: with 8 full-size streams that took ~70-230 ms before
    anyone's first audio."""
    from pocket_tts_onnx.runtime.kv_buffer import KVBuffers

    allocations = []
    real_alloc = KVBuffers._alloc

    def alloc(self, rows, capacity):
        allocations.append(rows)
        return real_alloc(self, rows, capacity)

    monkeypatch.setattr(KVBuffers, "_alloc", alloc)
    off = {"eos_threshold": float("inf"), "max_frames": 3}
    with BatchScheduler(fp32, max_streams=4) as scheduler:
        allocations.clear()
        with scheduler._lock:  # all four wait, so they are admitted together
            streams = [scheduler.submit(ONE_CHUNK, NO_VOICE, seed=s, **off) for s in range(4)]
        _run_concurrently(streams)
    # One allocation of 4 rows; afterwards only shrinking as streams leave (growing one
    # request at a time would read 1, 2, 4).
    assert allocations[0] == 4 and allocations == sorted(allocations, reverse=True), allocations


def test_mimi_decodes_many_rows_in_calls_of_a_few_rows_with_each_rows_audio(fp32):
    """Nine rows go through Mimi in calls of at most MIMI_ROWS_PER_CALL rows (bigger calls
    cost more per row: their activations outgrow the cache); each row's audio is what it
    gets decoded alone, frame after frame."""
    from concurrent.futures import ThreadPoolExecutor

    from pocket_tts_onnx.runtime.decoder import MIMI_ROWS_PER_CALL, MimiRows

    graph = fp32.core.decoder_graph
    latents = np.random.default_rng(0).standard_normal((3, 9, 1, fp32.manifest.latent_dim))
    latents = latents.astype(np.float32)
    alone = []
    for r in range(9):
        one = MimiRows(graph, 480)
        one.join()
        alone.append(np.concatenate([one.decode(step[r : r + 1])[0] for step in latents]))
    sizes = []
    real_step = graph.step

    def step(feeds, states):
        sizes.append(feeds["latent"].shape[0])
        return real_step(feeds, states)

    for pool in (None, ThreadPoolExecutor(1)):
        rows = MimiRows(graph, 480)
        for _ in range(9):
            rows.join()
        sizes.clear()
        graph.step = step
        try:
            got = np.concatenate(
                [rows.decode(step_latents, pool=pool) for step_latents in latents], 1
            )
        finally:
            del graph.step
        assert max(sizes) <= MIMI_ROWS_PER_CALL and sum(sizes) == 27, sizes
        assert np.max(np.abs(got - np.stack(alone))) <= 1e-5


def test_kv_memory_follows_the_rows_that_need_it(fp32):
    def stats(scheduler, key):
        return scheduler.stats()[key]

    with BatchScheduler(fp32, max_streams=2) as scheduler:
        long = scheduler.submit(ONE_CHUNK, NO_VOICE, eos_threshold=float("inf"), max_frames=3000)
        assert stats(scheduler, "kv_capacity") <= 512  # room grows with use, not the worst case
        for _, _chunk in zip(range(900), long, strict=False):
            pass  # 900 frames made: the long row's K/V has grown
        assert stats(scheduler, "kv_capacity") >= 900
        short = scheduler.submit(ONE_CHUNK, NO_VOICE, eos_threshold=float("inf"), max_frames=40)
        next(short)
        long.cancel()
        deadline = time.monotonic() + 10
        while stats(scheduler, "kv_capacity") >= 900 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stats(scheduler, "kv_capacity") < 512  # the long stream's room came back
        _collect(short)
        deadline = time.monotonic() + 10
        while stats(scheduler, "kv_rows") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stats(scheduler, "kv_rows") == 0 and stats(scheduler, "kv_mb") == 0


def test_kv_budget_refuses_what_can_never_fit_and_queues_the_rest(fp32):
    off = {"eos_threshold": float("inf"), "seed": 0}
    with BatchScheduler(fp32, max_streams=4, max_kv_positions=600) as scheduler:
        with pytest.raises(InvalidInputError, match="budget") as info:
            _collect(scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=1000, **off))
        assert info.value.param == "max_frames"
        first = scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=400, **off)
        next(first)
        second = scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=400, **off)
        time.sleep(0.2)
        assert scheduler.stats()["active"] == 1 and scheduler.stats()["waiting"] == 1
        _collect(first)
        assert _collect(second).shape[0] == 400 * fp32.manifest.samples_per_latent


def test_first_chunk_frames_is_honoured_by_the_scheduler(fp32):
    frame = fp32.manifest.samples_per_latent
    with BatchScheduler(fp32, max_streams=2) as scheduler:
        stream = scheduler.submit(ONE_CHUNK, NO_VOICE, first_chunk_frames=4, max_frames=9)
        assert next(stream).samples.shape[0] == 4 * frame


def test_scheduler_matches_the_protocol_and_the_core_has_no_cycle(fp32):
    import ast
    from pathlib import Path

    from pocket_tts_onnx.runtime.streams import AudioStream, Scheduler
    from pocket_tts_onnx.serve.scheduler import SupervisedScheduler

    supervised = SupervisedScheduler(lambda: BatchScheduler(fp32, max_streams=1))
    with BatchScheduler(fp32, max_streams=1) as scheduler:
        assert isinstance(scheduler, Scheduler) and isinstance(supervised, Scheduler)
        stream = scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=2)
        text_stream = scheduler.open_stream(NO_VOICE)
        assert isinstance(stream, AudioStream) and isinstance(text_stream, AudioStream)
        stream.cancel()
        text_stream.cancel()
    supervised.close()
    root = Path(__file__).resolve().parents[1] / "src" / "pocket_tts_onnx" / "runtime"
    graph = {}
    for path in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "pocket_tts_onnx.runtime."
            ):
                names.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = names
    assert "engine" not in graph["batching"] and "engine" not in graph["core"]

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])

    for module in graph:
        visit(module, [])


@pytest.fixture(scope="module")
def bundle(lsd_bundle):
    return lsd_bundle.bundle


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


def test_a_dead_decoder_thread_ends_every_stream_and_the_scheduler(fp32, monkeypatch):
    """A fault inside the decoder thread itself (not a decode call): its streams get a typed
    error instead of hanging, and the scheduler reports itself stopped (a server restarts
    it, see test_serve_app)."""
    from pocket_tts_onnx.runtime.decoder import MimiRows

    def broken_join(self):
        raise RuntimeError("simulated decoder-thread fault")

    with BatchScheduler(fp32, max_streams=2) as scheduler:
        monkeypatch.setattr(MimiRows, "join", broken_join)
        stream = scheduler.submit(ONE_CHUNK, NO_VOICE, max_frames=5)
        with pytest.raises(GenerationError, match="simulated"):
            list(stream)
        deadline = time.monotonic() + 10
        while scheduler.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not scheduler.alive
        with pytest.raises(PocketTTSOnnxError, match="closed"):
            scheduler.submit(ONE_CHUNK)
