"""`export_bundle`: model source -> verified bundle directory, written atomically.

Everything is written into a temporary directory next to the output and moved into place at
the end, so a failed or interrupted export leaves a previous bundle untouched and no partial
one behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pocket_tts_onnx import __version__
from pocket_tts_onnx.errors import ExportError
from pocket_tts_onnx.export.exporter import export_all, model_graph_specs
from pocket_tts_onnx.export.loading import LoadedModel, ModelSource, load_model
from pocket_tts_onnx.export.patches import check_pocket_tts_version
from pocket_tts_onnx.export.quantize import quantize_graph
from pocket_tts_onnx.export.verify import GraphReport, reference_cases, verify_graph
from pocket_tts_onnx.manifest import (
    MANIFEST_NAME,
    Defaults,
    GraphEntry,
    Manifest,
    TokenizerInfo,
    file_sha256,
)
from pocket_tts_onnx.text import TextRules

REPORT_NAME = "verify_report.json"
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: this bundle has the real architecture with seeded random weights. "
    "It produces noise, not speech; use it for testing and benchmarking only."
)


def _prepare_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST_NAME).is_file():
        raise ExportError(
            f"--output {output} is a non-empty directory that is not a bundle; refusing to "
            "replace it. Choose another --output or empty it."
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ExportError(f"cannot write to {output.parent} (--output): {e.strerror or e}") from e


def _install(staging: Path, output: Path) -> None:
    """Swap the finished staging directory into place; the old bundle goes last."""
    backup = None
    if output.exists():
        backup = output.with_name(f".{output.name}.old-{int(time.time() * 1000)}")
        output.rename(backup)
    try:
        staging.rename(output)
    except OSError:
        if backup is not None:
            backup.rename(output)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _defaults(model) -> Defaults:
    from pocket_tts.default_parameters import DEFAULT_NOISE_CLAMP, DEFAULT_SAMPLER_DECODE_STEPS

    cfg = model.config
    return Defaults(
        temperature=float(cfg.default_temperature),
        decode_steps=int(DEFAULT_SAMPLER_DECODE_STEPS),
        noise_clamp=DEFAULT_NOISE_CLAMP,
        eos_threshold=float(cfg.default_eos_threshold),
        frames_after_eos=cfg.model_recommended_frames_after_eos,
        frames_after_eos_guess_offset=2,  # upstream adds 2 to its per-chunk guess
        min_frames_before_eos=int(model._MIN_FRAMES_BEFORE_EOS),
        max_length_tokens_per_second=float(model._TOKENS_PER_SECOND_ESTIMATE),
        max_length_padding_seconds=float(model._GEN_SECONDS_PADDING),
        fade_in_seconds=1 / 200,  # upstream fades the first sample_rate // 200 samples in
    )


def _text_rules(model) -> TextRules:
    from pocket_tts.default_parameters import MAX_TOKEN_PER_CHUNK

    cfg = model.config
    return TextRules(
        pad_with_spaces_for_short_inputs=cfg.pad_with_spaces_for_short_inputs,
        remove_semicolons=cfg.remove_semicolons,
        append_terminal_punctuation=cfg.append_terminal_punctuation,
        capitalize_first_letter=cfg.capitalize_first_letter,
        replace_characters=dict(cfg.replace_characters),
        max_tokens_per_chunk=MAX_TOKEN_PER_CHUNK,
    )


def _build_manifest(
    loaded: LoadedModel,
    specs,
    staging: Path,
    random_weights: bool,
    pocket_tts_version: str,
    tokenizer_file: str,
) -> Manifest:
    model = loaded.model
    mimi = model.mimi
    graphs = {}
    for name, spec in specs.items():
        files = {"fp32": f"{name}.onnx"}
        if (staging / f"{name}_int8.onnx").exists():
            files["int8"] = f"{name}_int8.onnx"
        graphs[name] = GraphEntry(
            spec=spec, files=files, sha256={f: file_sha256(staging / f) for f in files.values()}
        )
    return Manifest(
        pocket_tts_version=pocket_tts_version,
        exporter_version=__version__,
        source=loaded.source,
        random_weights=random_weights,
        sample_rate=int(mimi.sample_rate),
        frame_rate=float(mimi.frame_rate),
        samples_per_latent=int(mimi.frame_size),
        latent_dim=int(model.flow_lm.ldim),
        d_model=int(model.flow_lm.dim),
        head_dim=int(model.flow_lm.out_eos.in_features),
        flow_type=model.flow_lm.flow_type,
        voice_cloning=bool(model.has_voice_cloning),
        voice_bos_in_latents=bool(model.flow_lm.insert_bos_before_voice),
        defaults=_defaults(model),
        text=_text_rules(model),
        tokenizer=TokenizerInfo(
            file=tokenizer_file,
            kind=loaded.tokenizer_kind,
            vocab_size=int(model.flow_lm.conditioner.embed.num_embeddings - 1),
            origin=loaded.tokenizer_origin,
        ),
        graphs=graphs,
        notes=[RANDOM_WEIGHTS_NOTE] if random_weights else [],
    )


def export_bundle(
    source: ModelSource,
    output: Path,
    *,
    quantize: bool = False,
    verify: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Manifest, list[GraphReport]]:
    """Export, optionally quantize, verify against upstream and install the bundle at `output`."""
    version = check_pocket_tts_version()
    output = Path(output)
    _prepare_output(output)
    progress(f"loading model ({source.language or source.config or 'demo'})")
    loaded = load_model(source)
    model = loaded.model
    specs = model_graph_specs(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be served and shared
    try:
        paths = export_all(model, specs, staging, progress)
        int8 = {}
        if quantize:
            for name, path in paths.items():
                progress(f"quantizing {name} (INT8, MatMul)")
                int8[name] = quantize_graph(path)
        tokenizer_file = (
            "tokenizer.json" if loaded.tokenizer_kind == "tokenizers" else "tokenizer.model"
        )
        shutil.copyfile(loaded.tokenizer_path, staging / tokenizer_file)
        reports = []
        if verify:
            progress("verifying against upstream PyTorch")
            cases = reference_cases(model, specs)
            for name, spec in specs.items():
                reports.append(verify_graph(spec, cases[name], paths[name], int8.get(name)))
            (staging / REPORT_NAME).write_text(
                json.dumps({r.graph: r.to_dict() for r in reports}, indent=2) + "\n"
            )
        manifest = _build_manifest(
            loaded, specs, staging, source.random_init or source.demo, version, tokenizer_file
        )
        manifest.save(staging)
        _install(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if loaded._tmp is not None:
            loaded._tmp.cleanup()
    return manifest, reports
