"""What `describe` answers: one TTS program with the bundle's voices.

Home Assistant offers a Wyoming TTS for the languages its voices list, so every voice
carries the bundle's language, taken from the upstream config it was exported from
(`english_2026-04` -> `en`). A bundle without voices is announced with one voice,
`default`, so that it can still be picked.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

DEFAULT_VOICE = "default"
MODEL_ATTRIBUTION = Attribution(name="Kyutai", url="https://github.com/kyutai-labs/pocket-tts")
# Upstream configs are named after their language (`french_24l`, `english_2026-04`).
_LANGUAGES = {
    "english": "en",
    "french": "fr",
    "german": "de",
    "italian": "it",
    "portuguese": "pt",
    "spanish": "es",
    "dutch": "nl",
}


def bundle_language(manifest) -> str | None:
    """The language code of the config the bundle was exported from, if known."""
    config = str(manifest.source.get("config", ""))
    return _LANGUAGES.get(config.split("_", 1)[0].lower())


def _package_version() -> str | None:
    try:
        return version("pocket-tts-onnx")
    except PackageNotFoundError:
        return None


def build_info(tts, language: str) -> Info:
    manifest = tts.manifest
    weights = "random weights: noise, not speech" if manifest.random_weights else "Kyutai weights"
    config = manifest.source.get("config", "?")
    voices = [
        TtsVoice(
            name=name,
            attribution=MODEL_ATTRIBUTION,
            installed=True,
            description=f"{name} ({config}, {weights})",
            version=None,
            languages=[language],
        )
        for name in (tts.voices or [DEFAULT_VOICE])
    ]
    program = TtsProgram(
        name="pocket-tts-onnx",
        attribution=MODEL_ATTRIBUTION,
        installed=True,
        description=f"Pocket TTS on ONNX Runtime ({config}, {weights})",
        version=_package_version(),
        voices=voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])
