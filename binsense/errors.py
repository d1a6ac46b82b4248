"""User-facing errors.

Every mistake a user can make (an unknown name, missing data, a corrupt checkpoint, a typo
in a study file) raises a :class:`BinsenseError` whose message says what went wrong *and*
what to do about it. The CLI prints that single line and exits with status 2; no stack
trace is shown for user mistakes.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is imported where a model is validated, not for this module
    from pydantic import BaseModel, ValidationError


class BinsenseError(Exception):
    """An error caused by user input; its message names the fix."""


class UnknownNameError(BinsenseError, KeyError):
    """A name that is not in a registry (model, data set, quantizer, ...)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(BinsenseError):
    """A data set is not on disk and could not be downloaded."""


class SettingsMismatchError(BinsenseError):
    """A partly trained run would be resumed with settings that change its weights."""


class DataMismatchError(BinsenseError):
    """Data whose fingerprint differs from the one a run or result was computed on."""


class CheckpointError(BinsenseError):
    """A checkpoint is missing, corrupt, or does not match the model."""


def sentence(text: str) -> str:
    """``text`` ending in one full stop (none added after a question mark)."""
    return text if text.endswith((".", "?")) else text + "."


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The choice closest to a misspelt ``name`` (difflib ratio >= 0.5), or ``None``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the closest choice, else `` (valid: a, b, ...)``."""
    choices = sorted(choices)
    close = nearest(name, choices)
    if close is not None:
        return f" — did you mean {close!r}?"
    return f" (valid: {', '.join(choices)})"


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """The one wording of an unknown name: ``unknown model 'vgg_smal' — did you mean
    'vgg_small'? (valid: ...)``, listing every valid name."""
    choices = sorted(choices)
    hint = did_you_mean(name, choices)
    listing = f" (valid: {', '.join(choices)})" if hint.startswith(" —") else hint
    close = hint if hint.startswith(" —") else ""
    return UnknownNameError(sentence(f"unknown {kind} {name!r}{close}{listing}"))


#: What a pydantic type error expects, in the words of a TOML file: the one table of every
#: message made from a pydantic error (:func:`pydantic_problem`).
EXPECTED_TYPES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a table",
    "list_type": "a list",
    "tuple_type": "a list",
}


def _nested_fields(cls: Any, loc: Sequence[str]) -> list[str] | None:
    """The field names of the nested model that ``loc`` (``("prune", "targt")``) ends in,
    or ``None`` when ``loc`` does not run through nested models."""
    from pydantic import BaseModel

    fields = getattr(cls, "model_fields", None)
    for key in loc[:-1]:
        if not fields or key not in fields:
            return None
        annotation = fields[key].annotation
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        options = typing.get_args(annotation) if union else (annotation,)
        model = next((t for t in options if isinstance(t, type) and issubclass(t, BaseModel)), None)
        fields = getattr(model, "model_fields", None)
    return list(fields) if fields else None


def pydantic_problem(
    err: ValidationError, fields: Iterable[str], model: type[BaseModel] | None = None
) -> str:
    """The first problem of a pydantic error as a phrase naming the key (an unknown key
    first: a misspelt key also makes its correct spelling "missing"): ``unknown key
    'epoch' — did you mean 'epochs'?``, ``'epochs' must be an integer, got 'two'``.

    ``fields``: the valid keys, for the nearest one to a misspelt key. With ``model``
    (the validated class), a problem inside a nested table names the dotted key
    (``'prune.block_size'``), and an unknown key there gets the nearest field.
    """
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in first["loc"]]
    nested = _nested_fields(model, loc) if model is not None and len(loc) > 1 else None
    key = (".".join(loc) if nested is not None else loc[0]) if loc else "?"
    kind, given = first["type"], first.get("input")
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown key {key!r}{did_you_mean(key, fields)}"
        hint = did_you_mean(loc[-1], nested) if nested else ""
        return f"unknown key {'.'.join(loc)!r}{hint}"
    if kind in ("value_error", "assertion_error"):  # a validator's own message
        msg = first["msg"].split(", ", 1)[-1]
        return f"{key!r}: {msg}" if loc else msg
    if kind in EXPECTED_TYPES:
        return f"{key!r} must be {EXPECTED_TYPES[kind]}, got {given!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", first.get("ctx", {}).get("expected", ""))
        hint = did_you_mean(str(given), choices) if choices else ""
        return f"{key!r} must be {first['ctx']['expected']}, got {given!r}{hint}"
    msg = first["msg"]
    if msg.startswith("Input should be "):
        return f"{key!r} must be {msg.removeprefix('Input should be ')}, got {given!r}"
    return f"{key!r}: {msg[:1].lower() + msg[1:]}, got {given!r}"


_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def validation_message(err: ValidationError, what: str) -> str:
    """One line from a pydantic error of a training config: the first problem, naming the
    field (``training config: epochs must be an integer, got 'two' ...``); the table of
    expected types is :data:`EXPECTED_TYPES`, shared with :func:`pydantic_problem`."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or what
    kind, given = first["type"], first.get("input")
    if kind == "extra_forbidden":
        return f"{what}: unknown option {loc!r}."
    if kind == "value_error":  # a validator's own message
        msg = first["msg"].removeprefix("Value error, ")
        msg = msg if msg.endswith((".", "?")) else msg + "."
        named = msg.split(" ", 1)[0] == loc  # "device 'cuda' is ...": no "device: " first
        return f"{what}: {msg}" if named else f"{what}: {loc}: {msg}"
    if kind == "finite_number":
        return f"{what}: {loc} must be a finite number, got {given!r}."
    if kind in _BOUNDS:
        bound = next(iter(first.get("ctx", {}).values()), "?")
        return f"{what}: {loc} must be {_BOUNDS[kind]} {bound}, got {given!r}."
    if kind in EXPECTED_TYPES:
        return (
            f"{what}: {loc} must be {EXPECTED_TYPES[kind]}, got {given!r} (values are not "
            'converted: write 32, not "32"; true/false only for yes-or-no options).'
        )
    return f"{what}: {loc}: {first['msg']} (got {given!r})."


def unit_range_problem(x) -> str | None:
    """Why the float images ``x`` are not in [0, 1] — ``"NaN values"``, ``"infinite
    values (range [a, b])"`` or ``"values in [a, b]"`` — or ``None`` when they are.

    One ``aminmax`` pass (a NaN makes both bounds NaN; an infinity shows as a bound).
    The one check behind every "images in [0, 1]" refusal (sensor noise, deployed models).
    """
    if not x.numel():
        return None
    lo, hi = (v.item() for v in x.aminmax())
    if lo >= 0.0 and hi <= 1.0:
        return None
    if math.isnan(lo) or math.isnan(hi):
        return "NaN values"
    if math.isinf(lo) or math.isinf(hi):
        return f"infinite values (range [{lo:g}, {hi:g}])"
    return f"values in [{lo:g}, {hi:g}]"


def one_line(e: BaseException) -> str:
    """An exception as one short line (its type when it is not a binsense error)."""
    text = " ".join(str(e).split())
    if not isinstance(e, BinsenseError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."
