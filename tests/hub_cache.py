"""A Hugging Face hub cache filled offline, in the real layout, for the real download path.

With `HF_HUB_CACHE` pointing here and `HF_HUB_OFFLINE=1`, upstream's own
`download_if_necessary` (huggingface_hub's `hf_hub_download`) resolves every `hf://...@rev`
of a shipped config to these files: `models--ORG--REPO/blobs/<sha256>` with
`snapshots/<revision>/<path>` symlinks (and `refs/main` for unpinned files), exactly as a
real download leaves them. The content is upstream's, made with upstream's code from a
random-weight model: `model.safetensors` is `TTSModel.state_dict()` (what upstream's loader
reads with strict=True), voices are written by upstream's `export_model_state` from
`get_state_for_audio_prompt`, and the tokenizer is the exporter's stand-in (a tokenizer.json
converted from a trained SentencePiece unigram model when the config asks for one).
RANDOM WEIGHTS: nothing here is speech.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

MAIN_COMMIT = "0" * 39 + "1"  # the commit `refs/main` points at for unpinned files


def split_hf_url(url: str) -> tuple[str, str, str | None]:
    """hf://ORG/REPO/PATH[@REV] -> (repo_id, path, revision), as upstream splits it."""
    rest = url.removeprefix("hf://")
    parts = rest.split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    revision = None
    if "@" in filename:
        filename, revision = filename.split("@")
    return repo_id, filename, revision


def put_file(cache: Path, url: str, source: Path) -> Path:
    """Store `source` as the hub file `url` in the cache; returns the snapshot path."""
    repo_id, filename, revision = split_hf_url(url)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    if revision is None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(MAIN_COMMIT)
        revision = MAIN_COMMIT
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        shutil.copyfile(source, blob)
    pointer = repo / "snapshots" / revision / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    return pointer


def hub_env(cache: Path) -> dict[str, str]:
    """Environment for a subprocess that must resolve hf:// paths from `cache` only."""
    env = dict(os.environ)
    env.update(
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
    )
    env.pop("HF_TOKEN", None)
    return env


def synthetic_voice_audio(sample_rate: int, seed: int, seconds: float = 1.5) -> torch.Tensor:
    """[1, N] seeded noise bursts ending in a pause: a stand-in recording."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    audio = np.zeros(n, np.float32)
    burst = sample_rate // 4
    for start in range(0, int(n * 0.75), sample_rate // 3):
        audio[start : start + burst] = 0.2 * rng.standard_normal(len(audio[start : start + burst]))
    return torch.from_numpy(audio)[None]


@dataclass
class HubModel:
    language: str
    cache: Path
    voices: list[str]
    cloning: bool
    files: dict[str, Path] = field(default_factory=dict)  # role -> snapshot path


def fill_hub_cache(
    cache: Path,
    language: str,
    *,
    voices: list[str],
    cloning: bool = True,
    alba_audio: bool = False,
    seed: int = 0,
) -> HubModel:
    """Put a random-weight `language` model on the fake hub as upstream publishes it.

    `cloning=False` stores only `weights_path_without_voice_cloning` (the gated
    `weights_path` cannot be fetched, as for a user who did not accept the terms).
    `alba_audio` adds the recording upstream encodes as the default voice of custom models."""
    from pocket_tts.models.model_state import export_model_state
    from pocket_tts.utils.config import CONFIGS_DIR
    from pocket_tts.utils.utils import _ORIGINS_OF_PREDEFINED_VOICES, get_predefined_voice
    from safetensors.torch import save_file

    from pocket_tts_onnx.export.loading import ModelSource, load_model

    config = yaml.safe_load((CONFIGS_DIR / f"{language}.yaml").read_text(encoding="utf-8"))
    work = cache / ".work"
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(ModelSource(language=language, random_init=True, seed=seed))
    try:
        model = loaded.model
        hub = HubModel(language, cache, list(voices), cloning)
        weights = work / "model.safetensors"
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights))
        key = "weights_path" if cloning else "weights_path_without_voice_cloning"
        hub.files["weights"] = put_file(cache, config[key], weights)
        tok_url = config["flow_lm"]["lookup_table"]["tokenizer_path"]
        hub.files["tokenizer"] = put_file(cache, tok_url, loaded.tokenizer_path)
        rate = int(model.config.mimi.sample_rate)
        for i, name in enumerate(voices):
            with torch.no_grad():
                voice_state = model.get_state_for_audio_prompt(synthetic_voice_audio(rate, i))
            path = work / f"{name}.safetensors"
            export_model_state(voice_state, path)
            hub.files[f"voice:{name}"] = put_file(
                cache, get_predefined_voice(language=language, name=name), path
            )
        if alba_audio:
            import scipy.io.wavfile

            wav = work / "casual.wav"
            pcm = (synthetic_voice_audio(rate, 99)[0].numpy() * 32767).astype(np.int16)
            scipy.io.wavfile.write(wav, rate, pcm)  # 16-bit PCM, which upstream's reader takes
            hub.files["alba_audio"] = put_file(cache, _ORIGINS_OF_PREDEFINED_VOICES["alba"], wav)
    finally:
        if loaded._tmp is not None:
            loaded._tmp.cleanup()
    shutil.rmtree(work, ignore_errors=True)
    return hub
