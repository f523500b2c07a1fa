"""Shared fixtures: tiny versions of each upstream model family, exported once per session.

The families keep the structure of the shipped configs at a size that exports, verifies and
quantizes in seconds:
- lsd: the embedded demo config (d_model-wide head, BOS before voice), like english.yaml;
- drifting: the same with a drifting head, like english_drifting_26-09.yaml;
- pointwise: GQA, attn_dim, z_dim, a low-rank text table and a separate (smaller) decoder
  SEANet + transformer, like english_2m_2026-10.yaml;
- flow_matching: an Euler flow-matching head, with replicate padding in the codec.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from pocket_tts_onnx.export.loading import DEMO_CONFIG, DEMO_DIR, ModelSource

FAMILIES = ("lsd", "drifting", "pointwise", "flow_matching")
# Word-timestamp heads each family's session bundle is exported with (test_timestamps
# compares their events with pocket-tts-timestamped's); the drifting family has none.
TIMESTAMP_HEADS = {"lsd": "L1H0,L0H3", "pointwise": "L2H1,L0H2", "flow_matching": "L0H1"}

ONE_CHUNK = "Hello world, this is a small test."
MULTI_CHUNK = (
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the "
    "clocks were striking thirteen. Please call me at 3.5 past noon; we'll talk then! Did you "
    "hear that? Numbers like 42 and 1999 are read too. This is the very last sentence here."
)

logging.getLogger("pocket_tts").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=UserWarning)


# Prepended to a subprocess script: any import of torch or pocket_tts then fails, which is how
# tests prove a code path (runtime, CLI messages) needs neither.
BLOCK_TORCH = """import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "pocket_tts"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
"""


def family_config(family: str) -> dict:
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["flow_lm"]["lookup_table"]["tokenizer_path"] = str(DEMO_DIR / "tokenizer.model")
    flow_lm, mimi = data["flow_lm"], data["mimi"]
    if family == "drifting":
        flow_lm["flow"]["type"] = "drifting"
    elif family == "pointwise":
        flow_lm["flow"].update(type="pointwise", dim=32, depth=3)
        flow_lm["transformer"].update(
            d_model=48,
            num_heads=3,
            num_kv_heads=1,
            attn_dim=72,
            dim_feedforward=40,
            hidden_scale=1,
            num_layers=3,
        )
        flow_lm["lookup_table"].update(dim=48, rank=16)
        flow_lm["z_dim"] = 24
        mimi["outer_dim"] = 32
        mimi["quantizer"]["output_dimension"] = 32
        mimi["decoder_seanet"] = {
            **copy.deepcopy(mimi["seanet"]),
            "dimension": 32,
            "n_filters": 6,
            "kernel_size": 3,
        }
        mimi["decoder_transformer"] = {
            **copy.deepcopy(mimi["transformer"]),
            "d_model": 32,
            "num_heads": 2,
            "num_layers": 2,
            "context": 12,
            "dim_feedforward": 48,
            "input_dimension": 32,
            "output_dimensions": [32],
        }
        data["default_eos_threshold"] = -1.0
        data["replace_characters"] = {"–": ",", "—": ","}
    elif family == "flow_matching":
        flow_lm["flow"]["type"] = "flow_matching"
        flow_lm["insert_bos_before_voice"] = False
        mimi["seanet"]["pad_mode"] = "replicate"
        data["remove_semicolons"] = True
        data["pad_with_spaces_for_short_inputs"] = True
    return data


def train_sentencepiece(lines: list[str], path: Path, **options) -> Path:
    """A SentencePiece unigram model trained deterministically (one thread) on `lines`."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="unigram",
        num_threads=1,
        character_coverage=1.0,
        minloglevel=2,
        **options,
    )
    path.write_bytes(buf.getvalue())
    return path


@dataclass
class FamilyBundle:
    family: str
    config: Path
    bundle: Path
    reports: dict

    @property
    def source(self) -> ModelSource:
        return ModelSource(config=self.config, random_init=True, seed=0)

    def upstream(self):
        """The same upstream model the bundle came from (same config, same seed)."""
        from pocket_tts_onnx.export.loading import load_model

        return load_model(self.source).model


@pytest.fixture(scope="session")
def family_configs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("configs")
    paths = {}
    for family in FAMILIES:
        path = root / f"tiny_{family}.yaml"
        path.write_text(yaml.safe_dump(family_config(family), allow_unicode=True))
        paths[family] = path
    return paths


