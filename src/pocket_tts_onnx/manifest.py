"""`manifest.json`: everything a runtime must not hardcode, written beside the graphs.

Schema-versioned. A runtime refuses a manifest from a newer schema instead of guessing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pocket_tts_onnx.errors import BundleError
from pocket_tts_onnx.manifest_checks import check_numbers, timestamp_heads
from pocket_tts_onnx.specs import FLOW_TIME_INPUTS, GRAPH_NAMES, GraphSpec, spec_disagreement
from pocket_tts_onnx.text import TextRules

SCHEMA_VERSION = 3
# Schema 2 added the flow-LM position counter state, voices and file digests; graphs from a
# schema-1 bundle lack the counter, so such bundles must be re-exported. Schema 3 added
# `precisions` (INT8-only bundles), `model_id` and graphs that read their weights from another
# graph's file (`external`); a schema-2 reader would load those wrongly, so it must refuse them.
MIN_SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "int8")


def file_sha256(path: Path) -> str:
    """Digest recorded for every bundle file; the runtime checks it before loading."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_in_bundle(directory: Path, name: str) -> Path:
    """`directory / name` for a file the manifest names; refuses absolute paths and `..`
    so a manifest can never make a runtime read files outside its bundle."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"manifest names an empty or non-string file: {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or name.startswith(("/", "\\")):
        raise BundleError(
            f"manifest names {name!r}, which is outside the bundle; re-export the bundle"
        )
    return Path(directory) / rel


@dataclass(frozen=True)
class Defaults:
    """Generation defaults, upstream's values for this model."""

    temperature: float
    decode_steps: int  # LSD / Euler steps of the flow head
    noise_clamp: float | None
    eos_threshold: float
    frames_after_eos: int | None  # None: upstream's per-chunk guess + frames_after_eos_guess_offset
    frames_after_eos_guess_offset: int
    min_frames_before_eos: int
    max_length_tokens_per_second: float
    max_length_padding_seconds: float
    fade_in_seconds: float


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    kind: str  # "sentencepiece" (.model) or "tokenizers" (tokenizer.json)
    vocab_size: int
    origin: str  # where it came from; says "stand-in" for random-weight exports
    sha256: str = ""  # digest of `file`; runtimes refuse a tokenizer that does not match


@dataclass(frozen=True)
class VoiceEntry:
    """A predefined voice shipped in the bundle: flow-LM states in our .npz voice format."""

    file: str  # path inside the bundle, e.g. "voices/alba.npz"
    sha256: str
    origin: str  # e.g. upstream's hub file, or "computed from random weights"


@dataclass(frozen=True)
class SherpaOnnxFiles:
    """The extra files sherpa-onnx's Pocket TTS reads (export/sherpa.py), keyed by the
    `OfflineTtsPocketModelConfig` argument they go to, e.g. "vocab_json" -> "vocab.json"."""

    files: dict[str, str]  # argument -> file name
    sha256: dict[str, str]  # file name -> digest


@dataclass(frozen=True)
class GraphEntry:
    spec: GraphSpec
    files: dict[str, str]  # precision -> file name
    sha256: dict[str, str]  # file name -> digest (graph files and their external data files)
    # precision -> the files whose bytes that graph file reads as ONNX external data (a
    # variant reads its weights from its contract graph's file), in the graph file's folder.
    external: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "external": self.external,
            "sha256": self.sha256,
            **self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, name: str, d: dict) -> GraphEntry:
        external = d.get("external", {})
        entry = cls(
            spec=GraphSpec.from_dict(name, d),
            files=dict(d["files"]),
            sha256=dict(d["sha256"]),
            external={p: list(files) for p, files in external.items()},
        )
        for precision, file in entry.files.items():
            for needed in entry.bundle_files(precision):
                resolve_in_bundle(Path("."), needed)
                entry.digest(needed)
                if Path(needed).parent != Path(file).parent:
                    raise BundleError(
                        f"graph {name}: external data file {needed!r} is not in the folder of "
                        f"{file!r}; re-export the bundle"
                    )
        if set(entry.external) - set(entry.files):
            raise ValueError(f"graph {name} has external data for a precision it has no file for")
        return entry

    def bundle_files(self, precision: str) -> list[str]:
        """The graph file at `precision` and every file it reads its weights from."""
        return [self.files[precision], *self.external.get(precision, [])]

    def digest(self, file: str) -> str:
        """The sha256 the manifest records for `file`; BundleError (never KeyError) if none."""
        digest = self.sha256.get(file)
        if not isinstance(digest, str) or not digest:
            raise BundleError(
                f"manifest.json has no sha256 for {file!r} (graph {self.spec.name}): the "
                "manifest is incomplete; re-export the bundle"
            )
        return digest


