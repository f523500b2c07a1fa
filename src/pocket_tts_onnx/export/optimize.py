"""Rewrites of the exported Mimi decoder that ONNX Runtime runs faster, same outputs.

Profiled on the English decoder (1 thread, AVX-512 VNNI/AMX Xeon): its 1-D convolutions and
transposed convolutions take ~40% of a frame and ORT runs them on a generic path, because its
fast blocked-layout (NCHWc) convolutions only take 2-D convolutions. Two exact rewrites:

- `Conv` over [N, C, L] becomes Unsqueeze -> `Conv` over [N, C, 1, L] -> Squeeze.
- `ConvTranspose` with kernel 2 x stride, no padding (every upsampling layer of Mimi's
  SEANet decoder) becomes its polyphase form: a kernel-2 convolution producing
  stride x C_out channels (output phase j of each step gets kernel tap j of the current
  input and tap j + stride of the previous one), then a reshape to [N, C_out, L_out]. It
  is a plain convolution, so it too gets the blocked kernels.

Both change only the order of floating-point sums; the exporter's verification compares the
rewritten graph with upstream like any other. The inputs, outputs and states are unchanged,
so the graph contract holds. Saving ORT's own optimised model instead is not done: at full
optimisation it is specific to the CPU it was made on (ORT warns), and below that level the
load and run times measured the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["OPTIMIZED_GRAPHS", "optimize_decoder", "optimize_graphs"]

# Graph names (prefixes) the rewrites are applied to: the decoder and its batched variant.
OPTIMIZED_GRAPHS = ("mimi_decoder",)


def optimize_graphs(paths: dict[str, Path], progress: Callable[[str], None]) -> None:
    """Rewrite, in place, the exported FP32 graphs that benefit (before quantization)."""
    for name, path in paths.items():
        if name.startswith(OPTIMIZED_GRAPHS):
            convs, transposed = optimize_decoder(path)
            progress(f"optimized {name}: {convs} conv(s) to 2-D, {transposed} polyphase")


def optimize_decoder(path: Path) -> tuple[int, int]:
    """Apply both rewrites to the model at `path`; returns how many nodes each changed."""
    import onnx

    model = onnx.load(str(path))
    rewriter = _Rewriter(model.graph)
    convs = transposed = 0
    nodes = []
    for node in model.graph.node:
        new = rewriter.polyphase(node) if node.op_type == "ConvTranspose" else None
        transposed += new is not None
        if new is None and node.op_type == "Conv":
            new = rewriter.conv_2d(node)
            convs += new is not None
        nodes.extend(new or [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    rewriter.drop_unused_initializers()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return convs, transposed


class _Rewriter:
    def __init__(self, graph):
        self.graph = graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.names = {n.name for n in graph.node} | set(self.initializers)
        self.names |= {o for n in graph.node for o in n.output}

    def _name(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name(base)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def _weight(self, node, ndim: int) -> np.ndarray | None:
        from onnx import numpy_helper

        if len(node.input) < 2 or node.input[1] not in self.initializers:
            return None
        weight = numpy_helper.to_array(self.initializers[node.input[1]])
        return weight if weight.ndim == ndim else None

    def conv_2d(self, node):
        """[N, C, L] Conv -> the same Conv over [N, C, 1, L]; None if not a plain 1-D Conv."""
        from onnx import helper

        weight = self._weight(node, 3)
        attrs = _attributes(node)
        if weight is None or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        pads = attrs.get("pads", [0, 0])
        axes = self._const(node.name + "_axis", np.array([2], dtype=np.int64))
        x4, y4 = self._name(node.output[0] + "_x4"), self._name(node.output[0] + "_y4")
        w4 = self._const(node.input[1] + "_2d", weight[:, :, None, :])
        conv = helper.make_node(
            "Conv",
            [x4, w4, *node.input[2:]],
            [y4],
            name=self._name(node.name + "_2d"),
            kernel_shape=[1, weight.shape[2]],
            strides=[1, attrs.get("strides", [1])[0]],
            dilations=[1, attrs.get("dilations", [1])[0]],
            pads=[0, pads[0], 0, pads[1]],
            group=attrs.get("group", 1),
        )
        return [
            helper.make_node("Unsqueeze", [node.input[0], axes], [x4], name=self._name(x4)),
            conv,
            helper.make_node("Squeeze", [y4, axes], [node.output[0]], name=self._name(y4)),
        ]

    def polyphase(self, node):
        """ConvTranspose (kernel 2s, stride s, group 1, no padding) over [N, C_in, L] ->
        [N, C_out, (L + 1) s] as pad-1 kernel-2 Conv + depth-to-space; None otherwise."""
        from onnx import helper, numpy_helper

        weight = self._weight(node, 3)  # [C_in, C_out, 2s]
        attrs = _attributes(node)
        if weight is None or attrs.get("group", 1) != 1:
            return None
        stride = attrs.get("strides", [1])[0]
        plain = (
            weight.shape[2] == 2 * stride
            and not any(attrs.get("pads", [0, 0]))
            and attrs.get("dilations", [1])[0] == 1
            and not any(attrs.get("output_padding", [0]))
            and "output_shape" not in attrs
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        )
        if not plain:
            return None
        c_in, c_out, _ = weight.shape
        # kernel[o, j, c, tap]: tap 0 reads the previous step (weight tap j + s), tap 1 the
        # current one (weight tap j).
        kernel = np.empty((c_out, stride, c_in, 2), dtype=weight.dtype)
        kernel[..., 0] = weight[:, :, stride:].transpose(1, 2, 0)
        kernel[..., 1] = weight[:, :, :stride].transpose(1, 2, 0)
        inputs = [self._name(node.output[0] + "_x4")]
        inputs.append(
            self._const(node.input[1] + "_polyphase", kernel.reshape(c_out * stride, c_in, 1, 2))
        )
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(self.initializers[node.input[2]])
            inputs.append(self._const(node.input[2] + "_polyphase", np.repeat(bias, stride)))
        axes = self._const(node.name + "_axis", np.array([2], dtype=np.int64))
        phases = self._const(node.name + "_phases", np.array([0, c_out, stride, -1], np.int64))
        flat = self._const(node.name + "_flat", np.array([0, c_out, -1], dtype=np.int64))
        y4, y_phase, y_t = (self._name(node.output[0] + s) for s in ("_y4", "_ph", "_t"))
        return [
            helper.make_node("Unsqueeze", [node.input[0], axes], [inputs[0]], name=inputs[0]),
            helper.make_node(
                "Conv",
                inputs,
                [y4],
                name=self._name(node.name + "_polyphase"),
                kernel_shape=[1, 2],
                pads=[0, 1, 0, 1],
            ),
            # [N, C_out * s, 1, L + 1] -> [N, C_out, s, L + 1] -> [N, C_out, L + 1, s] -> flat
            helper.make_node("Reshape", [y4, phases], [y_phase], name=self._name(y_phase)),
            helper.make_node(
                "Transpose", [y_phase], [y_t], name=self._name(y_t), perm=[0, 1, 3, 2]
            ),
            helper.make_node("Reshape", [y_t, flat], [node.output[0]], name=self._name(y_t + "_r")),
        ]

    def drop_unused_initializers(self) -> None:
        if any(a.g.node or a.graphs for n in self.graph.node for a in n.attribute):
            return  # subgraphs may read outer initializers; keep them all
        used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
