"""The per-chunk generation loop of upstream `TTSModel`, on ONNX graphs.

For each text chunk: a fresh copy of the start state (never mutated: graphs return new
arrays), the text prompt, then NaN-BOS autoregression until EOS (+ frames after it) or the
length limit. Prompts (text or voice latents) are fed in blocks of PROMPT_BLOCK_TOKENS rows
carrying the state, so a long prompt costs memory linear in its length instead of a T x T
attention matrix; the result equals feeding it whole up to float rounding (the attention is
causal).

`ChunkStream` is the per-stream state machine (EOS rule, max length, noise): a single-stream
loop drives it here, and a batched scheduler can drive many of them, one row each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from pocket_tts_onnx.errors import NonFiniteError
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.graph import StatefulGraph
from pocket_tts_onnx.runtime.sampling import FlowSampler
from pocket_tts_onnx.text import TextChunk, estimate_max_frames

__all__ = ["PROMPT_BLOCK_TOKENS", "ChunkStream", "LatentGenerator"]

# Most prompt rows per flow_lm_main call (text tokens or voice latents).
PROMPT_BLOCK_TOKENS = 128


class ChunkStream:
    """One text chunk's autoregressive decisions, independent of how the graphs are run.

    Drive it with `while s.active: cond, eos = <flow LM step>; latent = s.next_step(cond, eos)`
    (None = the chunk is over), feeding each latent back as the next `sequence`. A batched
    scheduler can split `next_step` into `observe` + its own batched solve + `accept`.
    """

    def __init__(
        self,
        chunk: TextChunk,
        config: GenerationConfig,
        manifest: Manifest,
        sampler: FlowSampler,
        rng: np.random.Generator,
    ):
        d = manifest.defaults
        self.config, self.sampler, self.rng = config, sampler, rng
        self.min_frames_before_eos = d.min_frames_before_eos
        after = config.frames_after_eos
        if after is None:
            after = chunk.frames_after_eos_guess + d.frames_after_eos_guess_offset
        self.frames_after_eos = after
        self.max_frames = config.max_frames or estimate_max_frames(
            len(chunk.token_ids),
            manifest.frame_rate,
            d.max_length_tokens_per_second,
            d.max_length_padding_seconds,
        )
        self.step = 0
        self.eos_step: int | None = None
        self.finished = False

    @property
    def active(self) -> bool:
        """True while another flow-LM step is needed."""
        return not self.finished and self.step < self.max_frames

    def observe(self, eos_logit: float) -> bool:
        """Apply the EOS rule to this step's logit: True if the step yields a latent."""
        if not self.active:
            self.finished = True
            return False
        if (
            self.eos_step is None
            and eos_logit > self.config.eos_threshold
            and self.step >= self.min_frames_before_eos
        ):
            self.eos_step = self.step
        if self.eos_step is not None and self.step >= self.eos_step + self.frames_after_eos:
            self.finished = True
            return False
        return True

    def noise(self) -> np.ndarray:
        c = self.config
        return self.sampler.noise(self.rng, c.temperature, c.noise_clamp)

    def accept(self, latent: np.ndarray) -> np.ndarray:
        """Record this step's latent [1, L] (checked finite) and move to the next step."""
        if not np.isfinite(latent).all():
            raise NonFiniteError(
                f"latent {self.step} is NaN/Inf (temperature {self.config.temperature:g}); "
                "lower the temperature or recompute the voice"
            )
        self.step += 1
        return latent

    def next_step(self, conditioning: np.ndarray, eos_logit) -> np.ndarray | None:
        """The latent [1, L] for this step, or None when the chunk is over."""
        if not self.observe(float(np.asarray(eos_logit).reshape(-1)[0])):
            return None
        c = self.config
        latent = self.sampler.sample(
            conditioning, self.rng, c.temperature, c.noise_clamp, c.lsd_steps
        )
        return self.accept(latent)


class LatentGenerator:
    """Runs the text conditioner and the flow LM for one stream at a time."""

    def __init__(
        self,
        manifest: Manifest,
        text_conditioner: StatefulGraph,
        flow_lm: StatefulGraph,
        sampler: FlowSampler,
    ):
        self.manifest = manifest
        self.text_conditioner = text_conditioner
        self.flow_lm = flow_lm
        self.sampler = sampler
        self._empty_sequence = np.zeros((1, 0, manifest.latent_dim), dtype=np.float32)
        self._no_text = np.zeros((1, 0, manifest.d_model), dtype=np.float32)

    def prompt(
        self,
        states: dict[str, np.ndarray],
        embeddings: np.ndarray,
        stop: threading.Event | None = None,
        block: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Feed `embeddings` [1, T, D] (text, or voice latents) in blocks; the new states."""
        block = block or PROMPT_BLOCK_TOKENS
        for start in range(0, embeddings.shape[1], block):
            if stop is not None and stop.is_set():
                break
            part = np.ascontiguousarray(embeddings[:, start : start + block])
            _, states = self.flow_lm.step(
                {"sequence": self._empty_sequence, "text_embeddings": part}, states
            )
        return states

    def voice_states(self, embeddings: np.ndarray, start: dict) -> dict[str, np.ndarray]:
        """flow_lm_main states after prompting `start` with `embeddings` (a voice)."""
        return self.prompt(start, embeddings)

    def lm_step(
        self, states: dict[str, np.ndarray], sequence: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One autoregressive step: (conditioning, eos_logit, new states)."""
        out, states = self.flow_lm.step(
            {"sequence": sequence, "text_embeddings": self._no_text}, states
        )
        return out["conditioning"], out["eos_logit"], states

    def chunk_latents(
        self,
        chunk: TextChunk,
        start_states: dict[str, np.ndarray],
        config: GenerationConfig,
        rng: np.random.Generator,
        stop: threading.Event | None = None,
    ) -> Iterator[np.ndarray]:
        """Latents [1, L] for one text chunk; returns early once `stop` is set."""
        ids = np.asarray(chunk.token_ids, dtype=np.int64)[None, :]
        emb = self.text_conditioner.run({"token_ids": ids})["embeddings"]
        states = self.prompt(start_states, emb, stop)
        stream = ChunkStream(chunk, config, self.manifest, self.sampler, rng)
        sequence = np.full((1, 1, self.manifest.latent_dim), np.nan, dtype=np.float32)
        while stream.active:
            if stop is not None and stop.is_set():
                return
            conditioning, eos_logit, states = self.lm_step(states, sequence)
            latent = stream.next_step(conditioning, eos_logit)
            if latent is None:
                return
            yield latent
            sequence = latent[:, None, :]
