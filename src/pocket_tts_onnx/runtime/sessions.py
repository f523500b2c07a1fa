"""ONNX Runtime sessions for a bundle: our measured session defaults and opening a graph file
with its sha256 checked against the manifest."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from pocket_tts_onnx.errors import BundleError
from pocket_tts_onnx.manifest import Manifest, file_sha256, resolve_in_bundle

__all__ = ["default_session_options", "open_bundle_graph", "open_session"]


def open_bundle_graph(
    bundle: Path,
    manifest: Manifest,
    name: str,
    precision: str,
    verify_checksums: bool = True,
    options: ort.SessionOptions | None = None,
    threads: int | None = None,
    providers: list | None = None,
) -> ort.InferenceSession:
    """Graph `name` at `precision` from the bundle, refusing a missing or altered file."""
    path = verify_bundle_graph(bundle, manifest, name, precision, verify_checksums)
    return open_session(path, options, threads, providers)


def verify_bundle_graph(
    bundle: Path, manifest: Manifest, name: str, precision: str, digest: bool = True
) -> Path:
    """The path of graph `name` at `precision`, checked present and (with `digest`) equal to
    the manifest's sha256, with the files it reads its weights from (ONNX external data)."""
    manifest.require_precision(precision)
    entry = manifest.graphs[name]
    if precision not in entry.files:
        raise BundleError(
            f"{bundle} has no {precision} file for {name}: re-export with "
            "--quantize, or load with precision='fp32'"
        )
    for file in entry.bundle_files(precision):
        path = resolve_in_bundle(bundle, file)
        if not path.is_file():
            raise BundleError(f"{path} is missing from the bundle; re-export it")
        if digest and file_sha256(path) != entry.digest(file):
            raise BundleError(
                f"{path} does not match the sha256 in manifest.json: the file is corrupted "
                "or was replaced; re-export or re-download the bundle"
            )
    return resolve_in_bundle(bundle, entry.files[precision])


def default_session_options(threads: int | None = None) -> ort.SessionOptions:
    """Our measured defaults: full graph optimisation and no CPU memory arena (the arena keeps
    its high-water mark, ~130 MB more resident memory for the English model, and was slower
    for these small per-step tensors)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    # Streaming runs the flow LM and the decoder at the same time, so each session gets half
    # the cores: on 2 cores, 2 threads per session measured 2.5x slower than 1.
    options.intra_op_num_threads = threads or max(1, (os.cpu_count() or 2) // 2)
    options.inter_op_num_threads = 1
    return options


def open_session(path: Path, options, threads, providers) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            options or default_session_options(threads),
            providers=providers or ["CPUExecutionProvider"],
        )
    except Exception as e:  # ORT raises its own exception types for unreadable models
        raise BundleError(f"ONNX Runtime cannot load {path}: {e}") from e
