"""The study runner: train what is not trained, evaluate what is not evaluated.

``run_study`` expands the study file (:func:`~binsense.study.schema.load_study`) and walks
its plan — every training, then every (condition, draw) of that training — checking the
results store first, so a second run of a finished study does nothing and a run that was
killed (even with ``kill -9``) continues where it stopped:

- a training whose store row says ``trained`` is loaded from its checkpoint, never
  retrained; any other training calls :func:`binsense.train.train` with ``resume=True``
  in its run folder ``<study dir>/runs/<run_id>/``, which continues from the last
  per-epoch checkpoint (and returns at once if all epochs are there);
- each draw is evaluated and inserted in its own transaction, so a kill loses at most the
  draw in flight; the store's primary key makes duplicates impossible.

Evaluation results are deterministic (fixed test images, conditions seeded by draw), so
an interrupted-and-resumed study stores exactly the rows of an uninterrupted one. One
runner at a time may work on a study folder (an advisory lock, released by the OS when
the process dies); readers (results, report) need no lock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from binsense.data import DeviceLoader, load_dataset
from binsense.errors import BinsenseError
from binsense.evaluate import evaluate
from binsense.study.schema import Evaluation, Study, Training, condition_labels, load_study
from binsense.study.store import ResultStore, utc_now
from binsense.train import environment_info, load_model, train
from binsense.train.checkpoint import checkpoint_path


@dataclass(frozen=True)
class StudySummary:
    """What one :func:`run_study` call did."""

    study: Study
    trained: int
    evaluated: int
    skipped: int
    wall_s: float

    def line(self) -> str:
        preset = f" (preset {self.study.preset})" if self.study.preset else ""
        return (
            f"study {self.study.name}{preset}: trained {self.trained}, evaluated "
            f"{self.evaluated} draws, skipped {self.skipped} steps already done, "
            f"wall {self.wall_s:.0f} s; results in {self.study.store_path}"
        )


@dataclass(frozen=True)
class TrainingProgress:
    """How far one training of the plan is: store status and draws evaluated."""

    training: Training
    status: str | None
    draws_done: int
    draws_total: int


@contextmanager
def study_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on a study folder (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BinsenseError(
                f"another `binsense study run` is working in {str(out_dir)!r}; wait for it "
                "to finish (or stop it) — or give this run another --out folder."
            ) from None
        yield


def study_progress(study: Study) -> list[TrainingProgress]:
    """Per training of the plan: its store status and how many draws are stored."""
    if not study.store_path.is_file():
        return [TrainingProgress(t, None, 0, study.draws_per_run) for t in study.trainings]
    wanted = {(e.condition_id, d) for e in study.evaluations for d in range(e.draws)}
    with ResultStore(study.store_path) as store:
        return [
            TrainingProgress(
                t,
                store.run_status(t.run_id),
                len(wanted & store.done_draws(t.run_id)),
                study.draws_per_run,
            )
            for t in study.trainings
        ]


class _Runner:
    """The state of one ``run_study`` call (store, bar, cached test loaders, counters)."""

    def __init__(
        self,
        study: Study,
        store: ResultStore,
        bar: tqdm,
        data_dir: str | os.PathLike | None,
        progress: bool | None,
        log: Callable[[str], None],
    ) -> None:
        self.study, self.store, self.bar = study, store, bar
        self.data_dir, self.progress, self.log = data_dir, progress, log
        self.loaders: dict[tuple[str, str], tuple[DeviceLoader, str]] = {}
        self.labels = condition_labels(study.evaluations)
        self.trained = self.evaluated = self.skipped = 0

    def run(self, training: Training) -> None:
        study = self.study
        done = self.store.done_draws(training.run_id)
        pending = [
            (ev, d)
            for ev in study.evaluations
            for d in range(ev.draws)
            if (ev.condition_id, d) not in done
        ]
        status = self.store.run_status(training.run_id)
        already = study.draws_per_run - len(pending) + (status == "trained")
        self.skipped += already
        self.bar.update(already)
        if status == "trained" and not pending:
            return
        model = self.model(training, status)
        for ev, draw in pending:
            self.evaluate(training, model, ev, draw)

    def model(self, training: Training, status: str | None) -> nn.Module:
        """The trained model: from its checkpoint if trained, else trained (resuming)."""
        config, run_dir = training.config, self.study.run_dir(training.run_id)
        if config.threads:
            torch.set_num_threads(config.threads)
        ckpt = checkpoint_path(run_dir)
        if status == "trained":
            if ckpt.is_file():
                return load_model(ckpt)[0]
            self.log(f"run {training.run_id}: checkpoint {ckpt} is missing; training again")
        self.bar.set_postfix_str(f"train {training.label()} (run {training.run_id})")
        self.store.start_run(training.run_id, config.to_dict(), config.config_hash())
        result = train(
            config, run_dir, data_dir=self.data_dir, resume=True, progress=self.progress,
            log=self.log,
        )  # fmt: skip
        provenance = json.loads((run_dir / "config.json").read_text())
        self.store.finish_run(
            training.run_id,
            metrics=result.metrics,
            fingerprints=provenance["data"],
            environment=provenance["environment"],
            train_seconds=sum(m["epoch_time_s"] for m in result.metrics),
        )
        if status != "trained":
            self.trained += 1
            self.bar.update(1)
        return result.model

    def loader(self, training: Training, device: torch.device) -> tuple[DeviceLoader, str]:
        """The test-set loader of a training and the images' fingerprint (built once)."""
        key = (training.config.dataset, str(device))
        if key not in self.loaders:
            data = load_dataset(training.config.dataset, "test", data_dir=self.data_dir)
            if self.study.eval.test_subset:
                data = data.subset(self.study.eval.test_subset, seed=self.study.eval.seed)
            loader = DeviceLoader(data, self.study.eval.batch_size, shuffle=False, device=device)
            self.loaders[key] = (loader, data.fingerprint)
        return self.loaders[key]

    def evaluate(self, training: Training, model: nn.Module, ev: Evaluation, draw: int) -> None:
        device = torch.device(self.study.eval.device or training.config.device)
        loader, fingerprint = self.loader(training, device)
        model.to(device)
        self.bar.set_postfix_str(
            f"eval {training.label()} · {self.labels[ev.condition_id]} · draw {draw + 1}/{ev.draws}"
        )
        started, t0 = utc_now(), time.perf_counter()
        with ev.condition.applied(model, draw) as transform:
            result = evaluate(model, loader, transform)
        self.store.add_result(
            {
                "run_id": training.run_id,
                "condition_id": ev.condition_id,
                "draw": draw,
                "kind": ev.kind,
                "params": ev.condition.params(),
                "label": ev.label(),
                "accuracy": result.accuracy,
                "loss": result.loss,
                "n": result.n,
                "data_fingerprint": fingerprint,
                "versions": environment_info(device),
                "device": str(device),
                "started": started,
                "finished": utc_now(),
                "seconds": time.perf_counter() - t0,
            }
        )
        self.evaluated += 1
        self.bar.update(1)


