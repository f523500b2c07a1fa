"""The flow LM on B rows: `flow_lm_step` over one `KVBuffers`.

The only way the runtime (engine, scheduler, voice encoding) and the exporter's verification
run the flow LM. Prompts (text or voice latents) are fed in blocks of PROMPT_BLOCK_TOKENS
rows, so a long prompt costs memory linear in its length instead of a T x T attention
matrix; the result equals feeding it whole up to float rounding (the attention is causal).
"""

from __future__ import annotations

import numpy as np

from pocket_tts_onnx.runtime.graph import StatefulGraph
from pocket_tts_onnx.runtime.kv_buffer import KVBuffers, filled_positions, states_from_buffers
from pocket_tts_onnx.specs import GraphSpec

__all__ = ["PROMPT_BLOCK_TOKENS", "FlowLM"]

# Most prompt rows per flow_lm_step call (text tokens or voice latents).
PROMPT_BLOCK_TOKENS = 128


class FlowLM:
    """K/V rows of several streams and the calls that extend them."""

    def __init__(self, graph: StatefulGraph, main_spec: GraphSpec | None, rows: int = 1):
        self.graph = graph
        self.main_spec = main_spec  # voices are flow_lm_main states (None: no voices)
        self.buffers = KVBuffers(graph.spec, rows=rows)
        self.latent_dim = int(graph.spec.inputs[0].shape[2])
        self.d_model = int(graph.spec.inputs[1].shape[2])
        self.limit: int | None = None  # most positions any row may need (None: unbounded)
        self.queries: np.ndarray | None = None  # the last step's post-RoPE queries

    def run(self, rows: slice, sequence, text, keep=None, lengths=None) -> dict[str, np.ndarray]:
        """One call on `rows`: reads their K/V in place, writes the new rows after each row's
        position (only where `keep` is True; only `lengths[i]` of them count for row i, the
        rest is padding); returns every output by name."""
        buffers = self.buffers
        needed = int(buffers.positions[rows].max(initial=0)) + sequence.shape[1] + text.shape[1]
        buffers.reserve(needed, limit=self.limit)
        names = list(self.graph.output_names)
        feeds = {"sequence": sequence, "text_embeddings": text, **buffers.feeds(rows)}
        out = dict(zip(names, self.graph.session.run(names, feeds), strict=True))
        buffers.append(rows, out, keep, lengths)
        return out

    def load(self, row: int, states: dict[str, np.ndarray]) -> int:
        """Start `row` from flow_lm_main `states` (a voice); returns its filled positions."""
        filled = filled_positions(self.main_spec, states)
        self.buffers.load(row, states, filled)
        return filled

    def prompt(self, row: int, embeddings: np.ndarray, stop=None) -> None:
        """Feed a prompt [1, T, D] to `row` in blocks (stops early once `stop()` is true)."""
        rows = slice(row, row + 1)
        empty = np.zeros((1, 0, self.latent_dim), np.float32)
        for start in range(0, embeddings.shape[1], PROMPT_BLOCK_TOKENS):
            if stop is not None and stop():
                return
            part = np.ascontiguousarray(embeddings[:, start : start + PROMPT_BLOCK_TOKENS])
            self.run(rows, empty, part)

    def prompt_rows(self, first: int, embeddings: list[np.ndarray], bos: bool = False):
        """Feed prompts [1, T_i, D] to rows first, first + 1, ... in one call per block: the
        shorter ones padded at the end, their padding never counted (the attention is
        causal, so each row gets exactly what it would alone).

        With `bos` (one row only: no padding), the first autoregressive step (BOS) rides
        along the last block, the graph's text-then-sequence order being exactly the
        prompt followed by that step: returns its (conditioning, eos_logit, queries), one
        flow-LM call less before the first audio. Otherwise returns None."""
        n, longest = len(embeddings), max(e.shape[1] for e in embeddings)
        bos = bos and n == 1 and longest > 0
        padded = np.zeros((n, longest, self.d_model), np.float32)
        for i, e in enumerate(embeddings):
            padded[i, : e.shape[1]] = e[0]
        lengths = np.array([e.shape[1] for e in embeddings], dtype=np.int64)
        empty = np.zeros((n, 0, self.latent_dim), np.float32)
        out = None
        for start in range(0, longest, PROMPT_BLOCK_TOKENS):
            part = padded[:, start : start + PROMPT_BLOCK_TOKENS]
            counts = np.clip(lengths - start, 0, part.shape[1])
            sequence = empty
            if bos and start + PROMPT_BLOCK_TOKENS >= longest:
                sequence = np.full((n, 1, self.latent_dim), np.nan, np.float32)
                counts = counts + 1
            out = self.run(slice(first, first + n), sequence, part, lengths=counts)
        if not bos:
            return None
        return out["conditioning"], out["eos_logit"], out.get("queries")  # queries: last position

    def step(self, sequence: np.ndarray, keep: np.ndarray | None = None):
        """One autoregressive step of rows [0, n) (`sequence` [n, 1, L], NaN = BOS):
        (conditioning [n, Dz], eos_logit [n, 1]); rows where `keep` is False are computed but
        not extended (they are still solving their previous frame)."""
        n = sequence.shape[0]
        no_text = np.zeros((n, 0, self.d_model), dtype=np.float32)
        out = self.run(slice(0, n), sequence, no_text, keep)
        self.queries = out.get("queries")  # [n, L, H, d] for word timestamps
        return out["conditioning"], out["eos_logit"]

    def states(self, row: int) -> dict[str, np.ndarray]:
        """flow_lm_main states holding `row`'s positions (what a Voice stores)."""
        return states_from_buffers(self.buffers, row, self.main_spec)
