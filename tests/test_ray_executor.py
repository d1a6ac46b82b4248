"""Studies on Ray (``--executor ray``): the same rows as the local executor, faults
(a worker killed mid-training, a driver killed with ``kill -9``), one driver per study,
and the plan that both executors walk. On a local Ray of 2 CPUs, with the ``tiny_data``
image folder and ``mnist_bnn`` at width 0.25 (a float teacher, its students, the
binsense engine)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from binsense.cli import main
from binsense.errors import BinsenseError
from binsense.study import load_study, run_study
from binsense.study.execute import run_printer
from binsense.study.plan import StoreSnapshot, make_plan
from binsense.study.runner import study_lock
from binsense.study.store import ResultStore

ray = pytest.importorskip("ray")
if not Path("/proc/self/cmdline").is_file():
    pytest.skip("the fault tests find Ray's workers in /proc (Linux)", allow_module_level=True)

STUDY = """\
[study]
name = "ray_tiny"

[train]
dataset = "{data}"
model = "mnist_bnn"
model_options = {{ width = 0.25 }}
epochs = {epochs}
batch_size = 16
lr = 0.01
threads = 1

[train.grid]
seed = [0, 1]
variant = [
    {{ name = "plain" }},
    {{ name = "kd", distill = {{ teacher = {teacher}, alpha = 0.5 }} }},
]

[[condition]]
kind = "clean"

[[condition]]
kind = "sensor_noise"
type = "column_offset"
level = 0.1
draws = 2

[evaluation]
batch_size = 64
engine = "binsense"
"""


def ray_task_pids() -> list[int]:
    """PIDs of Ray workers running a study unit (process title ``ray::_run``), from
    ``/proc``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"ray::_run" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def write(folder: Path, data: str, epochs: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "s.toml"
    teacher = '{ model = "mnist_bnn_float", seed = 0 }'
    path.write_text(STUDY.format(data=data, epochs=epochs, teacher=teacher))
    return path


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, condition_id, draw, accuracy, loss, n, data_fingerprint, "
            "json_extract(versions, '$.engine') FROM results ORDER BY run_id, condition_id, draw"
        ).fetchall()


def runs(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, status, epochs_done, test_accuracy FROM runs ORDER BY run_id"
        ).fetchall()


def checkpoints(out: Path) -> dict[str, bytes]:
    """Each run's trained weights and buffers, as bytes."""
    from binsense.train import load_model

    found = {}
    for ckpt in sorted(out.glob("runs/*/checkpoint.pt")):
        state = load_model(ckpt)[0].state_dict()
        found[ckpt.parent.name] = b"".join(v.numpy().tobytes() for v in state.values())
    return found


@pytest.fixture(scope="module", autouse=True)
def plain_sign():
    """The sign quantizers as plain eager ops, in this process and every Ray worker (which
    inherit the environment): each fresh worker would otherwise compile the fused kernels
    for 15-30 s. The results are the same bits (``tests/test_quant.py``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BINSENSE_FUSED_STE", "0")
        yield


@pytest.fixture(scope="module")
def cluster(tiny_data, plain_sign):
    """One local Ray of 2 CPUs for the module (the executor joins it, leaves it up);
    started after ``tiny_data`` set the tensor cache, so that its workers inherit it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, tiny_data):
    """The study run by the local executor: the rows every Ray run must give."""
    path = write(tmp_path_factory.mktemp("local"), tiny_data)
    summary = run_study(path, progress=False, log=lambda s: None)
    assert summary.failed == 0
    return path, summary


def test_plan_has_the_teacher_edge_and_is_empty_when_done(local_reference, tmp_path, tiny_data):
    path = write(tmp_path, tiny_data)
    study = load_study(path)
    ids = [t.run_id for t in (*study.hidden, *study.trainings)]
    empty = StoreSnapshot({}, {}, {}, frozenset())
    plan = make_plan(study, empty)
    (teacher,) = study.hidden
    students = {t.run_id for t in study.trainings if t.teacher_id == teacher.run_id}
    assert len(students) == 2 and len(plan.trainings) == 5 and len(plan.evaluations) == 4
    order = [t.run_id for t in plan.trainings]
    assert all(order.index(teacher.run_id) < order.index(s) for s in students)
    assert {t.run_id for t in plan.trainings if t.after == (teacher.run_id,)} == students
    assert all(e.after == (e.run_id,) and len(e.items) == 3 for e in plan.evaluations)
    assert plan.skipped == 0
    done_study = load_study(local_reference[0])
    with ResultStore(done_study.store_path, readonly=True) as store:
        done = make_plan(done_study, StoreSnapshot.read(store, ids))
    assert done.empty and done.skipped == 4 * (1 + 3) + 1


def test_worker_lines_name_their_run(capsys):
    run_printer("0123abcd")("epoch 1/2  loss 0.5")
    assert capsys.readouterr().out == "[run 0123abcd] epoch 1/2  loss 0.5\n"


