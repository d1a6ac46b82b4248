"""What a ``[[report.claim]]`` block says, checked when the study file loads: its bound
(:class:`Expectation`, with the verdict it gives an interval), the conditions it selects
(:func:`selects`) and its training groups (:func:`check_claims`).

A leaf, as :mod:`binsense.study.selector` is: the study schema imports it to check the
blocks, and :mod:`binsense.study.claims`, which judges them from the stored rows, imports
it too; neither imports the other for it. The rules are in :mod:`binsense.study.claims`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from binsense.errors import BinsenseError
from binsense.study.selector import (
    Arm,
    arms_of_study,
    check_label,
    pair_trainings,
    select_group,
)

HOLDS, FAILS, UNSURE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"

_EXPECT = re.compile(r"^\s*(>|<|within)\s*([-+]?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Expectation:
    """What a claim expects of a difference in accuracy points: ``op`` is ``">"``,
    ``"<"`` or ``"within"``, ``x`` the bound (module docstring)."""

    op: str
    x: float

    @classmethod
    def parse(cls, text: str) -> Expectation:
        """``"> 0"``, ``"< -10"``, ``"within 1"`` (points; ``within`` needs X > 0).

        Raises:
            ValueError: anything else (one line with the three forms).
        """
        m = _EXPECT.match(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                f"expect must be '> X', '< X' or 'within X' with X in accuracy points "
                f"(e.g. '> 0', '< -10', 'within 1'), got {text!r}"
            )
        op, x = m.group(1), float(m.group(2))
        if op == "within" and x <= 0:
            raise ValueError(f"expect 'within X' needs X > 0 (points), got {text!r}")
        return cls(op, x)

    def __str__(self) -> str:
        return f"{self.op} {self.x:g}"

    def judge(self, low: float, high: float) -> str:
        """The verdict of an interval ``[low, high]`` in points (NaN: none)."""
        if math.isnan(low) or math.isnan(high):
            return UNSURE
        x = self.x
        if self.op == ">":
            return HOLDS if low > x else FAILS if high < x else UNSURE
        if self.op == "<":
            return HOLDS if high < x else FAILS if low > x else UNSURE
        if -x <= low and high <= x:
            return HOLDS
        return FAILS if low > x or high < -x else UNSURE


def selects(where: Mapping[str, Any], kind: str, params: Mapping[str, Any]) -> bool:
    """Whether a condition (``kind``, ``params``) passes a claim's ``where`` table: every
    named key (``kind`` or a parameter) present and equal to the value or one of the
    listed values."""
    for key, wanted in where.items():
        if key == "kind":
            value = kind
        elif key in params:
            value = params[key]
        else:
            return False
        if value not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def claim_pairs(arms: Sequence[Arm], spec: Any) -> list[tuple[Arm | None, Arm]]:
    """A claim's trainings as pairs: ``(A, B)`` paired by seed, or ``(None, B)`` for each
    training of B when the claim names no A (a condition's effect on B alone).

    Raises:
        BinsenseError: a selector that picks no or several training groups.
    """
    if spec.a is None:
        return [(None, b) for b in select_group(arms, spec.b, "b")]
    return list(pair_trainings(arms, spec.a, spec.b, flags=("a", "b"))[0])


def check_claims(
    specs: Sequence[Any],
    trainings: Sequence[Any],
    conditions: Iterable[tuple[str, str, Mapping[str, Any]]],
) -> None:
    """Check ``[[report.claim]]`` blocks against a plan (at load time): selectors that pick
    one training group each, a ``relative_to`` that is a condition's label, and a
    ``where`` that selects at least one condition. ``conditions``: (label, kind, params).

    Raises:
        BinsenseError: ``[[report.claim]] #N (name) ...``, the problem in one line.
    """
    arms = arms_of_study(trainings)
    known = list(conditions)
    labels = [label for label, _, _ in known]
    for i, spec in enumerate(specs, 1):
        where = f"[[report.claim]] #{i} ({spec.name})"
        try:
            claim_pairs(arms, spec)
        except BinsenseError as e:
            raise BinsenseError(f"{where} {e}") from None
        check_label(spec.relative_to, labels, where)
        chosen = [
            label
            for label, kind, params in known
            if label != spec.relative_to and selects(spec.where, kind, params)
        ]
        if not chosen:
            kinds = sorted({kind for _, kind, _ in known})
            raise BinsenseError(
                f"{where} where {dict(spec.where)!r} selects no condition (other than "
                f"relative_to); the kinds: {', '.join(kinds)}; a key is 'kind' or a "
                "parameter of the condition, a list means any of its values."
            )


__all__ = [
    "FAILS",
    "HOLDS",
    "NOT_RUN",
    "UNSURE",
    "Expectation",
    "check_claims",
    "claim_pairs",
    "selects",
]
