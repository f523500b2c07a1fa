"""The torch-free engine: a thin front over the runtime pieces.

text -> chunks (text.py) -> latents (generation.py: prompt, NaN-BOS loop, EOS; sampling.py:
noise and flow-head solvers) -> audio (decoder.py: Mimi per chunk with its fade-in), with
streaming.py overlapping the two on a worker thread. Graphs are run through StatefulGraph
(graph.py), which loops states back by the manifest's names; voices.py checks and loads
voices; sessions.py opens the bundle's graphs. `PocketTTSOnnx` wires these to a bundle and
validates parameters once (config.py's GenerationConfig) in the caller's thread;
`generate_batch` hands several texts to batching.py's scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pocket_tts_onnx.errors import InvalidInputError, VoiceError
from pocket_tts_onnx.manifest import PRECISIONS, Manifest, resolve_in_bundle
from pocket_tts_onnx.runtime.audio import prepare_voice_audio, read_audio
from pocket_tts_onnx.runtime.buffered_generation import BufferedLatentGenerator
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.decoder import MAX_DECODE_FRAMES, ChunkDecoder, fade_in_samples
from pocket_tts_onnx.runtime.generation import LatentGenerator
from pocket_tts_onnx.runtime.graph import GraphSet, StatefulGraph
from pocket_tts_onnx.runtime.sampling import FlowSampler
from pocket_tts_onnx.runtime.sessions import (
    default_session_options,
    open_bundle_graph,
    verify_bundle_graph,
)
from pocket_tts_onnx.runtime.streaming import AudioChunk, stream_audio
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
from pocket_tts_onnx.specs import GRAPH_NAMES
from pocket_tts_onnx.text import TextChunk, iter_chunk_tokens, text_to_chunk_tokens

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
FAST_KV = "flow_lm_step"
SessionFactory = Callable[[str], ort.InferenceSession]


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
        # With the fast-KV variant, flow_lm_main opens only if something asks for it.
        lazy_main = session_factory is not None and FAST_KV in manifest.graphs
        missing = [
            g for g in GRAPH_NAMES if g not in sessions and not (lazy_main and g == "flow_lm_main")
        ]
        if missing:
            raise InvalidInputError(f"sessions missing for graphs: {', '.join(missing)}")
        unknown = sorted(set(sessions) - set(manifest.graphs))
        if unknown:
            raise InvalidInputError(f"sessions given for graphs the manifest lacks: {unknown}")
        self.manifest = manifest
        self.tokenizer = tokenizer
        self._graphs = GraphSet(manifest, dict(sessions), session_factory)
        self._sampler = FlowSampler(
            self._graphs["flow_lm_flow"], manifest.flow_type, manifest.latent_dim
        )
        self._main_spec = manifest.graphs["flow_lm_main"].spec
        if FAST_KV in self._graphs:  # same results, no cache copy per step
            self._generator = BufferedLatentGenerator(
                manifest, self._graphs["text_conditioner"], self._graphs[FAST_KV],
                self._sampler, self._main_spec,
            )  # fmt: skip
        else:
            self._generator = LatentGenerator(
                manifest, self._graphs["text_conditioner"], self._graphs["flow_lm_main"],
                self._sampler,
            )  # fmt: skip
        self._fade_in = fade_in_samples(manifest.sample_rate, manifest.defaults.fade_in_seconds)
        main = manifest.graphs["flow_lm_main"]
        self.model_id = main.digest(main.files["fp32"])
        self._voices = VoiceCatalog(
            manifest,
            Path(bundle) if bundle is not None else None,
            lambda path: self.load_voice(path, check_model=False),
        )

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

        eager = [
            name
            for name in GRAPH_NAMES
            if not (name == "flow_lm_main" and FAST_KV in manifest.graphs)
        ]
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
        """Noise and the flow head's solver (used by the benchmark and batch schedulers)."""
        return self._sampler

    def generation_config(self, **overrides) -> GenerationConfig:
        """The manifest's defaults with `overrides` (None = default), validated."""
        return GenerationConfig.from_manifest(self.manifest, **overrides)

    def new_decoder(self) -> ChunkDecoder:
        """A fresh Mimi decoder for one text chunk (its first samples are faded in)."""
        return ChunkDecoder(self._graphs["mimi_decoder"], self._fade_in)

    def fade_in_ramp(self) -> np.ndarray:
        """The gain applied to each chunk's first samples (manifest's fade_in_seconds)."""
        return np.linspace(0.0, 1.0, self._fade_in, dtype=np.float32)

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
        states = self._generator.voice_states(latents, self.empty_state())
        return Voice(readonly(states), self.model_id)

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
        temperature: float | None = None,
        lsd_steps: int | None = None,
        eos_threshold: float | None = None,
        frames_after_eos: int | None = None,
        noise_clamp: float | None = None,
        seed: int | None = None,
        max_frames: int | None = None,
        config: GenerationConfig | None = None,
    ) -> np.ndarray:
        """Synthesize `text`; returns mono float32 audio at `sample_rate`. Parameters as in
        `stream`. Runs in the calling thread and decodes in fixed blocks, so the result is
        the same to the bit for the same seed (stream's blocks depend on timing)."""
        config = self._config(
            config,
            temperature=temperature,
            lsd_steps=lsd_steps,
            eos_threshold=eos_threshold,
            frames_after_eos=frames_after_eos,
            noise_clamp=noise_clamp,
            seed=seed,
            max_frames=max_frames,
        )
        start = self._start_state(voice)
        chunks = self.text_chunks(text)
        rng = np.random.default_rng(config.seed)
        pieces = []
        for chunk in chunks:
            decoder = self.new_decoder()
            block: list[np.ndarray] = []
            for latent in self._generator.chunk_latents(chunk, start, config, rng):
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
        voice: VoiceArg = None,
        *,
        temperature: float | None = None,
        lsd_steps: int | None = None,
        eos_threshold: float | None = None,
        frames_after_eos: int | None = None,
        noise_clamp: float | None = None,
        seed: int | None = None,
        max_frames: int | None = None,
        first_chunk_frames: int | None = None,
        config: GenerationConfig | None = None,
    ) -> Iterator[AudioChunk]:
        """Yield audio as it is made: latents are generated on a worker thread while this
        generator decodes them. `voice`: a Voice, a bundle voice name, None (the bundle's
        default voice, if any) or NO_VOICE. `None` parameters take the manifest's defaults
        (or `config`'s); `max_frames` replaces upstream's per-chunk length estimate;
        `first_chunk_frames` latents are decoded for the first audio chunk, later chunks take
        whatever is ready. Closing the generator stops the worker."""
        config = self._config(
            config,
            temperature=temperature,
            lsd_steps=lsd_steps,
            eos_threshold=eos_threshold,
            frames_after_eos=frames_after_eos,
            noise_clamp=noise_clamp,
            seed=seed,
            max_frames=max_frames,
            first_chunk_frames=first_chunk_frames,
        )
        # Bad input fails here, in the caller's thread, before any work starts. Chunks are made
        # as they are needed: the first audio of a long text does not wait for all of it.
        start = self._start_state(voice)
        chunks = iter_chunk_tokens(text, self.tokenizer, self.manifest.text)
        return stream_audio(
            self._generator, self.new_decoder, chunks, start, config, self.sample_rate
        )

    def generate_batch(
        self, texts: list[str], voice: VoiceArg | list[VoiceArg] = None, *,
        max_streams: int = 8, **params,
    ) -> list[np.ndarray]:  # fmt: skip
        """Synthesize several texts with shared model calls (continuous batching, at most
        `max_streams` at once); `voice` is one voice for all or one per text, `params` as in
        `generate`. Each result equals `generate(text, voice, **params)` within float
        rounding. Needs a bundle exported with the batched graph variants."""
        from pocket_tts_onnx.runtime.batching import generate_batch

        return generate_batch(self, texts, voice, max_streams, **params)

    def _config(self, config: GenerationConfig | None, **overrides) -> GenerationConfig:
        if config is None:
            return GenerationConfig.from_manifest(self.manifest, **overrides)
        if not isinstance(config, GenerationConfig):
            raise InvalidInputError(
                f"config must be a GenerationConfig, got {type(config).__name__}"
            )
        return config.with_overrides(**overrides)
