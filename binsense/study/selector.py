"""Selectors: which training group each side of a paired comparison is.

A side of a comparison is a *training group*: the trainings of a study's plan that differ
only by seed. A selector picks one, by training-grid keys (``variant``, ``seed``,
``train_noise``, ...) or TrainConfig fields dotted into tables (``model``,
``model_options.design``) mapped to values; on the command line it is written
``key=value`` pairs separated by commas (:func:`parse_selector`, the value read as a TOML
value when it is one). :func:`select_group` resolves a selector against a plan's
trainings (as :class:`Arm`), :func:`pair_trainings` pairs the two sides by seed, and
:func:`check_comparisons` checks a study file's ``[[report.compare]]`` blocks when the
file is loaded. Every refusal is one :class:`~binsense.errors.BinsenseError` line naming
the valid keys or values.

A leaf: it reads trainings through the small :class:`GridTraining` protocol, so the study
schema (which checks the comparison blocks) and the comparisons (which compute them) both
import it, and neither imports the other for it. The statistics are in
:mod:`binsense.study.compare`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from binsense import tomlfile
from binsense.errors import BinsenseError, did_you_mean

#: The one training-grid key that pairs trainings.
SEED = "seed"

_MISSING = object()


class GridTraining(Protocol):
    """What a selector reads of a training of the plan (a study's ``Training``)."""

    @property
    def run_id(self) -> str: ...

    @property
    def grid(self) -> Mapping[str, Any]: ...

    @property
    def config(self) -> Any: ...  # a TrainConfig


# ---------------------------------------------------------------- the plan as selectors see it


@dataclass(frozen=True)
class Arm:
    """One training as a side of a comparison: run id, seed, coordinates and config.

    ``keys`` are its training-grid coordinates; ``config`` is its TrainConfig as JSON;
    ``group`` labels its training group (its varying coordinates except the seed).
    """

    run_id: str
    seed: int
    keys: dict[str, Any]
    config: dict[str, Any]
    group: str

    def value(self, key: str) -> Any:
        """The value of a selector key: a grid coordinate, else a dotted config path."""
        if key in self.keys:
            return self.keys[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return _MISSING
            node = node[part]
        return node


def _label(keys: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_text(v)}" for k, v in keys.items()) or "all runs"


def _text(value: Any) -> str:
    """A value as the text a selector would give it (strings bare, ``None`` and an absent
    option as ``none``, the rest JSON)."""
    if value is None or value is _MISSING:
        return "none"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def arms_of_study(trainings: Sequence[GridTraining]) -> list[Arm]:
    """The trainings of a study's plan as :class:`Arm` (group = grid keys but seed).

    The group keys are the grid keys that vary in the plan, except ``seed`` — the
    report's training groups.
    """
    varied: dict[str, set[str]] = defaultdict(set)
    for t in trainings:
        for k, v in t.grid.items():
            varied[k].add(_text(v))
    group_keys = [k for k, vals in varied.items() if len(vals) > 1 and k != SEED]
    return [
        Arm(
            run_id=t.run_id,
            seed=t.config.seed,
            keys=dict(t.grid),
            config=t.config.model_dump(mode="json"),
            group=_label({k: t.grid.get(k) for k in group_keys if k in t.grid}),
        )
        for t in trainings
    ]


# ---------------------------------------------------------------- selectors


def _split_top(text: str) -> list[str]:
    """Split at commas that are not inside quotes, brackets or braces."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _value(text: str) -> Any:
    """A selector value: the TOML value it spells (``0``, ``0.05``, ``true``, a table),
    else the text itself (``NBC-8``, ``none``)."""
    value = tomlfile.literal(text)
    if value is not text:
        return value
    stripped = text.strip()  # not a TOML literal: the text, without its quotes
    return stripped.strip("\"'") if stripped[:1] in "\"'" else stripped


def parse_selector(text: str, flag: str = "--a") -> dict[str, Any]:
    """``"variant=GLT-8,seed=0"`` -> ``{"variant": "GLT-8", "seed": 0}`` (module docstring).

    Raises:
        BinsenseError: an empty selector, a part without ``=``, a key given twice.
    """
    selector: dict[str, Any] = {}
    for part in _split_top(text):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise BinsenseError(
                f"{flag} expects KEY=VALUE[,KEY=VALUE...] (e.g. variant=GLT-8), got {part!r}."
            )
        if key in selector:
            raise BinsenseError(f"{flag} names {key!r} twice.")
        selector[key] = _value(value)
    if not selector:
        raise BinsenseError(f"{flag} is empty; give KEY=VALUE (e.g. variant=GLT-8).")
    return selector


def _equal(value: Any, wanted: Any) -> bool:
    """Whether a training's value matches a selector's (an absent option is ``none``)."""
    if value is _MISSING:
        value = None
    if isinstance(value, bool) != isinstance(wanted, bool):
        return _text(value) == _text(wanted)
    return value == wanted or _text(value) == _text(wanted)


def _matching(arms: Iterable[Arm], selector: Mapping[str, Any]) -> list[Arm]:
    return [a for a in arms if all(_equal(a.value(k), v) for k, v in selector.items())]


def _valid_keys(arms: Sequence[Arm]) -> list[str]:
    return list(dict.fromkeys(k for a in arms for k in a.keys))


def _values(arms: Sequence[Arm], key: str) -> list[str]:
    found = {_text(a.value(key)) for a in arms}
    return sorted(found, key=lambda s: (len(s), s))


def _one_of(key: str, values: Sequence[str]) -> str:
    return f"{key} is one of: {', '.join(repr(v) for v in values)}"


def _check_keys(arms: Sequence[Arm], selector: Mapping[str, Any], flag: str) -> None:
    keys = _valid_keys(arms)
    for key in selector:
        if key in keys or any(a.value(key) is not _MISSING for a in arms):
            continue
        raise BinsenseError(
            f"{flag} {_label(selector)}: unknown key {key!r}{did_you_mean(key, keys)}; "
            "selector keys are the "
            f"training-grid keys ({', '.join(keys) or 'none'}) or a TrainConfig field "
            "(model, model_options.width, ...)."
        )


def _no_match(arms: Sequence[Arm], selector: Mapping[str, Any], flag: str) -> BinsenseError:
    shown = f"{flag} {_label(selector)}"
    for key, wanted in selector.items():
        values = _values(arms, key)
        if _text(wanted) not in values and not _matching(arms, {key: wanted}):
            hint = did_you_mean(_text(wanted), values) if values else ""
            hint = hint if hint.startswith(" — ") else ""
            return BinsenseError(f"{shown} matches no training{hint}; {_one_of(key, values)}.")
    groups = sorted({a.group for a in arms})
    return BinsenseError(
        f"{shown} matches no training (each value exists, not together); the training "
        f"groups are: {'; '.join(groups)}."
    )


def _several(group_arms: Sequence[Arm], arms: Sequence[Arm], selector: Mapping[str, Any],
             flag: str) -> BinsenseError:  # fmt: skip
    groups = list(dict.fromkeys(a.group for a in group_arms))
    keys = [k for k in _valid_keys(group_arms) if k != SEED and k not in selector]
    split = next((k for k in keys if len({_text(a.value(k)) for a in group_arms}) > 1), None)
    hint = f"; add {split}=... ({_one_of(split, _values(group_arms, split))})" if split else ""
    return BinsenseError(
        f"{flag} {_label(selector)} matches {len(groups)} training groups "
        f"({'; '.join(groups)}), not one{hint}."
    )


def select_group(
    arms: Sequence[Arm],
    selector: Mapping[str, Any],
    flag: str = "--a",
    fallback: Mapping[str, Any] | None = None,
) -> list[Arm]:
    """The trainings of the one training group that ``selector`` picks (seed order).

    ``fallback`` (the other side's selector): when ``selector`` picks several groups,
    keep those that agree with ``fallback`` on the keys ``selector`` does not name.

    Raises:
        BinsenseError: an unknown key (with the valid keys), a selector that matches no
            training (with the valid values) or several training groups (with the key
            that tells them apart and its values).
    """
    _check_keys(arms, selector, flag)
    found = _matching(arms, selector)
    if not found:
        raise _no_match(arms, selector, flag)
    if len({a.group for a in found}) > 1 and fallback:
        inherited = {k: v for k, v in fallback.items() if k not in selector}
        narrowed = _matching(found, inherited)
        if len({a.group for a in narrowed}) == 1:
            found = narrowed
    if len({a.group for a in found}) > 1:
        raise _several(found, arms, selector, flag)
    return sorted(found, key=lambda a: a.seed)


# ---------------------------------------------------------------- pairing


def pair_trainings(
    arms: Sequence[Arm],
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    flags: tuple[str, str] = ("--a", "--b"),
) -> tuple[list[tuple[Arm, Arm]], list[Arm], str, str]:
    """``(pairs, unpaired, label of A, label of B)``: A's and B's trainings paired by seed
    (``flags``: how messages name the two selectors).

    Raises:
        BinsenseError: a selector picks no or several training groups (:func:`select_group`),
            both pick the same group, or no seed is in both.
    """
    fa, fb = flags
    side_a = select_group(arms, a, fa)
    side_b = select_group(arms, b, fb, fallback=a)
    label_a, label_b = side_a[0].group, side_b[0].group
    if label_a == label_b:
        raise BinsenseError(
            f"{fa} {_label(a)} and {fb} {_label(b)} pick the same training group "
            f"({label_a}); B must differ from A."
        )
    by_seed = {x.seed: x for x in side_b}
    pairs = [(x, by_seed[x.seed]) for x in side_a if x.seed in by_seed]
    paired = {x.seed for x, _ in pairs}
    unpaired = [x for x in (*side_a, *side_b) if x.seed not in paired]
    if not pairs:
        raise BinsenseError(
            f"{fa} {_label(a)} (seeds {', '.join(str(x.seed) for x in side_a)}) and {fb} "
            f"{_label(b)} (seeds {', '.join(str(x.seed) for x in side_b)}) share no seed, "
            "so nothing can be paired."
        )
    return pairs, unpaired, label_a, label_b


# ---------------------------------------------------------------- study files


def check_comparisons(
    specs: Sequence[Any], trainings: Sequence[GridTraining], labels: Iterable[str] = ()
) -> None:
    """Check ``[[report.compare]]`` blocks against a plan's trainings and condition
    ``labels`` (at load time).

    Raises:
        BinsenseError: ``[[report.compare]] #N a: ...`` — the selector problem
            (:func:`select_group`, :func:`pair_trainings`), or a ``relative_to`` that is
            no condition's label.
    """
    arms = arms_of_study(trainings)
    known = list(labels)
    for i, spec in enumerate(specs, 1):
        try:
            pair_trainings(arms, spec.a, spec.b, flags=("a", "b"))
        except BinsenseError as e:
            raise BinsenseError(f"[[report.compare]] #{i} {e}") from None
        check_label(spec.relative_to, known, f"[[report.compare]] #{i}")


def check_label(label: str | None, known: Sequence[str], where: str) -> None:
    """A block's ``relative_to`` (``None``: not given) is one of the ``known`` condition
    labels, or one :class:`~binsense.errors.BinsenseError` line listing them."""
    if label is not None and label not in known:
        shown = ", ".join(repr(x) for x in known[:8]) + (", ..." if len(known) > 8 else "")
        raise BinsenseError(
            f"{where} relative_to {label!r} is no condition's label; the labels: {shown}."
        )


__all__ = [
    "SEED",
    "Arm",
    "GridTraining",
    "arms_of_study",
    "check_comparisons",
    "check_label",
    "pair_trainings",
    "parse_selector",
    "select_group",
]
