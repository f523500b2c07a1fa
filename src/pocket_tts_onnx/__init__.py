"""Export Kyutai's Pocket TTS to ONNX and run it with ONNX Runtime, without torch.

The package root is the torch-free runtime API; the exporter lives in
`pocket_tts_onnx.export` and needs the `[export]` extra.
"""

from pocket_tts_onnx.errors import (
    BundleError,
    ExportError,
    GenerationError,
    InvalidInputError,
    ModelSourceError,
    NonFiniteError,
    PocketTTSOnnxError,
    QueueFullError,
    TimestampsUnavailableError,
    UnsupportedVersionError,
    VerificationError,
    VoiceError,
)
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.batching import BatchScheduler
from pocket_tts_onnx.runtime.engine import (
    NO_VOICE,
    AudioChunk,
    GenerationConfig,
    PocketTTSOnnx,
    Voice,
)
from pocket_tts_onnx.runtime.streams import BatchStream, TextStream
from pocket_tts_onnx.runtime.timestamps import WordEvent

__version__ = "0.1.0"

__all__ = [
    "AudioChunk",
    "BatchScheduler",
    "BatchStream",
    "BundleError",
    "ExportError",
    "GenerationConfig",
    "GenerationError",
    "InvalidInputError",
    "Manifest",
    "ModelSourceError",
    "NO_VOICE",
    "NonFiniteError",
    "PocketTTSOnnx",
    "PocketTTSOnnxError",
    "QueueFullError",
    "TextStream",
    "TimestampsUnavailableError",
    "UnsupportedVersionError",
    "VerificationError",
    "Voice",
    "VoiceError",
    "WordEvent",
    "__version__",
]
