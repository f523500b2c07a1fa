"""The decoder rewrites (export/optimize.py) keep outputs equal to PyTorch's convolutions.

The exporter's verification already compares every rewritten decoder with upstream; this
checks the rewrites themselves on the layer shapes they target and on the ones they must
leave alone, against torch.nn as the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pocket_tts_onnx.export.optimize import optimize_decoder  # noqa: E402


class _Stack(torch.nn.Module):
    """Mimi-decoder-like layers: conv, ELU, kernel-2s transposed convs (rewritten), a
    depthwise and an odd-kernel transposed conv (both must be left as they are)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 16, 7)
        self.up = torch.nn.ConvTranspose1d(16, 12, 10, stride=5)
        self.res = torch.nn.Conv1d(12, 12, 3, dilation=2)
        self.up2 = torch.nn.ConvTranspose1d(12, 6, 8, stride=4, bias=False)
        self.depthwise = torch.nn.ConvTranspose1d(6, 6, 4, stride=2, groups=6)
        self.odd = torch.nn.ConvTranspose1d(6, 3, 5, stride=2)

    def forward(self, x):
        x = torch.nn.functional.elu(self.conv(x))
        x = self.res(self.up(x))
        return self.odd(self.depthwise(self.up2(x)))


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_rewritten_convolutions_match_torch(tmp_path):
    torch.manual_seed(0)
    module = _Stack().eval()
    path = tmp_path / "stack.onnx"
    x = torch.randn(2, 8, 9)
    torch.onnx.export(
        module,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "time"}, "y": {0: "batch", 2: "samples"}},
        opset_version=17,
        dynamo=False,
    )
    before = [n.op_type for n in onnx.load(str(path)).graph.node]
    convs, transposed = optimize_decoder(path)
    assert (convs, transposed) == (2, 2)  # the depthwise and odd-kernel ones are kept
    after = onnx.load(str(path)).graph
    assert [n.op_type for n in after.node].count("ConvTranspose") == 2
    assert before.count("Conv") == 2 and sum(n.op_type == "Conv" for n in after.node) == 4
    for batch, length in ((1, 7), (2, 9), (1, 30)):
        x = torch.randn(batch, 8, length)
        with torch.no_grad():
            expected = module(x).numpy()
        got = _run(path, x.numpy())
        assert got.shape == expected.shape
        scale = float(np.abs(expected).max())
        assert float(np.abs(got - expected).max()) <= 1e-5 * max(scale, 1.0), (batch, length)
