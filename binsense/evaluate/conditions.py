"""Evaluation conditions: what a model is tested under, selectable by ``kind``.

A condition is a validated record (pydantic, unknown fields rejected) with

- :attr:`Condition.kind`: its registry name (the ``kind = "..."`` of a study file);
- :meth:`Condition.draw_count`: how many Monte-Carlo draws it has (sensor instances, weight
  noise draws; 1 for deterministic conditions);
- :meth:`Condition.applied`: a context manager that, for draw *d*, changes the model in
  place if needed (restoring it exactly on exit) and yields an input transform for the
  [0, 1] image batch, or ``None``;
- :meth:`Condition.params`: the columns it contributes to a results row.

Noise and quantization features register their own kinds with :func:`register_condition`;
the study runner only composes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from binsense.registry import Registry

InputTransform = Callable[[Tensor], Tensor]


class Condition(BaseModel):
    """Base class of evaluation conditions (subclass, set ``kind``, register).

    Validation is strict, for every subclass: values are never coerced (``level =
    "0.05"`` or ``draws = true`` are errors; an integer is accepted where a number
    is expected, ``level = 0``), and numbers must be finite.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    kind: ClassVar[str] = ""

    def draw_count(self) -> int:
        """Number of Monte-Carlo draws (1 for deterministic conditions)."""
        return 1

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator[InputTransform | None]:
        """Apply draw ``draw`` to ``model``; yield the input transform (or ``None``)."""
        yield None

    def params(self) -> dict[str, Any]:
        """Columns for the results table (the condition's fields)."""
        return self.model_dump(mode="json")

    def label(self) -> str:
        """Short human-readable name, e.g. ``sensor_noise(type=column_offset, level=0.05)``."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.kind}({inner})" if inner else self.kind


CONDITIONS: Registry = Registry("condition kind")


def register_condition(cls: type[Condition]) -> type[Condition]:
    """Class decorator adding a condition kind to the registry."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} must set a non-empty `kind`")
    if cls.kind in CONDITIONS and CONDITIONS.get(cls.kind) is cls:
        return cls
    return CONDITIONS.add(cls.kind, cls)


def condition_kinds() -> list[str]:
    """Registered condition kinds."""
    return CONDITIONS.names()


def condition_class(kind: str) -> type[Condition]:
    """The class registered for ``kind`` (clear error with a suggestion if unknown)."""
    return CONDITIONS.get(kind)


def make_condition(kind: str, **params: Any) -> Condition:
    """Instantiate a condition from its kind and parameters (validated)."""
    return condition_class(kind)(**params)


@register_condition
class Clean(Condition):
    """No perturbation: the reference accuracy."""

    kind: ClassVar[str] = "clean"


__all__ = [
    "Clean",
    "Condition",
    "InputTransform",
    "condition_class",
    "condition_kinds",
    "make_condition",
    "register_condition",
]
