"""User-facing errors.

Every mistake a user can make (an unknown name, missing data, a corrupt checkpoint, a typo
in a study file) raises a :class:`BinsenseError` whose message says what went wrong *and*
what to do about it. The CLI prints that single line and exits with status 2; no stack
trace is shown for user mistakes.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


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


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the closest choice, else `` (valid: a, b, ...)``."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    if close:
        return f" — did you mean {close[0]!r}?"
    return f" (valid: {', '.join(choices)})"


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """The one wording of an unknown name: ``unknown model 'vgg_smal' — did you mean
    'vgg_small'? (valid: ...)``, listing every valid name."""
    choices = sorted(choices)
    hint = did_you_mean(name, choices)
    listing = f" (valid: {', '.join(choices)})" if hint.startswith(" —") else hint
    close = hint if hint.startswith(" —") else ""
    return UnknownNameError(sentence(f"unknown {kind} {name!r}{close}{listing}"))


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
