"""Server limits and options, one frozen object shared by the app and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pocket_tts_onnx.errors import InvalidInputError
from pocket_tts_onnx.runtime.batching import MAX_STREAMS


@dataclass(frozen=True)
class ServeConfig:
    """Every bound the server enforces. The defaults keep one 2-core machine responsive:
    requests beyond `max_streams` wait (at most `max_queue` of them), the rest get 503."""

    max_streams: int = 8  # streams generated at once (batch rows / worker threads)
    max_queue: int = 32  # requests waiting for a free stream before 503
    max_text_chars: int = 4096  # OpenAI's own limit for `input`
    max_upload_bytes: int = 10_000_000  # voice prompt uploads (and any request body)
    # Computed voice states kept (LRU). A 30 s prompt's state is ~18 MB for `english`
    # (6 layers x K/V x 376 positions x 1024 x 4 bytes), so 16 of them stay under 300 MB.
    voice_cache_size: int = 16
    # K/V memory of the flow LM for all streams together (rows x positions); a request that
    # alone would need more is refused (400), one that does not fit now waits for room.
    max_kv_mb: int = 1024
    voices_dir: Path | None = None  # folder of precomputed <name>.npz voices
    web_dist: Path | None = None  # built web demo (web/dist); None: no page at /
    retry_after_s: int = 1  # Retry-After sent with 503 when the queue is full
    # Seconds a request body may take to arrive in full (408 after): a client that opens a
    # request and trickles its body (slowloris) cannot hold a connection and a worker.
    body_timeout_s: int = 60
    # A WebSocket stream waiting longer than this for its next text message is closed (1008).
    ws_idle_timeout_s: int = 20

    @property
    def max_ws_message_bytes(self) -> int:
        """Largest WebSocket message: a whole stream's text as escaped JSON, plus room."""
        return 6 * self.max_text_chars + 65536

    def __post_init__(self) -> None:
        for name in (
            "max_streams",
            "max_text_chars",
            "max_upload_bytes",
            "voice_cache_size",
            "max_kv_mb",
            "retry_after_s",
            "body_timeout_s",
            "ws_idle_timeout_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 1, got {value!r}")
        if self.max_streams > MAX_STREAMS:  # each stream has K/V buffers allocated up front
            raise InvalidInputError(
                f"--max-streams must be at most {MAX_STREAMS}, got {self.max_streams}; run "
                "more replicas for more streams"
            )
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise InvalidInputError(f"--max-queue must be >= 0, got {self.max_queue!r}")
        if self.voices_dir is not None and not Path(self.voices_dir).is_dir():
            raise InvalidInputError(f"--voices-dir {self.voices_dir} is not a directory")

    @property
    def max_body_bytes(self) -> int:
        """Largest multipart body accepted: an upload plus room for the form fields."""
        return self.max_upload_bytes + 4 * self.max_text_chars + 65536

    @property
    def max_json_bytes(self) -> int:
        """Largest body of any other kind (JSON, url-encoded form): the longest text, each
        character escaped as JSON's worst case (12 bytes: a surrogate pair of \\uXXXX), plus
        64 KiB for the other fields. Parsing 10 MB of JSON costs seconds and ~250 MB."""
        return 12 * self.max_text_chars + 65536

    def public(self) -> dict:
        """The limits as /health reports them (no paths)."""
        d = asdict(self)
        d.pop("voices_dir")
        d.pop("web_dist")
        return d
