"""GenerationConfig is the one parameter currency: every field reaches the Python API, the
scheduler, the CLI and both HTTP endpoints with the same value and the same limits, and a bad
value is refused on every path naming that field."""

from __future__ import annotations

import argparse
import contextlib
import math

import pytest
from conftest import serving

from pocket_tts_onnx import GenerationConfig, InvalidInputError, PocketTTSOnnx
from pocket_tts_onnx.cli import build_parser
from pocket_tts_onnx.cli import main as cli_main
from pocket_tts_onnx.cli_options import generation_overrides
from pocket_tts_onnx.runtime.batching import BatchScheduler
from pocket_tts_onnx.runtime.config import PARAMETERS

# A valid value other than the default for each field; the test fails for a new field until
# it is given one here, so no parameter can be added without being walked through every path.
VALID = {
    "temperature": 0.5,
    "lsd_steps": 3,
    "eos_threshold": -2.5,
    "frames_after_eos": 2,
    "noise_clamp": 1.5,
    "seed": 7,
    "max_frames": 5,
    "first_chunk_frames": 2,
    "timestamps": True,
}


def _flag(p, value) -> list[str]:
    """The command line giving `value` (a switch is its flag alone)."""
    if p.kind is bool:
        return [p.flag if value else "--no-" + p.flag[2:]]
    return [p.flag, str(value)]


def _invalid(p):
    """A value outside the field's range (None where the field has no bound)."""
    if p.maximum is not None:
        return p.kind(p.maximum * 2 if p.maximum > 0 else p.maximum + 1)
    if p.minimum is not None:
        return p.kind(p.minimum - 1)
    return None


def test_every_field_has_a_value_to_walk():
    assert [p.name for p in PARAMETERS] == list(VALID)
    assert {f for f in GenerationConfig.__dataclass_fields__} == set(VALID)


def test_limits_in_messages_are_exact():
    """The seed's bound is 2**63 - 1, said exactly (not rounded to 9.22337e+18)."""
    with pytest.raises(InvalidInputError, match=r"<= 9223372036854775807 or None, got -1$"):
        GenerationConfig(temperature=0.7, lsd_steps=1, eos_threshold=-4.0, seed=-1)


@pytest.fixture(scope="module")
def tts(serve_bundle):
    return PocketTTSOnnx.load(serve_bundle, precision="int8")


@pytest.mark.parametrize("p", PARAMETERS, ids=lambda p: p.name)
def test_python_api_and_scheduler(tts, p):
    value = VALID[p.name]
    assert getattr(tts.generation_config(**{p.name: value}), p.name) == value
    with BatchScheduler(tts, max_streams=1) as scheduler:
        stream = scheduler.submit("Hello there.", **{p.name: value})
        assert getattr(stream.config, p.name) == value
        stream.cancel()
        config = GenerationConfig.from_manifest(tts.manifest, **{p.name: value})
        stream = scheduler.submit("Hello there.", config=config)
        assert stream.config == config
        stream.cancel()
    bad = _invalid(p)
    if bad is not None:
        for call in (tts.generate, tts.stream):
            with pytest.raises(InvalidInputError) as info:
                call("Hello.", **{p.name: bad})
            assert info.value.param == p.name
    with pytest.raises(InvalidInputError) as info:  # a string is never a number
        tts.generation_config(**{p.name: "1"})
    assert info.value.param == p.name


@pytest.mark.parametrize("p", PARAMETERS, ids=lambda p: p.name)
def test_cli_flags(serve_bundle, tmp_path, capsys, p):
    value = VALID[p.name]
    args = build_parser().parse_args(["say", "Hi.", *_flag(p, value)])
    assert generation_overrides(args) == {p.name: value}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["say"]._actions if p.flag in a.option_strings)
    assert action.help.startswith(p.help) and (p.bounds() or "") in action.help
    if p.kind is bool:
        args = build_parser().parse_args(["say", "Hi.", *_flag(p, False)])
        assert generation_overrides(args) == {p.name: False}
        assert generation_overrides(build_parser().parse_args(["say", "Hi."])) == {}
        return  # a switch takes no text, so no text can be wrong
    base = ["say", "Hi.", "--bundle", str(serve_bundle), "--out", str(tmp_path / "o.wav")]
    bad = _invalid(p)
    for text in ([str(bad)] if bad is not None else []) + ["x1"]:
        assert cli_main([*base, p.flag, text]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {p.name} must be"), err
        assert "Traceback" not in err


@contextlib.contextmanager
def _serving(tts, bundle):
    """The real app in this process, its scheduler's submit observed."""
    from pocket_tts_onnx.serve.app import create_app

    app = create_app(tts, bundle)
    seen = []
    scheduler = app.state.serve.scheduler
    real = scheduler.submit

    def submit(*args, **kwargs):
        stream = real(*args, **kwargs)
        seen.append(stream.config)
        return stream

    scheduler.submit = submit
    with serving(app) as port:
        yield port, seen


def test_both_http_endpoints(tts, serve_bundle):
    pytest.importorskip("fastapi")
    from pocket_tts_onnx.serve import client

    with _serving(tts, serve_bundle) as (port, seen):
        for p in PARAMETERS:
            value = VALID[p.name]
            json_reply = client.post_json(
                port, "/v1/audio/speech", {"input": "Hi.", "response_format": "wav", p.name: value}
            )
            assert json_reply.status == 200, json_reply.body[:300]
            assert getattr(seen[-1], p.name) == value
            form = client.post_form(port, "/tts", {"text": "Hi.", p.name: str(value)})
            assert form.status == 200, form.body[:300]
            assert getattr(seen[-1], p.name) == value
            bad = _invalid(p)
            cases = [(bad, str(bad))] if bad is not None and math.isfinite(bad) else []
            for json_value, form_value in cases + [("x", "x")]:
                reply = client.post_json(
                    port, "/v1/audio/speech", {"input": "Hi.", p.name: json_value}
                )
                assert reply.status == 400 and reply.json()["error"]["param"] == p.name, (
                    p.name,
                    reply.body,
                )
                reply = client.post_form(port, "/tts", {"text": "Hi.", p.name: form_value})
                assert reply.status == 400 and reply.json()["error"]["param"] == p.name, (
                    p.name,
                    reply.body,
                )


def test_web_runtime_uses_the_same_parameter_list():
    from pathlib import Path

    from pocket_tts_onnx.runtime.config import parameters_js

    path = Path(__file__).resolve().parents[1] / "web" / "src" / "parameters.js"
    assert path.read_text() == parameters_js(), "run python scripts/write_web_parameters.py"
