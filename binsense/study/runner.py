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
  draw in flight; the store's primary key makes duplicates impossible;
- temporary files that a kill left in the study folder (``.NAME.*.tmp``) are removed at
  the start (:func:`binsense.io.clean_stale_temps`; the study lock is held).

**Teachers first.** A training that distils from a teacher training (``distill = {
teacher = {...} }``) depends on it: the plan is walked in
:meth:`~binsense.study.schema.Study.training_order`, every teacher before its students —
a teacher that is a grid point is trained (and evaluated) at its first use, a hidden
teacher (:attr:`~binsense.study.schema.Study.teachers`) is trained and stored like any
run but not evaluated. The student's training gets the teacher's checkpoint path
(``<study dir>/runs/<teacher id>/checkpoint.pt``). After a kill the same walk resumes: a
teacher whose row says ``trained`` is not touched again (its checkpoint is what the
student loads), an unfinished teacher resumes from its own checkpoint, then the student
resumes from its own. A student whose teacher failed is recorded as failed with that
reason (and tried again, after its teacher, by the next run).

**Model size.** Once a model is trained, its deployed size
(:func:`binsense.compress.summary.summary` totals: Mbit, ``fully_binary``, ...) is stored
in its run row (:meth:`~binsense.study.store.ResultStore.set_run_size`); a trained run
without one (a store from before) gets it when the runner next passes it.

