"""Turning pydantic's validation errors on params.yaml into one paragraph a user can act on.

Each problem names the key path, the value found and what the key accepts, suggests the closest
key or model name for a typo, and reports a misspelt key once (not also as a missing one).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ValidationError


def suggest(name: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def show(value: Any) -> str:
    """A value as the user would have written it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def _field_at(root: type[BaseModel], loc: tuple) -> tuple[Any, list, str | None] | None:
    """(annotation, constraints, description) of the field at `loc`, or None if it is not a field."""
    model: Any = root
    annotation: Any = root
    metadata: list = []
    description = None
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            annotation, metadata, description = field.annotation, list(field.metadata), field.description
        elif typing.get_origin(model) is dict:  # a free-form key, e.g. a variant's name
            annotation, metadata, description = typing.get_args(model)[1], [], None
        else:
            return None
        model = annotation
    return annotation, metadata, description


def _bounds(metadata: list) -> str:
    words = []
    for m in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                words.append(f"{sign} {getattr(m, attr)}")
    return (" " + " and ".join(words)) if words else ""


def _render(annotation: Any, metadata: list, description: str | None = None) -> str:
    """What a field accepts, in words: "a whole number >= 1", "null or a number > 0", ..."""
    if description:
        return description
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        inner = [m for e in extra for m in (getattr(e, "metadata", None) or [e])]
        desc = next((e.description for e in extra if getattr(e, "description", None)), None)
        return _render(base, metadata + inner, desc)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        prefix = "null or " if len(rest) < len(args) else ""
        return prefix + " or ".join(_render(a, metadata) for a in rest)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "a whole number" + _bounds(metadata)
    if annotation is float:
        return "a number" + _bounds(metadata)
    if annotation is str:
        return "a string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with the keys " + ", ".join(annotation.model_fields)
    return "a value of type " + getattr(annotation, "__name__", str(annotation))


def _accepted(root: type[BaseModel], loc: tuple) -> str:
    field = _field_at(root, loc)
    return _render(*field) if field else "a value of the right type"


def _value_at(raw: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _field_loc(loc: tuple) -> tuple:
    """The location of the params.yaml key an error belongs to: a tuple's item index is dropped."""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            return loc[:i]
    return loc


def _keys_under(root: type[BaseModel], parent: tuple) -> list[str]:
    """The keys accepted in the mapping at `parent`, for "did you mean"."""
    field = _field_at(root, parent)
    model = field[0] if field else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def problems(root: type[BaseModel], exc: ValidationError, raw: dict, model_checked: bool) -> list[str]:
    errors = exc.errors()
    # A misspelt key shows up twice: as unknown, and its correct spelling as missing. Say it once.
    suggested: set[tuple] = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = tuple(err["loc"])
            close = suggest(str(loc[-1]), _keys_under(root, loc[:-1]))
            if close:
                suggested.add(loc[:-1] + (close,))
    problems: list[str] = []
    for err in errors:
        loc = tuple(err["loc"])
        kind = err["type"]
        if loc == ("model",) and model_checked:
            continue  # said better by model_problem, with the valid names
        if kind == "extra_forbidden":
            parent = loc[:-1]
            keys = _keys_under(root, parent)
            close = suggest(str(loc[-1]), keys)
            hint = f" (did you mean `{_path(parent + (close,))}`?)" if close else ""
            where = f"under `{_path(parent)}`" if parent else "at the top level"
            text = f"unknown key `{_path(loc)}`{hint}; the keys accepted {where} are: {', '.join(keys)}"
        elif kind == "missing" and not any(isinstance(p, int) for p in loc):
            if loc in suggested:
                continue
            text = f"`{_path(loc)}` is missing; add it as {_accepted(root, loc)} (there are no defaults: every value comes from params.yaml)"
        else:
            key = _field_loc(loc)
            shown = show(_value_at(raw, key))
            if kind == "value_error":  # one of the schema's own checks, whose message says what is wrong
                reason = str(err["ctx"]["error"]) if "ctx" in err else err["msg"].removeprefix("Value error, ")
                # a check across sections (on the whole file) names its keys itself
                text = f"`{_path(key)}` is {shown}, but {reason}" if key else reason
            else:
                text = f"`{_path(key)}` is {shown}, but it must be {_accepted(root, key)}"
        if text not in problems:
            problems.append(text)
    return problems


def model_problem(root: type[BaseModel], raw: dict) -> str | None:
    """`model` must name one of the presets under `variants`: a check across keys, made here."""
    model, variants = raw.get("model"), raw.get("variants")
    if not isinstance(variants, dict):
        return None  # `variants` itself is reported; there is nothing to check `model` against
    names = sorted(str(n) for n in variants)
    if not names:
        return "`variants` is empty; add at least one preset (e.g. vanilla) and name it in `model`"
    if isinstance(model, str) and model in names:
        return None
    if "model" not in raw:
        if any(suggest(str(k), ["model"]) for k in raw if k not in root.model_fields):
            return None  # `model` is misspelt: the unknown key's "did you mean" says it
        what, close = "`model` is missing", None
    elif isinstance(model, str):
        close = suggest(model, names)
        what = f'`model` is "{model}", which is not a preset under `variants`'
        what += f' (did you mean "{close}"?)' if close else ""
    else:
        what, close = f"`model` is {show(model)}, not the name of a preset under `variants`", None
    return (
        f"{what}; the valid models are: {', '.join(names)}. Pick one, e.g. "
        f"`dvc exp run -S model={close or names[0]}`, or add a new preset under `variants`"
    )