def run_study(
    path: str | os.PathLike,
    preset: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> StudySummary:
    """Run (or continue) a study: train and evaluate whatever the store does not hold yet.

    Args:
        path: the study file (TOML).
        preset: a preset of the file (default: its ``study.default_preset``).
        data_dir: data-set folder (default ``$BINSENSE_DATA`` or the user cache).
        out: study folder (default: next to the file, named after it).
        progress: show progress bars — the whole study and the current epoch
            (``None``: only on a terminal).
        log: where per-epoch lines and notices go.

    Returns:
        Counts of what was trained, evaluated and skipped, and the wall time.
    """
    t0 = time.perf_counter()
    study = load_study(path, preset, out=out)
    with study_lock(study.out_dir), ResultStore(study.store_path) as store:
        total = len(study.trainings) * (1 + study.draws_per_run)
        with tqdm(
            total=total,
            desc=f"study {study.name}",
            unit="step",
            disable=None if progress is None else not progress,
            dynamic_ncols=True,
        ) as bar:
            runner = _Runner(study, store, bar, data_dir, progress, log)
            for training in study.trainings:
                runner.run(training)
    return StudySummary(
        study=study,
        trained=runner.trained,
        evaluated=runner.evaluated,
        skipped=runner.skipped,
        wall_s=time.perf_counter() - t0,
    )


__all__ = ["StudySummary", "TrainingProgress", "run_study", "study_lock", "study_progress"]
