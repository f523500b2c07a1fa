"""One spec per graph: input/output names, dtypes, shapes with named dynamic axes, states and
the FP32 validation tolerance. The exporter, the validator and the runtimes all read these
(the runtimes through the manifest), so a name is written down exactly once.

Shapes hold ints for fixed sizes and strings for dynamic axes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

GRAPH_NAMES = ("text_conditioner", "mimi_encoder", "flow_lm_main", "flow_lm_flow", "mimi_decoder")
# Variants for our own runtimes, exported beside the contract graphs (docs/state-design.md):
# the batched fast-KV flow-LM step and the batched Mimi decoder.
VARIANT_NAMES = ("flow_lm_step", "mimi_decoder_batched")

# Time inputs of one flow-head solver step, by head type (see pocket_tts.models.flow_lm).
FLOW_TIME_INPUTS = {"lsd": ("s", "t"), "flow_matching": ("t",), "drifting": (), "pointwise": ()}

# FP32 graphs must match upstream within this max |delta| relative to the output's scale.
FP32_RELATIVE_TOLERANCE = 1e-4

# K/V storage of flow_lm_step (`export --kv-dtype`): option value -> tensor dtype. float16
# halves the buffers; the graph casts them to float32 and computes in float32.
KV_DTYPES = {"fp32": "float32", "fp16": "float16"}
# flow_lm_step with float16 K/V vs upstream (max |delta| / scale): each cached key and value
# is rounded to 11 significant bits (relative error <= 2**-11 = 4.9e-4 each), about two such
# roundings. Measured worst: 7.9e-5 on the full english model, 5.6e-5 on the test models.
FP16_KV_RELATIVE_TOLERANCE = 1e-3


# Largest fixed axis a graph spec may declare (d_model of the released models is 1024).
MAX_AXIS = 1 << 16


def _checked_shape(shape, name) -> list[int | str]:
    """A shape read from a manifest: named dynamic axes, or fixed sizes from 0 to MAX_AXIS.
    ValueError (the manifest loader turns it into BundleError) names the tensor."""
    if not isinstance(shape, list) or len(shape) > 8:
        raise ValueError(f"tensor {name!r}: shape must be a list of at most 8 axes")
    for axis in shape:
        fixed = isinstance(axis, int) and not isinstance(axis, bool)
        if not (isinstance(axis, str) and axis) and not (fixed and 0 <= axis <= MAX_AXIS):
            raise ValueError(
                f"tensor {name!r}: axis {axis!r} must be a name or a size from 0 to {MAX_AXIS}"
            )
    return list(shape)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(name=d["name"], dtype=d["dtype"], shape=_checked_shape(d["shape"], d["name"]))


@dataclass(frozen=True)
class StateSpec:
    """A streaming state: graph input `name`, output `out_<name>`, initial value all zeros
    (with every dynamic axis at 0), and where it lives in upstream's model_state.

    `upstream_key` "cache.k" / "cache.v" are the two halves of upstream's "cache"
    [2, B, T, H, d], stored head-major as [B, H, T, d]; "offset" of a transformer is the
    position counter shared by all its attention layers."""

    name: str
    upstream_module: str
    upstream_key: str
    dtype: str
    shape: list[int | str]
    initial: str = "zeros"

    @property
    def output_name(self) -> str:
        return f"out_{self.name}"

    @property
    def initial_shape(self) -> list[int]:
        return self.shape_with(0)

    def shape_with(self, dynamic: int, batch: int = 1) -> list[int]:
        """The shape with every dynamic axis at `dynamic` (a "batch" axis at `batch`)."""
        return [
            (batch if d == "batch" else dynamic) if isinstance(d, str) else d for d in self.shape
        ]

    def zeros(self, dynamic: int = 0, batch: int = 1) -> np.ndarray:
        """The initial value: zeros, dynamic axes at 0 by default. Any other length gives the
        same results (junk rows are masked by position), which runtimes such as sherpa-onnx
        that start dynamic axes at 1 rely on."""
        return np.zeros(self.shape_with(dynamic, batch), dtype=self.dtype)

    def from_upstream_cache(self, cache: np.ndarray, filled: int) -> np.ndarray:
        """This "cache.k"/"cache.v" state from upstream's cache [2, B, T, H, d] holding
        `filled` positions: one half, head-major, cut to the filled length."""
        part = 0 if self.upstream_key == "cache.k" else 1
        return np.ascontiguousarray(cache[part, :, :filled].transpose(0, 2, 1, 3), np.float32)

    def input_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, self.shape)

    def output_spec(self) -> TensorSpec:
        # The sequence axis of an output state differs from the input's (it grew).
        shape = [f"out_{d}" if isinstance(d, str) else d for d in self.shape]
        return TensorSpec(self.output_name, self.dtype, shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StateSpec:
        return cls(**{**d, "shape": _checked_shape(d["shape"], d["name"])})


@dataclass(frozen=True)
class BufferSpec:
    """A K/V buffer of the fast-KV step graph: input `name` [B, H_kv, capacity, d] is read
    only (row b valid at [0, position[b])); output `output_name` [B, H_kv, new, d] holds
    only the new rows, which the runtime writes at position[b]. `state` names the matching
    flow_lm_main state, so a voice (contract states) fills the buffer by name."""

    name: str
    output_name: str
    state: str
    upstream_module: str
    upstream_key: str
    dtype: str
    shape: list[int | str]

    def input_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, self.shape)

    def output_spec(self) -> TensorSpec:
        return TensorSpec(self.output_name, self.dtype, [*self.shape[:2], "new", self.shape[3]])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BufferSpec:
        if d["dtype"] not in KV_DTYPES.values():
            raise ValueError(
                f"buffer {d['name']!r}: dtype {d['dtype']!r} is not one of "
                f"{sorted(KV_DTYPES.values())}"
            )
        return cls(**{**d, "shape": _checked_shape(d["shape"], d["name"])})


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    states: list[StateSpec] = field(default_factory=list)
    tolerance: float = FP32_RELATIVE_TOLERANCE
    buffers: list[BufferSpec] = field(default_factory=list)

    @property
    def all_inputs(self) -> list[TensorSpec]:
        return (
            self.inputs
            + [s.input_spec() for s in self.states]
            + [b.input_spec() for b in self.buffers]
        )

    @property
    def all_outputs(self) -> list[TensorSpec]:
        return (
            self.outputs
            + [s.output_spec() for s in self.states]
            + [b.output_spec() for b in self.buffers]
        )

    def counter_value(self, states: dict[str, np.ndarray]) -> int | None:
        """The position counter among `states` (the state with upstream key "offset"), or
        None when the graph has none."""
        for s in self.states:
            if s.upstream_key == "offset":
                return int(np.asarray(states[s.name]).reshape(-1)[0])
        return None

    def initial_states(self, dynamic: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
        return {s.name: s.zeros(dynamic, batch) for s in self.states}

    def to_dict(self) -> dict:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "states": [s.to_dict() for s in self.states],
            "buffers": [b.to_dict() for b in self.buffers],
            "tolerance": self.tolerance,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> GraphSpec:
        try:
            return cls(
                name=name,
                inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
                outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
                states=[StateSpec.from_dict(s) for s in d["states"]],
                tolerance=float(d["tolerance"]),
                buffers=[BufferSpec.from_dict(b) for b in d.get("buffers", [])],
            )
        except ValueError as e:
            raise ValueError(f"graphs.{name}: {e}") from e


# Where each model number appears in the graph contract: (graph, tensor, axis); every graph
# a bundle has must agree with the manifest's `latent_dim`, `d_model` and `head_dim`.
MODEL_DIMS = {
    "latent_dim": (
        ("flow_lm_main", "sequence", -1),
        ("flow_lm_flow", "x", -1),
        ("flow_lm_flow", "flow_dir", -1),
        ("mimi_decoder", "latent", -1),
        ("flow_lm_step", "sequence", -1),
        ("mimi_decoder_batched", "latent", -1),
    ),
    "d_model": (
        ("text_conditioner", "embeddings", -1),
        ("mimi_encoder", "latents", -1),
        ("flow_lm_main", "text_embeddings", -1),
        ("flow_lm_step", "text_embeddings", -1),
    ),
    "head_dim": (
        ("flow_lm_main", "conditioning", -1),
        ("flow_lm_flow", "c", -1),
        ("flow_lm_step", "conditioning", -1),
    ),
}


def spec_disagreement(specs: dict[str, GraphSpec], dims: dict[str, int]) -> str | None:
    """The first place where a graph spec contradicts a model number, described as
    "graphs.<graph>.<tensor> ... <field>", or None when all agree."""
    for field_name, places in MODEL_DIMS.items():
        for graph, tensor, axis in places:
            spec = specs.get(graph)
            if spec is None:
                continue
            found = [t for t in spec.all_inputs + spec.all_outputs if t.name == tensor]
            if not found:
                return f"graphs.{graph} has no tensor {tensor!r}"
            size = found[0].shape[axis] if found[0].shape else None
            if size != dims[field_name]:
                return (
                    f"graphs.{graph}.{tensor} has size {size!r} where {field_name} is "
                    f"{dims[field_name]}"
                )
    return None


def _batched_state(spec: StateSpec) -> StateSpec:
    return StateSpec(**{**spec.to_dict(), "shape": ["batch", *spec.shape[1:]]})


def step_buffers(flow_lm_states: list[StateSpec], dtype: str = "float32") -> list[BufferSpec]:
    """One read-only buffer per K/V state of flow_lm_main (its counter becomes `position`),
    stored as `dtype`."""
    buffers = []
    for i, state in enumerate(s for s in flow_lm_states if s.upstream_key.startswith("cache.")):
        part = state.upstream_key.removeprefix("cache.")
        layer = i // 2
        buffers.append(
            BufferSpec(
                name=f"cache_{part}_{layer}",
                output_name=f"new_{part}_{layer}",
                state=state.name,
                upstream_module=state.upstream_module,
                upstream_key=state.upstream_key,
                dtype=dtype,
                shape=["batch", state.shape[1], "capacity", state.shape[3]],
            )
        )
    return buffers


def build_graph_specs(
    *,
    d_model: int,
    head_dim: int,
    latent_dim: int,
    flow_type: str,
    num_heads: int,
    flow_lm_states: list[StateSpec],
    mimi_decoder_states: list[StateSpec],
    kv_dtype: str = "fp32",
) -> dict[str, GraphSpec]:
    """The graph contract for one model. `head_dim` is Dz (z_dim, or d_model without it);
    `num_heads` the flow LM's query heads per layer; `kv_dtype` (a KV_DTYPES key) how
    flow_lm_step stores K/V (the contract graph flow_lm_main's states stay float32)."""
    f32 = "float32"
    kv = KV_DTYPES[kv_dtype]
    kv_states = [s for s in flow_lm_states if s.upstream_key == "cache.k"]
    layers, attn_head_dim = len(kv_states), kv_states[0].shape[3]
    times = [TensorSpec(t, f32, ["batch", 1]) for t in FLOW_TIME_INPUTS[flow_type]]
    specs = [
        GraphSpec(
            "text_conditioner",
            [TensorSpec("token_ids", "int64", [1, "tokens"])],
            [TensorSpec("embeddings", f32, [1, "tokens", d_model])],
        ),
        GraphSpec(
            "mimi_encoder",
            [TensorSpec("audio", f32, [1, 1, "samples"])],
            [TensorSpec("latents", f32, [1, "frames", d_model])],
        ),
        GraphSpec(
            "flow_lm_main",
            [
                TensorSpec("sequence", f32, [1, "steps", latent_dim]),
                TensorSpec("text_embeddings", f32, [1, "tokens", d_model]),
            ],
            [TensorSpec("conditioning", f32, [1, head_dim]), TensorSpec("eos_logit", f32, [1, 1])],
            states=flow_lm_states,
        ),
        GraphSpec(
            "flow_lm_flow",
            [
                TensorSpec("c", f32, ["batch", head_dim]),
                *times,
                TensorSpec("x", f32, ["batch", latent_dim]),
            ],
            [TensorSpec("flow_dir", f32, ["batch", latent_dim])],
        ),
        GraphSpec(
            "mimi_decoder",
            [TensorSpec("latent", f32, [1, "frames", latent_dim])],
            [TensorSpec("audio_frame", f32, [1, 1, "samples"])],
            states=mimi_decoder_states,
        ),
        GraphSpec(
            "flow_lm_step",
            [
                TensorSpec("sequence", f32, ["batch", "steps", latent_dim]),
                TensorSpec("text_embeddings", f32, ["batch", "tokens", d_model]),
                TensorSpec("position", "int64", ["batch"]),
            ],
            [
                TensorSpec("conditioning", f32, ["batch", head_dim]),
                TensorSpec("eos_logit", f32, ["batch", 1]),
                TensorSpec("queries", f32, ["batch", layers, num_heads, attn_head_dim]),
            ],
            buffers=step_buffers(flow_lm_states, kv),
            tolerance=FP32_RELATIVE_TOLERANCE if kv == f32 else FP16_KV_RELATIVE_TOLERANCE,
        ),
        GraphSpec(
            "mimi_decoder_batched",
            [TensorSpec("latent", f32, ["batch", "frames", latent_dim])],
            [TensorSpec("audio_frame", f32, ["batch", 1, "samples"])],
            states=[_batched_state(s) for s in mimi_decoder_states],
        ),
    ]
    return {s.name: s for s in specs}
