"""The torch-free engine: text -> chunks -> autoregressive latents -> streaming Mimi audio.

The ONNX graphs are pure functions; this module owns everything upstream's `TTSModel` does
around them: the per-chunk copy of the voice state, the NaN BOS step, noise with temperature,
the flow head's solver loop, the EOS rule, the max-length estimate, the per-chunk fresh
decoder with its 5 ms fade-in, and the generator/decoder thread overlap of streaming.
States are looped back by the names the manifest gives, never by position.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pocket_tts_onnx.errors import BundleError, InvalidInputError, VoiceError
from pocket_tts_onnx.manifest import PRECISIONS, Manifest, file_sha256
from pocket_tts_onnx.runtime.audio import fade_in, prepare_voice_audio, read_audio
from pocket_tts_onnx.runtime.tokenizer import Tokenizer, load_tokenizer
from pocket_tts_onnx.runtime.voice_file import (
    load_upstream_voice_safetensors,
    load_voice_npz,
    save_voice_npz,
)
from pocket_tts_onnx.specs import GRAPH_NAMES, GraphSpec
from pocket_tts_onnx.text import estimate_max_frames, text_to_chunk_tokens

VOICE_FORMAT = "pocket-tts-onnx voice v1"
# Mimi decodes at most this many latents per call. Measured on the English decoder: 16 frames
# per call peak at +175 MB of transient memory, 4 frames at +20 MB, for the same audio.
MAX_DECODE_FRAMES = 4


@dataclass(frozen=True)
class AudioChunk:
    """A piece of streamed audio: mono float32 samples at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


@dataclass(frozen=True)
class Voice:
    """flow_lm_main states after a voice prompt. Arrays are read-only: generation copies
    nothing and never mutates them, so one Voice serves any number of calls."""

    states: dict[str, np.ndarray]
    model_id: str

    def save(self, path: str | os.PathLike[str]) -> None:
        save_voice_npz(path, self.states, {"format": VOICE_FORMAT, "model_id": self.model_id})


@dataclass(frozen=True)
class _Params:
    temperature: float
    decode_steps: int
    eos_threshold: float
    frames_after_eos: int | None
    noise_clamp: float | None
    max_frames: int | None
    seed: int | None


