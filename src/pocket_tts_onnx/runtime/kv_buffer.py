"""State holders for the batched graph variants (docs/state-design.md).

`KVBuffers` keeps the flow LM's keys and values for several streams in preallocated
buffers [rows, H_kv, capacity, d]: `flow_lm_step` reads them without copying and returns
only the new rows, which are written in place. Capacity doubles when needed, so the cost of
growing is amortised and a step never copies the cache.

`join_decoder_row` / `drop_decoder_row` add and remove streams of `mimi_decoder_batched`:
a new row is all zeros, and its K/V window rows sit at negative positions, so the graph
masks them whatever the other rows' window length is.
"""

from __future__ import annotations

import numpy as np

from pocket_tts_onnx.errors import BundleError
from pocket_tts_onnx.specs import GraphSpec

POSITION = "position"


class KVBuffers:
    """K/V rows of up to `rows` streams for `flow_lm_step`; row r holds positions
    [0, positions[r])."""

    def __init__(self, spec: GraphSpec, rows: int, capacity: int = 64):
        if not spec.buffers:
            raise BundleError(f"graph {spec.name} has no K/V buffers")
        self.spec = spec
        self.positions = np.zeros(rows, dtype=np.int64)
        self.arrays = {
            b.name: np.zeros((rows, b.shape[1], max(capacity, 1), b.shape[3]), dtype=b.dtype)
            for b in spec.buffers
        }

    @property
    def rows(self) -> int:
        return self.positions.shape[0]

    @property
    def capacity(self) -> int:
        return next(iter(self.arrays.values())).shape[2]

    def reserve(self, needed: int, rows: int | None = None) -> None:
        """Make room for `needed` positions in every row (and for `rows` rows)."""
        rows = max(rows or self.rows, self.rows)
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        if capacity == self.capacity and rows == self.rows:
            return
        for name, old in self.arrays.items():
            new = np.zeros((rows, old.shape[1], capacity, old.shape[3]), dtype=old.dtype)
            new[: old.shape[0], :, : old.shape[2]] = old
            self.arrays[name] = new
        positions = np.zeros(rows, dtype=np.int64)
        positions[: self.positions.shape[0]] = self.positions
        self.positions = positions

    def feeds(self, rows: slice) -> dict[str, np.ndarray]:
        """Inputs for a call on `rows` (a slice: views of the buffers, no copies)."""
        feeds = {name: arr[rows] for name, arr in self.arrays.items()}
        feeds[POSITION] = self.positions[rows]
        return feeds

    def prepare(self, rows: slice, new: int) -> dict[str, np.ndarray]:
        """Reserve room for `new` more positions in `rows`, then return their feeds."""
        self.reserve(int(self.positions[rows].max(initial=0)) + new)
        return self.feeds(rows)

    def append(self, rows: slice, outputs: dict[str, np.ndarray]) -> None:
        """Write a call's new K/V rows at each row's position and advance the positions."""
        indices = range(*rows.indices(self.rows))
        new = 0
        for b in self.spec.buffers:
            out = outputs[b.output_name]
            new = out.shape[2]
            target = self.arrays[b.name]
            for i, row in enumerate(indices):
                start = self.positions[row]
                target[row, :, start : start + new] = out[i]
        self.positions[rows] += new

    def load(self, row: int, states: dict[str, np.ndarray], filled: int) -> None:
        """Fill `row` from flow_lm_main states (a voice) holding `filled` real positions
        (its counter): they are the last `filled` cache rows; a junk prefix is dropped."""
        self.reserve(filled, rows=row + 1)
        for b in self.spec.buffers:
            value = states[b.state]
            self.arrays[b.name][row, :, :filled] = value[0, :, value.shape[2] - filled :]
        self.positions[row] = filled

    def move(self, src: int, dst: int) -> None:
        """Copy stream `src` into row `dst` (to keep active rows packed at the front)."""
        used = int(self.positions[src])
        for arr in self.arrays.values():
            arr[dst, :, :used] = arr[src, :, :used]
        self.positions[dst] = used


def join_decoder_row(spec: GraphSpec, states: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Batched decoder states with one fresh stream appended as the last row."""
    out = {}
    for s in spec.states:
        value = states[s.name]
        row = np.zeros((1, *value.shape[1:]), dtype=value.dtype)
        out[s.name] = np.concatenate([value, row])
    return out


def drop_decoder_row(spec: GraphSpec, states: dict[str, np.ndarray], row: int):
    """Batched decoder states without `row`."""
    return {s.name: np.delete(states[s.name], row, axis=0) for s in spec.states}


def filled_positions(main_spec: GraphSpec, states: dict[str, np.ndarray]) -> int:
    """Real positions held by flow_lm_main `states`: the counter, or (a state list without
    one) the K/V length."""
    counter = main_spec.counter_value(states)
    if counter is not None:
        return counter
    kv = next((s.name for s in main_spec.states if s.upstream_key.startswith("cache.")), None)
    return int(states[kv].shape[2]) if kv is not None else 0


def states_from_buffers(buffers: KVBuffers, row: int, main_spec: GraphSpec) -> dict:
    """flow_lm_main states (a voice) holding `row`'s positions: the inverse of `load`."""
    filled = int(buffers.positions[row])
    states = {}
    for b in buffers.spec.buffers:
        states[b.state] = np.ascontiguousarray(buffers.arrays[b.name][row : row + 1, :, :filled])
    for s in main_spec.states:
        if s.upstream_key == "offset":
            states[s.name] = np.array([filled], dtype=np.int64)
    return states
