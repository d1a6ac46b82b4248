"""TOML in one place: the standard library's ``tomllib`` (Python >= 3.11) or its
backport ``tomli`` (3.10), and what binsense reads with it.

- :func:`loads`: a document (study files, ``--config`` files);
- :func:`literal`: one value as a user types it on the command line (``0.25``,
  ``true``, ``"x"``, ``[1, 2]``), or the text itself when it is not a TOML literal
  (``--set model=vgg_small``, ``--model-option encoder=nbc``);
- :func:`key_values`: fields as a user would write them back (``width = 0.5, head =
  "float"``), for messages and listings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: A TOML syntax error (its message ends in "(at line L, column C)").
TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    """A TOML document as a dict (:data:`TOMLDecodeError` on a syntax error)."""
    return tomllib.loads(text)


def literal(text: str) -> Any:
    """A TOML literal (``0.25``, ``true``, ``"x"``, ``[1, 2]``) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except TOMLDecodeError:
        return text


def key_values(fields: Mapping[str, Any]) -> str:
    """``{"width": 0.5, "head": "float"}`` as ``width = 0.5, head = "float"`` (values in
    JSON, which is TOML for numbers, strings, booleans and lists)."""
    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())


__all__ = ["TOMLDecodeError", "key_values", "literal", "loads"]
