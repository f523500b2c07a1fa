"""Command-line flags shared by the commands, and what reads them.

Every command that generates (say, wyoming, ...) adds the same generation flags, with the
same limits and help text as the Python API and the HTTP server, from one list
(runtime/config.py); every command that loads an engine opens it the same way.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pocket_tts_onnx.runtime.config import PARAMETERS, parse_param

__all__ = [
    "add_bundle_argument",
    "add_engine_arguments",
    "add_generation_arguments",
    "add_log_level_argument",
    "configure_logging",
    "generation_overrides",
    "load_engine",
    "note_random_weights",
]


def add_bundle_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle",
        type=Path,
        default=Path("onnx"),
        help="bundle directory written by export (default: onnx)",
    )


def add_engine_arguments(parser: argparse.ArgumentParser, threads: bool = True) -> None:
    """--bundle, --precision (and --threads): how every command that loads an engine opens
    the bundle. One precision default everywhere, the API's: `voice` then computes exactly
    the states `say --voice ref.wav` computes on the fly."""
    add_bundle_argument(parser)
    parser.add_argument(
        "--precision",
        choices=["int8", "fp32"],
        default="int8",
        help="graph precision; int8 needs an export with --quantize or --precision int8 "
        "(default: int8)",
    )
    if threads:
        parser.add_argument(
            "--threads",
            type=int,
            help="ONNX Runtime intra-op threads per session (default: half the cores)",
        )


def load_engine(args: argparse.Namespace):
    """The engine of --bundle at --precision with --threads (as add_engine_arguments gave)."""
    from pocket_tts_onnx import PocketTTSOnnx

    return PocketTTSOnnx.load(args.bundle, precision=args.precision, threads=args.threads)


def note_random_weights(manifest) -> None:
    """Say so on stdout when a bundle makes noise: its audio must never pass for speech."""
    if manifest.random_weights:
        print("NOTE: random-weight bundle - the audio is noise, not speech.", flush=True)


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="server log level (default: info)",
    )


def configure_logging(args: argparse.Namespace) -> None:
    """The servers' log lines at --log-level: time, level, logger, message."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "generation", "default: the bundle manifest's value (upstream's for this model)"
    )
    for p in PARAMETERS:
        bounds = f"; {p.bounds()}" if p.bounds() else ""
        if p.kind is bool:  # --name / --no-name
            group.add_argument(
                p.flag,
                dest=p.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{p.help} (default: off)",
            )
            continue
        group.add_argument(
            p.flag,
            dest=p.name,
            metavar="N" if p.kind is int else "X",
            help=f"{p.help}{bounds} (default: the bundle manifest's, or None)",
        )


def generation_overrides(args: argparse.Namespace) -> dict:
    """The parameters given on the command line, typed (InvalidInputError naming the flag's
    parameter for text that is not a number); ranges are checked by GenerationConfig."""
    given = {p: getattr(args, p.name, None) for p in PARAMETERS}
    return {
        p.name: value if p.kind is bool else parse_param(p, value)
        for p, value in given.items()
        if value is not None
    }
