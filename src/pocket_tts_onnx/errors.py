"""Typed errors: every failure a user can cause maps to one of these, with a message that
names the file or parameter at fault and what to do about it."""


class PocketTTSOnnxError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(PocketTTSOnnxError, ValueError):
    """A call argument (text, generation parameter, precision, ...) is not usable. `param`
    names it (a GenerationConfig field, "text", "voice", ...) so front ends can say which of
    their own fields is at fault without reading the message."""

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param


class VoiceError(InvalidInputError):
    """A voice prompt (audio or precomputed voice file) cannot be used with this bundle."""

    def __init__(self, message: str = "", param: str | None = "voice"):
        super().__init__(message, param)


class BundleError(PocketTTSOnnxError):
    """A bundle directory is missing, incomplete, corrupted or from an unknown schema."""


class ExportError(PocketTTSOnnxError):
    """The export could not be completed; no bundle was written."""


class ModelSourceError(ExportError):
    """The upstream model could not be loaded: unknown language, or weights that are missing,
    corrupt or do not match the config."""


class UnsupportedVersionError(ExportError):
    """The installed pocket-tts version is outside the range the export patches were tested on."""


class VerificationError(ExportError):
    """An exported graph disagrees with upstream PyTorch beyond its tolerance."""

    def __init__(self, graph: str, output: str, error: float, tolerance: float, detail: str = ""):
        self.graph, self.output, self.error, self.tolerance = graph, output, error, tolerance
        msg = (
            f"graph {graph!r}, output {output!r}: relative max error {error:.3g} exceeds "
            f"tolerance {tolerance:.1g}"
        )
        super().__init__(msg + (f" ({detail})" if detail else ""))


class QueueFullError(PocketTTSOnnxError):
    """A batch scheduler already holds as many waiting requests as it may; retry later."""


class NonFiniteError(InvalidInputError):
    """Generation produced NaN/Inf (e.g. an extreme temperature); the message names the cause."""


class TimestampsUnavailableError(InvalidInputError):
    """Word timestamps were asked of a bundle that has no timestamp heads."""


class GenerationError(PocketTTSOnnxError):
    """A model call failed for one stream (the runtime's fault, not the input's); the
    scheduler ended that stream and keeps serving the others."""
