"""One iteration's model work for the active rows, each row's failure kept to that row.

The flow-LM step runs every row in one call; the flow head's solver steps run batched, rows
at different steps of their own solve. When a batched call fails, it is run again row by
row, so only the rows that fail alone end (with a typed error) and the others go on.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pocket_tts_onnx.errors import GenerationError
from pocket_tts_onnx.runtime.flow_lm import FlowLM
from pocket_tts_onnx.runtime.generation import ChunkStream
from pocket_tts_onnx.runtime.sampling import FlowSampler

__all__ = ["SOLVE_SHARE", "RowSteps"]

logger = logging.getLogger(__name__)

# Flow-head work a row with many solver steps may add to one iteration, as a share of the
# flow-LM step's time, beyond what the rows with the fewest steps need.
SOLVE_SHARE = 0.25


class RowSteps:
    """The flow-LM step and the flow-head steps of one scheduler iteration."""

    def __init__(self, sampler: FlowSampler, flow_lm: FlowLM):
        self.sampler, self.flow_lm = sampler, flow_lm
        self.lm_seconds = 0.0  # running mean of a flow-LM step

    def lm_step(self, sequence, keep, errors: dict):
        """(conditioning, eos_logit) of rows [0, n); failing rows go to `errors`."""
        started = time.perf_counter()
        try:
            out = self.flow_lm.step(sequence, keep)
        except Exception as batch_error:
            self.flow_lm.queries = None  # no word scores for this step
            out = self._lm_rows(sequence, keep, errors, batch_error)
        self.lm_seconds = 0.8 * self.lm_seconds + 0.2 * (time.perf_counter() - started)
        return out

    def _lm_rows(self, sequence, keep, errors, batch_error):
        n = sequence.shape[0]
        cond = np.zeros((n, self.sampler.graph.spec.inputs[0].shape[1]), np.float32)
        eos = np.zeros((n, 1), np.float32)
        no_text = np.zeros((1, 0, self.flow_lm.d_model), np.float32)
        for i in range(n):
            if keep is not None and not keep[i]:
                continue
            try:
                out = self.flow_lm.run(slice(i, i + 1), sequence[i : i + 1], no_text)
                cond[i], eos[i] = out["conditioning"][0], out["eos_logit"][0]
            except Exception as e:
                errors[i] = GenerationError(f"the flow LM failed for this stream: {e}")
        if len(errors) == n:
            logger.error("flow-LM step failed for every row: %s", batch_error)
        return cond, eos

    def solve(self, chunks: list[ChunkStream], errors: dict) -> None:
        """Flow-head steps: every solving row advances until the rows with the fewest steps
        left are done, then the others go on only while the time stays under SOLVE_SHARE
        of a flow-LM step (a row asking for many steps finishes its frame over several
        iterations instead of holding everyone)."""
        rows = [i for i, c in enumerate(chunks) if i not in errors and c.solving]
        if not rows:
            return
        started = time.perf_counter()
        least = min(chunks[i].total_solver_steps - chunks[i].solved_steps for i in rows)
        done_iterations = 0
        while rows:
            solving = [chunks[i] for i in rows]
            cond = np.concatenate([c.conditioning for c in solving])
            x = np.concatenate([c.x for c in solving])
            done = np.array([c.solved_steps for c in solving], dtype=np.int64)
            total = np.array([c.total_solver_steps for c in solving], dtype=np.int64)
            new_x = self._advance(cond, x, done, total, rows, errors)
            for j, (i, c) in enumerate(zip(rows, solving, strict=True)):
                if i not in errors:
                    c.x, c.solved_steps = new_x[j : j + 1], c.solved_steps + 1
            rows = [i for i in rows if i not in errors and chunks[i].solving]
            done_iterations += 1
            spent = time.perf_counter() - started
            if done_iterations >= least and spent > SOLVE_SHARE * self.lm_seconds:
                break

    def _advance(self, cond, x, done, total, rows, errors):
        try:
            return self.sampler.advance(cond, x, done, total)
        except Exception:
            new_x = x.copy()
            for j, i in enumerate(rows):
                try:
                    part = self.sampler.advance(
                        cond[j : j + 1], x[j : j + 1], done[j : j + 1], total[j : j + 1]
                    )
                    new_x[j] = part[0]
                except Exception as e:
                    errors[i] = GenerationError(f"the flow head failed for this stream: {e}")
            return new_x
