"""First hour: the README's quick start is what CI runs, installs the CPU build of torch in a
virtual environment, and the package metadata builds without deprecation warnings."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's quick start has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands_install_and_tests():
    lines = _quick_start()
    assert len(lines) == 2, lines
    install, tests = lines
    assert install.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    # PyTorch's CPU-only wheel index for torch; never a bare `pip install torch` (CUDA build).
    assert "pip install torch==" in install
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    assert install.endswith("python export.py --demo --quantize")
    assert tests == "python -m pytest -q"


def test_ci_runs_the_quick_start_verbatim():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    install, tests = _quick_start()
    # `|| exit 1` only makes `set -e` stop on a failure inside the && chain.
    assert install in ci or f"{install} || exit 1" in ci, "the README's install line"
    assert tests in ci
    assert ci.index(tests) == len(ci) - 1  # the tests run last, after lint and web build
    steps = [line for line in ci if line.startswith(("pip ", "python -m pip", "python3 -m pip"))]
    assert steps == [], f".ci/run installs outside the README's line: {steps}"


def test_license_is_an_spdx_string():
    if sys.version_info < (3, 11):
        import pytest

        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    # A TOML table is deprecated by setuptools (builds stop working after 2027-02-18).
    assert data["project"]["license"] == "MIT"
    requires = " ".join(data["build-system"]["requires"])
    version = re.search(r"setuptools>=(\d+)", requires)
    assert version and int(version.group(1)) >= 77, requires  # first with SPDX strings
