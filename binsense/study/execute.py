"""The units of work of a study: train one run, evaluate one run's pending draws.

:func:`execute_training` and :func:`execute_evaluations` are what an executor runs
(:mod:`binsense.study.executors`), in the driver's process or on a Ray worker. They
touch no results store, no progress bar and no lock: they take a task of the plan
(:mod:`binsense.study.plan`) and return outcomes, plain picklable values that the driver
records (:mod:`binsense.study.record`). The failure policy is the runner's:

- an error of one grid point (a diverged training, a condition that fails on a model:
  :data:`GRID_POINT`) becomes an outcome (:class:`RunFailed`, :class:`DrawFailed`), and
  the study goes on;
- an error that would stop every grid point (:data:`FATAL`: mixed data, a full disk, a
  read-only folder) is raised, as is the environment error found under a grid point's
  exception (:func:`environment_cause`).

**Engine.** With ``[evaluation] engine = "binsense"`` a draw is computed by the model's
deployed integer program (:func:`binsense.deploy.convert`), converted once per model
state (:func:`model_state_key`) within one evaluation task and checked bit for bit
against the model (in the deployed float order) on the first test images
(:func:`binsense.deploy.exact_program`); what cannot deploy is evaluated by PyTorch
with a notice (the runner's docstring has the rules).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from binsense.compress.summary import summary
from binsense.data import DeviceLoader, dataset_info, load_dataset
from binsense.deploy import kernels
from binsense.deploy.program import EXACT_CHECK_IMAGES, exact_program
from binsense.errors import BinsenseError, SettingsMismatchError, one_line
from binsense.evaluate import evaluate
from binsense.evaluate.conditions import Clean, Condition
from binsense.evaluate.noise_conditions import BnBitsCondition, SensorNoiseCondition
from binsense.io import clean_stale_temps, write_error
from binsense.quant.fixed import FLOAT_BITS
from binsense.study.plan import EvalTask, TrainTask
from binsense.study.schema import EvalOptions, Training
from binsense.study.store import DataMismatchError, StoreError, mismatch_message, utc_now
from binsense.train import environment_info, load_model, train
from binsense.train.trainer import nonfinite_state

#: Errors that stop the whole study: they would stop every grid point (or mix data).
FATAL: tuple[type[BaseException], ...] = (
    DataMismatchError,
    SettingsMismatchError,
    StoreError,
    OSError,
    MemoryError,
)
#: Errors of one grid point (a diverged training, a condition that fails on a model).
GRID_POINT: tuple[type[BaseException], ...] = (
    BinsenseError,
    ArithmeticError,
    ValueError,
    RuntimeError,
)

#: ``errno`` values of environment errors that stop the study, also found under a grid
#: point's exception (:func:`environment_cause`).
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
#: Their messages, for errors that carry only the text (torch's C++ errors).
_ENVIRONMENT_TEXTS = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT}

#: Images of the first test batch on which each new deployed program is checked.
#: What computes a draw's logits from its images: the model or its deployed program.
Logits = Callable[[torch.Tensor], torch.Tensor]
#: Where notices and per-epoch lines go.
Log = Callable[[str], None]


def environment_cause(error: BaseException) -> OSError | None:
    """The environment error (disk full, quota used up, read-only file system, I/O
    error) behind a grid point's exception, or ``None``.

    Found in the exception's chain of causes (``__cause__`` / ``__context__``), or in its
    message when the library kept only the text. Such an error would fail every grid
    point in turn, so the runner stops the study with it instead.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ENVIRONMENT_ERRNOS:
            return current
        text = str(current).lower()
        for words, code in _ENVIRONMENT_TEXTS.items():
            if words in text:
                return OSError(code, os.strerror(code))
        current = current.__cause__ or current.__context__
    return None


def stop_on_environment(error: BaseException, where: str | os.PathLike) -> None:
    """Raise the environment error behind ``error`` (:func:`environment_cause`) as one
    :class:`~binsense.io.WriteError` line naming its file (else ``where``); return if
    there is none (``error`` is the grid point's own)."""
    cause = environment_cause(error)
    if cause is None:
        return
    if isinstance(cause, BinsenseError):  # a WriteError: already one line
        raise cause from None
    what = "read or write" if cause.errno == errno.EIO else "write"
    raise write_error(cause, cause.filename or where, what) from None


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Trained:
    """A finished training: what its run row records."""

    run_id: str
    metrics: list[dict[str, Any]]
    fingerprints: dict[str, str]
    environment: dict[str, Any]
    train_seconds: float
    size: dict[str, Any] | None


@dataclass(frozen=True)
class RunFailed:
    """A training that failed, or a trained run whose checkpoint cannot be used."""

    run_id: str
    reason: str


