"""Mimi decoding of one text chunk: a fresh decoder state and a fade-in at its start, as
upstream does per chunk, in calls of at most MAX_DECODE_FRAMES latents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pocket_tts_onnx.runtime.graph import StatefulGraph

__all__ = ["MAX_DECODE_FRAMES", "ChunkDecoder", "fade_in_samples"]

# Mimi decodes at most this many latents per call. Measured on the English decoder: 16 frames
# per call peak at +175 MB of transient memory, 4 frames at +20 MB, for the same audio.
MAX_DECODE_FRAMES = 4


def fade_in_samples(sample_rate: int, fade_in_seconds: float) -> int:
    """Length of the fade-in ramp (upstream: sample_rate // 200 for its 5 ms)."""
    return max(0, int(round(sample_rate * fade_in_seconds)))


class ChunkDecoder:
    """`decode(latents)` -> audio; state carried between calls; the first samples faded in."""

    def __init__(self, graph: StatefulGraph, fade_in_length: int):
        self._graph = graph
        self._states = graph.initial_states()
        self._ramp = np.linspace(0.0, 1.0, fade_in_length, dtype=np.float32)
        self._faded = 0  # samples of the ramp already applied

    def decode(self, latents: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Latents as a list of [1, L] or an array [1, F, L]; returns mono float32 audio.
        Never hands Mimi more than MAX_DECODE_FRAMES latents in one call."""
        batch = latents if isinstance(latents, np.ndarray) else np.stack(list(latents), axis=1)
        pieces = []
        for start in range(0, batch.shape[1], MAX_DECODE_FRAMES):
            part = np.ascontiguousarray(batch[:, start : start + MAX_DECODE_FRAMES])
            out, self._states = self._graph.step({"latent": part}, self._states)
            pieces.append(self._fade(out["audio_frame"][0, 0]))
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _fade(self, audio: np.ndarray) -> np.ndarray:
        n = min(self._ramp.shape[0] - self._faded, audio.shape[-1])
        if n <= 0:
            return audio
        audio = np.array(audio, dtype=np.float32, copy=True)
        audio[:n] *= self._ramp[self._faded : self._faded + n]
        self._faded += n
        return audio
