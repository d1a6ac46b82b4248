"""Executors: where a study's units of work run.

An executor runs the pure units of :mod:`binsense.study.execute` (a training task gives
an outcome; an evaluation task gives rows) and hands their results back to the driver,
which alone writes the store (:mod:`binsense.study.record`). Two exist:

- :class:`LocalExecutor` (the default, ``[executor] kind = "local"``): one unit at a
  time in the driver's process, in the plan's order — each run is trained, then
  evaluated, before the next training starts; each draw is recorded the moment it is
  computed. No Ray import.
- :class:`~binsense.study.ray_executor.RayExecutor` (``kind = "ray"``, ``binsense study
  run --executor ray``): every ready unit becomes a Ray task with the study's resources;
  see :mod:`binsense.study.ray_executor`.

The protocol is small: :meth:`Executor.submit` starts a unit and returns a handle,
:meth:`Executor.wait` returns the handles that finished (at least one) with their
values, :meth:`Executor.cancel` stops the rest (Ctrl-C).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from binsense.errors import BinsenseError
from binsense.study.schema import Study


class WorkerLost(BinsenseError):
    """A unit whose worker died more often than the retries allow (a crash, a kill, a
    lost node): the grid point fails, the study goes on."""


@dataclass
class Handle:
    """A submitted unit: ``done``, then ``value`` (its return) or ``error`` (raised);
    ``ship_to``: the run folder its files go to (Ray's object-store mode)."""

    ref: Any = None
    done: bool = False
    value: Any = None
    error: BaseException | None = None
    ship_to: Any = None


class Executor(Protocol):
    """Where units run (module docstring)."""

    #: ``local`` or ``ray``.
    name: str
    #: Units run in the driver's process (an evaluation may then record each draw as it
    #: is computed).
    in_process: bool
    #: How many units may run at once (``None``: as many as are ready).
    capacity: int | None

    def start(self, study: Study, log: Callable[[str], None]) -> None: ...

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Handle: ...

    def wait(self, handles: Sequence[Handle]) -> list[Handle]: ...

    def cancel(self, handles: Sequence[Handle]) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Each unit runs in the driver's process when it is submitted, one at a time."""

    name = "local"
    in_process = True
    capacity = 1

    def start(self, study: Study, log: Callable[[str], None]) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Handle:
        handle = Handle(done=True)
        try:
            handle.value = fn(*args, **kwargs)
        except Exception as e:  # the runner re-raises it (a fatal error)
            handle.error = e
        return handle

    def wait(self, handles: Sequence[Handle]) -> list[Handle]:
        return [h for h in handles if h.done]

    def cancel(self, handles: Sequence[Handle]) -> None:
        return None

    def close(self) -> None:
        return None


__all__ = ["Executor", "Handle", "LocalExecutor", "WorkerLost"]
