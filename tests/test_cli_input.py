"""One-line errors where tracebacks used to be (issue 12): output paths are checked before any
synthesis, text that is not valid UTF-8/Unicode is refused clearly, `export`/`bench` on a
runtime-only install say which extra to install, every option documents its default, and
the web server reports a busy port and ignores clients that go away."""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BLOCK_TORCH

from pocket_tts_onnx import (
    InvalidInputError,
    PocketTTSOnnx,
)
from pocket_tts_onnx.cli import build_parser, main
from pocket_tts_onnx.export.loading import DEMO_DIR
from pocket_tts_onnx.runtime.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
# Errors below come after the (cheap) bundle check, before the model is loaded.


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["say", "voice"])
def test_out_is_checked_before_any_work(serve_bundle, tmp_path, capsys, command):
    first = ["say", "Hello."] if command == "say" else ["voice", str(tmp_path / "ref.wav")]
    missing = tmp_path / "no_such_folder" / "x.out"
    bundle = str(serve_bundle)
    line = _one_line_error(capsys, main([*first, "--bundle", bundle, "--out", str(missing)]))
    assert "no_such_folder does not exist" in line
    line = _one_line_error(capsys, main([*first, "--bundle", bundle, "--out", str(tmp_path)]))
    assert "is a directory" in line


def test_text_file_not_utf8(serve_bundle, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    out = str(tmp_path / "o.wav")
    code = main(["say", "--text-file", str(bad), "--bundle", str(serve_bundle), "--out", out])
    line = _one_line_error(capsys, code)
    assert "latin1.txt is not valid UTF-8" in line and "0xe9" in line


def test_stdin_not_utf8(serve_bundle, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pocket_tts_onnx.cli", "say", "--bundle", str(serve_bundle),
         "--out", str(tmp_path / "o.wav")],
        input=b"caf\xe9\n",
        capture_output=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},  # C locale: surrogateescape on stdin
    )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("error: the text on stdin is not valid UTF-8"), err
    assert "Traceback" not in err


def test_lone_surrogate_is_invalid_input():
    tokenizer = load_tokenizer(DEMO_DIR / "tokenizer.model", "sentencepiece")
    assert tokenizer.encode("Hello there.")  # valid text still works
    with pytest.raises(InvalidInputError, match="lone surrogate '\\\\udce9' at position 3"):
        tokenizer.encode("caf\udce9")


def test_generate_refuses_lone_surrogate(serve_bundle):
    tts = PocketTTSOnnx.load(serve_bundle, precision="fp32")
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        tts.generate("Hello \ud800 there.", max_frames=2)


def test_say_with_seed_is_bit_reproducible(serve_bundle, tmp_path, capsys):
    import soundfile as sf

    text = "Hello there. A second sentence, streamed in several decoder calls."
    outs = []
    for i in range(3):
        out = tmp_path / f"say{i}.wav"
        args = [text, "--bundle", str(serve_bundle), "--out", str(out), "--seed", "5"]
        assert main(["say", *args, "--max-frames", "20"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    pcm, rate = sf.read(tmp_path / "say0.wav", dtype="int16")
    tts = PocketTTSOnnx.load(serve_bundle, precision="int8")
    want = tts.generate(text, seed=5, max_frames=20)  # the API's reproducible result
    assert rate == tts.sample_rate
    # write_wav's conversion (upstream's): clip, scale by 32767, truncate toward zero.
    np.testing.assert_array_equal(pcm, np.trunc(np.clip(want, -1, 1) * 32767).astype(np.int16))


@pytest.mark.parametrize("command", [["export", "--demo"], ["bench", "--demo"]])
def test_export_and_bench_without_torch(tmp_path, command):
    script = (
        BLOCK_TORCH
        + f"""
from pocket_tts_onnx.cli import main
sys.exit(main({command!r} + ["--output", {str(tmp_path / "o")!r}]))
"""
    )
    if command[0] == "bench":
        script = script.replace('+ ["--output", ' + repr(str(tmp_path / "o")) + "]", "")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"`{command[0]}` needs the [export] extra" in lines[0]
    assert "torch" in lines[0] and "pip install" in lines[0]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", ["say", "voice", "export"])
def test_every_option_has_a_description_and_its_default(name):
    for action in _subparser(name)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help) > 10, f"{name} {label} has no description"
        # A flag is off unless given; every other option names its default.
        if action.option_strings and not isinstance(action, argparse._StoreTrueAction):
            if action.default is not None:
                shown = "default" in action.help and str(action.default) in action.help
                assert shown, (name, label, action.help)
            elif action.dest not in ("text_file", "voice", "config", "weights", "checkpoint"):
                assert "default" in action.help, (name, label, action.help)


def test_precision_default_is_the_same_everywhere():
    defaults = {
        name: next(a.default for a in _subparser(name)._actions if a.dest == "precision")
        for name in ("say", "voice")
    }
    assert defaults == {"say": "int8", "voice": "int8"}  # = PocketTTSOnnx.load's default


def _serve(bundle: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "web" / "serve.py"), "--bundle", str(bundle),
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.fixture()
def fake_bundle(tmp_path) -> Path:
    if not (REPO / "web" / "dist" / "index.html").is_file():
        pytest.skip("web/dist is not built (npm --prefix web run build)")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (bundle / "big.onnx").write_bytes(b"\0" * (32 << 20))
    return bundle


def test_serve_busy_port_is_one_line(fake_bundle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        proc = _serve(fake_bundle, busy.getsockname()[1])
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot listen on 127.0.0.1:"), err
    assert "--port" in lines[0]


def test_serve_client_disconnect_has_no_traceback(fake_bundle):
    proc = _serve(fake_bundle, 0)
    try:
        first = proc.stdout.readline()
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        for _ in range(3):  # a big download abandoned mid-way, with a reset
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"GET /bundle/big.onnx HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(65536)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        time.sleep(1.0)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as ok:
            ok.sendall(b"GET /bundle/manifest.json HTTP/1.0\r\n\r\n")
            assert b"200" in ok.recv(100)  # still serving
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "Error" not in err, err


@pytest.fixture(scope="module")
def bundle(lsd_bundle_copy):
    return lsd_bundle_copy


def test_out_inside_the_bundle_is_refused(bundle, capsys):
    before = (bundle / "manifest.json").read_bytes()
    code = main(["say", "Hi.", "--bundle", str(bundle), "--out", str(bundle / "manifest.json")])
    assert code == 2 and "inside the bundle" in capsys.readouterr().err
    assert (bundle / "manifest.json").read_bytes() == before
    assert main(["voice", "x.wav", "--bundle", str(bundle), "--out", str(bundle / "v.npz")]) == 2


def test_unwritable_out_is_one_line(bundle, capsys):
    code = main(
        ["say", "Hi.", "--bundle", str(bundle), "--out", "/proc/x.wav", "--max-frames", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
