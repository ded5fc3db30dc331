"""Typed specs: frozen dataclasses whose field annotations carry their own checks.

A spec (the normaliser, the stream's settings) writes each default and each check once, in its
field annotations: ``npho_scale: Annotated[float, Gt(0)] = 1000.0``, ``scheme: Literal[...]``.
:func:`check_fields` enforces them when a spec is built directly (in a test, a benchmark, from
a file's metadata); the configuration builds its YAML sections from the same fields
(:func:`spec_fields`), and pydantic reads the same ``annotated_types`` constraints, so a value
from YAML is checked by the same rule, with an error that names its key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import annotated_types

_BOUNDS = {"gt": (lambda v, b: v > b, "greater than"), "ge": (lambda v, b: v >= b, "at least"),
           "lt": (lambda v, b: v < b, "less than"), "le": (lambda v, b: v <= b, "at most")}


def spec_fields(spec: type, exclude: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """name -> (annotation with its constraints, default) of a spec's fields, in order.

    The form ``pydantic.create_model`` takes: a configuration section derived from a spec has
    the spec's defaults and checks and no others.
    """
    hints = typing.get_type_hints(spec, include_extras=True)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(spec) if f.name not in exclude}


def check_fields(spec: Any) -> None:
    """Raise ValueError naming the first field of ``spec`` whose value breaks its annotation."""
    hints = typing.get_type_hints(type(spec), include_extras=True)
    for field in dataclasses.fields(spec):
        problem = _problem(field.name, getattr(spec, field.name), hints[field.name])
        if problem:
            raise ValueError(f"{type(spec).__name__}: {problem}")


def _problem(name: str, value: Any, annotation: Any) -> str | None:
    """Why ``value`` breaks ``annotation`` (bounds, literals, None where it is allowed), else None."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        problems = [_problem(name, value, a) for a in options if a is not type(None)]
        return None if None in problems else problems[0]
    if origin is Literal:
        choices = typing.get_args(annotation)
        return None if value in choices else f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}"
    if origin is typing.Annotated:
        for rule in annotation.__metadata__:
            for bound_name, (holds, words) in _BOUNDS.items():
                bound = getattr(rule, bound_name, None)
                if isinstance(rule, annotated_types.BaseMetadata) and bound is not None and not holds(value, bound):
                    return f"{name} must be {words} {bound}, got {value!r}"
    return None
