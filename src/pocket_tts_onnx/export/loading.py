"""Loading an upstream Pocket TTS model from any source the exporter accepts.

Exactly one source: a shipped config by language name (weights fetched the way upstream
fetches them), a custom config with safetensors weights or a training checkpoint, or the
embedded demo. `random_init` swaps the weights for seeded random ones (the real architecture,
fully offline) and, when the config's tokenizer lives on a hub, a stand-in tokenizer of the
same vocabulary size.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from pocket_tts_onnx.errors import ModelSourceError
from pocket_tts_onnx.export.hub import hub_names, offline_if_hub_unreachable
from pocket_tts_onnx.export.standin_tokenizer import (
    train_standin_tokenizer,
    train_standin_tokenizer_json,
)
from pocket_tts_onnx.manifest import file_sha256

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
_REMOTE = ("hf://", "http://", "https://")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """What to export. Exactly one of language / config / demo."""

    language: str | None = None
    config: Path | None = None
    weights: Path | None = None
    checkpoint: Path | None = None
    random_init: bool = False
    seed: int = 0
    demo: bool = False


@dataclass
class LoadedModel:
    model: torch.nn.Module  # pocket_tts.TTSModel
    source: dict  # manifest "source" entry
    tokenizer_path: Path
    tokenizer_kind: str
    tokenizer_origin: str
    config_name: str
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)


def available_languages() -> list[str]:
    from pocket_tts.utils.config import CONFIGS_DIR

    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _source_options() -> str:
    return (
        "Options: --language NAME (weights fetched from the model hub, needs internet and, "
        "for voice cloning, accepted terms on the hub), --config PATH with --weights "
        "model.safetensors or --checkpoint run.pt (local files), --random-init [--seed N] "
        "(the architecture with random weights, offline), or --demo (tiny offline model)."
    )


def _resolve_config(source: ModelSource) -> tuple[Path, str]:
    modes = [source.language is not None, source.config is not None, source.demo]
    if sum(modes) != 1:
        raise ModelSourceError("choose exactly one model source. " + _source_options())
    if source.demo:
        return DEMO_CONFIG, "demo"
    if source.language is not None:
        from pocket_tts.utils.config import CONFIGS_DIR

        path = CONFIGS_DIR / f"{source.language}.yaml"
        if not path.exists():
            raise ModelSourceError(
                f"unknown language {source.language!r}: the installed pocket-tts ships "
                f"{', '.join(available_languages())}"
            )
        return path, source.language
    path = Path(source.config)
    if not path.is_file():
        raise ModelSourceError(f"config file not found: {path} (--config)")
    return path, path.stem


def _read_config_dict(path: Path) -> dict:
    from pocket_tts.utils.config import Config

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        Config(**data)  # validate early, with upstream's own schema
    except Exception as e:
        raise ModelSourceError(f"{path} is not a valid pocket-tts config: {e}") from e
    return data


def _local_tokenizer(data: dict, config_path: Path) -> Path | None:
    """The config's tokenizer as a local file, resolved next to the config when relative;
    None when it is on a hub. A local path that does not exist is an error, not a hub file."""
    raw = str(data["flow_lm"]["lookup_table"]["tokenizer_path"])
    if raw.startswith(_REMOTE):
        return None
    path = Path(raw)
    if not path.is_absolute() and (config_path.parent / path).exists():
        path = config_path.parent / path
    if not path.is_file():
        where = "" if path.is_absolute() else f" (nor relative to {config_path.parent})"
        raise ModelSourceError(
            f"tokenizer file not found: {raw}{where}, named by flow_lm.lookup_table."
            f"tokenizer_path in {config_path}; fix that path in the config"
        )
    return path


def _is_weights_error(e: BaseException) -> bool:
    """Did reading or applying the weights fail (rather than building the model)?"""
    frames = traceback.extract_tb(e.__traceback__)
    files = [f.filename.replace("\\", "/") for f in frames]
    return (
        "safetensor" in type(e).__module__.lower()
        or "Safetensor" in type(e).__name__
        or any("safetensors/" in f or "torch/serialization.py" in f for f in files)
        or any(f.name in ("load_state_dict", "load_file") for f in frames)
    )


def _where(e: BaseException) -> str:
    """The failing line of upstream code, for errors with no message (bare asserts)."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno}: `{(last.line or '').strip()}`"


