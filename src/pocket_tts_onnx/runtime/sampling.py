"""Noise and the flow head's decode rules (upstream `FlowLM.forward` and its `*_decode`).

Noise is N(0, temperature), truncated to [-noise_clamp, noise_clamp] when a clamp is set. The
truncated normal is drawn by inverting its CDF, which has no redraw loop: any clamp, however
tiny, costs the same. Upstream (torch's `trunc_normal_`) draws the same distribution by
rejection; the draws differ, the distribution does not. Works on a batch of rows [B, L] so a
batched scheduler can solve many streams in one call.
"""

from __future__ import annotations

import math

import numpy as np

from pocket_tts_onnx.errors import BundleError, NonFiniteError
from pocket_tts_onnx.runtime.graph import StatefulGraph
from pocket_tts_onnx.specs import FLOW_TIME_INPUTS

__all__ = ["FlowSampler", "draw_noise"]


def draw_noise(
    rng: np.random.Generator, shape: tuple[int, ...], temperature: float, noise_clamp: float | None
) -> np.ndarray:
    """float32 noise with std sqrt(temperature), truncated to +-noise_clamp when set."""
    std = math.sqrt(temperature)
    if std == 0.0:
        return np.zeros(shape, dtype=np.float32)
    if noise_clamp is None:
        with np.errstate(over="ignore"):  # an overflow is reported by the caller, typed
            return (rng.standard_normal(shape) * std).astype(np.float32)
    from scipy.special import erfinv  # only needed with a clamp; scipy is a base dependency

    # Inverse CDF on [-c, c]: v ~ U(-erf(c / (std sqrt 2)), +erf(...)), x = std sqrt2 erfinv(v).
    # erf/erfinv of tiny arguments are accurate in float64, so clamp 1e-30 works too.
    bound = math.erf(noise_clamp / (std * math.sqrt(2.0)))
    v = rng.uniform(-bound, bound, size=shape)
    x = erfinv(v) * (std * math.sqrt(2.0))
    return np.clip(x, -noise_clamp, noise_clamp).astype(np.float32)


class FlowSampler:
    """The flow head's solver: one graph call per step, no noise inside the graph."""

    def __init__(self, graph: StatefulGraph, flow_type: str, latent_dim: int):
        if flow_type not in FLOW_TIME_INPUTS:
            raise BundleError(f"unknown flow head type {flow_type!r}")
        self.graph = graph
        self.flow_type = flow_type
        self.latent_dim = latent_dim

    def noise(
        self, rng: np.random.Generator, temperature: float, noise_clamp: float | None, rows: int = 1
    ) -> np.ndarray:
        """[rows, L] starting noise; refuses a temperature whose noise overflows float32."""
        x = draw_noise(rng, (rows, self.latent_dim), temperature, noise_clamp)
        if not np.isfinite(x).all():
            raise NonFiniteError(
                f"temperature {temperature:g} makes the noise overflow float32: lower the "
                "temperature (the manifest's default is the model's usual value)",
                param="temperature",
            )
        return x

    def steps(self, lsd_steps: int) -> int:
        """Graph calls one latent takes: `lsd_steps` for the iterative heads, else one."""
        return lsd_steps if self.flow_type in ("lsd", "flow_matching") else 1

    def advance(
        self, conditioning: np.ndarray, x: np.ndarray, done: np.ndarray, total: np.ndarray
    ) -> np.ndarray:
        """One solver step for each row: row i is at step `done[i]` of `total[i]` (rows may
        be at different steps, so a row with many steps never makes the others wait for
        all of them). Returns the new x [B, L]."""
        inputs = {"c": conditioning, "x": x}
        n = total.astype(np.float32)[:, None]
        if self.flow_type == "lsd":
            inputs["s"] = (done / total).astype(np.float32)[:, None]
            inputs["t"] = ((done + 1) / total).astype(np.float32)[:, None]
        elif self.flow_type == "flow_matching":
            inputs["t"] = (done / total).astype(np.float32)[:, None]
        head = self.graph.run(inputs)["flow_dir"]
        if self.flow_type == "drifting":
            return head.astype(np.float32, copy=False)
        if self.flow_type == "pointwise":
            return (x + head).astype(np.float32, copy=False)
        return (x + head / n).astype(np.float32, copy=False)

    def solve(self, conditioning: np.ndarray, x: np.ndarray, steps: int) -> np.ndarray:
        """Decode noise `x` [B, L] under `conditioning` [B, Dz] into latents [B, L]."""
        rows = x.shape[0]
        total = np.full(rows, steps, dtype=np.int64)
        for i in range(self.steps(steps)):
            x = self.advance(conditioning, x, np.full(rows, i, dtype=np.int64), total)
        return x.astype(np.float32, copy=False)

    def sample(
        self,
        conditioning: np.ndarray,
        rng: np.random.Generator,
        temperature: float,
        noise_clamp: float | None,
        steps: int,
    ) -> np.ndarray:
        """One latent [1, L]; raises NonFiniteError instead of returning NaN/Inf."""
        if not np.isfinite(conditioning).all():
            raise NonFiniteError(
                "the flow LM produced NaN/Inf: the voice state or an earlier latent is not "
                "finite (a temperature far above 1 can do this); lower the temperature or "
                "recompute the voice"
            )
        x = self.solve(conditioning, self.noise(rng, temperature, noise_clamp), steps)
        if not np.isfinite(x).all():
            raise NonFiniteError(
                f"the flow head produced NaN/Inf from finite inputs (temperature "
                f"{temperature:g}); lower the temperature"
            )
        return x
