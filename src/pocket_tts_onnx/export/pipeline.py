"""`export_bundle`: model source -> verified bundle directory, written atomically.

Everything is written into a temporary directory next to the output and moved into place at
the end, so a failed or interrupted export leaves a previous bundle untouched and no partial
one behind. Files of the previous bundle that no export wrote (the user's notes, saved
voices) are carried into the new one; leftovers of killed exports are recovered or removed
(`bundle_recovery`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pocket_tts_onnx import __version__
from pocket_tts_onnx.bundle_recovery import (
    backup_path,
    remove_dead_leftovers,
    restore_interrupted,
    staging_prefix,
)
from pocket_tts_onnx.errors import ExportError
from pocket_tts_onnx.export.exporter import OPSET, export_all, model_graph_specs
from pocket_tts_onnx.export.hub import offline_if_hub_unreachable
from pocket_tts_onnx.export.loading import LoadedModel, ModelSource, load_model
from pocket_tts_onnx.export.optimize import optimize_graphs
from pocket_tts_onnx.export.patches import check_pocket_tts_version
from pocket_tts_onnx.export.quantize import quantize_graph
from pocket_tts_onnx.export.share import SHARED_WEIGHTS, external_files, share_weights
from pocket_tts_onnx.export.sherpa import write_sherpa_tokenizer
from pocket_tts_onnx.export.timestamp_heads import calibrated_heads, format_heads, parse_heads
from pocket_tts_onnx.export.verify import GraphReport, reference_cases, verify_graph
from pocket_tts_onnx.export.voices import export_voices
from pocket_tts_onnx.manifest import (
    MANIFEST_NAME,
    PRECISIONS,
    Defaults,
    GraphEntry,
    Manifest,
    TokenizerInfo,
    file_sha256,
)
from pocket_tts_onnx.specs import GRAPH_NAMES, KV_DTYPES, VARIANT_NAMES
from pocket_tts_onnx.text import TextRules

REPORT_NAME = "verify_report.json"
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: this bundle has the real architecture with seeded random weights. "
    "It produces noise, not speech; use it for testing and benchmarking only."
)
DEMO_NOTE = (
    "RANDOM WEIGHTS: this is the embedded demo model, a tiny Pocket TTS-shaped architecture "
    "(far smaller than any real model) with seeded random weights. It produces noise, not "
    "speech; use it to try the tools offline."
)


def _prepare_output(output: Path, notify: Callable[[str], None]) -> Path:
    """Check `--output` and clean up after interrupted exports; returns the real folder to
    write (a symlinked `--output` stays a symlink: its target is replaced)."""
    if output.is_symlink():
        output = Path(os.path.realpath(output))
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} exists and is not a directory")
    restore_interrupted(output, notify)
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
    remove_dead_leftovers(output, notify)
    return output


def _exporter_files(bundle: Path) -> set[str]:
    """Files of `bundle` an export wrote: every file its manifest names anywhere (graphs,
    tokenizer, voices, sherpa-onnx files...); the rest is the user's."""
    owned = {MANIFEST_NAME, REPORT_NAME}

    def walk(node) -> None:
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str) and 0 < len(node) < 300 and (bundle / node).is_file():
            owned.add(node)

    try:
        walk(json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError):  # unreadable manifest: the names exporters always use
        owned.update(f"{n}{s}.onnx" for n in GRAPH_NAMES + VARIANT_NAMES for s in ("", "_int8"))
        owned.update(("tokenizer.model", "tokenizer.json"))
    return {Path(f).as_posix() for f in owned if f}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)  # same filesystem (staging is beside the bundle): no copy
    except OSError:
        shutil.copy2(src, dst)


