"""Exporting loses nothing (issue 12): a re-export keeps the user's own files, a symlinked
`--output` stays a symlink, and what a killed export leaves behind is recovered or removed,
on the next export and on load. Plus the export's messages: no upstream "uninitialized"
alarm for random weights, no hub retry storm, no "-0%", an honest demo note, clear config
and tokenizer errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pocket_tts_onnx.errors import BundleError, ModelSourceError
from pocket_tts_onnx.export.loading import DEMO_CONFIG, DEMO_DIR, ModelSource, load_model
from pocket_tts_onnx.export.pipeline import DEMO_NOTE, _prepare_output, export_bundle
from pocket_tts_onnx.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    """The pid of a process that has exited (as a kill -9 would leave it)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _user_files(bundle: Path) -> dict[str, bytes]:
    files = {
        "NOTES.txt": b"my notes",
        "my_voice.npz": b"PK not really a voice",
        "notes/deep/todo.md": b"- re-export",
    }
    for name, data in files.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(data)
    os.symlink("NOTES.txt", bundle / "notes-link")
    return files


def test_reexport_keeps_user_files_symlink_and_removes_dead_leftovers(demo_bundle, tmp_path):
    real = tmp_path / "real" / "out"
    real.parent.mkdir()
    shutil.copytree(demo_bundle, real)
    user = _user_files(real)
    link = tmp_path / "out_link"
    link.symlink_to(real, target_is_directory=True)
    dead, live = _dead_pid(), os.getppid()
    leftovers = {
        "dead_staging": real.with_name(f".out.tmp-{dead}-abc123"),
        "old_style_staging": real.with_name(".out.tmp-k9x_2zq"),  # before pids were recorded
        "dead_backup": real.with_name(f".out.old-{dead}-1700000000000"),
    }
    running = real.with_name(f".out.tmp-{live}-run123")  # another export still at work
    for path in [*leftovers.values(), running]:
        path.mkdir()
        (path / "flow_lm_main.onnx").write_bytes(b"\0" * 1024)
    assert Manifest.load(real).graphs["flow_lm_main"].files == {"fp32": "flow_lm_main.onnx"}

    messages: list[str] = []
    export_bundle(
        ModelSource(demo=True, seed=1), link, quantize=True, verify=False, progress=messages.append
    )

    assert link.is_symlink() and link.resolve() == real.resolve()
    manifest = Manifest.load(link)
    assert "int8" in manifest.graphs["flow_lm_main"].files  # the new bundle is in place
    for name, data in user.items():
        assert (real / name).read_bytes() == data, name
    assert os.readlink(real / "notes-link") == "NOTES.txt"
    for kind, path in leftovers.items():
        assert not path.exists(), kind
        assert any(path.name in m for m in messages), (kind, messages)
    assert running.exists()  # a live export's staging folder is left alone
    assert sorted(p.name for p in real.parent.iterdir()) == sorted(["out", running.name])

    # Exporter files of the previous bundle are not carried over: without --quantize the
    # INT8 graphs (named by the old manifest) go away, the user's files stay.
    export_bundle(ModelSource(demo=True), real, verify=False)
    assert not list(real.glob("*_int8.onnx"))
    assert (real / "NOTES.txt").read_bytes() == b"my notes"