@dataclass(frozen=True)
class Evaluated:
    """One draw's result row (:meth:`~binsense.study.store.ResultStore.add_result`)."""

    row: dict[str, Any]


@dataclass(frozen=True)
class DrawFailed:
    """One draw of a condition that failed."""

    run_id: str
    condition_id: str
    draw: int
    reason: str


@dataclass(frozen=True)
class Sized:
    """A trained run's model size (``None``: the summary cannot count the model)."""

    run_id: str
    size: dict[str, Any] | None


Outcome = Trained | RunFailed | Evaluated | DrawFailed | Sized


# ---------------------------------------------------------------- helpers


def _print_prefixed(prefix: str, line: str) -> None:
    print(f"{prefix}{line}", flush=True)


def run_printer(run_id: str) -> Log:
    """A log that prints each line prefixed with its run: a worker's stdout, which Ray
    forwards to the driver's terminal."""
    return functools.partial(_print_prefixed, f"[run {run_id}] ")


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the block (restored afterwards)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def check_finite(model: nn.Module) -> None:
    """Refuse a model holding inf or NaN values (a diverged training), in one line."""
    bad = nonfinite_state(model)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise BinsenseError(
            f"the trained model holds inf or NaN values ({shown}): the training "
            "diverged; lower the learning rate."
        )


def model_size(training: Training, model: nn.Module, log: Log) -> dict[str, Any] | None:
    """The model's deployed size (summary totals); ``None``, with a notice, for a model
    the summary cannot count."""
    try:
        info = dataset_info(training.config.dataset)
        return summary(model, (info.in_channels, *info.image_size)).totals()
    except FATAL:
        raise
    except GRID_POINT as e:
        stop_on_environment(e, training.run_id)
        log(f"run {training.run_id}: no size recorded ({one_line(e)})")
        return None


def test_loader(
    training: Training, options: EvalOptions, data_dir: str | os.PathLike | None
) -> tuple[DeviceLoader, str]:
    """The test loader of a training's evaluations and the images' fingerprint, read
    afresh for each task (the decoded-tensor cache makes that cheap; a loader kept
    between studies could serve images that changed on disk since)."""
    data = load_dataset(training.config.dataset, "test", data_dir=data_dir)
    if options.test_subset:
        data = data.subset(options.test_subset, seed=options.seed)
    device = torch.device(options.device or training.config.device)
    loader = DeviceLoader(data, options.batch_size, shuffle=False, device=device)
    return loader, data.fingerprint


def check_test_data(task: EvalTask, fingerprint: str) -> None:
    """Refuse to add rows on other test data than the stored rows of this run."""
    for cid, stored in task.stored_fingerprints.items():
        for other in sorted(stored - {fingerprint}):
            raise DataMismatchError(mismatch_message(task.run_id, cid, other, fingerprint))


def model_state_key(condition: Condition) -> tuple | None:
    """What a condition does to the model, as the key of its deployed program: conditions
    with equal keys leave the model in the same state (``("trained",)``: unchanged). ``None``
    for kinds that change it otherwise, or that the runner does not know (weight noise,
    registered kinds): their program is converted for each draw."""
    kind = type(condition)  # exact types: a subclass may change the model another way
    if kind is Clean:
        return ("trained",)
    if kind is SensorNoiseCondition:
        bits, target, scale = condition.bn_bits, condition.bn_target, condition.bn_scale
    elif kind is BnBitsCondition:
        bits, target, scale = condition.bits, condition.target, condition.scale
    else:
        return None
    return ("trained",) if bits == FLOAT_BITS else ("bn", bits, target, scale)


# ---------------------------------------------------------------- training


def execute_training(
    task: TrainTask,
    *,
    data_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    log: Log = print,
) -> Trained | RunFailed:
    """Train (or resume, from the last epoch checkpoint) one run in its run folder, then
    check that the model is finite and count its deployed size."""
    training, folder = task.training, task.run_dir
    with threads(training.config.threads):
        try:
            if folder.is_dir():
                clean_stale_temps(folder)
            result = train(
                training.config, folder, data_dir=data_dir, resume=True, progress=progress,
                log=log, teacher=task.teacher_checkpoint, init=task.init_checkpoint,
            )  # fmt: skip
            check_finite(result.model)
        except FATAL:
            raise
        except GRID_POINT as e:
            stop_on_environment(e, folder)
            return RunFailed(training.run_id, one_line(e))
        provenance = result.provenance
        return Trained(
            run_id=training.run_id,
            metrics=result.metrics,
            fingerprints=provenance["data"],
            environment=provenance["environment"],
            train_seconds=sum(m["epoch_time_s"] for m in result.metrics),
            size=model_size(training, result.model, log),
        )


