"""Voices shipped in a bundle: upstream's predefined voice states, converted and verified.

Upstream's everyday path is `pocket-tts generate --voice alba`: a voice state precomputed with
the released weights of the language (`get_predefined_voice(language, name)`, a .safetensors
on the hub), and the only kind of voice for weights without voice cloning. The exporter
fetches those states with upstream's own `download_if_necessary`, converts them to the
flow_lm_main states of the graph contract (driven by the GraphSpec), checks them, verifies
that our ONNX graph continues from them as upstream continues from its own loaded state, and
writes `voices/NAME.npz` in the engine's voice format.

Where no precomputed state can apply, voices are encoded at export:
- custom config / checkpoint that can clone: upstream's default for custom models, the audio
  file behind the fallback voice (alba's recording), encoded by the model itself;
- random weights (--random-init, --demo): a deterministic synthetic prompt encoded by the
  model itself, so the feature is testable offline. Its origin says it is not a real voice.
"""

from __future__ import annotations

import copy
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pocket_tts_onnx.errors import ExportError
from pocket_tts_onnx.manifest import VoiceEntry, file_sha256
from pocket_tts_onnx.runtime.voice_file import save_voice_npz
from pocket_tts_onnx.runtime.voices import VOICE_FORMAT  # what Voice.save writes
from pocket_tts_onnx.specs import GraphSpec

logger = logging.getLogger(__name__)

VOICES_DIR = "voices"
SYNTHETIC_ORIGIN = (
    "synthetic: a seeded noise prompt encoded by this random-weight model at export "
    "(not a real voice; for testing the voice path only)"
)
# A converted voice, continued for a few steps, must match upstream within this relative error.
VOICE_TOLERANCE = 1e-4
_VERIFY_STEPS = 4
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class PlannedVoice:
    """One voice to put in the bundle: upstream's streaming state for it, and where it came
    from. `state` is upstream's flow-LM model_state ({module: {key: tensor}})."""

    name: str
    state: dict
    origin: str


def catalog() -> list[str]:
    """Upstream's predefined voice names (27 in pocket-tts 4.0.1)."""
    from pocket_tts.utils.utils import _ORIGINS_OF_PREDEFINED_VOICES

    return list(_ORIGINS_OF_PREDEFINED_VOICES)


def parse_voices_option(value: str | None) -> str | tuple[str, ...]:
    """`--voices all|none|NAME,...` -> "all", "none" or a tuple of names."""
    if value is None:
        return "all"
    value = value.strip()
    if value in ("all", "none"):
        return value
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ExportError("--voices takes 'all', 'none' or a comma-separated list of voice names")
    for name in names:
        if not _NAME_RE.match(name):
            raise ExportError(
                f"--voices: {name!r} is not a valid voice name (letters, digits, '_', '-', '.')"
            )
    return names


def default_voice_for(config_name: str | None, custom: bool) -> str:
    """Upstream's rule (`get_default_voice_for_language`): a language's own voice (giovanni,
    lola, juergen, rafael, estelle, daan) or the fallback, alba. For custom weights upstream
    uses alba's audio file instead of the precomputed state; the name stays "alba"."""
    from pocket_tts.default_parameters import (
        DEFAULT_VOICE_FALLBACK,
        get_default_voice_for_language,
    )

    if custom:
        return DEFAULT_VOICE_FALLBACK
    return get_default_voice_for_language(config_name)


# ------------------------------------------------------------------ state conversion
def state_to_numpy(state: dict) -> dict[str, dict[str, np.ndarray]]:
    return {
        module: {key: value.detach().cpu().numpy() for key, value in entries.items()}
        for module, entries in state.items()
    }


