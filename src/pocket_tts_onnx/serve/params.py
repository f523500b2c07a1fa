"""HTTP parameters derived from `GenerationConfig`: one list (runtime/config.py), so every
generation parameter, its limits and its help text reach both endpoints without being
written here again."""

from __future__ import annotations

import inspect
from typing import Annotated

from fastapi import Form
from pydantic import Field

from pocket_tts_onnx.runtime.config import PARAMETERS, parse_param


def json_fields() -> dict:
    """Pydantic field definitions for a JSON body: every parameter optional (None keeps the
    bundle's default); ranges are checked by GenerationConfig, which names the field."""
    return {
        p.name: (p.kind | None, Field(default=None, description=f"{p.help} ({p.bounds()})"))
        for p in PARAMETERS
    }


def form_params():
    """A FastAPI dependency reading every parameter as an optional form field (`/tts`)."""

    def read(**values) -> dict:
        return {
            p.name: parse_param(p, values[p.name])
            for p in PARAMETERS
            if values.get(p.name) not in (None, "")
        }

    read.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                p.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[str | None, Form(description=p.help)],
            )
            for p in PARAMETERS
        ]
    )
    return read


def chosen(body) -> dict:
    """The generation parameters a request body set."""
    return {p.name: getattr(body, p.name) for p in PARAMETERS if getattr(body, p.name) is not None}