def execute_size(training: Training, checkpoint: Path, log: Log = print) -> Sized:
    """The size of a trained run from its checkpoint (a store from before sizes)."""
    with threads(training.config.threads):
        try:
            model = load_model(checkpoint)[0]
        except FATAL:
            raise
        except GRID_POINT as e:
            stop_on_environment(e, checkpoint)
            log(f"run {training.run_id}: no size recorded ({one_line(e)})")
            return Sized(training.run_id, None)
        return Sized(training.run_id, model_size(training, model, log))


# ---------------------------------------------------------------- evaluation


@dataclass
class _Programs:
    """One evaluation task's deployed programs: model state -> (program, "") or (None,
    why not)."""

    found: dict[tuple, tuple[Logits | None, str]] = field(default_factory=dict)

    def get(
        self, model: nn.Module, condition: Condition, loader: DeviceLoader
    ) -> tuple[Logits | None, str]:
        """The deployed program of ``model`` as ``condition`` left it (converted once per
        model state, :func:`model_state_key`), or ``None`` and why it cannot be used."""
        if loader.device.type != "cpu":
            return None, f"the engine runs on the CPU, this evaluation on {loader.device}"
        key = model_state_key(condition)
        if key is not None and key in self.found:
            return self.found[key]
        x = next(iter(loader))[0][:EXACT_CHECK_IMAGES]
        found = exact_program(model.eval(), x)
        if key is not None:
            self.found[key] = found
        return found


def execute_evaluations(
    task: EvalTask,
    *,
    data_dir: str | os.PathLike | None = None,
    emit: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Evaluate a run's pending draws from its checkpoint.

    Each draw gives an :class:`Evaluated` row or a :class:`DrawFailed`; a checkpoint that
    cannot be loaded, or holds inf/NaN, gives one :class:`RunFailed` and nothing else.
    ``emit`` receives each outcome as soon as it exists (the local executor records it
    at once, so a kill loses at most the draw in flight); the list of all is returned.
    """
    training, options = task.training, task.options
    out: list[Outcome] = []

    def give(outcome: Outcome) -> None:
        out.append(outcome)
        if emit is not None:
            emit(outcome)

    with threads(training.config.threads):
        loader, fingerprint = test_loader(training, options, data_dir)
        check_test_data(task, fingerprint)
        try:
            model = load_model(task.checkpoint)[0]
            check_finite(model)
        except FATAL:
            raise
        except GRID_POINT as e:
            stop_on_environment(e, task.checkpoint)
            give(RunFailed(training.run_id, one_line(e)))
            return out
        device = loader.device
        programs = _Programs()
        for ev, draw in task.items:
            started, t0 = utc_now(), time.perf_counter()
            try:
                model.to(device)
                with ev.condition.applied(model, draw) as transform:
                    if options.engine == "binsense":
                        program, why = programs.get(model, ev.condition, loader)
                    else:
                        program, why = None, ""
                    if program is not None:
                        engine = {"engine": "binsense", "engine_kernel": kernels.backend()}
                    elif why:  # the recorder says so, once per reason
                        engine = {"engine": "pytorch", "engine_fallback": why}
                    else:
                        engine = {"engine": "pytorch"}
                    result = evaluate(program or model, loader, transform)
                if math.isnan(result.loss) or not math.isfinite(result.accuracy):
                    raise BinsenseError(
                        f"the model's outputs are not finite under this condition (loss "
                        f"{result.loss}); the accuracy would be meaningless"
                    )
            except FATAL:
                raise
            except GRID_POINT as e:
                stop_on_environment(e, task.checkpoint.parent)
                give(DrawFailed(training.run_id, ev.condition_id, draw, one_line(e)))
                continue
            give(
                Evaluated(
                    {
                        "run_id": training.run_id,
                        "condition_id": ev.condition_id,
                        "draw": draw,
                        "kind": ev.kind,
                        "params": ev.condition.params(),
                        "label": ev.label(),
                        "accuracy": float(result.accuracy),
                        "loss": float(result.loss),
                        "n": int(result.n),
                        "data_fingerprint": fingerprint,
                        "versions": {**environment_info(device), **engine},
                        "device": str(device),
                        "started": started,
                        "finished": utc_now(),
                        "seconds": time.perf_counter() - t0,
                    }
                )
            )
    return out


__all__ = [
    "DrawFailed",
    "Evaluated",
    "FATAL",
    "GRID_POINT",
    "Outcome",
    "RunFailed",
    "Sized",
    "Trained",
    "check_finite",
    "environment_cause",
    "execute_evaluations",
    "execute_size",
    "execute_training",
    "model_state_key",
    "run_printer",
    "stop_on_environment",
    "test_loader",
]