@pytest.fixture(scope="session")
def bundles(family_configs, tmp_path_factory) -> dict[str, FamilyBundle]:
    from pocket_tts_onnx.export.pipeline import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for family, config in family_configs.items():
        bundle = root / family
        source = ModelSource(config=config, random_init=True, seed=0)
        _, reports = export_bundle(
            source,
            bundle,
            quantize=True,
            verify=True,
            timestamp_heads=TIMESTAMP_HEADS.get(family),
        )
        out[family] = FamilyBundle(family, config, bundle, {r.graph: r for r in reports})
    return out


@pytest.fixture(scope="session")
def lsd_bundle(bundles) -> FamilyBundle:
    return bundles["lsd"]


@pytest.fixture(scope="module")
def lsd_bundle_copy(tmp_path_factory, lsd_bundle) -> Path:
    """A copy of the lsd bundle that a module's tests may damage."""
    import shutil

    copy = tmp_path_factory.mktemp("damaged") / "bundle"
    shutil.copytree(lsd_bundle.bundle, copy)
    return copy


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """The demo model as `export --demo --no-verify` writes it (FP32 only). Tests that
    change a bundle change a copy."""
    from pocket_tts_onnx.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(ModelSource(demo=True), out, verify=False)
    return out


@pytest.fixture()
def voice_audio() -> np.ndarray:
    """Two seconds of speech-like noise bursts at 24 kHz ending in a pause."""
    rng = np.random.default_rng(7)
    audio = np.zeros(48000, dtype=np.float32)
    for start in range(0, 40000, 8000):
        audio[start : start + 5000] = 0.2 * rng.standard_normal(5000)
    return audio


@pytest.fixture(scope="session")
def serve_bundle(tmp_path_factory) -> Path:
    """The demo model exported with INT8 graphs and word-timestamp heads, for the HTTP server
    tests (unverified: the server tests compare the server with the engine on this same
    bundle)."""
    from pocket_tts_onnx.export.pipeline import export_bundle

    bundle = tmp_path_factory.mktemp("serve") / "demo"
    export_bundle(
        ModelSource(demo=True), bundle, quantize=True, verify=False, timestamp_heads="L1H0,L0H2"
    )
    return bundle


@pytest.fixture(scope="session")
def sherpa_bundle(tmp_path_factory) -> FamilyBundle:
    """The lsd family with the flow LM 1024 wide, quantized: sherpa-onnx 2.0.1 feeds its own
    empty text tensor [1, 0, 1024] (the released English width) and a 32-dim latent, so a
    narrower model cannot run there. One layer keeps it a few seconds to export. Its
    tokenizer is a tokenizer.json converted from the demo's SentencePiece unigram model, as
    the released configs' are."""
    from pocket_tts_onnx.export.pipeline import export_bundle
    from pocket_tts_onnx.export.standin_tokenizer import sentencepiece_to_tokenizer_json

    root = tmp_path_factory.mktemp("sherpa")
    tokenizer = sentencepiece_to_tokenizer_json(DEMO_DIR / "tokenizer.model", root / "t.json")
    data = family_config("lsd")
    data["flow_lm"]["transformer"].update(d_model=1024, num_heads=4, num_layers=1, hidden_scale=1)
    data["flow_lm"]["lookup_table"].update(
        dim=1024, tokenizer="tokenizers", tokenizer_path=str(tokenizer)
    )
    config = root / "tiny_sherpa.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    source = ModelSource(config=config, random_init=True, seed=0)
    _, reports = export_bundle(source, root / "bundle", quantize=True, verify=True)
    return FamilyBundle("lsd", config, root / "bundle", {r.graph: r for r in reports})


def upstream_audio(model, voice_audio, text, decode_steps=1, eos=None) -> np.ndarray:
    """Upstream TTSModel's audio at temperature 0 (the oracle of the parity tests)."""
    import torch
    from pocket_tts.modules.stateful_module import init_states

    model.temp = 0.0
    model.sampler_decode_steps = decode_steps
    model.eos_threshold = model.config.default_eos_threshold if eos is None else eos
    if voice_audio is None:
        state = init_states(model.flow_lm, batch_size=1, sequence_length=0)
    else:
        state = model.get_state_for_audio_prompt(torch.from_numpy(voice_audio)[None])
    with torch.no_grad():
        return model.generate_audio(state, text).numpy()


@contextlib.contextmanager
def cli_server(args: list[str], log: Path, ready):
    """`pocket-tts-onnx ARGS` in a subprocess, its output in `log`, until the block ends;
    `ready(proc)` returns once it serves (and fails if it exited)."""
    import subprocess
    import sys

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pocket_tts_onnx.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready(proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextlib.contextmanager
def serving(app):
    """uvicorn serving `app` on a free loopback port in a thread; yields the port."""
    import threading

    import uvicorn

    from pocket_tts_onnx.serve import client

    port = client.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client.wait_healthy(port, timeout=30)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
