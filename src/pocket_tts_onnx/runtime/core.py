"""The narrow object the scheduler drives: a bundle's generation graphs and rules.

`PocketTTSOnnx` builds one from a loaded bundle; the scheduler sees only this (the graphs it
runs, the text rules, the parameter defaults and a voice resolver), never the engine, so the
two modules do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.decoder import MimiRows, fade_in_samples
from pocket_tts_onnx.runtime.flow_lm import FlowLM
from pocket_tts_onnx.runtime.graph import StatefulGraph
from pocket_tts_onnx.runtime.sampling import FlowSampler
from pocket_tts_onnx.text import TextChunk, iter_chunk_tokens
from pocket_tts_onnx.text_feed import SentenceFeed

__all__ = ["CORE_GRAPHS", "GenerationCore"]

# What the core runs. The contract graphs flow_lm_main and mimi_decoder stay in every bundle
# (verified at export, for third-party runtimes such as sherpa-onnx), but this runtime uses
# their batched, fast-KV variants for every stream.
CORE_GRAPHS = ("text_conditioner", "flow_lm_step", "flow_lm_flow", "mimi_decoder_batched")


class GenerationCore:
    """Graphs, sampler, text rules and defaults of one bundle."""

    def __init__(
        self,
        manifest: Manifest,
        graphs: Mapping[str, StatefulGraph],
        tokenizer,
        resolve_voice: Callable[[object], dict[str, np.ndarray]],
    ):
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.resolve_voice = resolve_voice
        self.text_conditioner = graphs["text_conditioner"]
        self.flow_lm_graph = graphs["flow_lm_step"]
        self.decoder_graph = graphs["mimi_decoder_batched"]
        self.sampler = FlowSampler(graphs["flow_lm_flow"], manifest.flow_type, manifest.latent_dim)
        self.main_spec = manifest.graphs["flow_lm_main"].spec
        self.sample_rate = manifest.sample_rate
        self.frame_rate = manifest.frame_rate
        self.fade_in = fade_in_samples(manifest.sample_rate, manifest.defaults.fade_in_seconds)

    def config(self, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
        """`config` (or the manifest's defaults) with the non-None `overrides`, validated."""
        if config is None:
            return GenerationConfig.from_manifest(self.manifest, **overrides)
        if not isinstance(config, GenerationConfig):
            raise InvalidInputError(
                f"config must be a GenerationConfig, got {type(config).__name__}", param="config"
            )
        return config.with_overrides(**overrides)

    def chunks(self, text: str) -> Iterator[TextChunk]:
        """`text`'s chunks, lazily; the first is made now (bad text raises here)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string, got {type(text).__name__}", "text")
        return iter_chunk_tokens(text, self.tokenizer, self.manifest.text)

    def feed(self) -> SentenceFeed:
        return SentenceFeed(self.tokenizer, self.manifest.text)

    def embed(self, chunk: TextChunk) -> np.ndarray:
        ids = np.asarray(chunk.token_ids, dtype=np.int64)[None, :]
        return self.text_conditioner.run({"token_ids": ids})["embeddings"]

    def flow_lm(self, rows: int = 1) -> FlowLM:
        return FlowLM(self.flow_lm_graph, self.main_spec, rows)

    def decoder_rows(self) -> MimiRows:
        return MimiRows(self.decoder_graph, self.fade_in)
