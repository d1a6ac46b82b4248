"""Cost of sensor noise vs a model forward pass, on one batch of CIFAR-size images.

    python benchmarks/bench_noise.py --batch-size 256 --width 0.25

Times, on random [0, 1] images ``[B, 3, 32, 32]``: generating a sensor instance's fixed
pattern (a new seed every repetition) and applying it with clip and 8-bit ADC, for several
noise types; five instances at once (``apply_instances``); noise-aware training
augmentation per batch and per sample; and the eval-mode forward pass of
``vgg_small`` (width 0.25) on the same batch. Repetitions are interleaved so that machine
load affects all alike; medians and minima are printed with the noise/forward ratio
(on a shared machine the minimum is the more stable number).

Recorded 2026-11-23, 2-core x86_64 CPU shared with other jobs (load ~3), torch 2.14.1,
batch 256: forward 1082 ms median / 899 ms min; one sensor instance (generate + apply +
clip + ADC) 0.5-0.8 ms min (40 ms median, scheduler-bound), five instances 8.2 ms min,
augmentation per batch 1.2 ms / per sample 2.2 ms min (56 ms median): noise costs
< 0.1 % of the forward pass by minima, <= 5 % by medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch

from binsense.data import dataset_info
from binsense.models import build_model
from binsense.noise import NoiseAugment, SensorNoise


def timed(fn: Callable[[int], object], i: int, device: torch.device) -> float:
    t0 = time.perf_counter()
    fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    info = dataset_info("cifar10")
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, info.in_channels, *info.image_size, device=device)
    model = build_model(args.model, info, width=args.width).to(device).eval()
    combined = SensorNoise.combined(
        [
            ("column_offset", 0.03),
            ("row_offset", 0.02),
            ("pixel_offset", 0.01),
            ("pixel_gain", 0.01),
        ]
    )
    column, pixel = SensorNoise("column_offset", 0.05), SensorNoise("pixel_gain", 0.05)
    mix = [("column_offset", (0.05, 0.10), 1.0), ("pixel_offset", (0.05, 0.10), 1.0)]
    aug_batch = NoiseAugment(mix, per="batch", seed=0)
    aug_sample = NoiseAugment(mix, per="sample", seed=0)

    def forward(_: int) -> None:
        with torch.no_grad():
            model(x)

    cases: dict[str, Callable[[int], object]] = {
        "forward (eval)": forward,
        "column_offset": lambda i: column.apply(x, seed=i),
        "pixel_gain": lambda i: pixel.apply(x, seed=i),
        "combined (4 parts)": lambda i: combined.apply(x, seed=i),
        "5 instances (comb.)": lambda i: combined.apply_instances(x, range(5 * i, 5 * i + 5)),
        "augment per batch": lambda i: aug_batch(x),
        "augment per sample": lambda i: aug_sample(x),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(args.warmup + args.reps):
        for name, fn in cases.items():
            t = timed(fn, i, device)
            if i >= args.warmup:
                times[name].append(t)

    machine = platform.processor() or platform.machine()
    print(f"# {date.today()}  {machine}  torch {torch.__version__}  "
          f"threads {torch.get_num_threads()}  device {device}")  # fmt: skip
    print(f"# batch {args.batch_size}x{info.in_channels}x32x32, {args.model} width {args.width}, "
          f"median of {args.reps}")  # fmt: skip
    fwd_med, fwd_min = statistics.median(times["forward (eval)"]), min(times["forward (eval)"])
    print(f"{'':<22} {'median':>9} {'min':>9}   {'median/forward':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<22} {med * 1e3:6.2f} ms {min(ts) * 1e3:6.2f} ms   {med / fwd_med:14.4f}")
    print(f"(min/min ratio for 'combined': {min(times['combined (4 parts)']) / fwd_min:.4f})")


if __name__ == "__main__":
    main()