@pytest.mark.parametrize("mode", ["shared", "object-store"])
def test_ray_rows_equal_local_rows(cluster, local_reference, tmp_path, tiny_data, mode):
    """The study on Ray, its run folders written by the workers in the study folder
    (``shared``) or sent back through Ray's object store: rows, run rows and trained
    weights bit for bit those of the local executor."""
    ref_path, ref = local_reference
    path = write(tmp_path, tiny_data)
    path.write_text(path.read_text() + f'\n[executor]\ncheckpoints = "{mode}"\n')
    logged: list[str] = []
    summary = run_study(path, progress=False, log=logged.append, executor="ray")
    assert summary.failed == 0 and (summary.trained, summary.evaluated) == (5, 12)
    assert "on ray" in summary.line()
    said = "which every node sees" if mode == "shared" else "through Ray's object store"
    assert any("checkpoints" in line and said in line for line in logged)
    db, ref_db = summary.study.store_path, ref.study.store_path
    assert rows(db) == rows(ref_db)  # bitwise: same keys, accuracies, losses, engine
    assert {r[-1] for r in rows(db)} == {"binsense"}
    assert runs(db) == runs(ref_db)
    assert checkpoints(summary.study.out_dir) == checkpoints(ref.study.out_dir)
    assert len(checkpoints(summary.study.out_dir)) == 5


def test_a_half_store_continues_on_the_other_executor(
    cluster, local_reference, tmp_path, tiny_data
):
    """A store Ray filled halfway (a draw missing, a run untrained) is finished by the
    local executor, and a store the local executor filled halfway by Ray: the rows of
    an uninterrupted run."""
    path = write(tmp_path, tiny_data)
    first = run_study(path, progress=False, log=lambda s: None, executor="ray")
    study = first.study
    victim = study.trainings[-1].run_id
    with sqlite3.connect(study.store_path) as conn:  # as if killed before these were stored
        conn.execute("DELETE FROM results WHERE run_id = ? AND draw = 1", (victim,))
        conn.execute("UPDATE runs SET status = 'training' WHERE run_id = ?", (victim,))
    (study.run_dir(victim) / "checkpoint.pt").unlink()
    again = run_study(path, progress=False, log=lambda s: None)
    assert (again.trained, again.evaluated) == (1, 1)
    assert rows(study.store_path) == rows(local_reference[1].study.store_path)
    with sqlite3.connect(study.store_path) as conn:  # and a half local store on Ray
        conn.execute("DELETE FROM results WHERE run_id = ? AND draw = 0", (victim,))
    back = run_study(path, progress=False, log=lambda s: None, executor="ray")
    assert (back.trained, back.evaluated) == (0, 2)
    assert rows(study.store_path) == rows(local_reference[1].study.store_path)


def test_a_worker_killed_mid_training_is_retried_and_resumes(cluster, tmp_path, tiny_data):
    """The first epoch checkpoint of a 3-epoch training exists: its worker is killed by
    PID; Ray runs the task again, it resumes from that epoch, and the rows are those of
    an uninterrupted local run."""
    path = write(tmp_path / "ray", tiny_data, epochs=3)
    study = load_study(path)
    killed: list[int] = []

    def mid_training() -> bool:  # a run folder with 1 or 2 of its 3 epochs
        return any(
            0 < len(m.read_text().splitlines()) < 3
            for m in study.out_dir.glob("runs/*/metrics.jsonl")
        )

    def kill_first_trainer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if mid_training():
                for pid in ray_task_pids():
                    with contextlib.suppress(ProcessLookupError):  # (ended meanwhile)
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_first_trainer, daemon=True)
    watcher.start()
    summary = run_study(path, progress=False, log=lambda s: None, executor="ray")
    watcher.join()
    assert killed, "no worker was killed: the test did not test anything"
    assert summary.failed == 0
    local = run_study(write(tmp_path / "local", tiny_data, epochs=3), progress=False)
    assert rows(summary.study.store_path) == rows(local.study.store_path)
    assert runs(summary.study.store_path) == runs(local.study.store_path)


