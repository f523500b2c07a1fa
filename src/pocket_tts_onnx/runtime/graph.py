"""One stateful ONNX graph: feeds built from names, states looped back by name.

Every runtime piece (engine, decoder, export validator, tests) runs graphs through this class,
so "feed the inputs, take the outputs, hand `out_<state>` back as `<state>`" exists once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np
import onnxruntime as ort

from pocket_tts_onnx.errors import BundleError, InvalidInputError
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.specs import GraphSpec

__all__ = ["GraphSet", "StatefulGraph", "check_session_io"]


def check_session_io(spec: GraphSpec, session: ort.InferenceSession) -> None:
    """Refuse a session whose inputs differ from what the manifest says the graph takes."""
    have = {i.name for i in session.get_inputs()}
    want = {t.name for t in spec.all_inputs}
    if have != want:
        raise BundleError(
            f"graph {spec.name}: inputs {sorted(have)} do not match the manifest's {sorted(want)}"
        )


class StatefulGraph:
    """`step(inputs, states) -> (outputs, new_states)` for a graph described by a GraphSpec.

    Inputs and states live in separate namespaces: a state is fed only under a name the spec
    lists as a state, and an input only under a name it lists as an input, so a state (say,
    from a hostile voice file) can never replace the text or the sequence. A spec whose state
    names collide with its input names is refused when the graph is built.
    """

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, check_io: bool = True):
        input_names = [t.name for t in spec.inputs]
        clash = sorted(set(input_names) & {s.name for s in spec.states})
        if clash:
            raise BundleError(f"graph {spec.name}: state names {clash} collide with its inputs")
        if check_io:
            check_session_io(spec, session)
        self.session = session
        self.spec = spec
        self.name = spec.name
        self.input_names = tuple(input_names)
        self.state_names = tuple(s.name for s in spec.states)
        self.output_names = tuple(t.name for t in spec.all_outputs)
        self._state_outputs = tuple((s.name, s.output_name) for s in spec.states)

    def initial_states(self, dynamic: int = 0) -> dict[str, np.ndarray]:
        """Every state as zeros with its dynamic axes at `dynamic` (0: the manifest's
        `initial`; other lengths give the same results, see docs/state-design.md)."""
        if dynamic:
            return self.spec.initial_states(dynamic)
        return self.spec.initial_states()

    def feeds(
        self, inputs: Mapping[str, np.ndarray], states: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The session feed: exactly the spec's inputs and states, each from its own mapping."""
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise InvalidInputError(
                f"graph {self.name}: {unknown} are not inputs (inputs: {list(self.input_names)})"
            )
        feeds: dict[str, np.ndarray] = {}
        for name in self.state_names:
            if name not in states:
                raise InvalidInputError(f"graph {self.name}: state {name!r} is missing")
            feeds[name] = states[name]
        for name in self.input_names:
            if name not in inputs:
                raise InvalidInputError(f"graph {self.name}: input {name!r} is missing")
            feeds[name] = inputs[name]
        return feeds

    def run(
        self, inputs: Mapping[str, np.ndarray], states: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """All outputs by name (state outputs included, as `out_<state>`)."""
        feeds = self.feeds(inputs, states if states is not None else {})
        values = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, values, strict=True))

    def step(
        self, inputs: Mapping[str, np.ndarray], states: Mapping[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One call: (all outputs by name, the new states keyed by state name)."""
        out = self.run(inputs, states)
        return out, {name: out[output] for name, output in self._state_outputs}


class GraphSet(Mapping):
    """The contract graphs (opened up front) and any variant graphs the bundle has (opened on
    first use, so single-stream users never pay for the batched graphs' memory)."""

    def __init__(
        self,
        manifest: Manifest,
        sessions: dict,
        factory: Callable[[str], ort.InferenceSession] | None,
    ):
        self._manifest, self._factory = manifest, factory
        self._graphs = {n: StatefulGraph(s, manifest.graphs[n].spec) for n, s in sessions.items()}
        self._names = [n for n in manifest.graphs if n in sessions or factory is not None]
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> StatefulGraph:
        if name not in self._names:
            raise KeyError(name)
        with self._lock:
            if name not in self._graphs:
                session = self._factory(name)
                self._graphs[name] = StatefulGraph(session, self._manifest.graphs[name].spec)
            return self._graphs[name]

    def __contains__(self, name) -> bool:  # without opening the graph
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
