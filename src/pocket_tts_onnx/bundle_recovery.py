"""What an interrupted export leaves beside its `--output`, and how to recover from it.

The exporter builds a bundle in a staging folder `.NAME.tmp-PID-XXXX` and installs it with two
renames: the old bundle to `.NAME.old-PID-MS`, then the staging folder to `NAME`. A kill -9
can leave a staging folder (hundreds of MB) or, between the renames, no `NAME` at all. Both
names carry the exporter's process id, so a later export or load can tell a dead export's
leftovers from a running one's. Torch-free: `Manifest.load` uses it too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pocket_tts_onnx.errors import BundleError

logger = logging.getLogger(__name__)


def staging_prefix(output: Path) -> str:
    return f".{output.name}.tmp-{os.getpid()}-"


def backup_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.old-{os.getpid()}-{int(time.time() * 1000)}")


def _pid_alive(pid: int | None) -> bool:
    if pid is None:  # written by an older exporter that did not record its pid
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _leftovers(output: Path, kind: str) -> list[tuple[Path, int | None, int]]:
    """(path, owner pid or None, order key) of `.NAME.<kind>-*` folders beside `output`."""
    name = re.escape(output.name)
    if kind == "tmp":
        pattern = re.compile(rf"^\.{name}\.tmp-(?:(\d+)-)?[a-z0-9_]+$")
    else:
        pattern = re.compile(rf"^\.{name}\.old-(?:(\d+)-)?(\d+)$")
    found = []
    try:
        entries = list(output.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            pid = int(match.group(1)) if match.group(1) else None
            order = int(match.group(2)) if kind == "old" else 0
            found.append((entry, pid, order))
    return sorted(found, key=lambda item: item[2])


def restore_interrupted(output: Path, notify: Callable[[str], None] | None = None) -> bool:
    """If `output` is missing because an export died between its two renames, rename the
    previous bundle back. Returns True when something was restored; raises BundleError when
    the export that moved it away is still running."""
    output = Path(output)
    if output.exists() or output.is_symlink():
        return False
    backups = _leftovers(output, "old")
    if not backups:
        return False
    path, pid, _ = backups[-1]
    if _pid_alive(pid):
        raise BundleError(
            f"{output} is being replaced by a running export (process {pid}); wait for it to "
            "finish and try again"
        )
    try:
        path.rename(output)
    except OSError as e:
        raise BundleError(
            f"{output} is missing: an interrupted export left the previous bundle at {path}, "
            f"and restoring it failed ({e.strerror or e}); rename it to {output.name} yourself"
        ) from e
    message = (
        f"restored {output} from {path.name}: an earlier export was killed while installing "
        "its bundle, so the previous bundle was put back"
    )
    (notify or logger.warning)(message)
    return True


def remove_dead_leftovers(output: Path, notify: Callable[[str], None]) -> None:
    """Delete staging folders of dead exports, and old-bundle backups of dead exports once
    `output` exists again (run `restore_interrupted` first)."""
    output = Path(output)
    stale = [p for p, pid, _ in _leftovers(output, "tmp") if not _pid_alive(pid)]
    if output.exists():
        stale += [p for p, pid, _ in _leftovers(output, "old") if not _pid_alive(pid)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        notify(f"removed {path.name}, left beside {output.name} by an interrupted export")
