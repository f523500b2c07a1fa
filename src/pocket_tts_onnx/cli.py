"""`pocket-tts-onnx`: a thin command line over the public API.

Subcommands: export (needs the [export] extra), say, voice, voices, bench, serve, wyoming.
Each lives in its own module (options, then a run over the API); this one builds the parser
and prints every error this package raises on purpose as one line, exiting with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from pocket_tts_onnx.errors import PocketTTSOnnxError


def _commands() -> dict:
    """name -> (help, add_arguments(parser), run(args)). No module here imports a library of
    an extra before it runs, so `--help` works without them."""
    from pocket_tts_onnx import cli_export, cli_speech
    from pocket_tts_onnx.serve import cli as serve_cli
    from pocket_tts_onnx.tools import bench
    from pocket_tts_onnx.wyoming import cli as wyoming_cli

    return {
        "export": (
            "export an upstream model to an ONNX bundle",
            cli_export.add_arguments,
            cli_export.run,
        ),
        "say": (
            "synthesize speech to an audio file",
            cli_speech.add_say_arguments,
            cli_speech.run_say,
        ),
        "voice": (
            "precompute a voice from audio",
            cli_speech.add_voice_arguments,
            cli_speech.run_voice,
        ),
        "voices": (
            "list the voices shipped in a bundle",
            cli_speech.add_voices_arguments,
            cli_speech.run_voices,
        ),
        "bench": (
            "benchmark against upstream PyTorch (needs [export])",
            bench.add_arguments,
            bench.run_bench,
        ),
        "serve": (
            "streaming HTTP API and web demo (needs [serve])",
            serve_cli.add_arguments,
            serve_cli.run,
        ),
        "wyoming": (
            "Wyoming server for Home Assistant (needs [wyoming])",
            wyoming_cli.add_arguments,
            wyoming_cli.run,
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    from pocket_tts_onnx import __version__

    parser = argparse.ArgumentParser(prog="pocket-tts-onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments, run) in _commands().items():
        p = sub.add_parser(name, help=help_)
        add_arguments(p)
        p.set_defaults(run_command=run)
    return parser


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
    try:
        if args.command in ("export", "bench"):
            _require_export_extra(args.command)
        args.run_command(args)
    except PocketTTSOnnxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
