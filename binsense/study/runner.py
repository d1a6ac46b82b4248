"""The study runner: train what is not trained, evaluate what is not evaluated.

``run_study`` expands the study file (:func:`~binsense.study.schema.load_study`), reads
what the results store holds and makes a plan (:mod:`binsense.study.plan`): the
trainings left, each teacher and start before the trainings that need it, and per run
its pending (condition, draw) pairs. An executor (:mod:`binsense.study.executors`: this
process, one unit at a time, by default; Ray with ``--executor ray``,
:mod:`binsense.study.ray_executor`) runs the units (:mod:`binsense.study.execute`) and
the driver alone records their outcomes (:mod:`binsense.study.record`). So a second run
of a finished study does nothing and a run that was killed (even with ``kill -9``)
continues where it stopped:

- a training whose store row says ``trained`` is loaded from its checkpoint, never
  retrained; any other training calls :func:`binsense.train.train` with ``resume=True``
  in its run folder ``<study dir>/runs/<run_id>/``, which continues from the last
  per-epoch checkpoint (and returns at once if all epochs are there);
- each draw is evaluated and inserted in its own transaction, so a kill loses at most the
  draw in flight; the store's primary key makes duplicates impossible;
- temporary files that a kill left in the study folder (``.NAME.*.tmp``) are removed at
  the start (:func:`binsense.io.clean_stale_temps`; the study lock is held).

**Teachers and starts first.** A training that distils from a teacher training
(``distill = { teacher = {...} }``) or fine-tunes from a starting training (``init = {
training = {...} }``) depends on it: the plan is walked in
:meth:`~binsense.study.schema.Study.training_order`, every teacher and start before the
trainings that need it — one that is a grid point is trained (and evaluated) at its
first use, a hidden one (:attr:`~binsense.study.schema.Study.hidden`) is trained and
stored like any run but not evaluated. The dependent training gets its checkpoint path
(``<study dir>/runs/<id>/checkpoint.pt``). After a kill the same walk resumes: a
teacher or start whose row says ``trained`` is not touched again (its checkpoint is
what the dependent training loads), an unfinished one resumes from its own checkpoint,
then the dependent one resumes from its own. A training whose teacher or start failed
is recorded as failed with that reason (and tried again, after it, by the next run).

**Model size.** Once a model is trained, its deployed size
(:func:`binsense.compress.summary.summary` totals: Mbit, ``fully_binary``, ...) is stored
in its run row (:meth:`~binsense.study.store.ResultStore.set_run_size`); a trained run
without one (a store from before) gets it when the runner next passes it.

**Engine.** ``[evaluation] engine = "binsense"`` evaluates each draw through the
deployed integer program (:func:`binsense.deploy.convert`, the XNOR-popcount kernels)
instead of the PyTorch model. The condition is applied to the model first and the
program is converted from the model as the condition left it: a ``bn_bits`` condition
(or sensor noise with ``bn_bits`` < 32) deploys the quantized batch norm; sensor noise
transforms the images before the program. One program serves every draw of every
condition that leaves the model in the same state (clean and float-BN sensor noise share
the trained model's; ``bn_bits`` 4 and sensor noise at ``bn_bits`` 4 share theirs); a
condition kind that changes the model otherwise (weight noise, kinds the runner does not
know) is converted for each draw. Each new program is checked against the PyTorch model,
bit for bit, on the first 16 test images — the model with its float layers summed in the
deployed order (:meth:`binsense.deploy.DeployedModel.reference`, the deployed contract;
PyTorch's own order changes with the batch and the CPU). The program's logits are the
model's in that order, so the rows are PyTorch's up to a sign flipped at a near tie of a
float layer (none was seen on the checks of ``benchmarks/bench_eval.py``). A draw the
engine cannot compute — a model that does not deploy (a float model; weight noise on
binarised weights makes them non-±1), a device other than the CPU, a failed check — is
evaluated by PyTorch, with a notice; every row records the engine that computed it in
its ``versions`` JSON (``engine``: ``"binsense"`` or ``"pytorch"``; ``engine_kernel``:
the kernel path; ``engine_fallback``: why PyTorch stood in). The engine is not part of
the condition ids, so rows stored by one engine are not computed again by the other. The
kernels use ``$BINSENSE_THREADS`` threads (default 1), not the training's torch thread
count.

Evaluation results are deterministic (fixed test images, conditions seeded by draw), so
an interrupted-and-resumed study stores exactly the rows of an uninterrupted one. One
runner at a time may work on a study folder (an advisory lock, released by the OS when
the process dies); readers (results, report, show) need no lock and open the store
read-only.

Nothing is mixed silently:

- results of one run and condition on other test data (another fingerprint) are refused
  with one line naming both fingerprints (:class:`~binsense.study.store.DataMismatchError`);
- a partly trained run is resumed only with the data fingerprints, the torch thread count
  and the device it was started with (threads and device are not part of the run id but
  change the trained weights); otherwise the study is refused with one line that says how
  to resume it exactly (:class:`~binsense.errors.SettingsMismatchError`, checked by the
  trainer when it resumes).

One grid point cannot block a study: a training that fails (the loss diverges, the
weights or batch-norm statistics become inf/NaN, a grid point's options are invalid) or
one draw whose evaluation fails is recorded in the store's ``failures`` table with its
reason, and the study goes on with the rest of the grid; :class:`StudySummary` lists the
failures (``binsense study run`` then exits non-zero and the report lists them). A failed
grid point is tried again by the next run. A full disk, a read-only folder, mixed data or
a store error stop the study (they would stop every grid point) with one line, and what
is stored stays: the store holds every finished draw, the run folder its last complete
checkpoint (written atomically). A grid point's exception whose cause is such an error
of the environment (a library that wraps the ``OSError``, or torch's C++ errors that
carry only the text "No space left on device") stops the study too
(:func:`environment_cause`), instead of failing one grid point after another.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from binsense.errors import BinsenseError, SettingsMismatchError, one_line
from binsense.io import clean_stale_temps, folder_lock
from binsense.study.execute import (
    DrawFailed,
    RunFailed,
    check_test_data,
    environment_cause,
    execute_evaluations,
    execute_size,
    execute_training,
    run_printer,
    test_loader,
)
from binsense.study.executors import Executor, Handle, LocalExecutor, WorkerLost
from binsense.study.plan import EvalTask, Plan, StoreSnapshot, TrainTask, make_plan
from binsense.study.preflight import check_study_run
from binsense.study.record import Failure, Recorder
from binsense.study.schema import ExecutorOptions, Study, Training, condition_labels, load_study
from binsense.study.store import ResultStore
from binsense.train.checkpoint import checkpoint_config, checkpoint_path, load_checkpoint
from binsense.train.trainer import nonfinite_state


@dataclass(frozen=True)
class StudySummary:
    """What one :func:`run_study` call did."""

    study: Study
    trained: int
    evaluated: int
    skipped: int
    wall_s: float
    failures: tuple[Failure, ...] = ()
    executor: str = "local"

    @property
    def failed(self) -> int:
        return len(self.failures)

    def line(self) -> str:
        preset = f" (preset {self.study.preset})" if self.study.preset else ""
        failed = f", FAILED {self.failed} grid point(s)" if self.failures else ""
        where = "" if self.executor == "local" else f" on {self.executor}"
        return (
            f"study {self.study.name}{preset}: trained {self.trained}, evaluated "
            f"{self.evaluated} draws, skipped {self.skipped} steps already done{failed}, "
            f"wall {self.wall_s:.0f} s{where}; results in {self.study.store_path}"
        )


@dataclass(frozen=True)
class TrainingProgress:
    """How far one training of the plan is: store status and draws evaluated."""

    training: Training
    status: str | None
    draws_done: int
    draws_total: int
    failures: tuple[str, ...] = field(default=())


def study_lock(out_dir: Path) -> AbstractContextManager[None]:
    """Hold an exclusive advisory lock on a study folder (:func:`binsense.io.folder_lock`)."""
    return folder_lock(out_dir, "`binsense study run`")


def check_output_names(study: Study) -> None:
    """Refuse names that would put outputs outside the study folder (preset, run ids)."""
    _ = study.report_dir  # checks the preset name
    for t in (*study.trainings, *study.hidden):
        study.run_dir(t.run_id)


def study_progress(study: Study) -> list[TrainingProgress]:
    """Per training of the plan: its store status and how many draws are stored.

    Opens the store read-only (it works in a read-only folder).
    """
    if not study.store_path.is_file():
        return [TrainingProgress(t, None, 0, study.draws_per_run) for t in study.trainings]
    wanted = {(e.condition_id, d) for e in study.evaluations for d in range(e.draws)}
    labels = condition_labels(study.evaluations)
    with ResultStore(study.store_path, readonly=True) as store:
        failures = store.failures(
            [t.run_id for t in study.trainings], [e.condition_id for e in study.evaluations]
        )
        out = []
        for t in study.trainings:
            reasons = tuple(
                f["reason"]
                if f["draw"] < 0
                else f"{labels.get(f['condition_id'], f['condition_id'])} draw {f['draw']}: "
                f"{f['reason']}"
                for f in failures
                if f["run_id"] == t.run_id
            )
            out.append(
                TrainingProgress(
                    t,
                    store.run_status(t.run_id),
                    len(wanted & store.done_draws(t.run_id)),
                    study.draws_per_run,
                    reasons,
                )
            )
        return out


class _Driver:
    """Submits the plan's ready tasks to the executor and records each outcome as it
    arrives; a task runs once what it waits for (``after``) is trained."""

    def __init__(
        self,
        study: Study,
        executor: Executor,
        recorder: Recorder,
        data_dir: str | os.PathLike | None,
        progress: bool | None,
        log: Callable[[str], None],
    ) -> None:
        self.study, self.executor, self.recorder = study, executor, recorder
        self.data_dir, self.progress, self.log = data_dir, progress, log
        self.trained: set[str] = set()  # run ids whose training finished in this call
        self.failed: dict[str, str] = {}  # run id -> why its training failed, in this call

    def run(self, plan: Plan) -> None:
        for training in plan.sizes:  # trained runs from a store without sizes
            checkpoint = self.study.run_dir(training.run_id) / "checkpoint.pt"
            self.recorder.size(execute_size(training, checkpoint, self.log))
        self.preflight(plan)
        trains = {t.run_id: t for t in plan.trainings}
        evals = {e.run_id: e for e in plan.evaluations}
        # each run trained, then evaluated; first the runs with nothing to train (trained
        # before, or copied in by --reuse): their rows land before the long trainings
        order = self.study.training_order()  # (each start and teacher before its users)
        cheap: set[str] = set()
        for t in order:
            task = trains.get(t.run_id)
            if task is None or (task.copied and cheap.issuperset(task.after)):
                cheap.add(t.run_id)
        queue: list[TrainTask | EvalTask] = []
        for training in sorted(order, key=lambda t: t.run_id not in cheap):  # (stable)
            queue += [q for q in (trains.get(training.run_id), evals.get(training.run_id)) if q]
        running: dict[int, tuple[Handle, TrainTask | EvalTask]] = {}
        try:
            while queue or running:
                queue = self.drop_blocked(queue)
                for task in list(queue):
                    capacity = self.executor.capacity
                    if capacity is not None and len(running) >= capacity:
                        break
                    if all(run_id in self.trained for run_id in task.after):
                        queue.remove(task)
                        handle = self.submit(task)
                        running[id(handle)] = (handle, task)
                if not running:
                    break  # (nothing ready: only tasks behind failed trainings were left)
                for handle in self.executor.wait([h for h, _ in running.values()]):
                    _, task = running.pop(id(handle))
                    self.record(handle, task)
        except BaseException:  # Ctrl-C or a fatal error: stop the cluster's other tasks
            self.executor.cancel([h for h, _ in running.values()])
            raise

    def preflight(self, plan: Plan) -> None:
        """Refuse new rows on other test data than a run's stored rows, before any work."""
        fingerprints: dict[tuple[str, str | None], str] = {}  # one load per data set
        for task in plan.evaluations:
            if task.stored_fingerprints:
                key = (task.training.config.dataset, task.options.device)
                if key not in fingerprints:
                    _, fingerprints[key] = test_loader(task.training, task.options, self.data_dir)
                check_test_data(task, fingerprints[key])

    def drop_blocked(self, queue: list[TrainTask | EvalTask]) -> list[TrainTask | EvalTask]:
        """Fail the trainings whose teacher or start failed (theirs in turn), and drop the
        evaluations of failed trainings (the bar counted them with the failure)."""
        changed = True
        while changed:
            changed = False
            for task in list(queue):
                failed = next((r for r in task.after if r in self.failed), None)
                if failed is None:
                    continue
                queue.remove(task)
                if isinstance(task, TrainTask):
                    role = "teacher" if failed == task.training.teacher_id else "start"
                    reason = f"its {role} (run {failed}) failed: {self.failed[failed]}"
                    self.recorder.fail_training(task.training, reason, task.status, task.pending)
                    self.failed[task.run_id] = reason
                    changed = True
        return queue

    def submit(self, task: TrainTask | EvalTask) -> Handle:
        local = self.executor.in_process
        if isinstance(task, TrainTask):
            self.recorder.start_training(task)
            return self.executor.submit(
                execute_training, task, data_dir=self.data_dir,
                progress=self.progress if local else False,
                log=self.log if local else run_printer(task.run_id),
            )  # fmt: skip
        emit = (lambda outcome: self.recorder.evaluation(task, outcome)) if local else None
        return self.executor.submit(execute_evaluations, task, data_dir=self.data_dir, emit=emit)

    def record(self, handle: Handle, task: TrainTask | EvalTask) -> None:
        error = handle.error
        if error is not None and not isinstance(error, WorkerLost):
            raise error
        if isinstance(task, TrainTask):
            outcome = handle.value if error is None else RunFailed(task.run_id, str(error))
            self.recorder.training(task, outcome)
            if isinstance(outcome, RunFailed):
                self.failed[task.run_id] = outcome.reason
            else:
                self.trained.add(task.run_id)
            return
        if error is not None:
            reason = str(error)
            outcomes = [DrawFailed(task.run_id, ev.condition_id, d, reason) for ev, d in task.items]
        else:
            outcomes = [] if self.executor.in_process else handle.value  # (already recorded)
        for outcome in outcomes:
            self.recorder.evaluation(task, outcome)