def _wrap_load_error(
    e: Exception, what: str, config_path: Path | None = None, has_weights: bool = True
) -> ModelSourceError:
    text = f"{type(e).__name__}: {e}"
    short = text.splitlines()[0][:300]
    if not str(e).strip():
        short = short.rstrip(": ") + _where(e)
    if type(e).__module__.startswith(("huggingface_hub", "requests", "urllib3")):
        return ModelSourceError(
            f"{what}: could not fetch the model files from the model hub ({short}). "
            + _source_options()
        )
    if isinstance(e, FileNotFoundError):
        return ModelSourceError(f"{what}: file not found ({short}). " + _source_options())
    if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        return ModelSourceError(
            f"{what}: the weights do not match the config ({short}). Pass the config the "
            "weights were trained with."
        )
    if not has_weights or not _is_weights_error(e):
        return ModelSourceError(
            f"{what}: the config {config_path or ''} does not describe a model pocket-tts can "
            f"build ({short}). Compare it with the shipped configs in pocket_tts/config/."
        )
    return ModelSourceError(
        f"{what}: the weights file is corrupt or unreadable ({short}). " + _source_options()
    )


def _randomize_unset_weights(model: torch.nn.Module, seed: int) -> None:
    """Give random values to what upstream leaves at zeros/ones without weights, so that voice
    conditioning and latent scaling are exercised by verification."""
    gen = torch.Generator().manual_seed(seed + 1)
    flow_lm = model.flow_lm
    with torch.no_grad():
        w = flow_lm.speaker_proj_weight
        w.copy_(torch.randn(w.shape, generator=gen) / w.shape[1] ** 0.5)
        flow_lm.emb_std.copy_(0.5 + torch.rand(flow_lm.emb_std.shape, generator=gen))
        flow_lm.emb_mean.copy_(0.1 * torch.randn(flow_lm.emb_mean.shape, generator=gen))


