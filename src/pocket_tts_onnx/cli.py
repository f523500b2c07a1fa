"""`pocket-tts-onnx`: a thin command line over the public API.

Subcommands: export (needs the [export] extra), say, voice, bench. Every error this package
raises on purpose is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pocket_tts_onnx.errors import InvalidInputError, PocketTTSOnnxError


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export an upstream model to an ONNX bundle")
    src = p.add_argument_group("model source (default: --language english)")
    src.add_argument("--language", help="a config shipped with pocket-tts (e.g. english, french)")
    src.add_argument("--config", type=Path, help="a custom pocket-tts YAML config")
    src.add_argument("--weights", type=Path, help="safetensors weights for --config")
    src.add_argument("--checkpoint", type=Path, help="training checkpoint (.pt) for --config")
    src.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights (the architecture only; offline)",
    )
    src.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    src.add_argument(
        "--demo",
        action="store_true",
        help="the embedded tiny random-weight model (offline, seconds)",
    )
    p.add_argument("--output", type=Path, default=Path("onnx"), help="bundle directory")
    p.add_argument("--quantize", action="store_true", help="also write INT8 graphs")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")


def _say_parser(sub) -> None:
    p = sub.add_parser("say", help="synthesize speech to a WAV file")
    p.add_argument("text", nargs="?", help="text to speak ('-' or omitted: stdin)")
    p.add_argument("--text-file", type=Path, help="read the text from this file")
    p.add_argument("--bundle", type=Path, default=Path("onnx"))
    p.add_argument("--out", type=Path, default=Path("out.wav"))
    p.add_argument("--voice", type=Path, help="voice prompt audio, or a .npz/.safetensors voice")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.add_argument("--threads", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--lsd-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-frames", type=int)


def _voice_parser(sub) -> None:
    p = sub.add_parser("voice", help="precompute a voice from audio")
    p.add_argument("audio", type=Path)
    p.add_argument("--bundle", type=Path, default=Path("onnx"))
    p.add_argument("--out", type=Path, default=Path("voice.npz"))
    p.add_argument("--precision", choices=["int8", "fp32"], default="fp32")
    p.add_argument(
        "--no-truncate",
        action="store_true",
        help="encode the whole prompt (default: only its first 30 s)",
    )


def _bench_parser(sub) -> None:
    from pocket_tts_onnx.bench import add_arguments

    p = sub.add_parser("bench", help="benchmark against upstream PyTorch (needs [export])")
    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocket-tts-onnx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _export_parser(sub)
    _say_parser(sub)
    _voice_parser(sub)
    _bench_parser(sub)
    return parser


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def run_export(args) -> None:
    from pocket_tts_onnx.export.loading import ModelSource
    from pocket_tts_onnx.export.pipeline import export_bundle

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
    )
    by_graph = {r.graph: r for r in reports}
    print(
        f"\n{'graph':<18}{'fp32 MB':>9}{'int8 MB':>9}{'saved':>7}{'fp32 err':>11}"
        f"{'tol':>7}{'int8 relL2':>12}"
    )
    for name, entry in manifest.graphs.items():
        fp32 = _mb(args.output / entry.files["fp32"])
        int8 = _mb(args.output / entry.files["int8"]) if "int8" in entry.files else None
        report = by_graph.get(name)
        err = f"{report.worst_fp32:.2e}" if report else "skipped"
        l2 = max(report.int8_rel_l2.values()) if report and report.int8_rel_l2 else None
        print(
            f"{name:<18}{fp32:>9.1f}"
            + (f"{int8:>9.1f}{1 - int8 / fp32:>7.0%}" if int8 is not None else f"{'-':>9}{'-':>7}")
            + f"{err:>11}{entry.spec.tolerance:>7.0e}"
            + (f"{l2:>12.2e}" if l2 is not None else f"{'-':>12}")
        )
    print(f"\nbundle written to {args.output} in {time.perf_counter() - start:.1f} s")
    if manifest.random_weights:
        print("NOTE: random weights - this bundle produces noise, not speech.")


def _read_text(args) -> str:
    if args.text_file is not None:
        try:
            return args.text_file.read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidInputError(f"cannot read --text-file {args.text_file}: {e}") from e
    if args.text is not None and args.text != "-":
        return args.text
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInputError("no text: pass it as an argument, with --text-file, or on stdin")
    return sys.stdin.read()


def run_say(args) -> None:
    from pocket_tts_onnx import PocketTTSOnnx
    from pocket_tts_onnx.runtime.audio import write_wav

    text = _read_text(args)
    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision, threads=args.threads)
    voice = None
    if args.voice is not None:
        if args.voice.suffix in (".npz", ".safetensors"):
            voice = tts.load_voice(args.voice)
        else:
            voice = tts.voice_from_audio(args.voice)
    start = time.perf_counter()
    first = None
    pieces = []
    for chunk in tts.stream(
        text,
        voice,
        temperature=args.temperature,
        lsd_steps=args.lsd_steps,
        seed=args.seed,
        max_frames=args.max_frames,
    ):
        first = first if first is not None else time.perf_counter() - start
        pieces.append(chunk.samples)
    elapsed = time.perf_counter() - start
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    write_wav(args.out, audio, tts.sample_rate)
    duration = audio.shape[0] / tts.sample_rate
    print(
        f"wrote {args.out}: {duration:.2f} s of audio in {elapsed:.2f} s "
        f"({duration / elapsed:.1f}x realtime, first audio after {1000 * (first or 0):.0f} ms)"
    )
    if tts.manifest.random_weights:
        print("NOTE: random-weight bundle - the audio is noise, not speech.")


def run_voice(args) -> None:
    from pocket_tts_onnx import PocketTTSOnnx

    tts = PocketTTSOnnx.load(args.bundle, precision=args.precision)
    start = time.perf_counter()
    voice = tts.voice_from_audio(args.audio, truncate=not args.no_truncate)
    voice.save(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - start:.2f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"export": run_export, "say": run_say, "voice": run_voice}
    try:
        if args.command == "bench":
            from pocket_tts_onnx.bench import run_bench

            run_bench(args)
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