def _carry_user_files(old: Path, staging: Path, notify: Callable[[str], None]) -> None:
    """Put the user's own files of the previous bundle (NOTES.txt, a saved voice...) into the
    new one, so that re-exporting never deletes them."""
    owned = _exporter_files(old)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for root, dirs, files in os.walk(old):
        here = Path(root)
        links = [d for d in dirs if (here / d).is_symlink()]
        dirs[:] = [d for d in dirs if d not in links]
        for name in [*files, *links]:
            rel = (here / name).relative_to(old)
            if rel.as_posix() in owned:
                continue
            target = staging / rel
            if target.exists() or target.is_symlink():  # the new export wrote that name
                target = target.with_name(f"{target.name}.kept-{stamp}")
                notify(f"kept your {rel} as {target.name}: the new bundle has a file of that name")
            _link_or_copy(here / name, target)


def _install(staging: Path, output: Path, notify: Callable[[str], None]) -> None:
    """Swap the finished staging directory into place; the old bundle goes last."""
    backup = None
    if output.exists():
        _carry_user_files(output, staging, notify)
        backup = backup_path(output)
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


def _graph_entry(spec, files: dict[str, Path], staging: Path) -> GraphEntry:
    """The manifest entry for one graph's files (precision -> path in `staging`)."""
    external = {p: external_files(path) for p, path in files.items()}
    external = {p: names for p, names in external.items() if names}
    named = [path.name for path in files.values()] + [n for ns in external.values() for n in ns]
    return GraphEntry(
        spec=spec,
        files={p: path.name for p, path in files.items()},
        sha256={name: file_sha256(staging / name) for name in named},
        external=external,
    )


def _share_variant_weights(graphs: dict[str, Path], progress: Callable[[str], None]) -> None:
    """Point each variant's weights at its contract graph's file (same precision)."""
    for variant, contract in SHARED_WEIGHTS.items():
        if variant in graphs and contract in graphs:
            shared = share_weights(graphs[variant], graphs[contract])
            progress(
                f"{graphs[variant].name}: {shared / 1e6:.1f} MB of weights read from "
                f"{graphs[contract].name}, not copied"
            )


def _precisions(quantize: bool, precision: str | None) -> tuple[str, ...]:
    """The precisions to ship: `precision` "fp32", "int8" or "fp32+int8"; None follows
    `quantize` (FP32, plus INT8 when set)."""
    if precision is None:
        return ("fp32", "int8") if quantize else ("fp32",)
    chosen = tuple(p for p in PRECISIONS if p in precision.split("+"))
    if "+".join(chosen) != precision:
        raise ExportError(f"--precision must be fp32, int8 or fp32+int8, got {precision!r}")
    if quantize and "int8" not in chosen:
        raise ExportError(f"--quantize writes INT8 graphs, but --precision is {precision}")
    return chosen


def _timestamp_heads(source: ModelSource, model, option: str | None):
    """(heads, manifest note): from --timestamp-heads, else the fork's calibration for a
    shipped config it covers, else none."""
    attention = model.flow_lm.transformer.layers[0].self_attn
    layers = len(model.flow_lm.transformer.layers)
    if option is not None:
        heads = parse_heads(option, layers, attention.num_heads)
        return heads, f"Word-timestamp heads {format_heads(heads)} given at export."
    found = calibrated_heads(source.language) if source.language else None
    if found is None:
        return (), None
    text, note = found
    return parse_heads(text, layers, attention.num_heads), note


def _build_manifest(
    loaded: LoadedModel,
    specs,
    staging: Path,
    random_weights: bool,
    pocket_tts_version: str,
    tokenizer_file: str,
    graph_files: dict[str, dict[str, Path]],
    model_id: str,
    note: str | None = None,
) -> Manifest:
    model = loaded.model
    mimi = model.mimi
    graphs = {name: _graph_entry(spec, graph_files[name], staging) for name, spec in specs.items()}
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
            sha256=file_sha256(staging / tokenizer_file),
        ),
        graphs=graphs,
        notes=[note] if note else [],
        opset=OPSET,
        precisions=tuple(p for p in PRECISIONS if p in graph_files["flow_lm_main"]),
        model_id=model_id,
    )


