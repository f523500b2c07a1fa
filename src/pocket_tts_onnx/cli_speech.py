"""`pocket-tts-onnx say`, `voice` and `voices`: speech and voice files from a bundle.

Every check that can fail (bundle, --out, --srt/--vtt, text, voice name) runs before the
engine loads or any audio is made, so a mistake costs no synthesis and loses no file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from pocket_tts_onnx.cli_options import (
    add_bundle_argument,
    add_engine_arguments,
    add_generation_arguments,
    generation_overrides,
    load_engine,
    note_random_weights,
)
from pocket_tts_onnx.errors import InvalidInputError, TimestampsUnavailableError


def add_say_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="text to speak ('-' or omitted: stdin)")
    p.add_argument(
        "--text-file",
        type=Path,
        help="read the text from this UTF-8 file (default: the text argument or stdin)",
    )
    add_engine_arguments(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out.wav"),
        help="audio file to write; its suffix picks the format: .wav, .flac, .mp3, .opus/.ogg, "
        ".pcm/.raw (16-bit, no header), as far as this machine's libsndfile encodes them "
        "(default: out.wav)",
    )
    p.add_argument(
        "--voice",
        type=Path,
        help="a voice name from the bundle (see `voices`), voice prompt audio, or a "
        ".npz/.safetensors voice (default: the bundle's default voice, if any)",
    )
    for flag, kind in (("--srt", "SubRip"), ("--vtt", "WebVTT")):
        p.add_argument(
            flag,
            type=Path,
            metavar="FILE",
            help=f"also write {kind} subtitles from the word timestamps, one cue per short "
            "phrase (needs a bundle exported with timestamp heads; default: none)",
        )
    add_generation_arguments(p)


def add_voice_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", type=Path, help="voice prompt audio (WAV, FLAC, OGG...)")
    add_engine_arguments(p, threads=False)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("voice.npz"),
        help="voice file to write, loads with say --voice (default: voice.npz)",
    )
    p.add_argument(
        "--no-truncate",
        action="store_true",
        help="encode the whole prompt (default: only its first 30 s)",
    )


def add_voices_arguments(p: argparse.ArgumentParser) -> None:
    add_bundle_argument(p)


def _decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{where} is not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}): "
            "convert it to UTF-8 first, e.g. with iconv"
        ) from None


def _read_text(args) -> str:
    if args.text_file is not None:
        try:
            data = args.text_file.read_bytes()
        except OSError as e:
            raise InvalidInputError(
                f"cannot read --text-file {args.text_file}: {e.strerror or e}"
            ) from e
        return _decode_text(data, f"--text-file {args.text_file}")
    if args.text is not None and args.text != "-":
        return args.text
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInputError("no text: pass it as an argument, with --text-file, or on stdin")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text-only stream (embedding, tests): already decoded
        return sys.stdin.read()
    return _decode_text(buffer.read(), "the text on stdin")


def _check_out(path: Path, bundle: Path, flag: str = "--out") -> None:
    """Fail before any synthesis when --out cannot be written, so no work is lost, and never
    write into the bundle (a WAV over manifest.json or a shipped voice breaks it)."""
    with contextlib.suppress(OSError):
        if path.resolve().is_relative_to(bundle.resolve()):
            raise InvalidInputError(
                f"{flag} {path} is inside the bundle {bundle}; write it elsewhere (writing "
                "there would replace or add files the manifest does not describe)"
            )
    if path.is_dir():
        raise InvalidInputError(
            f"{flag} {path} is a directory; give a file name, e.g. {flag} {path / 'out.wav'}"
        )
    parent = path.parent
    if not parent.is_dir():
        raise InvalidInputError(
            f"{flag} {path}: the folder {parent} does not exist; create it or choose another {flag}"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{flag} {path}: the folder {parent} is not writable")


def _write(path: Path, write, flag: str = "--out") -> None:
    """Run `write`; a filesystem refusal the checks could not foresee is one line."""
    try:
        write()
    except OSError as e:
        raise InvalidInputError(f"cannot write {flag} {path}: {e.strerror or e}") from e


def _subtitle_files(args, manifest) -> dict[str, Path]:
    """--srt/--vtt files, checked before any synthesis; a bundle without timestamp heads is
    refused here, not after the audio is made."""
    wanted = {flag: path for flag, path in (("--srt", args.srt), ("--vtt", args.vtt)) if path}
    if wanted and not manifest.timestamp_heads:
        raise TimestampsUnavailableError(
            f"{' and '.join(wanted)}: this bundle has no word-timestamp heads, so no "
            "subtitles; re-export it with `pocket-tts-onnx export --timestamp-heads L3H8,L2H0` "
            "(heads of your model)",
            param="timestamps",
        )
    for flag, path in wanted.items():
        _check_out(path, args.bundle, flag)
        if path.resolve() == args.out.resolve():
            raise InvalidInputError(f"{flag} {path} is also --out; give another file")
    return wanted


# `say --voice X`: X is a file if it exists or has one of these suffixes, else a voice name.
_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


def _out_format(path: Path, sample_rate: int):
    """The encoding `--out`'s suffix asks for (no suffix: WAV), or a refusal listing the
    suffixes this machine can write."""
    from pocket_tts_onnx.runtime.encoding import SUFFIXES, supported_formats

    formats = supported_formats(sample_rate)
    name = SUFFIXES.get(path.suffix.lower(), None) if path.suffix else "wav"
    if name not in formats:
        usable = ", ".join(k for k, v in SUFFIXES.items() if v in formats)
        raise InvalidInputError(
            f"--out {path}: cannot write {path.suffix or 'this'} audio here; use one of {usable}"
        )
    return formats[name]


def _voice_name(name: str, bundle: Path, names: list[str]) -> str:
    """A bundle voice name as typed on the command line, or a refusal that says what to type."""
    if name in names:
        return name
    same = [n for n in names if n.lower() == name.lower()]
    hint = f"did you mean {same[0]!r}? (names are case-sensitive) " if same else ""
    have = ", ".join(names) or "none"
    raise InvalidInputError(
        f"--voice {name}: no such voice in {bundle} and no such file; {hint}The bundle's "
        f"voices: {have} (`pocket-tts-onnx voices --bundle {bundle}`). Or clone one from "
        "audio: --voice prompt.wav, or use a saved voice: --voice voice.npz (`pocket-tts-onnx "
        "voice prompt.wav`)"
    )


def run_say(args) -> None:
    from pocket_tts_onnx.manifest import Manifest
    from pocket_tts_onnx.runtime.audio import write_audio
    from pocket_tts_onnx.runtime.config import GenerationConfig
    from pocket_tts_onnx.subtitles import cues
    from pocket_tts_onnx.subtitles import srt as subtitles_srt
    from pocket_tts_onnx.subtitles import vtt as subtitles_vtt

    manifest = Manifest.load(args.bundle)  # "not a bundle" before anything about --out
    _check_out(args.out, args.bundle)
    fmt = _out_format(args.out, manifest.sample_rate)
    subtitles = _subtitle_files(args, manifest)
    text = _read_text(args)
    overrides = generation_overrides(args)
    if subtitles:
        overrides["timestamps"] = True
    config = GenerationConfig.from_manifest(manifest, **overrides)
    voice = None  # None: the bundle's default voice, if it has one
    if args.voice is not None:
        suffix = args.voice.suffix.lower()
        if suffix not in (".npz", ".safetensors") and not (
            args.voice.exists() or suffix in _AUDIO_SUFFIXES
        ):  # a name from the bundle (`pocket-tts-onnx voices`)
            voice = _voice_name(str(args.voice), args.bundle, sorted(manifest.voices))
    tts = load_engine(args)
    if args.voice is not None and voice is None:
        if args.voice.suffix.lower() in (".npz", ".safetensors"):
            voice = tts.load_voice(args.voice)
        else:
            voice = tts.voice_from_audio(args.voice)
    start = time.perf_counter()
    first = None
    pieces, words = [], []
    for chunk in tts.stream(text, voice, config=config):
        first = first if first is not None else time.perf_counter() - start
        pieces.append(chunk.samples)
        words += [w for w in chunk.words if w.end is not None]
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    elapsed = time.perf_counter() - start
    _write(args.out, lambda: write_audio(args.out, audio, tts.sample_rate, fmt))
    for flag, path in subtitles.items():
        body = (subtitles_srt if flag == "--srt" else subtitles_vtt)(cues(words, text))
        _write(path, lambda p=path, b=body: p.write_text(b, encoding="utf-8"), flag)
        print(f"wrote {path}: {len(words)} words")
    duration = audio.shape[0] / tts.sample_rate
    latency = f", first audio after {1000 * first:.0f} ms" if first is not None else ""
    print(
        f"wrote {args.out}: {duration:.2f} s of audio in {elapsed:.2f} s "
        f"({duration / max(elapsed, 1e-9):.1f}x realtime{latency})"
    )
    note_random_weights(tts.manifest)


def run_voice(args) -> None:
    from pocket_tts_onnx import PocketTTSOnnx
    from pocket_tts_onnx.manifest import Manifest

    Manifest.load(args.bundle)  # "not a bundle" before anything about --out
    _check_out(args.out, args.bundle)
    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision)
    start = time.perf_counter()
    voice = tts.voice_from_audio(args.audio, truncate=not args.no_truncate)
    _write(args.out, lambda: voice.save(args.out))
    print(f"wrote {args.out} in {time.perf_counter() - start:.2f} s")


def run_voices(args) -> None:
    from pocket_tts_onnx.manifest import Manifest

    manifest = Manifest.load(args.bundle)
    if not manifest.voices:
        print(f"{args.bundle} has no voices (exported with --voices none, or an older bundle)")
        return
    width = max(len(name) for name in manifest.voices)
    for name, entry in manifest.voices.items():
        mark = "*" if name == manifest.default_voice else " "
        print(f"{mark} {name:<{width}}  {entry.origin}")
    print("(* = default voice; use one with: pocket-tts-onnx say TEXT --voice NAME)")