def reuse_runs(
    study: Study, sources: Sequence[str | os.PathLike], log: Callable[[str], None] = print
) -> list[str]:
    """Copy into ``study`` the finished trainings that other study folders (``sources``,
    their ``--out`` folders) hold under the same run id — the content hash of the
    training's config, so the same training — and return their run ids.

    A run is taken from the first source whose ``runs/<run id>/checkpoint.pt`` is a
    finished training of exactly that config (read with its checksum checked); only
    into a study without a folder for it (nothing of this study is replaced). The folder
    is copied whole under a hidden name, then renamed into place, so a kill leaves no
    half-copied run. The runner takes such runs first (before any training: their rows
    land early), finds every epoch done and trains nothing (S0's and S2's ``full``
    presets share their clean CNV models this way).

    Raises:
        BinsenseError: a source that is not a study folder (no ``runs/``).
    """
    folders = [Path(s).expanduser() for s in sources]
    for f in folders:
        if not (f / "runs").is_dir():
            raise BinsenseError(
                f"--reuse {str(f)!r} is not a study folder (it has no runs/ folder); pass "
                "the folder another study ran into (its --out)."
            )
    reused = []
    for t in (*study.hidden, *study.trainings):
        here = study.run_dir(t.run_id)
        if here.exists():
            continue
        for f in folders:
            source = checkpoint_path(f / "runs" / t.run_id)
            if not source.is_file():
                continue
            try:
                ckpt = load_checkpoint(source)
                same = checkpoint_config(ckpt, source).config_hash() == t.run_id
            except BinsenseError as e:  # a damaged source is skipped, not fatal
                log(f"not reused: run {t.run_id} from {f}: {one_line(e)}")
                continue
            if not (ckpt.get("complete") and same):
                continue
            temp = here.with_name(f".{t.run_id}.reuse")
            shutil.rmtree(temp, ignore_errors=True)  # a copy a kill interrupted
            here.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source.parent, temp)
            os.replace(temp, here)
            reused.append(t.run_id)
            log(f"reused run {t.run_id} ({t.label()}) from {f}")
            break
    return reused