**Engine.** ``[evaluation] engine = "binsense"`` evaluates each draw through the deployed
integer program (:func:`binsense.deploy.convert`, the XNOR-popcount kernels) instead of
the PyTorch model. The condition is applied to the model first and the program is
converted from the model as the condition left it: a ``bn_bits`` condition (or sensor
noise with ``bn_bits`` < 32) deploys the quantized batch norm; sensor noise transforms
the images before the program. One program serves every draw of every condition that
leaves the model in the same state (clean and float-BN sensor noise share the trained
model's; ``bn_bits`` 4 and sensor noise at ``bn_bits`` 4 share theirs); a condition kind
that changes the model otherwise (weight noise, kinds the runner does not know) is
converted for each draw. Each new program is checked against the PyTorch model, bit for
bit, on the first 16 test images. The program's logits are the model's, so the rows are
the same as PyTorch's (accuracy, loss, n). A draw the engine cannot compute — a model
that does not deploy (a float model; weight noise on binarised weights makes them
non-±1), a device other than the CPU, a failed check — is evaluated by PyTorch, with a
notice; every row records the engine that computed it in its ``versions`` JSON
(``engine``: ``"binsense"`` or ``"pytorch"``; ``engine_kernel``: the kernel path;
``engine_fallback``: why PyTorch stood in). The engine is not part of the condition ids,
so rows stored by one engine are not computed again by the other. The kernels use
``$BINSENSE_THREADS`` threads (default 1), not the training's torch thread count.

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

import errno
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from binsense.compress.summary import summary
from binsense.data import DeviceLoader, dataset_info, load_dataset
from binsense.deploy import convert, kernels
from binsense.errors import BinsenseError, SettingsMismatchError
from binsense.evaluate import evaluate
from binsense.evaluate.conditions import Clean, Condition
from binsense.evaluate.noise_conditions import BnBitsCondition, SensorNoiseCondition
from binsense.io import clean_stale_temps, folder_lock, write_error
from binsense.quant.fixed import FLOAT_BITS
from binsense.study.export import report_dir, run_dir
from binsense.study.schema import Evaluation, Study, Training, condition_labels, load_study
from binsense.study.store import (
    DataMismatchError,
    ResultStore,
    StoreError,
    mismatch_message,
    utc_now,
)
from binsense.train import environment_info, load_model, train
from binsense.train.checkpoint import checkpoint_path
from binsense.train.trainer import nonfinite_state

#: Errors that stop the whole study: they would stop every grid point (or mix data).
_FATAL: tuple[type[BaseException], ...] = (
    DataMismatchError,
    SettingsMismatchError,
    StoreError,
    OSError,
    MemoryError,
)
#: Errors of one grid point (a diverged training, a condition that fails on a model).
_GRID_POINT: tuple[type[BaseException], ...] = (
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


@dataclass(frozen=True)
class StudySummary:
    """What one :func:`run_study` call did."""

    study: Study
    trained: int
    evaluated: int
    skipped: int
    wall_s: float
    failures: tuple[Failure, ...] = ()

    @property
    def failed(self) -> int:
        return len(self.failures)

    def line(self) -> str:
        preset = f" (preset {self.study.preset})" if self.study.preset else ""
        failed = f", FAILED {self.failed} grid point(s)" if self.failures else ""
        return (
            f"study {self.study.name}{preset}: trained {self.trained}, evaluated "
            f"{self.evaluated} draws, skipped {self.skipped} steps already done{failed}, "
            f"wall {self.wall_s:.0f} s; results in {self.study.store_path}"
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
    report_dir(study)
    for t in (*study.trainings, *study.teachers):
        run_dir(study, t.run_id)


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


def one_line(e: BaseException) -> str:
    """An exception as one short line (its type when it is not a binsense error)."""
    text = " ".join(str(e).split())
    if not isinstance(e, BinsenseError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."


#: Images of the first test batch on which each new deployed program is checked.
ENGINE_CHECK_IMAGES = 16
#: What computes a draw's logits from its images: the model or its deployed program.
Logits = Callable[[torch.Tensor], torch.Tensor]


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


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the block (restored afterwards)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


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
        self.failures: list[Failure] = []
        self.failed_runs: dict[str, str] = {}  # run id -> reason, in this call
        self.plan_conditions = {e.condition_id for e in study.evaluations}
        # engine = "binsense": the current training's deployed programs (model_state_key ->
        # (program, "") or (None, why not)) and the fallback reasons already logged
        self.programs: dict[tuple, tuple[Logits | None, str]] = {}
        self.fallbacks_noted: set[str] = set()

    def run(self, training: Training, *, evaluate: bool = True) -> None:
        """Train ``training`` if it is not trained, then evaluate what is not stored
        (``evaluate=False``: a hidden teacher, trained only)."""
        study = self.study
        done = self.store.done_draws(training.run_id)
        pending = [
            (ev, d)
            for ev in (study.evaluations if evaluate else ())
            for d in range(ev.draws)
            if (ev.condition_id, d) not in done
        ]
        status = self.store.run_status(training.run_id)
        draws = study.draws_per_run if evaluate else 0
        already = draws - len(pending) + (status == "trained")
        self.skipped += already
        self.bar.update(already)
        if status == "trained" and not pending:
            self.backfill_size(training)
            return
        with _threads(training.config.threads):
            try:
                if pending:
                    self.check_test_data(training)
                model = self.model(training, status)
            except _FATAL:
                raise
            except _GRID_POINT as e:
                stop_on_environment(e, run_dir(study, training.run_id))
                self.fail_training(training, e, status, len(pending))
                return
            self.programs = {}  # the programs of the previous training are not this one's
            for ev, draw in pending:
                self.evaluate(training, model, ev, draw)
            self.programs = {}

    def fail_training(
        self, training: Training, error: BaseException, status: str | None, pending: int
    ) -> None:
        reason = one_line(error)
        self.failed_runs[training.run_id] = reason
        if status is None:  # never recorded (failed before the store row was written)
            config = training.config
            self.store.start_run(training.run_id, config.to_dict(), config.config_hash())
        self.store.fail_run(training.run_id, reason)
        failure = Failure(training.run_id, training.label(), "", -1, reason)
        self.failures.append(failure)
        self.log(f"FAILED {failure.line()} — going on with the rest of the grid")
        self.bar.update(pending + (status != "trained"))

    # ------------------------------------------------------------ checks

    def check_test_data(self, training: Training) -> None:
        """Refuse to add rows on other test data than the stored rows of this run."""
        device = torch.device(self.study.eval.device or training.config.device)
        _, fingerprint = self.loader(training, device)
        for cid, stored in self.store.data_fingerprints(training.run_id).items():
            if cid not in self.plan_conditions:
                continue
            for other in sorted(stored - {fingerprint}):
                raise DataMismatchError(mismatch_message(training.run_id, cid, other, fingerprint))

    # ------------------------------------------------------------ training

    def model(self, training: Training, status: str | None) -> nn.Module:
        """The trained model: from its checkpoint if trained, else trained (resuming)."""
        config = training.config
        folder = run_dir(self.study, training.run_id)
        ckpt = checkpoint_path(folder)
        if status == "trained":
            if ckpt.is_file():
                model = load_model(ckpt)[0]
                self.check_finite(model)
                if not self.has_size(training):
                    self.record_size(training, model)
                return model
            self.log(f"run {training.run_id}: checkpoint {ckpt} is missing; training again")
        self.bar.set_postfix_str(f"train {training.label()} (run {training.run_id})")
        if folder.is_dir():
            clean_stale_temps(folder)
        teacher = self.teacher_checkpoint(training)
        self.store.start_run(training.run_id, config.to_dict(), config.config_hash())
        result = train(
            config, folder, data_dir=self.data_dir, resume=True, progress=self.progress,
            log=self.log, teacher=teacher,
        )  # fmt: skip
        self.check_finite(result.model)
        provenance = getattr(result, "provenance", None) or json.loads(
            (folder / "config.json").read_text(encoding="utf-8")
        )
        self.store.finish_run(
            training.run_id,
            metrics=result.metrics,
            fingerprints=provenance["data"],
            environment=provenance["environment"],
            train_seconds=sum(m["epoch_time_s"] for m in result.metrics),
        )
        self.record_size(training, result.model)
        if status != "trained":
            self.trained += 1
            self.bar.update(1)
        return result.model

    def teacher_checkpoint(self, training: Training) -> Path | None:
        """The checkpoint of the teacher training ``training`` distils from (trained
        earlier in the walk), or ``None`` without one; a failed teacher fails it."""
        teacher_id = training.teacher_id
        if teacher_id is None:
            return None
        if teacher_id in self.failed_runs:
            raise BinsenseError(
                f"its teacher (run {teacher_id}) failed: {self.failed_runs[teacher_id]}"
            )
        ckpt = checkpoint_path(run_dir(self.study, teacher_id))
        status = self.store.run_status(teacher_id)
        if status != "trained" or not ckpt.is_file():  # e.g. its checkpoint was deleted
            teacher = self.study.training(teacher_id)
            if teacher is None:  # (the plan always holds it)
                raise BinsenseError(f"its teacher (run {teacher_id}) is not in the plan")
            self.model(teacher, status)
        return ckpt

    # ------------------------------------------------------------ size

    def has_size(self, training: Training) -> bool:
        row = self.store.run_row(training.run_id)
        return bool(row and row.get("size"))

    def record_size(self, training: Training, model: nn.Module) -> None:
        """Store the model's deployed size (summary totals) in its run row; a model the
        summary cannot count is logged and left without a size."""
        try:
            info = dataset_info(training.config.dataset)
            totals = summary(model, (info.in_channels, *info.image_size)).totals()
        except _FATAL:
            raise
        except _GRID_POINT as e:
            stop_on_environment(e, run_dir(self.study, training.run_id))
            self.log(f"run {training.run_id}: no size recorded ({one_line(e)})")
            return
        self.store.set_run_size(training.run_id, totals)

    def backfill_size(self, training: Training) -> None:
        """A trained run from a store without sizes gets one (from its checkpoint)."""
        if self.has_size(training):
            return
        ckpt = checkpoint_path(run_dir(self.study, training.run_id))
        if ckpt.is_file():
            with _threads(training.config.threads):
                try:
                    model = load_model(ckpt)[0]
                except _FATAL:
                    raise
                except _GRID_POINT as e:
                    stop_on_environment(e, ckpt)
                    self.log(f"run {training.run_id}: no size recorded ({one_line(e)})")
                    return
                self.record_size(training, model)

    @staticmethod
    def check_finite(model: nn.Module) -> None:
        bad = nonfinite_state(model)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise BinsenseError(
                f"the trained model holds inf or NaN values ({shown}): the training "
                "diverged; lower the learning rate."
            )

    # ------------------------------------------------------------ evaluation

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

    def engine(
        self, training: Training, model: nn.Module, ev: Evaluation, loader: DeviceLoader
    ) -> tuple[Logits, dict[str, str]]:
        """What computes the logits of this draw (called with the condition applied): the
        model, or its deployed program (``engine = "binsense"``); and the engine fields of
        the row's ``versions``."""
        if self.study.eval.engine != "binsense":
            return model, {"engine": "pytorch"}
        program, why = self.program(model, ev.condition, loader)
        if program is None:
            if why not in self.fallbacks_noted:
                self.fallbacks_noted.add(why)
                self.log(
                    f"run {training.run_id} ({training.label()}), {self.labels[ev.condition_id]}:"
                    f" evaluated by PyTorch, not the binsense engine: {why}"
                )
            return model, {"engine": "pytorch", "engine_fallback": why}
        return program, {"engine": "binsense", "engine_kernel": kernels.backend()}

    def program(
        self, model: nn.Module, condition: Condition, loader: DeviceLoader
    ) -> tuple[Logits | None, str]:
        """The deployed program of ``model`` as ``condition`` left it (converted once per
        model state, :func:`model_state_key`), or ``None`` and why it cannot be used."""
        if loader.device.type != "cpu":
            return None, f"the engine runs on the CPU, this evaluation on {loader.device}"
        key = model_state_key(condition)
        if key is not None and key in self.programs:
            return self.programs[key]
        try:
            program = convert(model)
        except BinsenseError as e:
            found: tuple[Logits | None, str] = (None, f"the model does not deploy: {one_line(e)}")
        else:
            x = next(iter(loader))[0][:ENGINE_CHECK_IMAGES]
            with torch.no_grad():
                exact = torch.equal(model.eval()(x), program(x))
            found = (program, "") if exact else (
                None,
                "its logits differ from the PyTorch model's on the first test images (a "
                "deploy bug: please report it)",
            )  # fmt: skip
        if key is not None:
            self.programs[key] = found
        return found

    def evaluate(self, training: Training, model: nn.Module, ev: Evaluation, draw: int) -> None:
        device = torch.device(self.study.eval.device or training.config.device)
        self.bar.set_postfix_str(
            f"eval {training.label()} · {self.labels[ev.condition_id]} · draw {draw + 1}/{ev.draws}"
        )
        started, t0 = utc_now(), time.perf_counter()
        try:
            loader, fingerprint = self.loader(training, device)
            model.to(device)
            with ev.condition.applied(model, draw) as transform:
                logits_of, engine = self.engine(training, model, ev, loader)
                result = evaluate(logits_of, loader, transform)
            if math.isnan(result.loss) or not math.isfinite(result.accuracy):
                raise BinsenseError(
                    f"the model's outputs are not finite under this condition (loss "
                    f"{result.loss}); the accuracy would be meaningless"
                )
        except _FATAL:
            raise
        except _GRID_POINT as e:
            stop_on_environment(e, self.study.out_dir)
            reason = one_line(e)
            self.store.fail_draw(training.run_id, ev.condition_id, draw, reason)
            failure = Failure(
                training.run_id, training.label(), self.labels[ev.condition_id], draw, reason
            )
            self.failures.append(failure)
            self.log(f"FAILED {failure.line()} — going on with the rest of the grid")
            self.bar.update(1)
            return
        self.store.add_result(
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
        data_dir: data-set folder (default: ``$BINSENSE_DATA`` or the user cache).
        out: study folder (default: next to the file, named after it).
        progress: show progress bars — the whole study and the current epoch
            (``None``: only on a terminal).
        log: where per-epoch lines and notices go.

    Returns:
        Counts of what was trained, evaluated and skipped, the wall time and the grid
        points that failed (recorded in the store; the rest of the grid was run).

    Raises:
        BinsenseError: the study cannot run at all (a bad file or name, another runner in
            the folder, results on other data, a full disk, a read-only folder).
    """
    t0 = time.perf_counter()
    study = load_study(path, preset, out=out)
    check_output_names(study)
    with study_lock(study.out_dir), ResultStore(study.store_path) as store:
        removed = clean_stale_temps(study.out_dir, recursive=True)
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by an interrupted run")
        total = len(study.trainings) * (1 + study.draws_per_run) + len(study.teachers)
        with tqdm(
            total=total,
            desc=f"study {study.name}",
            unit="step",
            disable=None if progress is None else not progress,
            dynamic_ncols=True,
        ) as bar:
            runner = _Runner(study, store, bar, data_dir, progress, log)
            hidden = {t.run_id for t in study.teachers}
            for training in study.training_order():  # every teacher before its students
                runner.run(training, evaluate=training.run_id not in hidden)
    return StudySummary(
        study=study,
        trained=runner.trained,
        evaluated=runner.evaluated,
        skipped=runner.skipped,
        wall_s=time.perf_counter() - t0,
        failures=tuple(runner.failures),
    )


__all__ = [
    "Failure",
    "environment_cause",
    "SettingsMismatchError",
    "StudySummary",
    "TrainingProgress",
    "check_output_names",
    "nonfinite_state",
    "run_study",
    "study_lock",
    "study_progress",
]
