"""Voices a request can name or upload, resolved to computed states and cached.

Names come from the bundle's manifest (`voices`) or from `<name>.npz` files in the server's
voices folder. Names are checked against a strict pattern and the resolved file must lie
inside its folder, so `../x` or absolute paths never reach the file system. Uploaded prompts
are keyed by the sha256 of their bytes: the same upload is encoded once, then served from a
bounded LRU.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pocket_tts_onnx.errors import VoiceError
from pocket_tts_onnx.runtime.audio import decode_audio
from pocket_tts_onnx.runtime.voices import bundle_voice_path

# Seconds of an uploaded prompt that are decoded: voice_from_audio(truncate=True) keeps 30.
PROMPT_SECONDS = 30.0
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LRUCache:
    """A thread-safe bounded mapping; the least recently used entry goes first."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class VoiceStore:
    """Resolves voice names and uploads to `Voice` objects for one loaded engine."""

    def __init__(self, tts, bundle: Path, voices_dir: Path | None = None, cache_size: int = 32):
        self._tts = tts
        self._bundle = Path(bundle)
        self._dir = Path(voices_dir).resolve() if voices_dir is not None else None
        self._bundle_voices = set(getattr(tts, "voices", None) or ())
        self.default_name: str | None = getattr(tts, "default_voice", None)
        self.cache = LRUCache(cache_size)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def names(self) -> list[dict]:
        """The voices a request can name: the bundle's, then the usable files of the voices
        folder (regular files inside it; a directory named x.npz or a link leading out is
        skipped)."""
        out = [{"name": n, "source": "bundle"} for n in sorted(self._bundle_voices)]
        if self._dir is not None:
            for path in sorted(self._dir.glob("*.npz")):
                name = path.stem
                usable = NAME_PATTERN.match(name) and self._folder_file(name) is not None
                if usable and name not in self._bundle_voices:
                    out.append({"name": name, "source": "voices-dir"})
        return out

    def _folder_file(self, name: str) -> Path | None:
        """`<name>.npz` of the voices folder if it is a regular file inside it, else None."""
        if self._dir is None:
            return None
        path = (self._dir / f"{name}.npz").resolve()
        return path if path.parent == self._dir and path.is_file() else None

    def check_bundle_voices(self) -> None:
        """Every voice the manifest lists must match its sha256, checked once at startup:
        a damaged voice would otherwise fail each request that names it (or, as the
        default, every request). Raises BundleError naming the voice."""
        for name in sorted(self._bundle_voices):
            bundle_voice_path(self._bundle, self._tts.manifest, name)

    def get(self, name: str):
        """A bundle voice name (the engine loads and caches those itself) or a Voice loaded
        from the voices folder."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
            text = str(name)
            shown = repr(text[:64] + "..." if len(text) > 64 else text)  # not 10 kB echoed
            raise VoiceError(
                f"voice {shown} is not a valid voice name (up to 64 letters, digits, '_', '-', "
                "'.'; no paths); GET /v1/voices lists the voices"
            )
        if name in self._bundle_voices:
            return name
        key = ("name", name)
        voice = self.cache.get(key)
        if voice is None:
            with self._lock_for(repr(key)):
                voice = self.cache.get(key) or self._load_named(name)
                self.cache.put(key, voice)
        return voice

    def _load_named(self, name: str):
        path = self._folder_file(name)
        if path is not None:
            try:
                return self._tts.load_voice(path)
            except VoiceError as e:  # the message names the server's path: keep it local
                message = str(e).replace(str(path), f"{name}.npz")
                raise VoiceError(
                    f"voice {name!r} of the server's voices folder cannot be used: {message}"
                ) from e
        available = ", ".join(v["name"] for v in self.names()) or "none"
        raise VoiceError(
            f"unknown voice {name!r}; available: {available} (GET /v1/voices), or upload a "
            "voice prompt (voice_wav on POST /tts)"
        )

    def from_upload(self, data: bytes):
        """A voice from uploaded audio bytes (any format libsndfile reads)."""
        if not data:
            raise VoiceError("voice_wav is empty: upload an audio file (WAV, FLAC, OGG, MP3)")
        digest = hashlib.sha256(data).hexdigest()
        key = ("upload", digest)
        voice = self.cache.get(key)
        if voice is not None:
            return voice
        with self._lock_for(digest):
            voice = self.cache.get(key)
            if voice is None:
                voice = self._tts.voice_from_audio(_decode(data), truncate=True)
                self.cache.put(key, voice)
        return voice

    def _lock_for(self, key: str) -> threading.Lock:
        """One lock per key, so concurrent identical uploads are encoded once."""
        with self._locks_guard:
            if len(self._locks) > 4 * self.cache.size:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault(key, threading.Lock())


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    """The first 30 s of an upload (all a voice uses), decoded without the rest."""
    return decode_audio(io.BytesIO(data), "voice_wav", max_seconds=PROMPT_SECONDS)
