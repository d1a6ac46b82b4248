"""Run a study's grid on Ray: a local Ray on this machine's cores, or a cluster.

``binsense study run FILE --executor ray [--address auto|HOST:PORT]`` (or ``[executor]
kind = "ray"`` in the study file). The driver plans, submits and records
(:mod:`binsense.study.runner`); Ray runs the units of :mod:`binsense.study.execute`:

- **Placement.** Each training is one task requesting ``cpus`` CPUs (default: its
  ``threads``) and ``gpus`` GPUs (``[executor]``); each trained run's pending draws are
  one evaluation task with the same request. A task is submitted once what it waits
  for is trained: a student after its teacher, a run's evaluations after its training.
  Ray sets a worker's ``OMP_NUM_THREADS`` to its CPU request; the training still sets
  torch's thread count to its ``threads`` (part of its identity: the same threads give
  the same weights, wherever they run).
- **Checkpoints** are written to the run folders in the study folder, which every node
  must see at the same path (one machine, or shared storage: NFS, a parallel file
  system). :meth:`RayExecutor.start` checks it up front with a task on every node, and
  says which in one line; a cluster that does not see the folder is refused.
- **Faults.** A task whose worker dies (killed, out of memory, a lost node) is run again
  up to ``retries`` times; a training resumes from its last epoch checkpoint
  (:func:`binsense.train.train` with ``resume=True``). After the last retry the grid
  point is recorded as failed and the study goes on. The driver alone writes the store,
  so a driver killed mid-study resumes on the next run exactly as a local one
  (the store holds every recorded outcome; run folders their last epoch checkpoints).
- **Ctrl-C** cancels the cluster's tasks (:meth:`RayExecutor.cancel`); what is stored
  stays.
- **Progress.** The driver's bar counts the whole study; workers print their epoch
  lines prefixed with ``[run ID]`` (Ray forwards them, with its own worker prefix).

A local Ray (no address) is started with this machine's cores and shut down at the
end; a cluster at an address is joined and left running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from binsense.errors import BinsenseError
from binsense.io import atomic_write_text
from binsense.study.executors import Handle, WorkerLost
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


def _sees(path: str) -> tuple[str, bool]:
    """On one node: its address and whether ``path`` exists there."""
    import ray

    return ray.util.get_node_ip_address(), os.path.exists(path)


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
        if blind:
            raise BinsenseError(
                f"{len(blind)} of the Ray cluster's {len(nodes)} nodes ({', '.join(blind)}) "
                f"do not see the study folder {folder}: put it on storage that every node "
                "mounts at the same path (NFS, a parallel file system), or run the study "
                "locally."
            )
        res = ray.cluster_resources()
        cpus = self.options.cpus
        per = f"{cpus:g} CPU(s)" if cpus else "the training's threads as CPUs"
        gpus = f", {self.options.gpus:g} GPU(s)" if self.options.gpus else ""
        return (
            f"ray: {len(nodes)} node(s), {res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} "
            f"GPU(s); each task asks {per}{gpus}; checkpoints in {folder}, which every node "
            "sees"
        )

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Handle:
        task = args[0]
        cpus = self.options.cpus or task.training.config.threads or 1
        ref = self.remote.options(
            num_cpus=cpus, num_gpus=self.options.gpus, max_retries=self.options.retries,
            retry_exceptions=False,
        ).remote(fn, args, kwargs)  # fmt: skip
        return Handle(ref=ref)

    def wait(self, handles: Sequence[Handle]) -> list[Handle]:
        ray = self.ray
        by_ref = {h.ref: h for h in handles}
        ready, _ = ray.wait(list(by_ref), num_returns=1)
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
                else:
                    handle.value = value
            done.append(handle)
        return done

    def cancel(self, handles: Sequence[Handle]) -> None:
        for h in handles:
            if not h.done:
                self.ray.cancel(h.ref, force=True)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()
            self.started_here = False


__all__ = ["RayExecutor"]
