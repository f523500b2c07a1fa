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


def test_readme_shows_the_environment_ci_sets():
    """Whatever .ci/run exports before the quick start is part of what CI runs: the README
    shows it, so "verbatim" stays true."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    before = ci.split(_quick_start()[0], 1)[0]
    for name, value in re.findall(r"^export (\w+)=(\S+)", before, re.M):
        assert f"export {name}={value}" in readme, name


def test_readme_makes_no_duration_claim_ci_cannot_keep():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "under a minute" not in readme  # the suite takes minutes on 2 cores


def test_readme_examples_leave_nothing_untracked_in_the_clone():
    """Every file the README's commands and Python example write into the current folder is
    ignored by git."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    written = set(re.findall(r"--out ([\w.-]+)", readme))
    written |= set(re.findall(r"-o ([\w.-]+)", readme))
    written |= set(re.findall(r'(?:write_wav|write_audio)\("([\w.-]+)"', readme))
    written |= set(re.findall(r'\.save\("([\w.-]+)"\)', readme))
    assert {"hello.wav", "voice.npz"} <= written
    ignored = set((REPO / ".gitignore").read_text(encoding="utf-8").splitlines())
    missing = sorted(name for name in written if f"/{name}" not in ignored)
    assert not missing, f"README examples write {missing} into the clone; ignore them"


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
