"""Single-stream generation on the fast-KV variant `flow_lm_step`.

The same per-chunk loop as `LatentGenerator` (text prompt in blocks, NaN-BOS steps, EOS
rule), but the flow LM's keys and values live in one preallocated `KVBuffers` row that each
step reads in place and extends by one row: no step copies the cache, so its cost does not
grow with the voice prompt and the text (the contract graph returns the whole cache every
step). Results equal the contract path within float rounding (both are verified against
upstream at export).
"""

from __future__ import annotations

import threading

import numpy as np

from pocket_tts_onnx.runtime import generation
from pocket_tts_onnx.runtime.generation import LatentGenerator
from pocket_tts_onnx.runtime.kv_buffer import KVBuffers, filled_positions, states_from_buffers

__all__ = ["BufferedLatentGenerator", "prompt_rows", "run_step"]

_ROW = slice(0, 1)


def run_step(graph, buffers: KVBuffers, rows: slice, sequence, text) -> dict[str, np.ndarray]:
    """One `flow_lm_step` call on `rows`: reads their buffers in place, writes the new K/V
    rows after each row's position; returns all outputs by name."""
    feeds = buffers.prepare(rows, sequence.shape[1] + text.shape[1])
    names = list(graph.output_names)
    values = graph.session.run(names, {"sequence": sequence, "text_embeddings": text, **feeds})
    out = dict(zip(names, values, strict=True))
    buffers.append(rows, out)
    return out


def prompt_rows(graph, buffers, rows: slice, embeddings, stop=None) -> None:
    """Feed a prompt [n, T, D] to `rows` in blocks of PROMPT_BLOCK_TOKENS (linear memory)."""
    block = generation.PROMPT_BLOCK_TOKENS
    empty = np.zeros((embeddings.shape[0], 0, buffers.spec.inputs[0].shape[2]), np.float32)
    for start in range(0, embeddings.shape[1], block):
        if stop is not None and stop.is_set():
            return
        part = np.ascontiguousarray(embeddings[:, start : start + block])
        run_step(graph, buffers, rows, empty, part)


class BufferedLatentGenerator(LatentGenerator):
    """`LatentGenerator` whose states are a one-row `KVBuffers` (dict states are loaded into
    one on the first prompt)."""

    def __init__(self, manifest, text_conditioner, flow_lm_step, sampler, main_spec):
        super().__init__(manifest, text_conditioner, flow_lm_step, sampler)
        self.main_spec = main_spec

    def _buffers(self, states, extra: int) -> KVBuffers:
        if isinstance(states, KVBuffers):
            return states
        filled = filled_positions(self.main_spec, states)
        # Room for the prompt and a typical chunk's frames; grows by doubling past that.
        buffers = KVBuffers(self.flow_lm.spec, rows=1, capacity=filled + extra + 256)
        buffers.load(0, states, filled)
        return buffers

    def prompt(self, states, embeddings, stop: threading.Event | None = None, block=None):
        buffers = self._buffers(states, embeddings.shape[1])
        prompt_rows(self.flow_lm, buffers, _ROW, embeddings, stop)
        return buffers

    def lm_step(self, states, sequence):
        buffers = self._buffers(states, 1)
        out = run_step(self.flow_lm, buffers, _ROW, sequence, self._no_text)
        return out["conditioning"], out["eos_logit"], buffers

    def voice_states(self, embeddings: np.ndarray, start: dict) -> dict:
        """flow_lm_main states after prompting `start` with `embeddings` (a voice)."""
        return states_from_buffers(self.prompt(start, embeddings), 0, self.main_spec)