def convert_upstream_state(
    spec: GraphSpec, modules: dict[str, dict[str, np.ndarray]], what: str
) -> dict[str, np.ndarray]:
    """Upstream flow-LM state ({module: {"cache", "offset", ...}}, module names relative to
    flow_lm, as in upstream's voice files) -> our flow_lm_main states, checked against `spec`.

    Driven by each StateSpec's upstream key: "cache.k"/"cache.v" are the halves of the
    module's cache cut to its filled length, "offset" is the filled length (int64)."""
    offsets = [
        int(np.asarray(m["offset"]).reshape(-1)[0]) for m in modules.values() if "offset" in m
    ]
    states: dict[str, np.ndarray] = {}
    for s in spec.states:
        module = s.upstream_module.split(".", 1)[1] if "." in s.upstream_module else ""
        entry = modules.get(module, {})
        if s.upstream_key in ("cache.k", "cache.v"):
            if "cache" not in entry:
                raise ExportError(f"{what}: no {module}/cache; not a voice for this model")
            cache = np.asarray(entry["cache"])
            filled = (
                int(np.asarray(entry["offset"]).reshape(-1)[0])
                if "offset" in entry
                else cache.shape[2]
            )
            if not 0 < filled <= cache.shape[2]:
                raise ExportError(f"{what}: {module} holds {filled} positions, cache {cache.shape}")
            value = s.from_upstream_cache(cache, filled)
        elif s.upstream_key == "offset":
            if "offset" in entry:
                filled = int(np.asarray(entry["offset"]).reshape(-1)[0])
            elif offsets:
                filled = offsets[0]
            else:
                raise ExportError(f"{what}: no position counter ('offset') in the voice state")
            value = np.full(s.initial_shape or [1], filled, dtype=s.dtype)
        else:
            raise ExportError(
                f"{what}: state {s.name} has upstream key {s.upstream_key!r}, which voices "
                "cannot fill; update pocket_tts_onnx.export.voices"
            )
        _check_state(s, value, what)
        states[s.name] = value
    return states


