"""Command-line flags for the generation parameters, derived from `GenerationConfig`.

Every command that generates (say, wyoming, ...) adds the same flags, with the same limits
and help text as the Python API and the HTTP server, from one list (runtime/config.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pocket_tts_onnx.runtime.config import PARAMETERS, parse_param

__all__ = [
    "add_bundle_argument",
    "add_engine_arguments",
    "add_generation_arguments",
    "generation_overrides",
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
