"""The command line as a newcomer meets it: errors in the order they matter, messages that
say what to type, output files in the format their name asks for, complete --help texts."""

from __future__ import annotations

import argparse

import pytest
import soundfile as sf

from pocket_tts_onnx import WordEvent
from pocket_tts_onnx.cli import build_parser, main
from pocket_tts_onnx.manifest import Manifest
from pocket_tts_onnx.runtime.encoding import supported_formats
from pocket_tts_onnx.subtitles import cues
from pocket_tts_onnx.word_units import source_words


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


SUBTITLED = "Hello there, this is a test of subtitles. And a second sentence follows it now!"


def _srt_cues(body: str) -> list[tuple[str, str, str]]:
    blocks = [b.splitlines() for b in body.strip().split("\n\n")]
    assert [b[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    return [(*b[1].split(" --> "), b[2]) for b in blocks]


def test_say_writes_srt_and_vtt_cues_from_the_engines_words(serve_bundle, tmp_path, capsys):
    from pocket_tts_onnx import PocketTTSOnnx

    srt, vtt = tmp_path / "a.srt", tmp_path / "a.vtt"
    args = ["--srt", str(srt), "--vtt", str(vtt), "--eos-threshold", "1e9", "--max-frames", "20"]
    code = main(["say", SUBTITLED, "--bundle", str(serve_bundle), "--out",
                 str(tmp_path / "a.wav"), "--seed", "1", *args])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    tts = PocketTTSOnnx.load(serve_bundle)
    _, words = tts.generate(SUBTITLED, seed=1, eos_threshold=1e9, max_frames=20, timestamps=True)
    assert words
    cues = _srt_cues(srt.read_text())
    # Every word in order, each cue the caller's own text from its first word to its last.
    spoken = " ".join(text for _, _, text in cues)
    assert [w.text for w in words] == [w.text for w in source_words(spoken)]
    assert all(text in SUBTITLED for _, _, text in cues)
    body = vtt.read_text()
    assert body.startswith("WEBVTT\n\n")
    vtt_cues = [
        (*b.splitlines()[0].split(" --> "), b.splitlines()[1])
        for b in body[len("WEBVTT\n\n") :].strip().split("\n\n")
    ]
    assert vtt_cues == [(a.replace(",", "."), b.replace(",", "."), t) for a, b, t in cues]
    first = words[0]
    assert cues[0][0] == _stamp(first.start)


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def test_subtitles_from_a_bundle_without_heads_are_refused_before_synthesis(
    serve_bundle, tmp_path, capsys
):
    import json
    import shutil

    bundle = shutil.copytree(serve_bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["timestamps"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "a.wav"
    assert _say(bundle, out, "--vtt", str(tmp_path / "a.vtt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --vtt: this bundle has no word-timestamp heads"), err
    assert "--timestamp-heads" in err and not out.exists()


def test_cues_are_short_phrases():
    text = "One two, three four five six seven eight nine ten eleven. Twelve"
    words = [
        WordEvent(w.text, w.index, w.begin, w.end, 0.3 * w.index, 0.3 * w.index + 0.2)
        for w in source_words(text)
    ]
    words[-1] = WordEvent("Twelve", 11, words[-1].char_start, words[-1].char_end, 9.0, 9.5)
    got = [c.text for c in cues(words, text)]
    assert got == ["One two", "three four five six seven eight nine ten", "eleven", "Twelve"]
    assert cues(words, text)[0].start == 0.0 and cues(words, text)[0].end == 0.5
