"""Engine hardening (issue 12): every bad input fails fast with a typed error, nothing hangs,
no NaN audio, states cannot shadow inputs, Mimi never decodes more than MAX_DECODE_FRAMES at
once, and long prompts are fed in blocks with upstream's result."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from pocket_tts_onnx import (
    NO_VOICE,
    BundleError,
    GenerationConfig,
    InvalidInputError,
    NonFiniteError,
    PocketTTSOnnx,
    Voice,
    VoiceError,
)
from pocket_tts_onnx.runtime import flow_lm
from pocket_tts_onnx.runtime.decoder import MAX_DECODE_FRAMES
from pocket_tts_onnx.runtime.graph import StatefulGraph
from pocket_tts_onnx.runtime.voice_file import save_voice_npz
from pocket_tts_onnx.runtime.voices import VOICE_FORMAT
from pocket_tts_onnx.specs import GraphSpec, StateSpec, TensorSpec

TEXT = "Hello world, this is a small test."
LONG = "The quick brown fox jumps over the lazy dog. " * 6


@pytest.fixture(scope="module")
def tts(bundles):
    return PocketTTSOnnx.load(bundles["lsd"].bundle, precision="fp32")


def _in_thread(fn, timeout: float):
    """Run fn in a daemon thread; (finished, result or exception)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # reported to the test
            box["value"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("value")


@pytest.mark.parametrize("clamp", [1e-30, 1e-5])
def test_tiny_noise_clamp_finishes(tts, clamp):
    finished, audio = _in_thread(
        lambda: tts.generate(TEXT, NO_VOICE, temperature=1.0, noise_clamp=clamp, max_frames=20),
        timeout=60,
    )
    assert finished, f"noise_clamp={clamp} did not finish"
    assert isinstance(audio, np.ndarray) and audio.size > 0 and np.isfinite(audio).all()


def test_closing_a_stream_mid_generation_stops_the_worker(tts):
    before = threading.active_count()
    # noise_clamp 1e-5 made each frame take seconds with the old redraw loop.
    stream = tts.stream(LONG, temperature=1.0, noise_clamp=1e-5, eos_threshold=float("inf"))
    next(stream)
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 2.0
    assert threading.active_count() == before


def test_extreme_temperature_is_refused_before_any_work(tts):
    # Finite but absurd temperatures used to overflow the noise (full-scale noise, or a dead
    # server thread); they are now refused by the one parameter definition, on every path.
    for value in (1e80, 1e308, 2.0001):
        with pytest.raises(InvalidInputError, match="temperature must be") as info:
            tts.generate(TEXT, temperature=value, max_frames=5)
        assert info.value.param == "temperature"
        with pytest.raises(InvalidInputError, match="temperature"):
            tts.stream(TEXT, temperature=value, max_frames=5)
    assert tts.generate(TEXT, temperature=2.0, max_frames=3, seed=0).shape[0] > 0
    assert issubclass(NonFiniteError, InvalidInputError)


def test_nan_voice_states_are_refused(tts, voice_audio, tmp_path):
    voice = tts.voice_from_audio((voice_audio, 24000))
    bad = {k: np.array(v) for k, v in voice.states.items()}
    bad["state_0"][0, 0, 0, 0] = np.nan
    save_voice_npz(tmp_path / "nan.npz", bad, {"format": VOICE_FORMAT, "model_id": tts.model_id})
    with pytest.raises(VoiceError, match="NaN"):
        tts.load_voice(tmp_path / "nan.npz")
    # A hand-built Voice with NaN states is caught at the first step, never NaN audio.
    with pytest.raises(NonFiniteError):
        tts.generate(TEXT, Voice(bad, tts.model_id), max_frames=5)


def test_voice_files_hold_exactly_the_models_states(tts, voice_audio, tmp_path):
    voice = tts.voice_from_audio((voice_audio, 24000))
    meta = {"format": VOICE_FORMAT, "model_id": tts.model_id}
    d = tts.manifest.d_model
    for extra in ("text_embeddings", "sequence", "junk"):
        states = {**voice.states, extra: np.zeros((1, 3, d), np.float32)}
        save_voice_npz(tmp_path / "x.npz", states, meta)
        with pytest.raises(VoiceError, match=extra):
            tts.load_voice(tmp_path / "x.npz")
    short = dict(voice.states)
    short["state_1"] = short["state_1"][:, :, :-1]  # K/V lengths disagree across layers
    save_voice_npz(tmp_path / "short.npz", short, meta)
    with pytest.raises(VoiceError, match="inconsistent"):
        tts.load_voice(tmp_path / "short.npz")


def test_states_can_never_shadow_inputs(tts):
    graph = tts.graphs["flow_lm_main"]
    m = tts.manifest
    text = np.random.default_rng(0).standard_normal((1, 5, m.d_model)).astype(np.float32)
    inputs = {"sequence": np.zeros((1, 0, m.latent_dim), np.float32), "text_embeddings": text}
    states = graph.initial_states()
    out, _ = graph.step(inputs, states)
    hostile = {**states, "text_embeddings": np.zeros((1, 1, m.d_model), np.float32)}
    out2, _ = graph.step(inputs, hostile)
    assert np.array_equal(out["conditioning"], out2["conditioning"])
    # A spec whose state is named like an input is refused outright.
    clash = GraphSpec(
        "g",
        [TensorSpec("x", "float32", [1])],
        [TensorSpec("y", "float32", [1])],
        states=[StateSpec("x", "m.a", "k", "float32", [1])],
    )
    with pytest.raises(BundleError, match="collide"):
        StatefulGraph(graph.session, clash, check_io=False)


def test_numpy_scalars_are_valid_parameters(tts):
    ref = tts.generate(TEXT, temperature=0.5, lsd_steps=2, seed=3, max_frames=4)
    got = tts.generate(
        TEXT,
        temperature=np.float32(0.5),
        lsd_steps=np.int64(2),
        seed=np.int64(3),
        max_frames=np.int32(4),
        eos_threshold=np.float64(tts.manifest.defaults.eos_threshold),
    )
    assert np.array_equal(ref, got)
    with pytest.raises(InvalidInputError, match="lsd_steps"):
        tts.generate(TEXT, lsd_steps=True)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_bad_seed_fails_in_the_callers_thread(tts, seed):
    with pytest.raises(InvalidInputError, match="seed"):
        tts.stream(TEXT, seed=seed)  # before iterating: no worker thread involved
    with pytest.raises(InvalidInputError, match="seed"):
        tts.generate(TEXT, seed=seed)


def test_generation_config_is_validated_once_and_frozen(tts):
    config = GenerationConfig.from_manifest(tts.manifest, seed=np.int64(2**63 - 1))
    assert config.seed == 2**63 - 1 and type(config.seed) is int
    with pytest.raises(AttributeError):
        config.seed = 1
    with pytest.raises(InvalidInputError, match="unknown"):
        GenerationConfig.from_manifest(tts.manifest, temprature=0.5)
    a = tts.generate(TEXT, config=tts.generation_config(seed=5, max_frames=4))
    assert np.array_equal(a, tts.generate(TEXT, seed=5, max_frames=4))


class _RecordingSession:
    """A session proxy that records the frame count of every Mimi decoder call."""

    def __init__(self, session, sizes: list[int]):
        self._session, self.sizes = session, sizes

    def get_inputs(self):
        return self._session.get_inputs()

    def run(self, outputs, feeds):
        self.sizes.append(feeds["latent"].shape[1])
        return self._session.run(outputs, feeds)


CORE = ("text_conditioner", "mimi_encoder", "flow_lm_step", "flow_lm_flow",
        "mimi_decoder_batched")  # fmt: skip


def test_decoder_calls_stay_small_and_the_first_chunk_groups_frames(tts):
    sizes: list[int] = []
    sessions = {n: tts.graphs[n].session for n in CORE}
    sessions["mimi_decoder_batched"] = _RecordingSession(sessions["mimi_decoder_batched"], sizes)
    rec = PocketTTSOnnx.from_sessions(tts.manifest, sessions, tts.tokenizer)
    chunks = list(
        rec.stream(TEXT, NO_VOICE, first_chunk_frames=12, max_frames=22, seed=0, eos_threshold=1e9)
    )
    frame = tts.manifest.samples_per_latent
    assert chunks[0].samples.shape[0] == 12 * frame  # the first chunk still holds 12 frames
    assert sum(sizes) == 22 and max(sizes) <= MAX_DECODE_FRAMES, sizes
    sizes.clear()
    rec.generate(TEXT, NO_VOICE, max_frames=22, seed=0, eos_threshold=1e9)
    assert sum(sizes) == 22 and max(sizes) <= MAX_DECODE_FRAMES, sizes


def test_fade_in_length_comes_from_the_manifest(tts):
    from dataclasses import replace

    sessions = {n: tts.graphs[n].session for n in CORE}
    no_fade = replace(tts.manifest, defaults=replace(tts.manifest.defaults, fade_in_seconds=0.0))
    plain = PocketTTSOnnx.from_sessions(no_fade, sessions, tts.tokenizer)
    faded = PocketTTSOnnx.from_sessions(tts.manifest, sessions, tts.tokenizer)  # same graphs
    a = faded.generate(TEXT, NO_VOICE, temperature=0.0, max_frames=3)
    b = plain.generate(TEXT, NO_VOICE, temperature=0.0, max_frames=3)
    n = round(tts.sample_rate * tts.manifest.defaults.fade_in_seconds)
    assert n > 0 and np.array_equal(a[n:], b[n:])
    assert np.allclose(a[:n], b[:n] * np.linspace(0, 1, n, dtype=np.float32))


def test_prompts_longer_than_a_block_match_upstream(lsd_bundle, voice_audio, monkeypatch):
    """Text and voice prompts fed in blocks (carrying the state) give upstream's audio."""
    from pocket_tts.modules.stateful_module import init_states

    model = lsd_bundle.upstream()
    model.temp, model.sampler_decode_steps = 0.0, 1
    model.eos_threshold = model.config.default_eos_threshold
    tts = PocketTTSOnnx.load(lsd_bundle.bundle, precision="fp32")
    chunk = tts.text_chunks(TEXT)[0]
    monkeypatch.setattr(flow_lm, "PROMPT_BLOCK_TOKENS", 3)
    assert len(chunk.token_ids) > 3
    calls: list[int] = []
    # The engine runs the fast-KV variant when the bundle has it (these bundles do).
    session = tts.graphs["flow_lm_step"].session
    real_run = session.run

    def spy(outputs, feeds, *args, **kwargs):
        calls.append(feeds["text_embeddings"].shape[1])
        return real_run(outputs, feeds, *args, **kwargs)

    monkeypatch.setattr(session, "run", spy)
    with torch.no_grad():
        ref = model.generate_audio(
            model.get_state_for_audio_prompt(torch.from_numpy(voice_audio)[None]), TEXT
        ).numpy()
        ref_plain = model.generate_audio(
            init_states(model.flow_lm, batch_size=1, sequence_length=0), TEXT
        ).numpy()
    voice = tts.voice_from_audio((voice_audio, 24000))
    ours = tts.generate(TEXT, voice, temperature=0.0)
    plain = tts.generate(TEXT, NO_VOICE, temperature=0.0)
    assert max(calls) <= 3 and calls.count(3) > 2
    assert ours.shape == ref.shape and np.max(np.abs(ours - ref)) <= 1e-3
    assert plain.shape == ref_plain.shape and np.max(np.abs(plain - ref_plain)) <= 1e-3


def test_ctrl_c_while_streaming_frees_the_row(tts):
    import signal

    if not hasattr(signal, "setitimer"):
        pytest.skip("needs POSIX interval timers")
    fired: list[float] = []

    def interrupt(signum, frame):
        fired.append(time.perf_counter())
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        stream = tts.stream(TEXT, noise_clamp=1e-5, eos_threshold=float("inf"), max_frames=10_000)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            for _ in stream:
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    scheduler = tts._engine_scheduler()
    deadline = time.perf_counter() + 2.0
    while scheduler.stats()["active"] and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert fired and scheduler.stats()["active"] == 0


def test_cli_bad_seed_is_a_one_line_error(lsd_bundle, tmp_path, capsys):
    from pocket_tts_onnx.cli import main

    out = str(tmp_path / "o.wav")
    assert (
        main(["say", "Hi.", "--bundle", str(lsd_bundle.bundle), "--out", out, "--seed", "-1"]) == 2
    )
    err = capsys.readouterr().err
    assert "seed" in err and "Traceback" not in err
