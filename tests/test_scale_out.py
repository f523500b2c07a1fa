"""Scale-out through a real nginx (scripts/scale_out.py): two server replicas on loopback,
a load test through nginx, one replica killed mid-run. Runs only where nginx is installed
(the Debian package); CI installs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)

pytest.importorskip("fastapi")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx)"
)


def test_replica_killed_mid_run_behind_nginx(serve_bundle, tmp_path):
    out = tmp_path / "scale-out.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "scale_out.py"), "--bundle", str(serve_bundle)]
    cmd += ["--nginx", NGINX, "--levels", "1,2", "--frames", "30", "--clients", "3"]
    cmd += ["--kill-after", "4", "--after", "4", "--timeout", "120", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == []
    assert all(level["errors"] == 0 for level in report["levels"])  # the load test via nginx
    f = report["failover"]
    assert f["sent_to_a_before_kill"] > 0 and f["served_by_b"] > 0  # both replicas served
    assert f["b_failed"] == 0  # requests to the live replica complete
    assert f["started_after_kill"] > 0 and f["after_kill_failed"] == 0
    assert f["after_kill_on_a"] == 0  # new requests go to the live one
    assert f["health_through_nginx_after_kill"] == 200


def test_printed_nginx_config_is_valid(tmp_path):
    """The config the README shows is the one the script writes, and nginx accepts it."""
    text = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "scale_out.py"), "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("/tmp/pocket-tts-nginx", str(tmp_path)))
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "max_fails=1 fail_timeout=10s" in text and "proxy_next_upstream error" in text
