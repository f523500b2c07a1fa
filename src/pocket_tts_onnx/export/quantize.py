"""INT8: ONNX Runtime dynamic quantization of MatMul weights (QInt8), graph by graph."""

from __future__ import annotations

import logging
from pathlib import Path


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.stem + "_int8.onnx")


def quantize_graph(fp32_path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = int8_path(fp32_path)
    # The quantizer advises pre-processing through the root logger on every call; the graphs
    # are already shape-inferred by the exporter, so keep the export output readable.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            fp32_path,
            out,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=False,
        )
    finally:
        root.setLevel(level)
    return out
