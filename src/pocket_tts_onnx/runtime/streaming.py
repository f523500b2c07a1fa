"""Streaming: latents made on a worker thread while the caller's thread decodes them.

The worker checks a stop flag before every graph call and never blocks forever on the queue,
so closing the generator (or Ctrl-C in the consumer) stops it within one flow-LM step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pocket_tts_onnx.runtime.config import GenerationConfig
from pocket_tts_onnx.runtime.decoder import MAX_DECODE_FRAMES, ChunkDecoder
from pocket_tts_onnx.runtime.generation import LatentGenerator
from pocket_tts_onnx.text import TextChunk

__all__ = ["AudioChunk", "stream_audio"]

# Latents the worker may run ahead of the decoder (each is only L floats).
QUEUE_SIZE = 1024
_POLL = 0.05  # seconds between stop checks while the worker waits on a full queue


@dataclass(frozen=True)
class AudioChunk:
    """A piece of streamed audio: mono float32 samples at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _produce(generator: LatentGenerator, chunks, start, config, out, stop) -> None:
    """Worker: ("chunk", None) before each text chunk, ("latent", x) per frame, ("error", e)
    if anything fails, ("done", None) last (unless stopped)."""
    try:
        rng = np.random.default_rng(config.seed)
        for chunk in chunks:
            if stop.is_set() or not _put(out, ("chunk", None), stop):
                return
            for latent in generator.chunk_latents(chunk, start, config, rng, stop):
                if not _put(out, ("latent", latent), stop):
                    return
    except BaseException as e:  # handed to the consumer, raised there
        _put(out, ("error", e), stop)
        return
    _put(out, ("done", None), stop)


def stream_audio(
    generator: LatentGenerator,
    new_decoder: Callable[[], ChunkDecoder],
    chunks: Iterable[TextChunk],
    start: dict[str, np.ndarray],
    config: GenerationConfig,
    sample_rate: int,
) -> Iterator[AudioChunk]:
    """Yield AudioChunks: the first of each text chunk once `config.first_chunk_frames`
    latents are ready (decoded in calls of at most MAX_DECODE_FRAMES), then whatever is ready
    (at most MAX_DECODE_FRAMES latents per chunk)."""
    latents: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    stop = threading.Event()
    worker = threading.Thread(
        target=_produce,
        args=(generator, chunks, start, config, latents, stop),
        name="pocket-tts-onnx-latents",
        daemon=True,
    )
    worker.start()
    try:
        decoder = None
        need = config.first_chunk_frames
        block: list[np.ndarray] = []
        done = False
        while not done:
            kind, value = latents.get()
            while True:
                if kind == "error":
                    raise value
                if kind == "done":
                    done = True
                elif kind == "chunk":
                    if block:
                        yield AudioChunk(decoder.decode(block), sample_rate)
                        block = []
                    decoder, need = new_decoder(), config.first_chunk_frames
                else:
                    block.append(value)
                if done or len(block) >= max(need, MAX_DECODE_FRAMES):
                    break
                try:
                    kind, value = latents.get_nowait()
                except queue.Empty:
                    break
            if block and (len(block) >= need or done):
                yield AudioChunk(decoder.decode(block), sample_rate)
                block, need = [], 1
    finally:
        stop.set()
        worker.join()
