"""Typed specs: frozen dataclasses whose field annotations carry their own checks.

A spec (the normaliser, the stream's settings) writes each default and each check once, in its
field annotations: ``npho_scale: Annotated[float, Gt(0)] = 1000.0``, ``scheme: Literal[...]``.
The configuration builds its YAML sections from the same fields (:func:`spec_fields`), and
:func:`check_fields` validates a spec built directly (in a test, a benchmark, from a file's
metadata) with pydantic on those same annotations: one rule and one wording for both paths.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import cache
from typing import Any

import pydantic


def spec_fields(spec: type, exclude: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """name -> (annotation with its constraints, default) of a spec's fields, in order.

    The form ``pydantic.create_model`` takes: a configuration section derived from a spec has
    the spec's defaults and checks and no others.
    """
    hints = typing.get_type_hints(spec, include_extras=True)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(spec) if f.name not in exclude}


@cache
def _adapters(spec: type) -> dict[str, pydantic.TypeAdapter]:
    return {name: pydantic.TypeAdapter(annotation) for name, (annotation, _) in spec_fields(spec).items()}


def check_fields(spec: Any) -> None:
    """Raise ValueError naming the first field of ``spec`` whose value breaks its annotation."""
    for name, adapter in _adapters(type(spec)).items():
        value = getattr(spec, name)
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as err:
            why = err.errors()[0]["msg"][0].lower() + err.errors()[0]["msg"][1:]
            raise ValueError(f"{type(spec).__name__}: {name}: {why}, got {value!r}") from None
