"""The narrow object the scheduler drives: a bundle's generation graphs and rules.

`PocketTTSOnnx` builds one from a loaded bundle; the scheduler sees only this (the graphs it
runs, the text rules, the parameter defaults and a voice resolver), never the engine, so the
two modules do not import each other.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from pocket_tts_onnx.errors import GenerationError, InvalidInputError, TimestampsUnavailableError
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.decoder import MimiRows, fade_in_samples
from pocket_tts_onnx.runtime.flow_lm import FlowLM
from pocket_tts_onnx.runtime.graph import StatefulGraph
from pocket_tts_onnx.runtime.sampling import FlowSampler
from pocket_tts_onnx.runtime.timestamps import TextTiming
from pocket_tts_onnx.text import TextChunk, iter_chunk_tokens
from pocket_tts_onnx.text_feed import SentenceFeed
from pocket_tts_onnx.word_units import ChunkUnits, FeedWords, map_chunks

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

    def _check_heads(self) -> None:
        if not self.manifest.timestamp_heads:
            raise TimestampsUnavailableError(
                "timestamps: this bundle has no word-timestamp heads; re-export it with "
                "`pocket-tts-onnx export --timestamp-heads L3H8,L2H0` (heads of your model)",
                param="timestamps",
            )

    def word_units(self, text: str, chunks: Iterator[TextChunk]) -> tuple:
        """(chunks, each chunk's word units) for a stream with word timestamps: the text is
        chunked whole (words are paired across all chunks, as the fork does)."""
        self._check_heads()
        chunks = list(chunks)
        units = map_chunks(text, [c.text for c in chunks], self.tokenizer)
        return iter(chunks), collections.deque(units)

    def feed_words(self) -> FeedWords:
        """Word units of a text stream's pieces, offsets counted over the whole text."""
        self._check_heads()
        return FeedWords(self.tokenizer)

    def text_timing(self, units: ChunkUnits, start: int, chunk: TextChunk) -> TextTiming:
        """Where `chunk`'s text sits in its K/V row (after `start` voice positions)."""
        n = len(chunk.token_ids)
        if units.token_to_unit.shape[0] != n:
            raise GenerationError("word timestamps: the token offsets disagree with the ids")
        return TextTiming(units, self.manifest.timestamp_heads, start, start + n)

    def feed(self) -> SentenceFeed:
        return SentenceFeed(self.tokenizer, self.manifest.text)

    def embed(self, chunk: TextChunk) -> np.ndarray:
        ids = np.asarray(chunk.token_ids, dtype=np.int64)[None, :]
        return self.text_conditioner.run({"token_ids": ids})["embeddings"]

    def flow_lm(self, rows: int = 1) -> FlowLM:
        return FlowLM(self.flow_lm_graph, self.main_spec, rows)

    def decoder_rows(self) -> MimiRows:
        return MimiRows(self.decoder_graph, self.fade_in)
