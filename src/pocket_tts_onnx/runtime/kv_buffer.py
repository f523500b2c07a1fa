"""The flow LM's state holder: K/V rows of every active stream (docs/state-design.md).

`KVBuffers` keeps keys and values in buffers [rows, H_kv, capacity, d]: `flow_lm_step` reads
them without copying and returns only the new rows, which are written in place. Memory
follows the streams that need it: capacity doubles when a row needs more (amortised, a step
never copies the cache), never beyond the `limit` the scheduler sets from the active rows'
worst case, and `fit` reallocates smaller when long streams leave, so memory comes back.
"""

from __future__ import annotations

import numpy as np

from pocket_tts_onnx.errors import BundleError
from pocket_tts_onnx.specs import GraphSpec

__all__ = ["KVBuffers", "filled_positions", "states_from_buffers"]

POSITION = "position"
# Capacity is allocated in multiples of this many positions.
GRANULE = 64


def _round_up(n: int) -> int:
    return max(GRANULE, -(-n // GRANULE) * GRANULE)


class KVBuffers:
    """K/V rows of up to `rows` streams for `flow_lm_step`; row r holds positions
    [0, positions[r])."""

    def __init__(self, spec: GraphSpec, rows: int = 1, capacity: int = GRANULE):
        if not spec.buffers:
            raise BundleError(f"graph {spec.name} has no K/V buffers")
        self.spec = spec
        self.positions = np.zeros(rows, dtype=np.int64)
        self.arrays = self._alloc(rows, _round_up(capacity))

    def _alloc(self, rows: int, capacity: int) -> dict[str, np.ndarray]:
        return {
            b.name: np.zeros((rows, b.shape[1], capacity, b.shape[3]), dtype=b.dtype)
            for b in self.spec.buffers
        }

    @property
    def rows(self) -> int:
        return self.positions.shape[0]

    @property
    def capacity(self) -> int:
        return next(iter(self.arrays.values())).shape[2]

    @property
    def bytes_per_position(self) -> int:
        """Bytes one position of one row costs, over every layer's keys and values."""
        return sum(
            int(b.shape[1]) * int(b.shape[3]) * np.dtype(b.dtype).itemsize
            for b in self.spec.buffers
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def _resize(self, rows: int, capacity: int) -> None:
        """Reallocate to exactly `rows` x `capacity`, keeping every kept row's positions."""
        keep_rows = min(rows, self.rows)
        used = int(self.positions[:keep_rows].max(initial=0))
        if used > capacity:
            raise ValueError(f"cannot shrink K/V capacity to {capacity}: {used} in use")
        new = self._alloc(rows, capacity)
        for name, old in self.arrays.items():
            new[name][:keep_rows, :, :used] = old[:keep_rows, :, :used]
        self.arrays = new
        positions = np.zeros(rows, dtype=np.int64)
        positions[:keep_rows] = self.positions[:keep_rows]
        self.positions = positions

    def reserve(self, needed: int, rows: int | None = None, limit: int | None = None) -> None:
        """Room for `needed` positions in every row (and at least `rows` rows): capacity
        doubles, but not beyond `limit` (the most any active row can need)."""
        rows = max(rows or 0, self.rows)
        capacity = self.capacity
        if needed > capacity:
            capacity = max(needed, 2 * capacity)
            if limit is not None:
                capacity = max(needed, min(capacity, limit))
            capacity = _round_up(capacity)
        if capacity != self.capacity or rows != self.rows:
            self._resize(rows, capacity)

    def reset(self, rows: int, capacity: int) -> None:
        """Exactly `rows` empty rows of `capacity` positions (a stream alone gets the same
        buffers every time, so its audio is the same to the bit)."""
        self.positions = np.zeros(rows, dtype=np.int64)
        self.arrays = self._alloc(rows, _round_up(capacity))

    def fit(self, rows: int, capacity: int) -> None:
        """Shrink to `rows` rows and `capacity` positions when that frees at least half of the
        memory (hysteresis: a stream joining and leaving does not reallocate every time)."""
        rows, capacity = max(rows, 0), _round_up(capacity)
        if rows * capacity * 2 <= self.rows * self.capacity:
            self._resize(rows, capacity)

    def feeds(self, rows: slice) -> dict[str, np.ndarray]:
        """Inputs for a call on `rows` (a slice: views of the buffers, no copies)."""
        feeds = {name: arr[rows] for name, arr in self.arrays.items()}
        feeds[POSITION] = self.positions[rows]
        return feeds

    def append(
        self,
        rows: slice,
        outputs: dict[str, np.ndarray],
        keep: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
    ) -> None:
        """Write a call's new K/V rows at each row's position and advance the positions by
        `lengths[i]` (default: all of them); rows where `keep` is False do not advance
        (their step is discarded: what was written past their position is never read)."""
        indices = range(*rows.indices(self.rows))
        new = 0
        for b in self.spec.buffers:
            out = outputs[b.output_name]
            new = out.shape[2]
            target = self.arrays[b.name]
            for i, row in enumerate(indices):
                if keep is None or keep[i]:
                    start = self.positions[row]
                    target[row, :, start : start + new] = out[i]
        advance = np.full(len(indices), new, np.int64) if lengths is None else lengths
        if keep is not None:
            advance = advance * np.asarray(keep, dtype=np.int64)
        self.positions[rows] += advance

    def load(self, row: int, states: dict[str, np.ndarray], filled: int) -> None:
        """Fill `row` from flow_lm_main states (a voice) holding `filled` real positions
        (its counter): they are the last `filled` cache rows; a junk prefix is dropped."""
        self.reserve(filled, rows=row + 1)
        for b in self.spec.buffers:
            value = states[b.state][0, :, states[b.state].shape[2] - filled :]
            target = self.arrays[b.name]
            if target.dtype != value.dtype:  # float16 buffers: saturate as the graph does
                largest = np.finfo(target.dtype).max
                value = np.clip(value, -largest, largest)
            target[row, :, :filled] = value
        self.positions[row] = filled

    def move(self, src: int, dst: int) -> None:
        """Copy stream `src` into row `dst` (to keep active rows packed at the front)."""
        used = int(self.positions[src])
        for arr in self.arrays.values():
            arr[dst, :, :used] = arr[src, :, :used]
        self.positions[dst] = used


def filled_positions(main_spec: GraphSpec, states: dict[str, np.ndarray]) -> int:
    """Real positions held by flow_lm_main `states`: the counter, or (a state list without
    one) the K/V length."""
    counter = main_spec.counter_value(states)
    if counter is not None:
        return counter
    kv = next((s.name for s in main_spec.states if s.upstream_key.startswith("cache.")), None)
    return int(states[kv].shape[2]) if kv is not None else 0


def states_from_buffers(buffers: KVBuffers, row: int, main_spec: GraphSpec) -> dict:
    """flow_lm_main states (a voice) holding `row`'s positions, in the states' own dtype
    (float16 buffers give float32 voices): the inverse of `load`."""
    filled = int(buffers.positions[row])
    dtypes = {s.name: s.dtype for s in main_spec.states}
    states = {}
    for b in buffers.spec.buffers:
        rows = buffers.arrays[b.name][row : row + 1, :, :filled]
        states[b.state] = np.ascontiguousarray(rows, dtype=dtypes[b.state])
    for s in main_spec.states:
        if s.upstream_key == "offset":
            states[s.name] = np.array([filled], dtype=np.int64)
    return states
