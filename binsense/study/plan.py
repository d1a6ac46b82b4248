"""The plan of a study: what is left to train and to evaluate, as tasks with edges.

:func:`make_plan` reads a frozen :class:`StoreSnapshot` of the results store and the
expanded :class:`~binsense.study.schema.Study`, and returns a :class:`Plan`:

- a :class:`TrainTask` for every training that is not trained (or whose checkpoint is
  gone), with explicit edges to the teacher training it distils from and the training
  it starts from, where those are themselves still to train (``after``);
- an :class:`EvalTask` per trained-or-to-be-trained run with draws that are not stored:
  all of that run's pending ``(condition, draw)`` pairs, so one worker keeps one test
  loader and one deployed-program cache for them; it waits for the run's training when
  there is one;
- the trained runs whose run row has no model size yet (``sizes``);
- how many steps of the study's bar are already done (``skipped``).

The plan is a pure function of the study and the snapshot: it touches no store, no
model, no file but the checkpoints it checks for. An executor
(:mod:`binsense.study.executors`) runs its tasks; the driver alone records their
outcomes (:mod:`binsense.study.record`), and plans again on the next run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from binsense.train.checkpoint import checkpoint_path

if TYPE_CHECKING:
    from binsense.study.schema import EvalOptions, Evaluation, Study, Training
    from binsense.study.store import ResultStore


@dataclass(frozen=True)
class StoreSnapshot:
    """What the plan needs from the store, read once: per run id its status, its stored
    ``(condition_id, draw)`` pairs, its test-data fingerprints per condition, and whether
    its row has a model size."""

    status: dict[str, str | None]
    done: dict[str, frozenset[tuple[str, int]]]
    fingerprints: dict[str, dict[str, frozenset[str]]]
    sized: frozenset[str]

    @classmethod
    def read(cls, store: ResultStore, run_ids: Iterable[str]) -> StoreSnapshot:
        ids = list(dict.fromkeys(run_ids))
        rows = {r: store.run_row(r) for r in ids}
        return cls(
            status={r: (row or {}).get("status") for r, row in rows.items()},
            done={r: frozenset(store.done_draws(r)) for r in ids},
            fingerprints={
                r: {c: frozenset(f) for c, f in store.data_fingerprints(r).items()} for r in ids
            },
            sized=frozenset(r for r, row in rows.items() if row and row.get("size")),
        )


@dataclass(frozen=True)
class TrainTask:
    """Train (or resume) one run in its run folder.

    ``status``: the store's status when planned (``None``: never started);
    ``teacher_checkpoint`` / ``init_checkpoint``: the checkpoint of the teacher training
    it distils from / of the training it starts from, in their run folders; ``after``:
    the run ids of those that are themselves in the plan (the task waits for them);
    ``evaluate``: whether the run is a grid point (a hidden training is trained, never
    evaluated); ``pending``: its draws still to evaluate.
    """

    training: Training
    run_dir: Path
    status: str | None
    teacher_checkpoint: Path | None
    init_checkpoint: Path | None
    after: tuple[str, ...]
    evaluate: bool
    pending: int

    @property
    def run_id(self) -> str:
        return self.training.run_id

    @property
    def copied(self) -> bool:
        """Copied in by ``--reuse`` (:func:`unrecorded`): most likely nothing to train."""
        return unrecorded(self.status, self.run_dir)


@dataclass(frozen=True)
class EvalTask:
    """Evaluate the pending ``items`` (``(evaluation, draw)`` pairs) of one run from its
    checkpoint. ``stored_fingerprints``: the test-data fingerprints of the run's stored
    rows, per planned condition (new rows on other data are refused); ``after``: the
    run id whose training must finish first (itself), or nothing."""

    training: Training
    checkpoint: Path
    items: tuple[tuple[Evaluation, int], ...]
    options: EvalOptions
    stored_fingerprints: dict[str, frozenset[str]]
    after: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return self.training.run_id


@dataclass(frozen=True)
class Plan:
    """The tasks left in a study (module docstring); ``trainings`` in an order where each
    teacher and start comes before the trainings that need it."""

    trainings: tuple[TrainTask, ...]
    evaluations: tuple[EvalTask, ...]
    sizes: tuple[Training, ...]
    skipped: int

    @property
    def empty(self) -> bool:
        return not (self.trainings or self.evaluations or self.sizes)

    def lines(self) -> list[str]:
        """The plan as text, one task per line (``binsense study show``-style)."""
        out = []
        for t in self.trainings:
            wait = f", after run {', '.join(t.after)}" if t.after else ""
            out.append(f"train {t.run_id} ({t.training.label()}){wait}")
        for e in self.evaluations:
            wait = f", after run {', '.join(e.after)}" if e.after else ""
            out.append(f"evaluate {e.run_id}: {len(e.items)} draw(s){wait}")
        out += [f"size {t.run_id}" for t in self.sizes]
        return out


def make_plan(study: Study, snapshot: StoreSnapshot) -> Plan:
    """The tasks left in ``study`` given the store's ``snapshot`` (module docstring)."""
    hidden = {t.run_id for t in study.hidden}
    conditions = {e.condition_id for e in study.evaluations}
    trains: dict[str, TrainTask] = {}
    evals: list[EvalTask] = []
    sizes: list[Training] = []
    skipped = 0
    for training in study.training_order():  # every teacher and start before its users
        run_id = training.run_id
        folder = study.run_dir(run_id)
        status = snapshot.status.get(run_id)
        done = snapshot.done.get(run_id, frozenset())
        graded = run_id not in hidden
        items = tuple(
            (ev, d)
            for ev in (study.evaluations if graded else ())
            for d in range(ev.draws)
            if (ev.condition_id, d) not in done
        )
        skipped += (study.draws_per_run if graded else 0) - len(items)
        trained = status == "trained" and checkpoint_path(folder).is_file()
        skipped += status == "trained"  # (a lost checkpoint is trained again: one step)
        if not trained:
            teacher, start = training.teacher_id, training.start_id
            trains[run_id] = TrainTask(
                training, folder, status,
                None if teacher is None else checkpoint_path(study.run_dir(teacher)),
                None if start is None else checkpoint_path(study.run_dir(start)),
                tuple(r for r in training.needs if r in trains), graded, len(items),
            )  # fmt: skip
        elif run_id not in snapshot.sized:
            sizes.append(training)
        if items:
            stored = snapshot.fingerprints.get(run_id, {})
            task = EvalTask(
                training, checkpoint_path(folder), items, study.eval,
                {c: f for c, f in stored.items() if c in conditions}, () if trained else (run_id,),
            )  # fmt: skip
            evals.append(task)
    return Plan(tuple(trains.values()), tuple(evals), tuple(sizes), skipped)


def unrecorded(stored: str | None, run_dir: Path) -> bool:
    """The run folder holds a checkpoint that the store has no row for: copied in by
    ``--reuse`` (a training's row is written before its first epoch), and recorded by the
    runner when it reaches the run, without training."""
    return stored is None and checkpoint_path(run_dir).is_file()


def shown_status(study: Study, run_id: str, stored: str | None) -> str:
    """A training's status as the report and ``binsense study show`` print it: the
    store's; ``"in its folder, not yet recorded"`` for an :func:`unrecorded` run; else
    ``"not started"``."""
    if unrecorded(stored, study.run_dir(run_id)):
        return "in its folder, not yet recorded"
    return stored or "not started"


__all__ = ["EvalTask", "Plan", "StoreSnapshot", "TrainTask", "make_plan", "shown_status"]
