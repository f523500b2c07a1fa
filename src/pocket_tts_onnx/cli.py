"""`pocket-tts-onnx`: a thin command line over the public API.

Subcommands: export (needs the [export] extra), say, voice, bench. Every error this package
raises on purpose is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
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
)
from pocket_tts_onnx.errors import (
    InvalidInputError,
    PocketTTSOnnxError,
    TimestampsUnavailableError,
)
from pocket_tts_onnx.specs import KV_DTYPES


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export an upstream model to an ONNX bundle")
    src = p.add_argument_group("model source (default: --language english)")
    src.add_argument(
        "--language",
        help="a config shipped with pocket-tts, e.g. english, french (default: english when "
        "no other source is given)",
    )
    src.add_argument("--config", type=Path, help="a custom pocket-tts YAML config (default: none)")
    src.add_argument(
        "--weights", type=Path, help="safetensors weights for --config (default: none)"
    )
    src.add_argument(
        "--checkpoint", type=Path, help="training checkpoint (.pt) for --config (default: none)"
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights (the architecture only; offline)",
    )
    src.add_argument("--seed", type=int, default=0, help="seed for --random-init (default: 0)")
    src.add_argument(
        "--demo",
        action="store_true",
        help="the embedded tiny random-weight model (offline, seconds)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=Path("onnx"),
        help="bundle directory; your own files in it are kept (default: onnx)",
    )
    p.add_argument("--quantize", action="store_true", help="also write INT8 graphs (default: off)")
    p.add_argument(
        "--precision",
        choices=["fp32", "int8", "fp32+int8"],
        help="graphs to ship; int8 writes an INT8-only bundle, FP32 still exported and "
        "verified, then left out (default: fp32, fp32+int8 with --quantize)",
    )
    p.add_argument(
        "--kv-dtype",
        choices=list(KV_DTYPES),
        default="fp32",
        help="how the runtime's flow-LM K/V cache is stored: fp16 halves its memory per "
        "position at a small parity cost (docs/bench.md); the contract graphs stay fp32 "
        "(default: fp32, exact)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the parity check (default: verify)"
    )
    p.add_argument(
        "--timestamp-heads",
        help="flow-LM heads for word timestamps, e.g. L3H8,L2H0 (default: the calibrated "
        "heads of pocket-tts-timestamped for the configs it covers, else none)",
    )
    p.add_argument(
        "--voices",
        default="all",
        help="predefined voices to ship: all (default: the language's catalog; the default "
        "voice only for custom or random weights), none, or NAME,NAME,...",
    )


def _say_parser(sub) -> None:
    p = sub.add_parser("say", help="synthesize speech to an audio file")
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


def _voice_parser(sub) -> None:
    p = sub.add_parser("voice", help="precompute a voice from audio")
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


def _voices_parser(sub) -> None:
    p = sub.add_parser("voices", help="list the voices shipped in a bundle")
    add_bundle_argument(p)


def _bench_parser(sub) -> None:
    from pocket_tts_onnx.tools.bench import add_arguments

    p = sub.add_parser("bench", help="benchmark against upstream PyTorch (needs [export])")
    add_arguments(p)


def _serve_parser(sub) -> None:
    from pocket_tts_onnx.serve.cli import add_arguments

    p = sub.add_parser("serve", help="streaming HTTP API and web demo (needs [serve])")
    add_arguments(p)


def _wyoming_parser(sub) -> None:
    from pocket_tts_onnx.wyoming.cli import add_arguments

    p = sub.add_parser("wyoming", help="Wyoming server for Home Assistant (needs [wyoming])")
    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    from pocket_tts_onnx import __version__

    parser = argparse.ArgumentParser(prog="pocket-tts-onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _export_parser(sub)
    _say_parser(sub)
    _voice_parser(sub)
    _voices_parser(sub)
    _bench_parser(sub)
    _serve_parser(sub)
    _wyoming_parser(sub)
    return parser


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _saved(fp32: float, int8: float) -> str:
    """Size saved by INT8 as a whole percentage; integer rounding never prints "-0%"."""
    return f"{round(100 * (1 - int8 / fp32)) if fp32 else 0}%"


def _bundle_mb(bundle: Path) -> float:
    return sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6


def run_export(args) -> None:
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle
    from pocket_tts_onnx.export.voices import parse_voices_option

    voices = parse_voices_option(args.voices)  # before the export: a typo fails fast

    language = args.language
    if language is None and args.config is None and not args.demo:
        language = "english"
    source = ModelSource(
        language=language,
        config=args.config,
        weights=args.weights,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        seed=args.seed,
        demo=args.demo,
    )
    start = time.perf_counter()
    manifest, reports = export_bundle(
        source,
        args.output,
        quantize=args.quantize,
        verify=not args.no_verify,
        progress=_progress,
        voices=voices,
        precision=args.precision,
        timestamp_heads=args.timestamp_heads,
        kv_dtype=args.kv_dtype,
    )
    by_graph = {r.graph: r for r in reports}
    w = max(18, *(len(name) + 2 for name in manifest.graphs))
    print(
        f"\n{'graph':<{w}}{'fp32 MB':>9}{'int8 MB':>9}{'saved':>7}{'fp32 err':>11}"
        f"{'tol':>7}{'int8 relL2':>12}"
    )
    for name, entry in manifest.graphs.items():
        mb = {p: _mb(args.output / f) for p, f in entry.files.items()}  # variants: no weights
        sizes = "".join(f"{mb[p]:>9.1f}" if p in mb else f"{'-':>9}" for p in ("fp32", "int8"))
        saved = _saved(mb["fp32"], mb["int8"]) if len(mb) == 2 and not entry.external else "-"
        report = by_graph.get(name)
        err = f"{report.worst_fp32:.2e}" if report else "skipped"
        l2 = max(report.int8_rel_l2.values()) if report and report.int8_rel_l2 else None
        print(
            f"{name:<{w}}{sizes}{saved:>7}{err:>11}{entry.spec.tolerance:>7.0e}"
            + (f"{l2:>12.2e}" if l2 is not None else f"{'-':>12}")
        )
    kind = " + ".join(p.upper() for p in manifest.precisions)
    print(
        f"\nbundle written to {args.output} ({kind}, {_bundle_mb(args.output):.1f} MB) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if manifest.random_weights:
        print("NOTE: random weights - this bundle produces noise, not speech.")


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
    from pocket_tts_onnx import PocketTTSOnnx
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
    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision, threads=args.threads)
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
    if tts.manifest.random_weights:
        print("NOTE: random-weight bundle - the audio is noise, not speech.")


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


# What `export` and `bench` import beyond the runtime (the [export] extra).
_EXPORT_MODULES = ("torch", "pocket_tts", "onnx", "onnxscript")


def _require_export_extra(command: str) -> None:
    missing = []
    for module in _EXPORT_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    if missing:
        raise PocketTTSOnnxError(
            f"`{command}` needs the [export] extra ({', '.join(missing)} not installed): "
            "install the CPU build of torch, then `pip install -e '.[export]'` (see the "
            "README's quick start)"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"export": run_export, "say": run_say, "voice": run_voice, "voices": run_voices}
    try:
        if args.command in ("export", "bench"):
            _require_export_extra(args.command)
        if args.command == "bench":
            from pocket_tts_onnx.tools.bench import run_bench

            run_bench(args)
        elif args.command == "serve":
            from pocket_tts_onnx.serve.cli import run as run_serve

            run_serve(args)
        elif args.command == "wyoming":
            from pocket_tts_onnx.wyoming.cli import run as run_wyoming

            run_wyoming(args)
        else:
            handlers[args.command](args)
    except PocketTTSOnnxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