def test_user_file_with_a_bundle_name_is_kept_aside(demo_bundle, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo_bundle, out)
    (out / "flow_lm_main_int8.onnx").write_bytes(b"mine")  # not named by the fp32 manifest
    messages: list[str] = []
    export_bundle(
        ModelSource(demo=True), out, quantize=True, verify=False, progress=messages.append
    )
    kept = list(out.glob("flow_lm_main_int8.onnx.kept-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"mine"
    assert any("kept your flow_lm_main_int8.onnx" in m for m in messages)
    assert (out / "flow_lm_main_int8.onnx").read_bytes() != b"mine"


def test_bundle_moved_aside_by_a_killed_export_is_restored(demo_bundle, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(demo_bundle, out)
    (out / "NOTES.txt").write_text("keep me")
    dead = _dead_pid()
    staging = tmp_path / f".out.tmp-{dead}-zz9"
    shutil.copytree(demo_bundle, staging)  # the finished new bundle, never installed
    out.rename(tmp_path / f".out.old-{dead}-1700000000000")

    with caplog.at_level(logging.WARNING):
        manifest = Manifest.load(out)  # on load: the previous bundle is put back
    assert manifest.random_weights and (out / "NOTES.txt").read_text() == "keep me"
    assert "restored" in caplog.text and "killed" in caplog.text

    out.rename(tmp_path / f".out.old-{dead}-1700000000001")
    messages: list[str] = []
    _prepare_output(out, messages.append)  # on the next export: restored, staging removed
    assert (out / "NOTES.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert any("restored" in m for m in messages) and any(staging.name in m for m in messages)


def test_bundle_being_replaced_by_a_running_export(demo_bundle, tmp_path):
    shutil.copytree(demo_bundle, tmp_path / f".out.old-{os.getppid()}-1700000000000")
    with pytest.raises(BundleError, match="being replaced by a running export"):
        Manifest.load(tmp_path / "out")


def test_real_kill_between_the_two_renames(demo_bundle, tmp_path):
    """SIGKILL an export subprocess right after it moved the old bundle aside."""
    out = tmp_path / "out"
    shutil.copytree(demo_bundle, out)
    (out / "NOTES.txt").write_text("keep me")
    script = f"""
import os, signal, pathlib
real_rename = pathlib.Path.rename
def rename(self, target):
    if self.name.startswith(".out.tmp-"):  # second rename: staging -> out
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(self, target)
pathlib.Path.rename = rename
from pocket_tts_onnx.cli import main
main(["export", "--demo", "--no-verify", "--output", {str(out)!r}])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -9, result.stderr
    assert "uninitialized" not in result.stdout + result.stderr  # random-init: no alarm
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "out" not in left and len(left) == 2, left  # .out.old-* and .out.tmp-*

    assert Manifest.load(out).random_weights  # load puts the old bundle back
    assert (out / "NOTES.txt").read_text() == "keep me"
    _prepare_output(out, lambda _: None)  # the next export removes the dead staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_demo_note_is_honest(demo_bundle):
    notes = Manifest.load(demo_bundle).notes
    assert notes == [DEMO_NOTE]
    assert "real architecture" not in DEMO_NOTE and "tiny" in DEMO_NOTE
    assert "noise, not speech" in DEMO_NOTE


def test_size_saved_never_prints_minus_zero():
    from pocket_tts_onnx.cli_export import _saved

    assert _saved(0.1, 0.1004) == "0%"  # INT8 a hair larger (no MatMul to quantize)
    assert _saved(1.0, 0.59) == "41%"
    assert _saved(1.0, 1.2) == "-20%"


def _tiny_config(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["flow_lm"]["lookup_table"]["tokenizer_path"] = str(DEMO_DIR / "tokenizer.model")
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_errors_are_not_called_corrupt_weights(tmp_path):
    bad_heads = _tiny_config(tmp_path, **{"flow_lm.transformer.num_heads": 3})
    with pytest.raises(ModelSourceError, match="does not describe a model") as info:
        load_model(ModelSource(config=bad_heads, random_init=True))
    assert "corrupt" not in str(info.value) and "% num_heads" in str(info.value)
    bad_flow = _tiny_config(tmp_path, **{"flow_lm.flow.type": "bogus"})
    with pytest.raises(ModelSourceError, match="does not describe a model.*bogus"):
        load_model(ModelSource(config=bad_flow, random_init=True))


@pytest.mark.parametrize("random_init", [True, False])
def test_missing_local_tokenizer_is_named(tmp_path, random_init):
    config = _tiny_config(tmp_path, **{"flow_lm.lookup_table.tokenizer_path": "gone/tok.model"})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"unused")
    source = ModelSource(
        config=config, random_init=random_init, weights=None if random_init else weights
    )
    with pytest.raises(ModelSourceError, match="tokenizer file not found: gone/tok.model") as e:
        load_model(source)
    assert "hub" not in str(e.value) and "corrupt" not in str(e.value)


def test_unreachable_hub_fails_fast_without_retry_storm(tmp_path):
    from pocket_tts_onnx.export.hub import hub_reachable

    if hub_reachable():
        pytest.skip("the model hub is reachable here; this tests the offline path")
    drop = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: nothing to fall back on
    result = subprocess.run(
        [sys.executable, str(REPO / "export.py"), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "could not fetch the model files from the model hub" in result.stderr
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr


def test_manifest_sha_and_paths_are_checked(demo_bundle, tmp_path):
    def broken(edit) -> Path:
        out = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(demo_bundle, out)
        data = json.loads((out / "manifest.json").read_text())
        edit(data)
        (out / "manifest.json").write_text(json.dumps(data))
        return out

    no_sha = broken(lambda d: d["graphs"]["flow_lm_main"]["sha256"].clear())
    with pytest.raises(BundleError, match="no sha256 for 'flow_lm_main.onnx'"):
        Manifest.load(no_sha)
    for name in ("../outside.onnx", "/etc/passwd"):
        escape = broken(lambda d, n=name: d["graphs"]["mimi_decoder"]["files"].update(fp32=n))
        with pytest.raises(BundleError, match="outside the bundle"):
            Manifest.load(escape)
    tok = broken(lambda d: d["tokenizer"].update(file="../../tokenizer.model"))
    with pytest.raises(BundleError, match="outside the bundle"):
        Manifest.load(tok)
    entry = Manifest.load(demo_bundle).graphs["flow_lm_main"]
    with pytest.raises(BundleError, match="no sha256"):
        entry.digest("not_in_the_manifest.onnx")