def _check_state(s, value: np.ndarray, what: str) -> None:
    ok = value.ndim == len(s.shape) and all(
        isinstance(d, str) or d == g for d, g in zip(s.shape, value.shape, strict=True)
    )
    if not ok or value.dtype != np.dtype(s.dtype):
        raise ExportError(
            f"{what}: state {s.name} ({s.upstream_module} {s.upstream_key}) has shape "
            f"{list(value.shape)} {value.dtype}, the graph expects {s.shape} {s.dtype}: "
            "the voice was made for a different model"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ExportError(f"{what}: state {s.name} contains NaN or Inf")


# ------------------------------------------------------------------ where voices come from
def _download(url: str) -> Path:
    from pocket_tts.utils.utils import download_if_necessary

    return download_if_necessary(url)


def _fetch_predefined(language: str, name: str) -> tuple[dict, str]:
    from pocket_tts.models.model_state import _import_model_state
    from pocket_tts.utils.utils import get_predefined_voice

    url = get_predefined_voice(language=language, name=name)
    return _import_model_state(_download(url), torch.device("cpu")), url


def synthetic_prompt(sample_rate: int, name: str) -> torch.Tensor:
    """Two seconds of noise bursts ending in a pause, [1, N], seeded by the voice's name:
    deterministic input for voices of random-weight models."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    n = 2 * sample_rate
    audio = torch.zeros(1, n)
    burst = sample_rate // 5
    for start in range(0, int(n * 0.8), sample_rate // 3):
        audio[:, start : start + burst] = 0.2 * torch.randn(1, burst, generator=gen)
    return audio


def _encode(model, prompt) -> dict:
    with torch.no_grad():
        return model.get_state_for_audio_prompt(prompt)


def plan_voices(
    loaded, source, selection, progress: Callable[[str], None]
) -> tuple[list[PlannedVoice], str | None, list[str]]:
    """The voices to ship for this source, the default voice's name and notes for the
    manifest. `selection` is "all", "none" or a tuple of names."""
    if selection == "none":
        return [], None, []
    model = loaded.model
    random_init = bool(source.random_init or source.demo)
    custom = source.language is None or source.checkpoint is not None
    default = default_voice_for(source.language, custom)
    names = [default] if selection == "all" else list(selection)
    if random_init:
        voices = []
        for name in names:
            progress(f"voice {name}: encoding a synthetic prompt (random weights)")
            state = _encode(model, synthetic_prompt(int(model.config.mimi.sample_rate), name))
            voices.append(PlannedVoice(name, state, SYNTHETIC_ORIGIN))
        return voices, (default if default in names else names[0]), []
    if not custom:
        return _plan_predefined(loaded, source.language, selection, default, progress)
    return _plan_custom(model, names, default, selection, progress)


def _plan_predefined(loaded, language, selection, default, progress):
    names = catalog() if selection == "all" else list(selection)
    if selection == "all":  # the default first, then upstream's catalog order
        names = [default] + [n for n in names if n != default]
    voices, missing = [], []
    for name in names:
        try:
            state, url = _fetch_predefined(language, name)
            progress(f"voice {name}: fetched {url}")
        except Exception as e:  # hub, network and file errors
            if selection != "all" or name == default:
                raise ExportError(
                    f"voice {name!r} for {language}: could not fetch upstream's voice state "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Pass --voices none "
                    "to export without voices, or name voices that exist."
                ) from e
            missing.append(name)
            continue
        voices.append(PlannedVoice(name, state, url))
    notes = []
    if missing:
        notes.append(f"voices not available for {language} and left out: {', '.join(missing)}")
        logger.warning(notes[-1])
    return voices, default, notes


def _plan_custom(model, names, default, selection, progress):
    """Custom weights cannot use states precomputed with the released weights (upstream
    refuses them); like upstream, encode the voices' audio files with the model itself."""
    from pocket_tts.utils.utils import _ORIGINS_OF_PREDEFINED_VOICES

    if not model.has_voice_cloning:
        if selection == "all":
            note = "no voices: custom weights without voice cloning cannot encode a voice"
            return [], None, [note]
        raise ExportError(
            "--voices: these weights have no voice cloning, so voices cannot be encoded"
        )
    voices, notes = [], []
    for name in names:
        url = _ORIGINS_OF_PREDEFINED_VOICES.get(name)
        if url is None:
            raise ExportError(
                f"--voices: {name!r} is not one of upstream's voices ({', '.join(catalog())})"
            )
        try:
            progress(f"voice {name}: encoding {url} with this model")
            state = _encode(model, str(_download(url)))
        except Exception as e:
            if selection != "all":
                raise ExportError(
                    f"voice {name!r}: could not fetch or encode {url} "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); pass --voices none"
                ) from e
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else ""
            notes.append(f"no default voice: {url} could not be fetched or encoded ({reason})")
            logger.warning(notes[-1])
            return [], None, notes
        voices.append(PlannedVoice(name, state, f"encoded at export from {url}"))
    return voices, (default if default in names else names[0]), notes