class _DropUninitialized(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "model is uninitialized" not in record.getMessage()


@contextlib.contextmanager
def _quiet_uninitialized(random_init: bool):
    """Upstream warns "model is uninitialized!" when a config has no weights: exactly what
    --random-init asks for, so the line is dropped for that load only (the manifest and the
    CLI say "random weights" instead)."""
    if not random_init:
        yield
        return
    target = logging.getLogger("pocket_tts.models.tts_model")
    drop = _DropUninitialized()
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


@contextlib.contextmanager
def _offline_if_hub_unreachable(data: dict):
    with offline_if_hub_unreachable(hub_names(data)):
        yield


def load_model(source: ModelSource) -> LoadedModel:
    """Build the upstream TTSModel for `source`; raise ModelSourceError with options on failure."""

    config_path, config_name = _resolve_config(source)
    data = _read_config_dict(config_path)
    random_init = source.random_init or source.demo
    if random_init and (source.weights or source.checkpoint):
        raise ModelSourceError("--random-init cannot be combined with --weights/--checkpoint")
    if source.config is not None and not random_init and not (source.weights or source.checkpoint):
        has_weights = data.get("weights_path") or data["flow_lm"].get("weights_path")
        if not has_weights:
            raise ModelSourceError(
                f"{config_path} names no weights: pass --weights, --checkpoint or --random-init"
            )
    if source.weights and source.checkpoint:
        raise ModelSourceError("pass either --weights or --checkpoint, not both")
    for flag, path in (("--weights", source.weights), ("--checkpoint", source.checkpoint)):
        if path is not None and not Path(path).is_file():
            raise ModelSourceError(f"weights file not found: {path} ({flag})")

    # Holds the rewritten config and a stand-in tokenizer; it must outlive loading (the
    # exporter copies the tokenizer into the bundle), so LoadedModel owns it.
    tmp = tempfile.TemporaryDirectory(prefix="pocket-tts-onnx-")
    try:
        with _offline_if_hub_unreachable(data):
            return _load(source, data, config_path, config_name, random_init, tmp)
    except BaseException:
        tmp.cleanup()
        raise


def _load(source, data, config_path, config_name, random_init, tmp) -> LoadedModel:
    from pocket_tts import TTSModel

    tmp_dir = Path(tmp.name)
    lookup = data["flow_lm"]["lookup_table"]
    tokenizer = _local_tokenizer(data, config_path)
    tokenizer_origin = str(lookup["tokenizer_path"])
    if tokenizer is None and random_init:
        n_bins = int(lookup["n_bins"])
        if _tokenizer_kind(lookup) == "tokenizers":
            # The released tokenizer.json files are converted SentencePiece unigram models:
            # the stand-in takes the same format and path (Python tokenizers, the web's JS).
            tokenizer = train_standin_tokenizer_json(n_bins, tmp_dir / "tokenizer.json")
            lookup["tokenizer"] = "tokenizers"
            how = "converted to tokenizer.json"
        else:
            tokenizer = train_standin_tokenizer(n_bins, tmp_dir / "tokenizer.model")
            lookup["tokenizer"] = "sentencepiece"
            how = "as a .model"
        tokenizer_origin = (
            f"stand-in: SentencePiece unigram with {n_bins} pieces trained on a generated "
            f"corpus, {how} (the config's tokenizer {lookup['tokenizer_path']} is on a hub)"
        )
    if tokenizer is not None:
        lookup["tokenizer_path"] = str(tokenizer)

    if random_init:
        for holder in (data, data["flow_lm"], data["mimi"]):
            holder.pop("weights_path", None)
        data.pop("weights_path_without_voice_cloning", None)
        source_entry = {"config": config_name, "weights": f"random-init seed {source.seed}"}
    elif source.weights is not None:
        for holder in (data["flow_lm"], data["mimi"]):
            holder.pop("weights_path", None)
        data.pop("weights_path_without_voice_cloning", None)
        data["weights_path"] = str(Path(source.weights).resolve())
        source_entry = {"config": config_name, "weights_sha256": file_sha256(Path(source.weights))}
    elif source.checkpoint is not None:
        source_entry = {
            "config": config_name,
            "checkpoint_sha256": file_sha256(Path(source.checkpoint)),
        }
    else:
        source_entry = {"config": config_name, "weights": str(data.get("weights_path"))}

    tmp_config = tmp_dir / f"{config_name}.yaml"
    tmp_config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        if random_init:
            torch.manual_seed(source.seed)
        with _quiet_uninitialized(random_init):
            model = TTSModel.load_model(
                config=tmp_config,
                checkpoint=str(source.checkpoint) if source.checkpoint else None,
            )
    except Exception as e:  # upstream raises hub, safetensors, torch and pydantic errors
        raise _wrap_load_error(
            e, f"loading {config_name}", config_path, has_weights=not random_init
        ) from e
    if random_init:
        _randomize_unset_weights(model, source.seed)
    model.eval()

    if source.weights is None and not random_init and source.checkpoint is None:
        key = "weights_path"
        if not model.has_voice_cloning:  # upstream fell back to the weights without cloning
            key = "weights_path_without_voice_cloning"
            source_entry["weights"] = str(data.get(key))
        weights = _weights_file_of(data, key)
        if weights is not None:
            source_entry["weights_sha256"] = file_sha256(weights)
    tok_path = Path(lookup["tokenizer_path"])
    if not tok_path.exists():
        from pocket_tts.utils.utils import download_if_necessary

        tok_path = download_if_necessary(str(lookup["tokenizer_path"]))
    kind = _tokenizer_kind(lookup)
    return LoadedModel(
        model=model,
        source=source_entry,
        tokenizer_path=tok_path,
        tokenizer_kind=kind,
        tokenizer_origin=tokenizer_origin,
        config_name=config_name,
        _tmp=tmp,
    )


def _tokenizer_kind(lookup: dict) -> str:
    """Upstream's rule (build_tokenizer): the config's kind, else the file suffix."""
    kind = str(lookup.get("tokenizer", "sentencepiece"))
    path = str(lookup["tokenizer_path"]).split("@")[0]
    if kind in ("tokenizers", "json") or path.endswith(".json"):
        return "tokenizers"
    return "sentencepiece"


def _weights_file_of(data: dict, key: str = "weights_path") -> Path | None:
    """The local (cached) file upstream loaded its weights from, for the manifest's sha256."""
    from pocket_tts.utils.utils import download_if_necessary

    raw = data.get(key)
    if not raw:
        return None
    try:
        return download_if_necessary(str(raw))
    except Exception:  # not fetchable after all: the hash is not recorded
        return None