def _readonly(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in arrays.items():
        arr = np.array(value, copy=True)
        arr.flags.writeable = False
        out[name] = arr
    return out


class PocketTTSOnnx:
    """Pocket TTS on ONNX Runtime. Build with `load(bundle_dir)` or `from_sessions(...)`."""

    def __init__(
        self,
        manifest: Manifest,
        sessions: dict[str, ort.InferenceSession],
        tokenizer: Tokenizer,
    ):
        missing = [g for g in GRAPH_NAMES if g not in sessions]
        if missing:
            raise InvalidInputError(f"sessions missing for graphs: {', '.join(missing)}")
        self.manifest = manifest
        self.tokenizer = tokenizer
        self._sessions = sessions
        self._specs: dict[str, GraphSpec] = {n: manifest.graphs[n].spec for n in GRAPH_NAMES}
        for name, spec in self._specs.items():
            _check_session_io(name, spec, sessions[name])
        main = self._specs["flow_lm_main"]
        self._main_outputs = [t.name for t in main.all_outputs]
        self._dec_outputs = [t.name for t in self._specs["mimi_decoder"].all_outputs]
        self._flow_inputs = [t.name for t in self._specs["flow_lm_flow"].inputs]
        self.model_id = manifest.graphs["flow_lm_main"].sha256[
            manifest.graphs["flow_lm_main"].files["fp32"]
        ]

    # ----------------------------------------------------------------- construction
    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str],
        precision: str = "int8",
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
        providers: list | None = None,
        verify_checksums: bool = True,
    ) -> PocketTTSOnnx:
        """Open a bundle directory: reads manifest.json and checks every file's sha256."""
        if precision not in PRECISIONS:
            raise InvalidInputError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
        bundle = Path(bundle)
        manifest = Manifest.load(bundle)
        sessions = {}
        for name in GRAPH_NAMES:
            entry = manifest.graphs[name]
            if precision not in entry.files:
                raise BundleError(
                    f"{bundle} has no {precision} file for {name}: re-export with "
                    "--quantize, or load with precision='fp32'"
                )
            path = bundle / entry.files[precision]
            if not path.is_file():
                raise BundleError(f"{path} is missing from the bundle; re-export it")
            if verify_checksums and file_sha256(path) != entry.sha256[entry.files[precision]]:
                raise BundleError(
                    f"{path} does not match the sha256 in manifest.json: the file is corrupted "
                    "or was replaced; re-export or re-download the bundle"
                )
            sessions[name] = _open_session(path, session_options, threads, providers)
        tokenizer_path = bundle / manifest.tokenizer.file
        tokenizer = load_tokenizer(tokenizer_path, manifest.tokenizer.kind)
        return cls(manifest, sessions, tokenizer)

    @classmethod
    def from_sessions(
        cls,
        manifest: Manifest,
        sessions: dict[str, ort.InferenceSession],
        tokenizer: Tokenizer,
    ) -> PocketTTSOnnx:
        """Use sessions you created yourself (custom providers, shared environments...)."""
        return cls(manifest, sessions, tokenizer)

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    # ----------------------------------------------------------------------- voices
    def empty_state(self) -> dict[str, np.ndarray]:
        """flow_lm_main states before any prompt (also what `voice=None` uses)."""
        return self._specs["flow_lm_main"].initial_states()

    def voice_from_audio(
        self,
        audio: str | os.PathLike[str] | tuple[np.ndarray, int],
        truncate: bool = True,
    ) -> Voice:
        """Clone a voice from audio: a file path, or (samples, sample_rate) with samples [N]
        or [channels, N]. `truncate` keeps the first 30 s (upstream's option, on by default
        here: longer prompts do not help and the encoder's attention grows quadratically)."""
        if not self.manifest.voice_cloning:
            raise VoiceError(
                "this bundle was exported from weights without voice cloning; load a "
                "precomputed voice with load_voice() instead"
            )
        source = None
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise VoiceError("voice audio must be a path or a (samples, sample_rate) tuple")
            samples, rate = audio
        elif isinstance(audio, (str, os.PathLike)):
            samples, rate = read_audio(audio)
            source = str(audio)
        else:
            raise VoiceError(
                f"voice audio must be a path or a (samples, sample_rate) tuple, "
                f"got {type(audio).__name__}"
            )
        mono = prepare_voice_audio(
            samples, rate, self.sample_rate, 30.0 if truncate else None, source=source
        )
        try:
            (latents,) = self._sessions["mimi_encoder"].run(
                ["latents"], {"audio": mono[None, None]}
            )
        except Exception as e:  # in practice: out of memory on a very long prompt
            raise VoiceError(
                f"encoding the {mono.shape[0] / self.sample_rate:.0f} s voice prompt failed "
                f"({str(e)[:200]}); use a shorter prompt or truncate=True"
            ) from e
        states = self._flow_lm(self.empty_state(), self._empty_sequence(), latents)[2]
        return Voice(_readonly(states), self.model_id)

    def load_voice(self, path: str | os.PathLike[str], check_model: bool = True) -> Voice:
        """Load a voice saved by `Voice.save` (.npz) or upstream `export-voice` (.safetensors)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            states = self._states_from_upstream(load_upstream_voice_safetensors(path), path)
            model_id = self.model_id  # upstream files carry no model id
        else:
            states, metadata = load_voice_npz(path)
            if metadata.get("format") != VOICE_FORMAT:
                raise VoiceError(f"{path} is not a pocket-tts-onnx voice file")
            model_id = metadata.get("model_id", "")
        self._check_voice_states(states, path)
        if check_model and model_id != self.model_id:
            raise VoiceError(
                f"{path} was computed with another model (id {model_id[:12]}..., this bundle "
                f"is {self.model_id[:12]}...): recompute it with voice_from_audio(), or pass "
                "check_model=False if the weights are known to be the same"
            )
        return Voice(_readonly(states), model_id)

    def _states_from_upstream(self, modules: dict, path: Path) -> dict[str, np.ndarray]:
        """Upstream keeps one "cache" [2, B, T, H, d] per layer; ours are "cache.k"/"cache.v"
        halves, head-major ([B, H, T, d]) and cut to the filled length."""
        states = {}
        for spec in self._specs["flow_lm_main"].states:
            module = spec.upstream_module.split(".", 1)[1]
            entry = modules.get(module)
            if entry is None or "cache" not in entry:
                raise VoiceError(f"{path} has no {module}/cache: it is not a voice for this model")
            cache = entry["cache"]
            filled = int(np.asarray(entry.get("offset", [cache.shape[2]])).reshape(-1)[0])
            states[spec.name] = spec.from_upstream_cache(cache, filled)
        return states

    def _check_voice_states(self, states: dict[str, np.ndarray], path: Path) -> None:
        for spec in self._specs["flow_lm_main"].states:
            if spec.name not in states:
                raise VoiceError(f"{path} lacks state {spec.name!r}: not a voice for this model")
            got = states[spec.name]
            ok = got.ndim == len(spec.shape) and all(
                isinstance(d, str) or d == g for d, g in zip(spec.shape, got.shape, strict=True)
            )
            if not ok or got.dtype != np.dtype(spec.dtype):
                raise VoiceError(
                    f"{path}: state {spec.name!r} ({spec.upstream_module}) has shape "
                    f"{list(got.shape)} {got.dtype}, this model expects {spec.shape} "
                    f"{spec.dtype}: the voice was made for a different model"
                )

    # ------------------------------------------------------------------- generation
    def generate(
        self,
        text: str,
        voice: Voice | None = None,
        *,
        temperature: float | None = None,
        lsd_steps: int | None = None,
        eos_threshold: float | None = None,
        frames_after_eos: int | None = None,
        noise_clamp: float | None = None,
        seed: int | None = None,
        max_frames: int | None = None,
    ) -> np.ndarray:
        """Synthesize `text`; returns mono float32 audio at `sample_rate`. Parameters as in
        `stream`. Runs in the calling thread and decodes in fixed blocks, so the result is
        the same to the bit for the same seed (stream's blocks depend on timing)."""
        p = self._params(
            temperature, lsd_steps, eos_threshold, frames_after_eos, noise_clamp, seed, max_frames
        )
        start = self._start_state(voice)
        chunks = text_to_chunk_tokens(text, self.tokenizer, self.manifest.text)
        rng = np.random.default_rng(p.seed)
        pieces = []
        for chunk in chunks:
            decoder = _Decoder(self)
            block: list[np.ndarray] = []
            for latent in self._chunk_latents(chunk, start, p, rng, threading.Event()):
                block.append(latent)
                if len(block) == MAX_DECODE_FRAMES:
                    pieces.append(decoder.decode(block))
                    block = []
            if block:
                pieces.append(decoder.decode(block))
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(pieces)

    def stream(
        self,
        text: str,
        voice: Voice | None = None,
        *,
        temperature: float | None = None,
        lsd_steps: int | None = None,
        eos_threshold: float | None = None,
        frames_after_eos: int | None = None,
        noise_clamp: float | None = None,
        seed: int | None = None,
        max_frames: int | None = None,
        first_chunk_frames: int = 1,
    ) -> Iterator[AudioChunk]:
        """Yield audio as it is made: latents are generated on a worker thread while this
        generator decodes them. `None` parameters take the manifest's defaults; `max_frames`
        replaces upstream's per-chunk length estimate; `first_chunk_frames` latents are
        decoded for the first audio chunk, later chunks take whatever is ready. Closing the
        generator stops the worker."""
        p = self._params(
            temperature, lsd_steps, eos_threshold, frames_after_eos, noise_clamp, seed, max_frames
        )
        if not isinstance(first_chunk_frames, int) or first_chunk_frames < 1:
            raise InvalidInputError(f"first_chunk_frames must be >= 1, got {first_chunk_frames}")
        # Bad input fails here, in the caller's thread, before any work starts.
        start = self._start_state(voice)
        chunks = text_to_chunk_tokens(text, self.tokenizer, self.manifest.text)
        latents: queue.Queue = queue.Queue()
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(chunks, start, p, latents, stop), daemon=True
        )
        worker.start()
        try:
            yield from self._consume(latents, first_chunk_frames)
        finally:
            stop.set()
            worker.join()

    def _produce(self, chunks, start, p: _Params, out: queue.Queue, stop: threading.Event):
        """Worker thread: ("chunk", None) before each text chunk's latents, ("latent", x) per
        frame, ("error", e) if anything fails, and ("done", None) last."""
        try:
            rng = np.random.default_rng(p.seed)
            for chunk in chunks:
                if stop.is_set():
                    break
                out.put(("chunk", None))
                for latent in self._chunk_latents(chunk, start, p, rng, stop):
                    out.put(("latent", latent))
        except BaseException as e:  # handed to the consumer, raised there
            out.put(("error", e))
        finally:
            out.put(("done", None))

    def _consume(self, latents: queue.Queue, first_chunk_frames: int) -> Iterator[AudioChunk]:
        decoder = None
        need = first_chunk_frames
        block: list[np.ndarray] = []
        done = False
        while not done:
            kind, value = latents.get()
            while True:
                if kind == "error":
                    raise value
                if kind == "done":
                    done = True
                elif kind == "chunk":
                    if block:
                        yield AudioChunk(decoder.decode(block), self.sample_rate)
                        block = []
                    decoder, need = _Decoder(self), first_chunk_frames
                else:
                    block.append(value)
                if done or len(block) >= MAX_DECODE_FRAMES:
                    break
                try:
                    kind, value = latents.get_nowait()
                except queue.Empty:
                    break
            if block and (len(block) >= need or done):
                yield AudioChunk(decoder.decode(block), self.sample_rate)
                block, need = [], 1

    def _params(
        self,
        temperature=None,
        lsd_steps=None,
        eos_threshold=None,
        frames_after_eos=None,
        noise_clamp=None,
        seed=None,
        max_frames=None,
    ) -> _Params:
        """Fill defaults from the manifest and validate, before any work starts."""
        d = self.manifest.defaults
        temperature = d.temperature if temperature is None else temperature
        steps = d.decode_steps if lsd_steps is None else lsd_steps
        eos = d.eos_threshold if eos_threshold is None else eos_threshold
        after = d.frames_after_eos if frames_after_eos is None else frames_after_eos
        clamp = d.noise_clamp if noise_clamp is None else noise_clamp
        if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
            raise InvalidInputError(
                f"temperature must be a finite number >= 0, got {temperature!r}"
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InvalidInputError(f"lsd_steps must be an integer >= 1, got {steps!r}")
        if not _is_number(eos) or math.isnan(eos):
            raise InvalidInputError(f"eos_threshold must be a number, got {eos!r}")
        if after is not None and (not isinstance(after, int) or after < 0):
            raise InvalidInputError(f"frames_after_eos must be an integer >= 0, got {after!r}")
        if clamp is not None and (not _is_number(clamp) or not clamp > 0):
            raise InvalidInputError(f"noise_clamp must be > 0 or None, got {clamp!r}")
        if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
            raise InvalidInputError(f"max_frames must be an integer >= 1, got {max_frames!r}")
        if seed is not None and not isinstance(seed, int):
            raise InvalidInputError(f"seed must be an integer or None, got {seed!r}")
        return _Params(float(temperature), steps, float(eos), after, clamp, max_frames, seed)

    def _start_state(self, voice: Voice | None) -> dict[str, np.ndarray]:
        """The flow-LM state every text chunk starts from (never mutated: graphs return new
        arrays)."""
        if voice is None:
            return self.empty_state()
        if not isinstance(voice, Voice):
            raise VoiceError(
                f"voice must be a Voice (from voice_from_audio/load_voice), got "
                f"{type(voice).__name__}"
            )
        return voice.states

    def _chunk_latents(self, chunk, start_state, p: _Params, rng, stop) -> Iterator[np.ndarray]:
        """Upstream's loop for one text chunk: text prompt, then NaN-BOS autoregression until
        EOS (+ frames after it) or the length limit. Yields latents [1, L]."""
        d = self.manifest.defaults
        after = p.frames_after_eos
        if after is None:
            after = chunk.frames_after_eos_guess + d.frames_after_eos_guess_offset
        max_len = p.max_frames or estimate_max_frames(
            len(chunk.token_ids),
            self.manifest.frame_rate,
            d.max_length_tokens_per_second,
            d.max_length_padding_seconds,
        )
        ids = np.asarray(chunk.token_ids, dtype=np.int64)[None, :]
        (emb,) = self._sessions["text_conditioner"].run(["embeddings"], {"token_ids": ids})
        _, _, states = self._flow_lm(start_state, self._empty_sequence(), emb)
        sequence = np.full((1, 1, self.manifest.latent_dim), np.nan, dtype=np.float32)
        no_text = np.zeros((1, 0, self.manifest.d_model), dtype=np.float32)
        eos_step = None
        for step in range(max_len):
            if stop.is_set():
                return
            conditioning, eos_logit, states = self._flow_lm(states, sequence, no_text)
            if (
                eos_logit.item() > p.eos_threshold
                and eos_step is None
                and (step >= d.min_frames_before_eos)
            ):
                eos_step = step
            if eos_step is not None and step >= eos_step + after:
                return
            latent = self._sample(conditioning, p, rng)
            yield latent
            sequence = latent[:, None, :]

    def _flow_lm(self, states, sequence, text_embeddings):
        feeds = {"sequence": sequence, "text_embeddings": text_embeddings, **states}
        values = self._sessions["flow_lm_main"].run(self._main_outputs, feeds)
        out = dict(zip(self._main_outputs, values, strict=True))
        new_states = {s.name: out[s.output_name] for s in self._specs["flow_lm_main"].states}
        return out["conditioning"], out["eos_logit"], new_states

    def _empty_sequence(self) -> np.ndarray:
        return np.zeros((1, 0, self.manifest.latent_dim), dtype=np.float32)

    def _noise(self, p: _Params, rng: np.random.Generator) -> np.ndarray:
        shape = (1, self.manifest.latent_dim)
        std = p.temperature**0.5
        noise = rng.standard_normal(shape) * std
        if p.noise_clamp is not None and std > 0:
            # Truncated normal on [-clamp, clamp]: redraw what falls outside.
            outside = np.abs(noise) > p.noise_clamp
            while outside.any():
                noise[outside] = rng.standard_normal(int(outside.sum())) * std
                outside = np.abs(noise) > p.noise_clamp
        return noise.astype(np.float32)

    def _sample(self, conditioning, p: _Params, rng) -> np.ndarray:
        """The flow head's decode rule, one graph call per solver step."""
        x = self._noise(p, rng)
        flow_type = self.manifest.flow_type
        n = p.decode_steps

        def head(**times) -> np.ndarray:
            feeds = {"c": conditioning, "x": x}
            for name, value in times.items():
                feeds[name] = np.full((1, 1), value, dtype=np.float32)
            return self._sessions["flow_lm_flow"].run(["flow_dir"], feeds)[0]

        if flow_type == "lsd":
            for i in range(n):
                x = x + head(s=i / n, t=(i + 1) / n) / n
        elif flow_type == "flow_matching":
            for i in range(n):
                x = x + head(t=i / n) / n
        elif flow_type == "drifting":
            x = head()
        elif flow_type == "pointwise":
            x = x + head()
        else:  # the manifest loader rejects other types
            raise BundleError(f"unknown flow head type {flow_type!r}")
        return x.astype(np.float32, copy=False)


class _Decoder:
    """Mimi decoding of one text chunk: fresh state and a fade-in at its start (upstream)."""

    def __init__(self, engine: PocketTTSOnnx):
        spec = engine._specs["mimi_decoder"]
        self._session = engine._sessions["mimi_decoder"]
        self._spec = spec
        self._outputs = engine._dec_outputs
        self._states = spec.initial_states()
        self._sample_rate = engine.sample_rate
        self._first = True

    def decode(self, latents: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(latents, axis=1)  # [1, F, L]
        values = self._session.run(self._outputs, {"latent": batch, **self._states})
        out = dict(zip(self._outputs, values, strict=True))
        self._states = {s.name: out[s.output_name] for s in self._spec.states}
        audio = out["audio_frame"][0, 0]
        if self._first:
            audio = fade_in(audio, self._sample_rate)
            self._first = False
        return audio


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_session_io(name: str, spec: GraphSpec, session: ort.InferenceSession) -> None:
    have = {i.name for i in session.get_inputs()}
    want = {t.name for t in spec.all_inputs}
    if have != want:
        raise BundleError(
            f"graph {name}: inputs {sorted(have)} do not match the manifest's {sorted(want)}"
        )


def default_session_options(threads: int | None = None) -> ort.SessionOptions:
    """Our measured defaults: full graph optimisation and no CPU memory arena (the arena keeps
    its high-water mark, ~130 MB more resident memory for the English model, and was slower
    for these small per-step tensors)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    # Streaming runs the flow LM and the decoder at the same time, so each session gets half
    # the cores: on 2 cores, 2 threads per session measured 2.5x slower than 1.
    options.intra_op_num_threads = threads or max(1, (os.cpu_count() or 2) // 2)
    options.inter_op_num_threads = 1
    return options


def _open_session(path: Path, options, threads, providers) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            options or default_session_options(threads),
            providers=providers or ["CPUExecutionProvider"],
        )
    except Exception as e:  # ORT raises its own exception types for unreadable models
        raise BundleError(f"ONNX Runtime cannot load {path}: {e}") from e
