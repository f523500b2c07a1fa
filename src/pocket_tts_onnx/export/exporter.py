"""torch -> ONNX for the five graphs of one loaded model."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from pocket_tts_onnx.export.graphs import (
    FlowHeadGraph,
    FlowLMMainGraph,
    FlowLMStepGraph,
    MimiDecoderGraph,
    MimiEncoderGraph,
    TextConditionerGraph,
    flow_lm_state_specs,
    mimi_decoder_state_specs,
)
from pocket_tts_onnx.export.patches import stateless_modules
from pocket_tts_onnx.specs import GraphSpec, build_graph_specs

OPSET = 17

# Sizes used to trace each dynamic axis: > 1 where the contract allows it, and different
# from the other axes of the same graph, so that no axis is traced as a constant or confused
# with another (`steps` is 0 or 1 by contract; 0-length axes are verified separately).
_TRACE_SIZES = {"tokens": 5, "steps": 1, "kv_len": 3, "frames": 2, "batch": 2, "capacity": 7}


def model_graph_specs(model: torch.nn.Module, kv_dtype: str = "fp32") -> dict[str, GraphSpec]:
    flow_lm = model.flow_lm
    return build_graph_specs(
        d_model=flow_lm.dim,
        head_dim=flow_lm.out_eos.in_features,
        latent_dim=flow_lm.ldim,
        flow_type=flow_lm.flow_type,
        num_heads=flow_lm.transformer.layers[0].self_attn.num_heads,
        flow_lm_states=flow_lm_state_specs(flow_lm),
        mimi_decoder_states=mimi_decoder_state_specs(model.mimi),
        kv_dtype=kv_dtype,
    )


def example_inputs(spec: GraphSpec, model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """Random tensors in the shape of the spec's inputs, for tracing and verification."""
    gen = torch.Generator().manual_seed(1234)
    frame_size = int(model.mimi.frame_size)
    tensors = []
    for t in spec.all_inputs:
        shape = []
        for d in t.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d == "samples":
                shape.append(frame_size * 2 + 37)
            else:
                shape.append(_TRACE_SIZES.get(d, 3))
        if t.dtype == "int64":
            high = model.flow_lm.conditioner.embed.num_embeddings if t.name == "token_ids" else 4
            tensors.append(torch.randint(0, high, shape, generator=gen))
        elif t.name in ("s", "t"):
            tensors.append(torch.rand(shape, generator=gen))
        else:
            tensors.append(torch.randn(shape, generator=gen).to(getattr(torch, t.dtype)))
    return tuple(tensors)


def graph_modules(
    model: torch.nn.Module, specs: dict[str, GraphSpec]
) -> dict[str, torch.nn.Module]:
    return {
        "text_conditioner": TextConditionerGraph(model.flow_lm),
        "mimi_encoder": MimiEncoderGraph(model),
        "flow_lm_main": FlowLMMainGraph(model.flow_lm, specs["flow_lm_main"].states),
        "flow_lm_flow": FlowHeadGraph(model.flow_lm),
        "mimi_decoder": MimiDecoderGraph(model, specs["mimi_decoder"].states),
        "flow_lm_step": FlowLMStepGraph(model.flow_lm, specs["flow_lm_step"].buffers),
        "mimi_decoder_batched": MimiDecoderGraph(model, specs["mimi_decoder_batched"].states),
    }


def export_graph(module: torch.nn.Module, spec: GraphSpec, args: tuple, path: Path) -> None:
    inputs = spec.all_inputs
    outputs = spec.all_outputs
    dynamic_axes = {t.name: t.dynamic_axes for t in inputs + outputs if t.dynamic_axes}
    with stateless_modules(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints are expected here
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[t.name for t in inputs],
            output_names=[t.name for t in outputs],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    _inline_initializer_identities(path)


def _inline_initializer_identities(path: Path) -> None:
    """Replace `Identity(initializer)` nodes by the initializer itself. The TorchScript
    exporter de-duplicates equal weights (e.g. the all-ones norms of a fresh model) into such
    nodes, and ONNX Runtime's loader rejects some of them."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity"
        and n.input[0] in initializers
        and n.output[0] not in graph_outputs
    }
    if not alias:
        return
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_all(
    model: torch.nn.Module,
    specs: dict[str, GraphSpec],
    out_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Path]:
    modules = graph_modules(model, specs)
    paths = {}
    for name, spec in specs.items():
        progress(f"exporting {name}")
        path = out_dir / f"{name}.onnx"
        export_graph(modules[name], spec, example_inputs(spec, model), path)
        paths[name] = path
    return paths
