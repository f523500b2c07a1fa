"""One text chunk's autoregressive decisions (upstream `TTSModel`'s per-chunk loop), apart
from how the graphs are run: the EOS rule, the length limit, the noise, and the progress of
the flow head's solver for the frame being made.

The scheduler drives one `ChunkStream` per batch row: `observe(eos_logit)` after each flow-LM
step, then `begin(conditioning)` and solver steps until `solved`, then `finish()` returns the
latent that is fed back and decoded. Every check that can fail for one stream (non-finite
conditioning, noise or latent) raises `NonFiniteError` here, for that row only.
"""

from __future__ import annotations

import numpy as np

from pocket_tts_onnx.errors import NonFiniteError
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.sampling import FlowSampler
from pocket_tts_onnx.text import TextChunk, estimate_max_frames

__all__ = ["ChunkStream", "chunk_max_frames"]


def chunk_max_frames(chunk: TextChunk, config: GenerationConfig, manifest: Manifest) -> int:
    """Frames the chunk may generate: `max_frames`, or upstream's estimate from its length."""
    d = manifest.defaults
    return config.max_frames or estimate_max_frames(
        len(chunk.token_ids),
        manifest.frame_rate,
        d.max_length_tokens_per_second,
        d.max_length_padding_seconds,
    )


class ChunkStream:
    """The per-chunk state machine of one stream."""

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
        self.max_frames = chunk_max_frames(chunk, config, manifest)
        self.step = 0
        self.eos_step: int | None = None
        self.finished = False
        self.total_solver_steps = sampler.steps(config.lsd_steps)
        # The frame being solved: conditioning, current x, solver steps done.
        self.conditioning: np.ndarray | None = None
        self.x: np.ndarray | None = None
        self.solved_steps = 0

    @property
    def active(self) -> bool:
        """True while another flow-LM step is needed."""
        return not self.finished and self.step < self.max_frames

    @property
    def solving(self) -> bool:
        """True while the flow head has steps left for this frame."""
        return self.x is not None and self.solved_steps < self.total_solver_steps

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

    def begin(self, conditioning: np.ndarray) -> None:
        """Start solving this step's frame from fresh noise under `conditioning` [1, Dz]."""
        if not np.isfinite(conditioning).all():
            raise NonFiniteError(
                "the flow LM produced NaN/Inf: the voice state or an earlier latent is not "
                "finite; recompute the voice or lower the temperature",
                param="voice",
            )
        c = self.config
        self.conditioning = conditioning
        self.x = self.sampler.noise(self.rng, c.temperature, c.noise_clamp)
        self.solved_steps = 0

    def finish(self) -> np.ndarray:
        """The solved latent [1, L] (checked finite); the chunk moves to its next step."""
        latent = self.x
        self.conditioning = self.x = None
        if not np.isfinite(latent).all():
            raise NonFiniteError(
                f"latent {self.step} is NaN/Inf (temperature {self.config.temperature:g}); "
                "lower the temperature or recompute the voice",
                param="temperature",
            )
        self.step += 1
        return latent
