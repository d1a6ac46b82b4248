"""A study's grid locally vs on Ray, on this machine: wall time and where it goes.

A grid of 8 small trainings (``mnist_bnn`` width 0.25 on 200 MNIST images per class, 2
epochs, 1 thread each) with a clean and a 2-draw sensor-noise evaluation each (engine
``binsense``, 1,000 test images), run by the local executor, by the local executor with
2 threads per training (other weights' last bits: not compared), and by a local Ray of
2 CPUs (2 workers of 1 thread), in alternating rounds, each in a fresh study folder.
Also timed: starting Ray (``ray.init``), one empty task's round trip on a warm worker
(the per-task overhead), and a fresh worker's first task that imports binsense (the
warm-up every worker pays once). The two stores' rows must be identical.

    BINSENSE_DATA=../shared/data python benchmarks/bench_scaleout.py [--rounds 3]

Time it on a quiet machine: nothing else CPU-heavy while it runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

STUDY = """\
[study]
name = "scaleout"

[train]
dataset = "mnist"
model = "mnist_bnn"
model_options = {{ width = 0.25 }}
epochs = 2
batch_size = 64
train_subset = 200
threads = {threads}

[train.grid]
seed = [0, 1, 2, 3, 4, 5, 6, 7]

[[condition]]
kind = "clean"

[[condition]]
kind = "sensor_noise"
type = "column_offset"
level = 0.1
draws = 2

[evaluation]
batch_size = 500
test_subset = 100
engine = "binsense"
{executor}
"""


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, condition_id, draw, accuracy, loss, n FROM results "
            "ORDER BY run_id, condition_id, draw"
        ).fetchall()


def _imports() -> float:
    """A fresh worker's first task: import binsense's study units (torch included)."""
    t0 = time.perf_counter()
    import binsense.study.execute  # noqa: F401

    return time.perf_counter() - t0


def _noop() -> None:
    return None


def machine() -> str:
    from binsense.train.accel import _cpu_flags, cpu_name

    flags = _cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_name()}, {os.cpu_count()} vCPU; {' '.join(isa) or platform.machine()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="local/Ray pairs (3)")
    args = parser.parse_args()
    os.environ.setdefault("BINSENSE_THREADS", "1")
    import ray
    import torch

    from binsense.study import run_study

    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray_start = time.perf_counter() - t0
    imports = ray.get([ray.remote(_imports).remote() for _ in range(2)])  # 2 fresh workers
    noop = ray.remote(_noop)
    ray.get(noop.remote())
    trips = []
    for _ in range(20):
        t = time.perf_counter()
        ray.get(noop.remote())
        trips.append(time.perf_counter() - t)
    arms = {"local": ("local", 1), "local, 2 threads": ("local", 2), "ray": ("ray", 1)}
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    stores: dict[str, Path] = {}
    quiet = lambda s: None  # noqa: E731
    for r in range(args.rounds):
        for i, (arm, (kind, threads)) in enumerate(arms.items()):
            folder = work / f"{i}-{r}"
            folder.mkdir()
            path = folder / "s.toml"
            executor = f'[executor]\nkind = "{kind}"\ncpus = 1'
            path.write_text(STUDY.format(executor=executor, threads=threads))
            t = time.perf_counter()
            summary = run_study(path, progress=False, log=quiet)
            walls[arm].append(time.perf_counter() - t)
            assert summary.failed == 0 and summary.trained == 8, summary.line()
            stores[arm] = summary.study.store_path
            print(f"round {r + 1} {arm}: {walls[arm][-1]:.1f} s", flush=True)
    same = _rows(stores["local"]) == _rows(stores["ray"])
    local, on_ray = statistics.median(walls["local"]), statistics.median(walls["ray"])
    local2 = statistics.median(walls["local, 2 threads"])
    today = datetime.date.today().isoformat()
    print()
    print(f"{machine()}; torch {torch.__version__}, ray {ray.__version__}, {today}")
    print(f"`python benchmarks/bench_scaleout.py --rounds {args.rounds}`")
    print()
    print("| what | seconds |")
    print("|---|---:|")
    print(f"| grid of 8 trainings + 24 draws, local executor (median of {args.rounds}) | "
          f"{local:.1f} |")  # fmt: skip
    print(f"| the same, local executor with 2 threads per training | {local2:.1f} |")
    print(f"| the same on Ray, 2 workers x 1 thread (median of {args.rounds}) | {on_ray:.1f} |")
    print(f"| Ray vs local 1 thread / vs local 2 threads | {local / on_ray:.2f}x / "
          f"{local2 / on_ray:.2f}x |")  # fmt: skip
    print(f"| starting a local Ray (`ray.init`, once per study) | {ray_start:.1f} |")
    print(f"| a fresh worker's first task: import binsense + torch (once per worker) | "
          f"{max(imports):.1f} |")  # fmt: skip
    print(f"| one empty task's round trip on a warm worker (median of 20) | "
          f"{statistics.median(trips) * 1000:.1f} ms |")  # fmt: skip
    print(f"\nrows identical local vs Ray: {same}")
    ray.shutdown()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