def _wait_for_orphans(timeout: float = 90) -> None:
    """Ray stops a dead driver's tasks within seconds, not at once: until then a task's
    training still holds its run folder (a rerun would report it busy, and retry it on
    the run after). Wait for them, as ``docs/scale-out.md`` tells users to."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ray_task_pids():
        time.sleep(0.2)


def _sigint_as_in_a_shell() -> None:
    """In the child before exec: SIGINT unblocked and at its default, as a shell gives
    it. A child inherits its parent thread's signal mask and ignored signals, and the
    test process may have SIGINT blocked (a library's threads; the full suite once did),
    which would make Ctrl-C a no-op for the driver under test."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _driver(path: Path) -> subprocess.Popen:
    """``binsense study run FILE --executor ray`` in a process of its own."""
    command = [sys.executable, "-m", "binsense", "study", "run", str(path), "--no-progress"]
    env = {**os.environ, "BINSENSE_THREADS": "1"}
    return subprocess.Popen(
        [*command, "--executor", "ray"], env=env, stderr=subprocess.PIPE,
        preexec_fn=_sigint_as_in_a_shell,
    )  # fmt: skip


def _wait_for_checkpoints(driver: subprocess.Popen, out: Path, count: int) -> None:
    """Wait until ``count`` run folders hold a checkpoint (the driver still running)."""
    deadline = time.monotonic() + 300
    while len(list(out.glob("runs/*/checkpoint.pt"))) < count:
        assert driver.poll() is None, "the driver finished before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_driver_stopped_by_ctrl_c_or_kill_9_resumes(local_reference, tmp_path, tiny_data):
    """Ctrl-C (SIGINT) once a training has its checkpoint: the driver cancels its tasks,
    exits 130 and keeps what is stored. ``kill -9`` of the next driver once another run
    has its checkpoint (a second driver meanwhile is refused). A rerun (on Ray) then
    completes with the rows of an uninterrupted run. Each signal comes while work is
    left: the evaluations of a run are submitted only after its training is recorded."""
    path = write(tmp_path, tiny_data)
    study = load_study(path)
    db = study.store_path
    driver = _driver(path)
    try:
        _wait_for_checkpoints(driver, study.out_dir, 1)
        t0 = time.monotonic()
        driver.send_signal(signal.SIGINT)
        code = driver.wait(timeout=60)
        err = driver.stderr.read().decode()
        assert code == 130, err[-3000:]
        assert time.monotonic() - t0 < 10  # at once, not when the running tasks end
        assert "interrupted" in err
    finally:
        driver.kill()
    first = rows(db) if db.is_file() else []
    assert len(first) < 12
    _wait_for_orphans()
    assert not ray_task_pids()  # the cancelled tasks are gone

    trained = len(list(study.out_dir.glob("runs/*/checkpoint.pt")))
    driver = _driver(path)
    try:
        _wait_for_checkpoints(driver, study.out_dir, trained + 1)
        with pytest.raises(BinsenseError, match="another"), study_lock(study.out_dir):
            pass  # the study lock is held: a second driver is refused
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    second = rows(db)
    assert set(first) <= set(second) and len(second) < 12
    _wait_for_orphans()
    assert main(["study", "run", str(path), "--no-progress", "--executor", "ray"]) == 0
    assert rows(db) == rows(local_reference[1].study.store_path)


def test_ray_missing_or_unreachable_is_one_line(tmp_path, tiny_data, monkeypatch, capsys):
    path = write(tmp_path, tiny_data)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main(["study", "run", str(path), "--executor", "ray"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "binsense[ray]" in err[0]
    assert not (tmp_path / "s" / "runs").exists()  # nothing ran


@pytest.mark.parametrize(
    ("device", "gpus", "asked"), [("cpu", None, 0), ("cuda", None, 1), ("cuda", 0.5, 0.5)]
)
def test_each_task_asks_its_resources(tmp_path, tiny_data, device, gpus, asked):
    """A training on a CUDA device asks one GPU (one grid point per GPU of a machine),
    unless ``[executor] gpus`` says otherwise; CPUs: the training's threads."""
    from binsense.study.ray_executor import RayExecutor
    from binsense.study.schema import ExecutorOptions

    path = write(tmp_path, tiny_data)
    path.write_text(path.read_text().replace("threads = 1", f'threads = 2\ndevice = "{device}"'))
    study = load_study(path)
    task = make_plan(study, StoreSnapshot({}, {}, {}, frozenset())).trainings[0]
    executor = RayExecutor(ExecutorOptions(kind="ray", gpus=gpus))
    asked_for: dict = {}

    class Remote:  # what ray.remote(fn) gives: .options(...).remote(...)
        def options(self, **kwargs):
            asked_for.update(kwargs)
            return self

        def remote(self, *args):
            return "ref"

    executor.remote = Remote()
    executor.submit(lambda *a, **k: None, task)
    assert asked_for["num_gpus"] == asked and asked_for["num_cpus"] == 2
    assert asked_for["max_retries"] == 3 and asked_for["retry_exceptions"] is False


def test_a_failing_training_on_ray_is_recorded_and_the_grid_goes_on(cluster, tmp_path, tiny_data):
    """A grid point that diverges fails on its worker as it does locally: recorded with
    its reason, its students failed with "its teacher failed", the rest of the grid run."""
    path = write(tmp_path, tiny_data)
    text = path.read_text().replace("seed = [0, 1]", "seed = [0]")
    text = text.replace("seed = 0 }, alpha", "seed = 0, lr = 1e30 }, alpha")
    path.write_text(text)
    summary = run_study(path, progress=False, log=lambda s: None, executor="ray")
    reasons = sorted(f.reason for f in summary.failures)
    assert len(reasons) == 2 and "its teacher" in reasons[0] and "became nan" in reasons[1]
    assert (summary.trained, summary.evaluated) == (1, 3)  # the plain seed-0 run
    with ResultStore(summary.study.store_path, readonly=True) as store:
        assert sorted(r["status"] for r in store.runs()) == ["failed", "failed", "trained"]
