"""Run a study's grid on Ray: a local Ray on this machine's cores, or a cluster.

``binsense study run FILE --executor ray [--address auto|HOST:PORT]`` (or ``[executor]
kind = "ray"`` in the study file). The driver plans, submits and records
(:mod:`binsense.study.runner`); Ray runs the units of :mod:`binsense.study.execute`:

- **Placement.** Each training is one task requesting ``cpus`` CPUs (default: its
  ``threads``) and ``gpus`` GPUs (``[executor]``); each trained run's pending draws are
  one evaluation task with the same request. A task is submitted once what it waits
  for is trained: a student after its teacher and start, a run's evaluations after its
  training. Ray sets a worker's ``OMP_NUM_THREADS`` to its CPU request; the training still sets
  torch's thread count to its ``threads`` (part of its identity: the same threads give
  the same weights, wherever they run).
- **Checkpoints.** Where every node sees the study folder at the same path (one
  machine, or shared storage: NFS, a parallel file system), workers write the run
  folders there. Where some node does not, run folders travel through Ray's object
  store: a training runs in a folder on its node (``$TMPDIR/binsense-ray/...``, seeded
  with the run folder's files so that it resumes), and returns the folder's files,
  which the driver writes into the study folder atomically; an evaluation task gets the
  checkpoint's bytes. :meth:`RayExecutor.start` probes every node up front and says
  which in one line (``[executor] checkpoints`` forces either).
- **Faults.** A task whose worker dies (killed, out of memory, a lost node) is run again
  up to ``retries`` times; a training resumes from its last epoch checkpoint
  (:func:`binsense.train.train` with ``resume=True``). After the last retry the grid
  point is recorded as failed and the study goes on. The driver alone writes the store,
  so a driver killed mid-study resumes on the next run exactly as a local one
  (the store holds every recorded outcome; run folders their last epoch checkpoints).
- **Ctrl-C** stops the tasks (:meth:`RayExecutor.cancel`: a local Ray is shut down, a
  cluster's tasks are cancelled); what is stored stays.
- **Progress.** The driver's bar counts the whole study; workers print their epoch
  lines prefixed with ``[run ID]`` (Ray forwards them, with its own worker prefix).

A local Ray (no address) is started with this machine's cores and shut down at the
end; a cluster at an address is joined and left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from binsense.errors import BinsenseError
from binsense.io import atomic_write, atomic_write_text
from binsense.study.execute import execute_evaluations, execute_training
from binsense.study.executors import Handle, WorkerLost
from binsense.study.plan import EvalTask, TrainTask
from binsense.study.schema import ExecutorOptions, Study


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BinsenseError(
            "--executor ray needs Ray: pip install 'binsense[ray]' (or pip install ray)."
        ) from None
    return ray


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """A unit of work on a worker; an error it raises comes back as a value (so that the
    driver re-raises the original exception, not Ray's wrapper)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # (FATAL errors: the unit itself returns grid-point failures)
        return _Raised(e)


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


# ---------------------------------------------------------------- object-store mode


@dataclasses.dataclass(frozen=True)
class _Shipped:
    """A unit's outcome and the files of its node-local run folder (name -> bytes)."""

    outcome: Any
    files: dict[str, bytes]


def _files(folder: Path) -> dict[str, bytes]:
    """A run folder's files (not its lock or temporaries) as bytes."""
    if not folder.is_dir():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        atomic_write(folder / name, lambda f, data=data: f.write(data))


def _node_folder(study_key: str, name: str) -> Path:
    return Path(tempfile.gettempdir()) / "binsense-ray" / study_key / name


def _train_on_node(
    task: TrainTask,
    seed: dict[str, bytes],
    needed: dict[str, bytes],
    study_key: str,
    kwargs: dict,
) -> _Shipped:
    """:func:`execute_training` in a folder on this node: seeded with the run folder's
    files unless a killed try left one here (as recent or more); the teacher's and the
    start's checkpoints (``needed``: ``"teacher"`` / ``"init"`` -> bytes) from their
    bytes. Returns the outcome and the folder's files."""
    folder = _node_folder(study_key, task.run_id)
    if not folder.is_dir():
        _write_files(folder, seed)
    paths: dict[str, Path | None] = {"teacher": None, "init": None}
    for role, data in needed.items():
        path = _node_folder(study_key, f"{task.run_id}.{role}") / "checkpoint.pt"
        _write_files(path.parent, {path.name: data})
        paths[role] = path
    local = dataclasses.replace(
        task, run_dir=folder, teacher_checkpoint=paths["teacher"], init_checkpoint=paths["init"]
    )
    return _Shipped(execute_training(local, **kwargs), _files(folder))


def _evaluate_on_node(task: EvalTask, checkpoint: bytes, study_key: str, kwargs: dict) -> Any:
    """:func:`execute_evaluations` on the checkpoint's bytes, written on this node."""
    path = _node_folder(study_key, f"{task.run_id}.eval") / "checkpoint.pt"
    _write_files(path.parent, {path.name: checkpoint})
    return execute_evaluations(dataclasses.replace(task, checkpoint=path), **kwargs)


def _sees(path: str) -> tuple[str, bool]:
    """On one node: its address and whether ``path`` exists there."""
    import ray

    return ray.util.get_node_ip_address(), os.path.exists(path)


#: How long the driver blocks in ``ray.wait`` at a time: Python handles a Ctrl-C only
#: when the call returns, so a longer wait would delay it until some task ends.
WAIT_SLICE_S = 0.2


class RayExecutor:
    """Units as Ray tasks (module docstring)."""

    name = "ray"
    in_process = False
    capacity = None

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options
        self.ray = _import_ray()
        self.started_here = False
        self.remote: Any = None
        self.shipping = False  # run folders through the object store
        self.study_key = ""

    def start(self, study: Study, log: Callable[[str], None]) -> None:
        """Connect to (or start) Ray, and check that every node sees the study folder."""
        ray = self.ray
        if not ray.is_initialized():
            address = self.options.address
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=True,
                    logging_level="ERROR",
                    configure_logging=True,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address!r}" if address else "a local Ray"
                raise BinsenseError(
                    f"cannot start {where}: {' '.join(str(e).split())[:300]}; check the "
                    "address (`ray status` on the head node), or run the study locally "
                    "(--executor local)."
                ) from None
            self.started_here = True
        self.remote = ray.remote(_run)
        log(self.check_shared(study))

    def check_shared(self, study: Study) -> str:
        """One line: the cluster's resources and where the checkpoints go. Refuses a
        cluster with a node that does not see the study folder."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        folder = study.out_dir.resolve()
        marker = folder / f".ray-check.{uuid.uuid4().hex}.tmp"  # (a stale temp if killed)
        atomic_write_text(marker, "binsense: can every Ray node see the study folder?\n")
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            probe = ray.remote(_sees)
            refs = [
                probe.options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                ).remote(str(marker))
                for n in nodes
            ]
            seen = ray.get(refs, timeout=120)
        finally:
            marker.unlink(missing_ok=True)
        blind = [ip for ip, ok in seen if not ok]
        mode = self.options.checkpoints
        if blind and mode == "shared":
            raise BinsenseError(
                f"{len(blind)} of the Ray cluster's {len(nodes)} nodes ({', '.join(blind)}) "
                f"do not see the study folder {folder}, but [executor] checkpoints = "
                '"shared": put it on storage that every node mounts at the same path (NFS, '
                'a parallel file system), or set checkpoints = "auto".'
            )
        self.shipping = mode == "object-store" or bool(blind)
        self.study_key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        res = ray.cluster_resources()
        cpus = self.options.cpus
        per = f"{cpus:g} CPU(s)" if cpus else "the training's threads as CPUs"
        if self.options.gpus is None:
            gpus = ", 1 GPU per CUDA task"
        else:
            gpus = f", {self.options.gpus:g} GPU(s)" if self.options.gpus else ""
        if not self.shipping:
            where = f"checkpoints in {folder}, which every node sees"
        else:
            why = f"{len(blind)} of {len(nodes)} node(s) do not see it" if blind else "as asked"
            where = f"checkpoints travel through Ray's object store to {folder} ({why})"
        return (
            f"ray: {len(nodes)} node(s), {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} "
            f"GPU(s); each task asks {per}{gpus}; {where}"
        )

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Handle:
        task = args[0]
        config = task.training.config
        cpus = self.options.cpus or config.threads or 1
        gpus = self.options.gpus
        if gpus is None:  # one GPU per CUDA task: Ray sets its CUDA_VISIBLE_DEVICES
            device = config.device
            if isinstance(task, EvalTask):
                device = task.options.device or device
            gpus = 1 if device.startswith("cuda") else 0
        handle = Handle()
        if self.shipping and fn is execute_training:
            needed = {
                role: path.read_bytes()
                for role, path in (("teacher", task.teacher_checkpoint),
                                   ("init", task.init_checkpoint))
                if path is not None
            }  # fmt: skip
            fn, args = _train_on_node, (task, _files(task.run_dir), needed, self.study_key, kwargs)
            kwargs, handle.ship_to = {}, task.run_dir
        elif self.shipping and fn is execute_evaluations:
            data = task.checkpoint.read_bytes()
            fn, args, kwargs = _evaluate_on_node, (task, data, self.study_key, kwargs), {}
        handle.ref = self.remote.options(
            num_cpus=cpus, num_gpus=gpus, max_retries=self.options.retries,
            retry_exceptions=False,
        ).remote(fn, args, kwargs)  # fmt: skip
        return handle

    def wait(self, handles: Sequence[Handle]) -> list[Handle]:
        ray = self.ray
        by_ref = {h.ref: h for h in handles}
        ready: list = []
        while not ready:  # in slices: Ctrl-C is handled between them, not after a task ends
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=WAIT_SLICE_S)
        done = []
        for ref in ready:
            handle = by_ref[ref]
            handle.done = True
            try:
                value = ray.get(ref)
            except (ray.exceptions.RayError, ray.exceptions.TaskCancelledError) as e:
                first = " ".join(str(e).split())[:300]
                handle.error = WorkerLost(
                    f"its Ray worker died {self.options.retries + 1} time(s) "
                    f"({type(e).__name__}: {first})"
                )
            else:
                if isinstance(value, _Raised):
                    handle.error = value.error
                elif isinstance(value, _Shipped):  # the driver writes the run folder
                    _write_files(handle.ship_to, value.files)
                    handle.value = value.outcome
                else:
                    handle.value = value
            done.append(handle)
        return done

    def cancel(self, handles: Sequence[Handle]) -> None:
        """Stop the tasks still running (Ctrl-C, a fatal error): best effort, so that the
        error that stops the study is the one the user sees. A Ray started here is shut
        down by :meth:`close`, which ends its workers: its tasks are not cancelled one by
        one, because Ray 2.60 aborts the driver when a task is force-cancelled as its
        result arrives ("Tried to complete task that was not pending", seen here once in
        about five Ctrl-C's). On a cluster the tasks are cancelled."""
        if self.started_here:
            return
        for h in handles:
            if not h.done:
                with contextlib.suppress(Exception):
                    self.ray.cancel(h.ref, force=True)

    def close(self) -> None:
        if self.started_here:
            self.started_here = False
            with contextlib.suppress(Exception):  # (as cancel: never hide the real error)
                self.ray.shutdown()


__all__ = ["RayExecutor"]
