"""The command line as a newcomer meets it: errors in the order they matter, messages that
say what to type, output files in the format their name asks for, complete --help texts."""

from __future__ import annotations

import argparse

import pytest
import soundfile as sf

from pocket_tts_onnx.cli import build_parser, main
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.encoding import supported_formats


def _say(bundle, out, *extra):
    return main(["say", "Hi there.", "--bundle", str(bundle), "--out", str(out), "--seed", "1",
                 "--max-frames", "4", *extra])  # fmt: skip


def test_not_a_bundle_is_said_before_anything_about_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # --out out.wav is inside "--bundle ."
    assert main(["say", "hi", "--bundle", "."]) == 2
    err = capsys.readouterr().err
    assert "not a pocket-tts-onnx bundle" in err and "inside the bundle" not in err
    assert main(["voice", "x.wav", "--bundle", "."]) == 2
    assert "not a pocket-tts-onnx bundle" in capsys.readouterr().err


def test_unknown_voice_says_what_to_type(serve_bundle, tmp_path, capsys):
    name = Manifest.load(serve_bundle).default_voice
    assert _say(serve_bundle, tmp_path / "a.wav", "--voice", name.upper()) == 2
    err = capsys.readouterr().err
    assert f"did you mean {name!r}" in err and "case-sensitive" in err
    assert "--voice prompt.wav" in err and "pocket-tts-onnx voices" in err
    assert "load_voice(" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.wav").exists()


def test_out_suffix_picks_the_format(serve_bundle, tmp_path, capsys):
    rate = Manifest.load(serve_bundle).sample_rate
    formats = supported_formats(rate)
    written = {"flac": "FLAC", "mp3": "MP3", "opus": "OGG"}
    for name, container in written.items():
        if name not in formats:
            continue
        out = tmp_path / f"x.{name}"
        assert _say(serve_bundle, out) == 0, capsys.readouterr().err
        info = sf.info(str(out))
        assert info.format == container and info.samplerate == rate
    wav = tmp_path / "x.wav"
    assert _say(serve_bundle, wav) == 0
    assert sf.info(str(wav)).format == "WAV"

    refused = tmp_path / "x.aac"
    assert _say(serve_bundle, refused) == 2
    err = capsys.readouterr().err
    assert "--out" in err and ".wav" in err and ".flac" in err and not refused.exists()


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["voices", "bench", "say", "voice", "export", "wyoming"])
def test_every_option_is_described_with_its_default(command):
    for action in _subcommand(command)._actions:
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            continue
        if not action.option_strings:
            continue
        assert action.help, (command, action.option_strings)
        assert "default" in action.help, (command, action.option_strings)
        if action.default is not None:
            assert str(action.default) in action.help, (command, action.option_strings)


def test_user_output_speaks_of_the_product_only():
    from pocket_tts_onnx.tools.bench_report import _targets

    text = _targets({}, {"int8": {"throughput_vs_upstream-int8": 4.0}})
    assert "Targets" in text
    assert "issue" not in text.lower()


def test_version(capsys):
    from pocket_tts_onnx import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pocket-tts-onnx {__version__}"
