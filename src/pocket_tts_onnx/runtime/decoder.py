"""Mimi on B rows: `mimi_decoder_batched`, one state row per text chunk being spoken.

Each text chunk starts from a fresh decoder state and its first samples are faded in, as
upstream does per chunk. A new row is all zeros: its K/V window rows sit at negative
positions, so the graph masks them whatever the other rows' window length is. Rows that have
no new latent in a call (still solving their frame) are left out of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pocket_tts_onnx.runtime.graph import StatefulGraph

__all__ = ["MAX_DECODE_FRAMES", "ChunkDecoder", "MimiRows", "fade_in_samples"]

# `ChunkDecoder` hands Mimi at most this many latents per call. Measured on the English
# decoder: 16 frames per call peak at +175 MB of transient memory, 4 frames at +20 MB.
MAX_DECODE_FRAMES = 4
# Most rows per Mimi call: past this a call's activations outgrow the core's cache (measured
# on the English decoder, CPU time per row and frame: 6.6 ms at 4 rows, 9.2 ms at 8).
MIMI_ROWS_PER_CALL = 4


def fade_in_samples(sample_rate: int, fade_in_seconds: float) -> int:
    """Length of the fade-in ramp (upstream: sample_rate // 200 for its 5 ms)."""
    return max(0, int(round(sample_rate * fade_in_seconds)))


def _pad_front(arr: np.ndarray, shape: tuple) -> np.ndarray:
    """`arr` with zeros added at the front of every axis (but the batch axis) shorter than
    in `shape`. A K/V window row at index j has position offset - window + j, so rows added
    in front of a window that never slid sit at negative positions: masked (a window that
    slid is already at its full length and is never padded)."""
    pad = [(0, 0)] + [
        (max(0, want - have), 0) for have, want in zip(arr.shape[1:], shape[1:], strict=True)
    ]
    return np.pad(arr, pad) if any(p for p, _ in pad) else arr


class MimiRows:
    """Decoder states of several streams; `decode` runs the rows that have a latent."""

    def __init__(self, graph: StatefulGraph, fade_in_length: int):
        self.graph = graph
        self.ramp = np.linspace(0.0, 1.0, fade_in_length, dtype=np.float32)
        self.states = graph.spec.initial_states(batch=0)
        self.faded: list[int] = []  # ramp samples already applied, per row

    @property
    def rows(self) -> int:
        return len(self.faded)

    def join(self) -> int:
        """Append a fresh row (a new text chunk); returns its index."""
        self.states = {
            name: np.concatenate([arr, np.zeros((1, *arr.shape[1:]), arr.dtype)])
            for name, arr in self.states.items()
        }
        self.faded.append(0)
        return self.rows - 1

    def remove(self, row: int) -> None:
        """Drop `row`; the last row moves into its place (as the scheduler's rows do)."""
        last = self.rows - 1
        for name, arr in self.states.items():
            if row != last:
                arr[row] = arr[last]
            self.states[name] = arr[:last]
        self.faded[row] = self.faded[last]
        self.faded.pop()
        if not self.faded:  # idle: start again from the initial states (same audio each time)
            self.states = self.graph.spec.initial_states(batch=0)

    def decode(self, latents: np.ndarray, rows: np.ndarray | None = None, pool=None) -> np.ndarray:
        """Latents [n, F, L] for `rows` (None: every row, in order) -> audio [n, F * frame].
        With `pool` (an executor), two or more rows are decoded as two shards at once, one
        on the pool's thread: Mimi is the costlier stage, and the second core would
        otherwise wait for it. Calls take at most MIMI_ROWS_PER_CALL rows."""
        every = rows is None or (
            len(rows) == self.rows and np.array_equal(rows, np.arange(self.rows))
        )
        rows = np.arange(self.rows) if rows is None else np.asarray(rows)
        if pool is not None and len(rows) >= 2:
            half = len(rows) // 2
            future = pool.submit(self._run_groups, latents[half:], rows[half:])
            parts = self._run_groups(latents[:half], rows[:half])
            parts += future.result()
        elif every and len(rows) <= MIMI_ROWS_PER_CALL:
            out, self.states = self.graph.step({"latent": latents}, self.states)
            parts = [(rows, out["audio_frame"][:, 0], None)]
        else:
            parts = self._run_groups(latents, rows)
        for part_rows, _, states in parts:
            if states is not None:
                self._store(part_rows, states)
        audio = parts[0][1] if len(parts) == 1 else np.concatenate([a for _, a, _ in parts])
        for i, row in enumerate(rows):
            self._fade(int(row), audio[i])
        return audio

    def _run_groups(self, latents: np.ndarray, rows: np.ndarray) -> list:
        """`_run` in calls of at most MIMI_ROWS_PER_CALL rows, as even as possible:
        [(rows, audio, their new states)]."""
        groups = max(1, -(-len(rows) // MIMI_ROWS_PER_CALL))
        size = -(-len(rows) // groups)
        parts = []
        for start in range(0, len(rows), size):
            part = slice(start, start + size)
            parts.append((rows[part], *self._run(latents[part], rows[part])))
        return parts

    def _run(self, latents: np.ndarray, rows: np.ndarray):
        """Decode `rows` from copies of their states: (audio, their new states)."""
        part = {name: arr[rows] for name, arr in self.states.items()}
        out, part = self.graph.step({"latent": latents}, part)
        return out["audio_frame"][:, 0], part

    def _store(self, rows: np.ndarray, states: dict[str, np.ndarray]) -> None:
        for name, arr in states.items():
            self.states[name] = _pad_front(self.states[name], arr.shape)
            self.states[name][rows] = _pad_front(arr, self.states[name].shape)

    def _fade(self, row: int, audio: np.ndarray) -> None:
        done = self.faded[row]
        n = min(self.ramp.shape[0] - done, audio.shape[-1])
        if n > 0:
            audio[:n] *= self.ramp[done : done + n]
            self.faded[row] = done + n


class ChunkDecoder:
    """One text chunk's decoder: `decode(latents)` -> audio, state carried between calls,
    the first samples faded in (a one-row `MimiRows`)."""

    def __init__(self, graph: StatefulGraph, fade_in_length: int):
        self._rows = MimiRows(graph, fade_in_length)
        self._rows.join()

    def decode(self, latents: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Latents as a list of [1, L] or an array [1, F, L]; returns mono float32 audio.
        Never hands Mimi more than MAX_DECODE_FRAMES latents in one call."""
        batch = latents if isinstance(latents, np.ndarray) else np.stack(list(latents), axis=1)
        pieces = [
            self._rows.decode(np.ascontiguousarray(batch[:, i : i + MAX_DECODE_FRAMES]))[0]
            for i in range(0, batch.shape[1], MAX_DECODE_FRAMES)
        ]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
