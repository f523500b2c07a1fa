"""The torch-free engine: a thin front over the one generation core.

text -> chunks (text.py) -> the scheduler (batching.py: flow LM on B rows, flow head, EOS;
decoding.py: Mimi with its fade-in on a second thread) -> AudioChunks. `generate`, `stream`,
`open_stream` and `generate_batch` all run that one loop; a single stream is a batch of one.
`PocketTTSOnnx` opens a bundle's graphs (sessions.py, graph.py), resolves voices (voices.py)
and hands the scheduler a narrow `GenerationCore` (core.py).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pocket_tts_onnx.errors import BundleError, InvalidInputError, PocketTTSOnnxError, VoiceError
from pocket_tts_onnx.manifest import PRECISIONS, Manifest, resolve_in_bundle
from pocket_tts_onnx.runtime.audio import prepare_voice_audio, read_audio
from pocket_tts_onnx.runtime.batching import BatchScheduler
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.core import CORE_GRAPHS, GenerationCore
from pocket_tts_onnx.runtime.decoder import MAX_DECODE_FRAMES, ChunkDecoder
from pocket_tts_onnx.runtime.graph import GraphSet, StatefulGraph
from pocket_tts_onnx.runtime.sampling import FlowSampler
from pocket_tts_onnx.runtime.sessions import (
    default_session_options,
    open_bundle_graph,
    verify_bundle_graph,
)
from pocket_tts_onnx.runtime.streams import AudioChunk, BatchStream, TextStream
from pocket_tts_onnx.runtime.tokenizer import Tokenizer, load_tokenizer
from pocket_tts_onnx.runtime.voice_file import (
    expected_from_spec,
    load_upstream_voice_safetensors,
    load_voice_npz,
)
from pocket_tts_onnx.runtime.voices import (
    NO_VOICE,
    VOICE_FORMAT,
    Voice,
    VoiceCatalog,
    check_voice_states,
    readonly,
    states_from_upstream,
)
from pocket_tts_onnx.text import TextChunk, text_to_chunk_tokens

__all__ = [
    "MAX_DECODE_FRAMES",
    "NO_VOICE",
    "VOICE_FORMAT",
    "AudioChunk",
    "GenerationConfig",
    "PocketTTSOnnx",
    "Voice",
    "default_session_options",
]

VoiceArg = Voice | str | None
SessionFactory = Callable[[str], ort.InferenceSession]
# Opened when the engine is built; the other graphs (the contract flow_lm_main and
# mimi_decoder, kept for third-party runtimes) only if something asks for them.
EAGER_GRAPHS = (*CORE_GRAPHS, "mimi_encoder")
# Streams the engine's own scheduler runs at once (calls from several threads share steps).
ENGINE_STREAMS = 8


def _require_variants(manifest: Manifest) -> None:
    missing = [name for name in CORE_GRAPHS if name not in manifest.graphs]
    if missing:
        raise BundleError(
            f"this bundle has no {', '.join(missing)} graph(s), which this runtime generates "
            "with: re-export it with this version of pocket-tts-onnx"
        )


class PocketTTSOnnx:
    """Pocket TTS on ONNX Runtime. Build with `load(bundle_dir)` or `from_sessions(...)`."""

    def __init__(
        self,
        manifest: Manifest,
        sessions: dict[str, ort.InferenceSession],
        tokenizer: Tokenizer,
        bundle: str | os.PathLike[str] | None = None,
        session_factory: SessionFactory | None = None,
    ):
        _require_variants(manifest)
        required = EAGER_GRAPHS if session_factory is None else ()
        missing = [g for g in required if g not in sessions]
        if missing:
            raise InvalidInputError(f"sessions missing for graphs: {', '.join(missing)}")
        unknown = sorted(set(sessions) - set(manifest.graphs))
        if unknown:
            raise InvalidInputError(f"sessions given for graphs the manifest lacks: {unknown}")
        self.manifest = manifest
        self.tokenizer = tokenizer
        self._graphs = GraphSet(manifest, dict(sessions), session_factory)
        self._main_spec = manifest.graphs["flow_lm_main"].spec
        # The core reaches the voice catalog through a weak reference: the scheduler threads
        # hold the core, and must not keep an unused engine (and themselves) alive.
        start_state = weakref.WeakMethod(self._start_state)

        def resolve_voice(voice):
            method = start_state()
            if method is None:
                raise PocketTTSOnnxError(
                    "the PocketTTSOnnx this scheduler was built from is gone: keep a "
                    "reference to it while its core is in use"
                )
            return method(voice)

        self._core = GenerationCore(manifest, self._graphs, tokenizer, resolve_voice)
        self.model_id = manifest.model_id
        self._voices = VoiceCatalog(
            manifest,
            Path(bundle) if bundle is not None else None,
            lambda path: self.load_voice(path, check_model=False),
        )
        self._scheduler: BatchScheduler | None = None
        self._scheduler_lock = threading.Lock()

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

        _require_variants(manifest)
        eager = EAGER_GRAPHS
        if verify_checksums:  # graphs opened on first use are checked now, not then
            for name in manifest.graphs:
                if name not in eager:
                    verify_bundle_graph(bundle, manifest, name, precision)

        def open_graph(name: str) -> ort.InferenceSession:
            return open_bundle_graph(
                bundle, manifest, name, precision, verify_checksums and name in eager,
                session_options, threads, providers,
            )  # fmt: skip

        sessions = {name: open_graph(name) for name in eager}
        tokenizer_path = resolve_in_bundle(bundle, manifest.tokenizer.file)
        tok = manifest.tokenizer  # sha256 and vocabulary size: a swapped tokenizer is refused
        tokenizer = load_tokenizer(
            tokenizer_path, tok.kind, tok.sha256 if verify_checksums else None, tok.vocab_size
        )
        return cls(manifest, sessions, tokenizer, bundle=bundle, session_factory=open_graph)

    @classmethod
    def from_sessions(
        cls,
        manifest: Manifest,
        sessions: dict[str, ort.InferenceSession],
        tokenizer: Tokenizer,
        bundle: str | os.PathLike[str] | None = None,
    ) -> PocketTTSOnnx:
        """Use sessions you created yourself (custom providers, shared environments...).
        `bundle` (the folder the manifest came from) enables voices by name."""
        return cls(manifest, sessions, tokenizer, bundle=bundle)

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def graphs(self) -> Mapping[str, StatefulGraph]:
        """The bundle's graphs by name, each runnable with states looped back by name: the
        five contract graphs, plus variants (batched, fast-KV) opened on first access."""
        return self._graphs

    @property
    def sampler(self) -> FlowSampler:
        """Noise and the flow head's solver (used by the benchmark)."""
        return self._core.sampler

    @property
    def core(self) -> GenerationCore:
        """The narrow object a `BatchScheduler` drives (graphs, text rules, defaults)."""
        return self._core

    def generation_config(self, **overrides) -> GenerationConfig:
        """The manifest's defaults with `overrides` (None = default), validated."""
        return self._core.config(None, **overrides)

    def new_decoder(self) -> ChunkDecoder:
        """A fresh Mimi decoder for one text chunk (its first samples are faded in)."""
        return ChunkDecoder(self._graphs["mimi_decoder_batched"], self._core.fade_in)

    def fade_in_ramp(self) -> np.ndarray:
        """The gain applied to each chunk's first samples (manifest's fade_in_seconds)."""
        return np.linspace(0.0, 1.0, self._core.fade_in, dtype=np.float32)

    def text_chunks(self, text: str) -> list[TextChunk]:
        """`text` split and tokenized into chunks by the manifest's rules (as upstream)."""
        return text_to_chunk_tokens(text, self.tokenizer, self.manifest.text)

    # ----------------------------------------------------------------------- voices
    @property
    def voices(self) -> list[str]:
        """Names of the voices shipped in the bundle (`generate(text, voice=NAME)`)."""
        return self._voices.names

    @property
    def default_voice(self) -> str | None:
        """The voice `voice=None` uses, or None when the bundle has no default."""
        return self._voices.default

    def empty_state(self) -> dict[str, np.ndarray]:
        """flow_lm_main states before any prompt (what `voice=NO_VOICE` uses)."""
        return self._main_spec.initial_states()

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
                "this bundle was exported from weights without voice cloning; use a voice "
                f"by name ({', '.join(self.voices) or 'none shipped'}) or load_voice()"
            )
        source = None
        if isinstance(audio, tuple):
            if len(audio) != 2:
                raise VoiceError("voice audio must be a path or a (samples, sample_rate) tuple")
            samples, rate = audio
        elif isinstance(audio, (str, os.PathLike)):
            samples, rate = read_audio(audio, 30.0 if truncate else None)  # decode no more
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
            latents = self._graphs["mimi_encoder"].run({"audio": mono[None, None]})["latents"]
        except Exception as e:  # in practice: out of memory on a very long prompt
            raise VoiceError(
                f"encoding the {mono.shape[0] / self.sample_rate:.0f} s voice prompt failed "
                f"({str(e)[:200]}); use a shorter prompt or truncate=True"
            ) from e
        flow_lm = self._core.flow_lm(rows=1)  # this thread's own rows, not the scheduler's
        flow_lm.load(0, self.empty_state())
        flow_lm.prompt(0, latents)
        return Voice(readonly(flow_lm.states(0)), self.model_id)

    def load_voice(self, path: str | os.PathLike[str], check_model: bool = True) -> Voice:
        """Load a voice saved by `Voice.save` (.npz) or upstream `export-voice` (.safetensors)."""
        path = Path(path)
        spec = self._main_spec
        if path.suffix == ".safetensors":
            states = states_from_upstream(load_upstream_voice_safetensors(path), spec, path)
            model_id = self.model_id  # upstream files carry no model id
        else:
            states, metadata = load_voice_npz(path, expected=expected_from_spec(spec))
            if metadata.get("format") != VOICE_FORMAT:
                raise VoiceError(f"{path} is not a pocket-tts-onnx voice file")
            model_id = metadata.get("model_id", "")
        check_voice_states(states, spec, path)
        if check_model and model_id != self.model_id:
            raise VoiceError(
                f"{path} was computed with another model (id {model_id[:12]}..., this bundle "
                f"is {self.model_id[:12]}...): recompute it with voice_from_audio(), or pass "
                "check_model=False if the weights are known to be the same"
            )
        return Voice(readonly(states), model_id)

    def start_state(self, voice: VoiceArg = None) -> dict[str, np.ndarray]:
        """The flow-LM states every text chunk starts from for `voice` (read-only arrays):
        a Voice, a bundle voice name, None (the default voice, if any) or NO_VOICE."""
        return self._start_state(voice)

    def _start_state(self, voice) -> dict[str, np.ndarray]:
        if voice is None:
            voice = self._voices.default if self._voices.default is not None else NO_VOICE
        if voice is NO_VOICE:
            return self.empty_state()
        if isinstance(voice, str):
            voice = self._voices.get(voice)
        if not isinstance(voice, Voice):
            raise VoiceError(
                "voice must be a Voice (from voice_from_audio/load_voice), a voice name "
                f"({', '.join(self.voices) or 'this bundle has none'}), None or NO_VOICE; got "
                f"{type(voice).__name__}"
            )
        # Shapes only (cheap): a hand-made Voice for another model fails here, typed; NaN
        # states were refused at load, and any NaN later is caught at the first step.
        check_voice_states(voice.states, self._main_spec, "voice", False)
        return voice.states

    # ------------------------------------------------------------------- generation
    def generate(
        self,
        text: str,
        voice: VoiceArg = None,
        *,
        config: GenerationConfig | None = None,
        **params,
    ):
        """Synthesize `text`; returns mono float32 audio at `sample_rate` (with
        `timestamps=True`: (audio, words), the WordEvents with their ends, in order). `params` are
        GenerationConfig fields (None = the manifest's default), on top of `config`. With a
        seed, the same call gives the same audio to the bit when it runs alone (streams from
        other threads share its model calls, which changes float rounding only)."""
        stream = self.stream(text, voice, config=config, **params)
        words = []
        try:
            pieces = []
            for chunk in stream:
                pieces.append(chunk.samples)
                words += [w for w in chunk.words if w.end is not None]
        finally:
            stream.cancel()
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return (audio, words) if stream.config.timestamps else audio

    def stream(
        self,
        text: str,
        voice: VoiceArg = None,
        *,
        config: GenerationConfig | None = None,
        **params,
    ) -> BatchStream:
        """Yield AudioChunks as they are made (the flow LM and Mimi run on two threads).
        `voice`: a Voice, a bundle voice name, None (the bundle's default voice, if any) or
        NO_VOICE. `params` are GenerationConfig fields (temperature, lsd_steps, eos_threshold,
        frames_after_eos, noise_clamp, seed, max_frames, first_chunk_frames, timestamps). Bad input
        raises here, in the caller's thread; `close()` (or `cancel()`) stops the stream.
        `timestamps=True`: each AudioChunk's `words` holds the WordEvents (start, then end)
        decided up to its audio; TimestampsUnavailableError if the bundle has no heads."""
        return self._engine_scheduler().submit(text, voice, config, **params)

    def open_stream(
        self, voice: VoiceArg = None, *, config: GenerationConfig | None = None, **params
    ) -> TextStream:
        """Speak text while it is being written (e.g. an LLM's output): `write(piece)` as it
        arrives, `end()` at the end, and iterate (or `async for`) over AudioChunks. Each
        sentence starts as soon as it is complete; each text chunk's audio is followed by an
        AudioChunk with `end_of_text` set. With `timestamps=True`, the words' character
        offsets count from the start of everything written."""
        return self._engine_scheduler().open_stream(voice, config, **params)

    def generate_batch(
        self, texts: list[str], voice: VoiceArg | list[VoiceArg] = None, *,
        max_streams: int = 8, config: GenerationConfig | None = None, **params,
    ) -> list[np.ndarray]:  # fmt: skip
        """Synthesize several texts with shared model calls (at most `max_streams` at
        once); `voice` is one voice for all or one per text, `params` as in `generate`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("texts must be a list of strings (one per audio)", "text")
        voices = list(voice) if isinstance(voice, (list, tuple)) else [voice] * len(texts)
        if len(voices) != len(texts):
            raise InvalidInputError(
                f"voice: {len(voices)} voices for {len(texts)} texts; give one, or one per text",
                "voice",
            )
        if not texts:
            return []
        limit = min(max_streams, len(texts)) if isinstance(max_streams, int) else max_streams
        with BatchScheduler(self._core, max_streams=limit, max_queue=len(texts)) as scheduler:
            streams = [
                scheduler.submit(t, v, config, **params) for t, v in zip(texts, voices, strict=True)
            ]
            return [
                np.concatenate([c.samples for c in s] or [np.zeros(0, np.float32)]) for s in streams
            ]

    def close(self) -> None:
        """Stop the engine's scheduler threads (they also stop when the engine is collected)."""
        with self._scheduler_lock:
            if self._scheduler is not None:
                self._scheduler.close()
                self._scheduler = None

    def _engine_scheduler(self) -> BatchScheduler:
        with self._scheduler_lock:
            if self._scheduler is None or not self._scheduler.alive:
                self._scheduler = BatchScheduler(
                    self._core, max_streams=ENGINE_STREAMS, max_queue=1 << 20
                )
                weakref.finalize(self, self._scheduler.close)
            return self._scheduler
