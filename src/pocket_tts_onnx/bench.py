"""Benchmark harness (filled in by the speed work)."""


def add_arguments(parser) -> None:
    parser.add_argument("--language", default="english")


def run_bench(args) -> None:
    raise NotImplementedError
