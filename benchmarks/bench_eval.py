"""A whole test-set evaluation: the fp32 PyTorch model against its deployed program (the
packed engine), interleaved, on a trained checkpoint: what a study draw and a training
epoch's test evaluation cost with ``engine = "binsense"`` / ``eval_engine = "binsense"``.

    BINSENSE_DATA=../shared/data python benchmarks/bench_eval.py \\
        --checkpoint ~/binsense-work/recipes/cnv40-s0/checkpoint.pt

Prints one line per evaluator (median of ``--rounds`` rounds, batch 1000, ``--threads``
threads) and checks that both give the same accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from binsense.data import load_dataset
from binsense.data.loader import DeviceLoader
from binsense.deploy import exact_program
from binsense.evaluate import evaluate
from binsense.train import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a trained run's checkpoint.pt")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, config = load_model(args.checkpoint)
    model.eval()
    data = load_dataset(config.dataset, "test")
    loader = DeviceLoader(data, 1000, shuffle=False, device=torch.device("cpu"))
    t0 = time.perf_counter()
    program, why = exact_program(model, next(iter(loader))[0][:16])
    convert_s = time.perf_counter() - t0
    if program is None:
        raise SystemExit(f"the engine cannot evaluate this model: {why}")
    times: dict[str, list[float]] = {"pytorch fp32": [], "binsense engine": []}
    acc: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, m in (("pytorch fp32", model), ("binsense engine", program)):
            t = time.perf_counter()
            acc[name] = evaluate(m, loader).accuracy
            times[name].append(time.perf_counter() - t)
    n = len(data)
    print(f"{config.model} on {n} {config.dataset} test images, {args.threads} threads; "
          f"convert + check {convert_s:.2f} s")  # fmt: skip
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"  {name:<16} {s:6.2f} s  ({n / s:,.0f} img/s)  accuracy {acc[name]:.4f}")
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = medians["pytorch fp32"] / medians["binsense engine"]
    print(f"  engine vs PyTorch: {ratio:.1f}x")


if __name__ == "__main__":
    main()
