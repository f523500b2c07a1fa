"""Variant graphs read their weights from the contract graph's file instead of copying them.

`flow_lm_step` holds the same weights as `flow_lm_main`, `mimi_decoder_batched` the same as
`mimi_decoder` (and their INT8 files the same quantized bytes). ONNX external data names a
file, an offset and a length, and nothing requires that file to be raw weights only: an
initializer's `raw_data` is stored verbatim inside the contract graph's protobuf, so the
variant can point at those bytes. The contract graphs stay self-contained single files
(sherpa-onnx reads them into memory, where no external file can be resolved); only the
variants, which our runtimes open by path or with their external data passed in, depend on
the file beside them.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SHARED_WEIGHTS", "external_files", "share_weights"]

# Variant graph -> the contract graph whose file holds its weights.
SHARED_WEIGHTS = {"flow_lm_step": "flow_lm_main", "mimi_decoder_batched": "mimi_decoder"}

# Smaller initializers (shape constants, scales) stay inline: sharing them saves nothing.
MIN_SHARED_BYTES = 1024

# Field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _length_delimited(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message at
    buf[start:end]; other wire types are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield field, pos, pos + length
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")


def _raw_data_ranges(buf) -> Iterator[tuple[int, int]]:
    """(offset, length) in the serialized model of every main-graph initializer's raw data."""
    for field, start, end in _length_delimited(buf, 0, len(buf)):
        if field != _MODEL_GRAPH:
            continue
        for g_field, t_start, t_end in _length_delimited(buf, start, end):
            if g_field != _GRAPH_INITIALIZER:
                continue
            for t_field, d_start, d_end in _length_delimited(buf, t_start, t_end):
                if t_field == _TENSOR_RAW_DATA:
                    yield d_start, d_end - d_start


def _blobs_by_digest(path: Path) -> dict[str, tuple[int, int]]:
    """sha256 of each initializer's bytes in the model file -> (offset, length) there."""
    found = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for offset, length in _raw_data_ranges(buf):
            if length >= MIN_SHARED_BYTES:
                digest = hashlib.sha256(buf[offset : offset + length]).hexdigest()
                found.setdefault(digest, (offset, length))
    return found


def share_weights(variant: Path, contract: Path) -> int:
    """Rewrite `variant` so that every initializer whose bytes `contract` (a file in the same
    folder) also holds is read from there; returns the bytes no longer stored twice."""
    import onnx

    if variant.parent != contract.parent:
        raise ValueError(f"{variant} and {contract} must be in the same folder")
    blobs = _blobs_by_digest(contract)
    model = onnx.load(str(variant))
    shared = 0
    for tensor in model.graph.initializer:
        if not tensor.HasField("raw_data") or len(tensor.raw_data) < MIN_SHARED_BYTES:
            continue
        where = blobs.get(hashlib.sha256(tensor.raw_data).hexdigest())
        if where is None:
            continue
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", contract.name), ("offset", where[0]), ("length", where[1])):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        shared += where[1]
    # Written as is: onnx.save would try to re-home external tensors.
    variant.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(variant))  # also checks the external file and ranges
    return shared


def external_files(path: Path) -> list[str]:
    """The files (relative to the model's folder) whose bytes the model at `path` reads."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return sorted(files)
