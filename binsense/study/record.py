"""The recorder: the one writer of a study's results store.

Every outcome of an executor (:mod:`binsense.study.execute`) reaches the driver and is
written here, through :class:`~binsense.study.store.ResultStore`'s narrow API
(``start_run``, ``finish_run``, ``set_run_size``, ``fail_run``, ``add_result``,
``fail_draw``): one process writes the SQLite file, on the driver's disk, while it holds
the study lock. The recorder also keeps the study's progress bar and counters, and says
once per reason why a draw was evaluated by PyTorch instead of the binsense engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from binsense.study.execute import DrawFailed, Evaluated, Outcome, RunFailed, Sized, Trained
from binsense.study.plan import EvalTask, TrainTask
from binsense.study.schema import Study, Training, condition_labels
from binsense.study.store import ResultStore


@dataclass(frozen=True)
class Failure:
    """One grid point that failed: a training (``draw`` -1) or one draw of a condition."""

    run_id: str
    training: str
    condition: str
    draw: int
    reason: str

    def line(self) -> str:
        where = "training" if self.draw < 0 else f"{self.condition}, draw {self.draw}"
        return f"run {self.run_id} ({self.training}) {where}: {self.reason}"


class Recorder:
    """Writes outcomes to ``store``; counts what was trained, evaluated, skipped and
    failed; advances ``bar``; notices go to ``log``."""

    def __init__(
        self, study: Study, store: ResultStore, bar: tqdm, log: Callable[[str], None]
    ) -> None:
        self.study, self.store, self.bar, self.log = study, store, bar, log
        self.labels = condition_labels(study.evaluations)
        self.trained = self.evaluated = self.skipped = 0
        self.failures: list[Failure] = []
        self.fallbacks_noted: set[str] = set()

    def skip(self, steps: int) -> None:
        """Steps already done before this run (trained runs, stored draws)."""
        self.skipped += steps
        self.bar.update(steps)

    def start_training(self, task: TrainTask) -> None:
        """The run row says ``training`` before its training starts."""
        config = task.training.config
        self.store.start_run(task.run_id, config.to_dict(), config.config_hash())
        self.bar.set_postfix_str(f"train {task.training.label()} (run {task.run_id})")

    def training(self, task: TrainTask, outcome: Trained | RunFailed) -> None:
        """A training's outcome: its run row finished (with its size), or failed."""
        if isinstance(outcome, RunFailed):
            self.fail_training(task.training, outcome.reason, task.status, task.pending)
            return
        self.store.finish_run(
            task.run_id,
            metrics=outcome.metrics,
            fingerprints=outcome.fingerprints,
            environment=outcome.environment,
            train_seconds=outcome.train_seconds,
        )
        if outcome.size is not None:
            self.store.set_run_size(task.run_id, outcome.size)
        if task.status != "trained":
            self.trained += 1
            self.bar.update(1)

    def fail_training(
        self, training: Training, reason: str, status: str | None, pending: int
    ) -> None:
        """A training that failed (or that cannot start: its teacher failed): recorded,
        and its ``pending`` draws counted as done for the bar."""
        if status is None:  # never recorded (failed before the store row was written)
            config = training.config
            self.store.start_run(training.run_id, config.to_dict(), config.config_hash())
        self.store.fail_run(training.run_id, reason)
        failure = Failure(training.run_id, training.label(), "", -1, reason)
        self.failures.append(failure)
        self.log(f"FAILED {failure.line()} — going on with the rest of the grid")
        self.bar.update(pending + (status != "trained"))

    def size(self, outcome: Sized) -> None:
        if outcome.size is not None:
            self.store.set_run_size(outcome.run_id, outcome.size)

    def evaluation(self, task: EvalTask, outcome: Outcome) -> None:
        """One outcome of an evaluation task: a row, a failed draw, or a run whose
        checkpoint cannot be used (its remaining draws are given up until the next run)."""
        training = task.training
        if isinstance(outcome, RunFailed):
            self.fail_training(training, outcome.reason, "trained", len(task.items))
            return
        if isinstance(outcome, DrawFailed):
            self.store.fail_draw(outcome.run_id, outcome.condition_id, outcome.draw, outcome.reason)
            label = self.labels[outcome.condition_id]
            failure = Failure(outcome.run_id, training.label(), label, outcome.draw, outcome.reason)
            self.failures.append(failure)
            self.log(f"FAILED {failure.line()} — going on with the rest of the grid")
            self.bar.update(1)
            return
        assert isinstance(outcome, Evaluated)
        row = outcome.row
        why = row["versions"].get("engine_fallback")
        if why and why not in self.fallbacks_noted:
            self.fallbacks_noted.add(why)
            self.log(
                f"run {training.run_id} ({training.label()}), {self.labels[row['condition_id']]}:"
                f" evaluated by PyTorch, not the binsense engine: {why}"
            )
        self.store.add_result(row)
        self.evaluated += 1
        self.bar.update(1)
        self.bar.set_postfix_str(
            f"eval {training.label()} · {self.labels[row['condition_id']]} · draw {row['draw'] + 1}"
        )


__all__ = ["Failure", "Recorder"]