@dataclass(frozen=True)
class Manifest:
    pocket_tts_version: str
    exporter_version: str
    source: dict[str, str]
    random_weights: bool
    sample_rate: int
    frame_rate: float
    samples_per_latent: int
    latent_dim: int
    d_model: int
    head_dim: int
    flow_type: str
    voice_cloning: bool
    # The config inserts a learnt BOS row before the voice conditioning; mimi_encoder's
    # `latents` already start with it, so runtimes feed them as they are.
    voice_bos_in_latents: bool
    defaults: Defaults
    text: TextRules
    tokenizer: TokenizerInfo
    graphs: dict[str, GraphEntry]
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)
    voices: dict[str, VoiceEntry] = field(default_factory=dict)
    # The voice used when a caller gives none (upstream's default for the language), or None.
    default_voice: str | None = None
    opset: int = 17
    sherpa_onnx: SherpaOnnxFiles | None = None  # None: the tokenizer is not a unigram model
    # The precisions every contract graph has a file for: ("fp32",), ("fp32", "int8") or, for
    # an `export --precision int8` bundle, ("int8",).
    precisions: tuple[str, ...] = ("fp32",)
    # What voices are checked against: the sha256 of the FP32 flow_lm_main file as exported,
    # recorded because an INT8-only bundle does not ship that file.
    model_id: str = ""
    # Flow-LM (layer, head) pairs whose attention over the text gives word timestamps;
    # empty: the bundle has none (stored as "timestamps": null).
    timestamp_heads: tuple[tuple[int, int], ...] = ()

    @property
    def flow_time_inputs(self) -> tuple[str, ...]:
        return FLOW_TIME_INPUTS[self.flow_type]

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "pocket_tts_version": self.pocket_tts_version,
            "exporter_version": self.exporter_version,
            "source": self.source,
            "random_weights": self.random_weights,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "samples_per_latent": self.samples_per_latent,
            "latent_dim": self.latent_dim,
            "d_model": self.d_model,
            "head_dim": self.head_dim,
            "flow_type": self.flow_type,
            "flow_time_inputs": list(self.flow_time_inputs),
            "voice_cloning": self.voice_cloning,
            "voice_bos_in_latents": self.voice_bos_in_latents,
            "defaults": asdict(self.defaults),
            "text": self.text.to_dict(),
            "tokenizer": asdict(self.tokenizer),
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "voices": {name: asdict(v) for name, v in self.voices.items()},
            "default_voice": self.default_voice,
            "opset": self.opset,
            "sherpa_onnx": asdict(self.sherpa_onnx) if self.sherpa_onnx else None,
            "precisions": list(self.precisions),
            "model_id": self.model_id,
            "timestamps": (
                {"heads": [list(h) for h in self.timestamp_heads]} if self.timestamp_heads else None
            ),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise BundleError("manifest has no integer schema_version; re-export the bundle")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema {version} is newer than this pocket-tts-onnx supports "
                f"({SCHEMA_VERSION}): upgrade pocket-tts-onnx"
            )
        if version < MIN_SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema {version} is older than this pocket-tts-onnx supports "
                f"({MIN_SCHEMA_VERSION}+): re-export the bundle with `pocket-tts-onnx export`"
            )
        try:
            missing = [name for name in GRAPH_NAMES if name not in d["graphs"]]
            if missing:
                raise KeyError(f"graphs.{missing[0]}")
            # The five contract graphs, plus any variants (batched, fast-KV) the bundle has.
            graphs = {name: GraphEntry.from_dict(name, g) for name, g in d["graphs"].items()}
            voices = {name: VoiceEntry(**v) for name, v in d.get("voices", {}).items()}
            # Every file the manifest names must lie inside the bundle.
            for named in [d["tokenizer"]["file"], *(v.file for v in voices.values())]:
                resolve_in_bundle(Path("."), named)
            default_voice = d.get("default_voice")
            if default_voice is not None and default_voice not in voices:
                raise ValueError(f"default_voice {default_voice!r} is not among the voices")
            if d["flow_type"] not in FLOW_TIME_INPUTS:
                raise ValueError(f"unknown flow_type {d['flow_type']!r}")
            check_numbers(d)
            precisions, model_id = _precisions_and_model_id(d, graphs)
            manifest = cls(
                schema_version=version,
                pocket_tts_version=d["pocket_tts_version"],
                exporter_version=d["exporter_version"],
                source=dict(d["source"]),
                random_weights=bool(d["random_weights"]),
                sample_rate=int(d["sample_rate"]),
                frame_rate=float(d["frame_rate"]),
                samples_per_latent=int(d["samples_per_latent"]),
                latent_dim=int(d["latent_dim"]),
                d_model=int(d["d_model"]),
                head_dim=int(d["head_dim"]),
                flow_type=d["flow_type"],
                voice_cloning=bool(d["voice_cloning"]),
                voice_bos_in_latents=bool(d["voice_bos_in_latents"]),
                defaults=Defaults(**d["defaults"]),
                text=TextRules.from_dict(d["text"]),
                tokenizer=TokenizerInfo(**d["tokenizer"]),
                graphs=graphs,
                notes=list(d.get("notes", [])),
                voices=voices,
                default_voice=default_voice,
                opset=int(d.get("opset", 17)),
                sherpa_onnx=SherpaOnnxFiles(**d["sherpa_onnx"]) if d.get("sherpa_onnx") else None,
                precisions=precisions,
                model_id=model_id,
                timestamp_heads=timestamp_heads(
                    d.get("timestamps"),
                    graphs["flow_lm_step"].spec if "flow_lm_step" in graphs else None,
                ),
            )
            dims = {k: getattr(manifest, k) for k in ("latent_dim", "d_model", "head_dim")}
            problem = spec_disagreement({n: g.spec for n, g in graphs.items()}, dims)
            if problem is not None:
                raise BundleError(
                    f"manifest.json: {problem}: the manifest does not describe its graphs; "
                    "re-export the bundle"
                )
            return manifest
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(
                f"manifest is incomplete or malformed ({type(e).__name__}: {e})"
            ) from e

    def require_precision(self, precision: str) -> None:
        """BundleError naming what the bundle holds when it has no graphs at `precision`."""
        if precision in self.precisions:
            return
        if precision == "int8":
            fix = "re-export with --quantize, or load with precision='fp32'"
        else:
            fix = (
                "it was exported with --precision int8; load it with precision='int8', or "
                "re-export with --quantize for FP32 and INT8"
            )
        held = " and ".join(p.upper() for p in self.precisions)
        raise BundleError(f"this bundle has {held} graphs only, no {precision.upper()}: {fix}")

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return path

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.exists():
            from pocket_tts_onnx.bundle_recovery import restore_interrupted

            restore_interrupted(directory)  # an export killed mid-install: put the bundle back
        if not directory.is_dir():
            raise BundleError(f"bundle directory not found: {directory}")
        if not path.is_file():
            raise BundleError(
                f"{path} is missing: {directory} is not a pocket-tts-onnx bundle "
                "(export one with `pocket-tts-onnx export`)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise BundleError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)


def _precisions_and_model_id(d: dict, graphs: dict[str, GraphEntry]) -> tuple[tuple, str]:
    """`precisions` and `model_id` as recorded (schema 3), or as a schema-2 bundle implies
    them: FP32 always, INT8 when every contract graph has it; the FP32 flow_lm_main digest."""
    main = graphs["flow_lm_main"]
    if "precisions" in d:
        precisions = tuple(p for p in PRECISIONS if p in d["precisions"])
        if not precisions or len(precisions) != len(d["precisions"]):
            raise ValueError(f"precisions must be some of {PRECISIONS}, got {d['precisions']!r}")
    else:
        int8 = all("int8" in graphs[name].files for name in GRAPH_NAMES)
        precisions = ("fp32", "int8") if int8 else ("fp32",)
    for name in GRAPH_NAMES:
        missing = [p for p in precisions if p not in graphs[name].files]
        if missing:
            raise ValueError(f"graph {name} has no {missing[0]} file")
    model_id = d.get("model_id")
    if model_id is None and "fp32" in main.files:
        model_id = main.digest(main.files["fp32"])
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be the FP32 flow_lm_main's sha256, got {model_id!r}")
    return precisions, model_id