# ------------------------------------------------------------------ verification and writing
def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_voice(model, spec: GraphSpec, graph, voice: PlannedVoice, states) -> float:
    """Continue from the voice for a few steps (text prompt, BOS, latents) in our graph and in
    upstream from its own state; returns the worst relative error of conditioning/eos.
    `graph` is the FP32 flow_lm_main: an InferenceSession or the .onnx path."""
    from pocket_tts.modules.stateful_module import increment_steps

    flow_lm = model.flow_lm
    gen = torch.Generator().manual_seed(77)
    n_bins = flow_lm.conditioner.embed.num_embeddings
    tokens = torch.randint(0, n_bins - 1, (1, 5), generator=gen)
    with torch.no_grad():
        text = flow_lm.conditioner(tokens)
    bos = torch.full((1, 1, flow_lm.ldim), np.nan)
    calls = [(torch.empty(1, 0, flow_lm.ldim), text), (bos, None)]
    calls += [(torch.randn(1, 1, flow_lm.ldim, generator=gen), None) for _ in range(_VERIFY_STEPS)]
    upstream = copy.deepcopy(voice.state)
    filled = max(int(m["offset"].view(-1)[0]) for m in upstream.values() if "offset" in m)
    model._expand_kv_cache(upstream, filled + text.shape[1] + len(calls))
    session = graph if isinstance(graph, ort.InferenceSession) else _session(graph)
    names = [t.name for t in spec.all_outputs]
    ours = dict(states)
    err: dict[str, float] = {}
    scale: dict[str, float] = {}
    empty_text = torch.empty(1, 0, flow_lm.dim)
    for seq, emb in calls:
        emb = empty_text if emb is None else emb
        with torch.no_grad():
            latents = torch.where(torch.isnan(seq), flow_lm.bos_emb, seq)
            hidden = flow_lm.backbone(flow_lm.input_linear(latents), emb, seq, upstream)[:, -1]
            eos = flow_lm.out_eos(hidden)
        increment_steps(flow_lm, upstream, seq.shape[1] + emb.shape[1])
        feed = {"sequence": seq.numpy(), "text_embeddings": emb.numpy(), **ours}
        out = dict(zip(names, session.run(names, feed), strict=True))
        ours = {s.name: out[s.output_name] for s in spec.states}
        for key, ref in (("conditioning", hidden), ("eos_logit", eos)):
            ref = ref.numpy()
            diff = float(np.max(np.abs(out[key] - ref)))
            err[key] = max(err.get(key, 0.0), diff if np.isfinite(diff) else float("inf"))
            scale[key] = max(scale.get(key, 0.0), float(np.max(np.abs(ref))))
    # Relative to the output's scale over the run, like the graph verification.
    return max(err[k] / max(scale[k], 1e-6) for k in err)


def write_voices(
    model,
    spec: GraphSpec,
    onnx_path: Path,
    staging: Path,
    planned: list[PlannedVoice],
    verify: bool,
    progress: Callable[[str], None],
) -> dict[str, VoiceEntry]:
    """Convert, check, verify and save each planned voice; the manifest's entries."""
    model_id = file_sha256(onnx_path)  # the engine's model id: sha256 of fp32 flow_lm_main
    if planned:
        (staging / VOICES_DIR).mkdir(exist_ok=True)
    session = _session(onnx_path) if planned and verify else None
    entries = {}
    for voice in planned:
        what = f"voice {voice.name!r} ({voice.origin})"
        states = convert_upstream_state(spec, state_to_numpy(voice.state), what)
        if verify:
            err = verify_voice(model, spec, session, voice, states)
            progress(f"voice {voice.name}: verified, max relative error {err:.1e}")
            if not err <= VOICE_TOLERANCE:
                raise ExportError(
                    f"{what}: our flow_lm_main continued from the converted state differs "
                    f"from upstream by {err:.2e} (tolerance {VOICE_TOLERANCE:.0e})"
                )
        rel = f"{VOICES_DIR}/{voice.name}.npz"
        save_voice_npz(staging / rel, states, {"format": VOICE_FORMAT, "model_id": model_id})
        entries[voice.name] = VoiceEntry(
            file=rel, sha256=file_sha256(staging / rel), origin=voice.origin
        )
    return entries


def export_voices(
    loaded,
    source,
    spec: GraphSpec,
    onnx_path: Path,
    staging: Path,
    selection="all",
    verify: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, VoiceEntry], str | None, list[str]]:
    """The pipeline's voices step: (manifest voices, default voice name, manifest notes)."""
    if isinstance(selection, str) and selection not in ("all", "none"):
        selection = parse_voices_option(selection)
    planned, default, notes = plan_voices(loaded, source, selection, progress)
    entries = write_voices(loaded.model, spec, onnx_path, staging, planned, verify, progress)
    if default not in entries:
        default = next(iter(entries), None)
    return entries, default, notes