def make_executor(options: ExecutorOptions) -> Executor:
    """The executor that ``options`` (the study's ``[executor]`` table, with the CLI's
    ``--executor`` / ``--address`` over it) asks for; Ray is imported only for ``ray``."""
    if options.kind == "local":
        return LocalExecutor()
    from binsense.study.ray_executor import RayExecutor

    return RayExecutor(options)


def run_study(
    path: str | os.PathLike,
    preset: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = tqdm.write,
    executor: str | None = None,
    address: str | None = None,
    reuse: Sequence[str | os.PathLike] = (),
) -> StudySummary:
    """Run (or continue) a study: train and evaluate whatever the store does not hold yet.

    Args:
        path: the study file (TOML).
        preset: a preset of the file (default: its ``study.default_preset``).
        data_dir: data-set folder (default: ``$BINSENSE_DATA`` or the user cache).
        out: study folder (default: next to the file, named after it).
        progress: show progress bars — the whole study and the current epoch
            (``None``: only on a terminal).
        log: where per-epoch lines and notices go.
        executor: ``"local"`` or ``"ray"`` (default: the file's ``[executor] kind``,
            else local; :mod:`binsense.study.executors`).
        address: the Ray cluster's address (``"auto"`` or ``HOST:PORT``; default: the
            file's, else a local Ray with this machine's cores).
        reuse: other study folders whose finished trainings of the same run id are
            copied in first instead of trained again (:func:`reuse_runs`).

    Returns:
        Counts of what was trained, evaluated and skipped, the wall time and the grid
        points that failed (recorded in the store; the rest of the grid was run).

    Raises:
        BinsenseError: the study cannot run at all (a bad file or name, another runner in
            the folder, results on other data, a full disk, a read-only folder, Ray
            asked for but not installed or not reachable), or its pre-flight check
            (:func:`~binsense.study.preflight.check_study_run`: a store that is not
            binsense's, a device this machine lacks, a model that cannot fit, an image
            folder with an empty image, ...) refuses it before anything is written.
    """
    t0 = time.perf_counter()
    study = load_study(path, preset, out=out)
    check_output_names(study)
    check_study_run(study, data_dir=data_dir)
    options = study.executor
    if executor is not None:
        options = options.model_copy(update={"kind": executor})
    if address is not None:
        options = options.model_copy(update={"address": address})
    runner = make_executor(options)
    with study_lock(study.out_dir), ResultStore(study.store_path) as store:
        removed = clean_stale_temps(study.out_dir, recursive=True)
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by an interrupted run")
        reuse_runs(study, reuse, log)
        run_ids = [t.run_id for t in (*study.hidden, *study.trainings)]
        plan = make_plan(study, StoreSnapshot.read(store, run_ids))
        total = len(study.trainings) * (1 + study.draws_per_run) + len(study.hidden)
        with tqdm(
            total=total,
            desc=f"study {study.name}",
            unit="step",
            disable=None if progress is None else not progress,
            dynamic_ncols=True,
        ) as bar:
            recorder = Recorder(study, store, bar, log)
            recorder.skip(plan.skipped)
            if not plan.empty:
                runner.start(study, log)
                try:
                    _Driver(study, runner, recorder, data_dir, progress, log).run(plan)
                finally:
                    runner.close()
    return StudySummary(
        study=study,
        trained=recorder.trained,
        evaluated=recorder.evaluated,
        skipped=recorder.skipped,
        wall_s=time.perf_counter() - t0,
        failures=tuple(recorder.failures),
        executor=options.kind,
    )


__all__ = [
    "Failure",
    "SettingsMismatchError",
    "StudySummary",
    "TrainingProgress",
    "check_output_names",
    "environment_cause",
    "make_executor",
    "nonfinite_state",
    "reuse_runs",
    "run_study",
    "study_lock",
    "study_progress",
]