def export_bundle(
    source: ModelSource,
    output: Path,
    *,
    quantize: bool = False,
    verify: bool = True,
    progress: Callable[[str], None] = lambda _: None,
    voices: str | tuple[str, ...] = "all",
    precision: str | None = None,
    timestamp_heads: str | None = None,
    kv_dtype: str = "fp32",
) -> tuple[Manifest, list[GraphReport]]:
    """Export, optionally quantize, verify against upstream and install the bundle at `output`.

    `precision` "int8" ships INT8 graphs only: FP32 is still exported and verified (it is
    what INT8 is measured against, and its flow_lm_main digest is the model id), then left
    out of the bundle. `timestamp_heads` ("L3H8,L2H0") names the word-timestamp heads; by
    default a config the fork calibrated gets its heads, any other none. `kv_dtype` "fp16"
    makes flow_lm_step store K/V as float16 (verified within FP16_KV_RELATIVE_TOLERANCE)."""
    precisions = _precisions(quantize, precision)
    if kv_dtype not in KV_DTYPES:
        raise ExportError(f"--kv-dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
    version = check_pocket_tts_version()
    output = _prepare_output(Path(output), progress)
    progress(f"loading model ({source.language or source.config or 'demo'})")
    loaded = load_model(source)
    model = loaded.model
    specs = model_graph_specs(model, kv_dtype)
    heads, heads_note = _timestamp_heads(source, model, timestamp_heads)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(output), dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be served and shared
    try:
        paths = export_all(model, specs, staging, progress)
        optimize_graphs(paths, progress)  # before verification and quantization
        model_id = file_sha256(paths["flow_lm_main"])  # voices are checked against it
        int8 = {}
        if "int8" in precisions:
            for name, path in paths.items():
                progress(f"quantizing {name} (INT8, MatMul)")
                int8[name] = quantize_graph(path)
        for graphs in (paths, int8):  # before verification: it checks the shipped files
            _share_variant_weights(graphs, progress)
        tokenizer_file = (
            "tokenizer.json" if loaded.tokenizer_kind == "tokenizers" else "tokenizer.model"
        )
        shutil.copyfile(loaded.tokenizer_path, staging / tokenizer_file)
        # sherpa-onnx reads the tokenizer as vocab.json + token_scores.json (unigram only).
        sherpa = write_sherpa_tokenizer(staging / tokenizer_file, loaded.tokenizer_kind, staging)
        reports = []
        if verify:
            progress("verifying against upstream PyTorch")
            cases = reference_cases(model, specs)
            for name, spec in specs.items():
                reports.append(verify_graph(spec, cases[name], paths[name], int8.get(name)))
            (staging / REPORT_NAME).write_text(
                json.dumps({r.graph: r.to_dict() for r in reports}, indent=2) + "\n"
            )
        # Voices after the graphs: their model id is the fp32 flow_lm_main's sha256.
        main = specs["flow_lm_main"]
        with offline_if_hub_unreachable(not source.demo):  # no 25 s retry storm offline
            voice_entries, default_voice, voice_notes = export_voices(
                loaded, source, main, paths["flow_lm_main"], staging, voices, verify, progress
            )
        if "fp32" not in precisions:
            progress("leaving the FP32 graphs out of the bundle (--precision int8)")
            for path in paths.values():
                path.unlink()
        shipped = {"fp32": paths} if "fp32" in precisions else {}
        if int8:
            shipped["int8"] = int8
        graph_files = {name: {p: g[name] for p, g in shipped.items()} for name in specs}
        note = DEMO_NOTE if source.demo else RANDOM_WEIGHTS_NOTE if source.random_init else None
        manifest = _build_manifest(
            loaded, specs, staging, source.random_init or source.demo, version, tokenizer_file,
            graph_files, model_id, note,
        )  # fmt: skip
        manifest = dataclasses.replace(
            manifest,
            voices=voice_entries,
            default_voice=default_voice,
            notes=[*manifest.notes, *voice_notes, *([heads_note] if heads_note else [])],
            sherpa_onnx=sherpa,
            timestamp_heads=heads,
        )
        manifest.save(staging)
        _install(staging, output, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if loaded._tmp is not None:
            loaded._tmp.cleanup()
    return manifest, reports
