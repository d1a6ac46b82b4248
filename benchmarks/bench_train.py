"""Training throughput: the fast step vs the eager fp32 step, and BNNs vs their float twins.

    BINSENSE_DATA=../shared/data python benchmarks/bench_train.py
    python benchmarks/bench_train.py --models cnv vgg_small:0.5 --rounds 5

Each case is a real :class:`binsense.train.trainer.Trainer` (data set, model, Adam,
one-cycle schedule, latent clipping) stepping on one fixed batch of CIFAR-10 training
images. Two settings of the step are compared:

- ``eager``: what binsense did before the fast trainer — fp32, NCHW, eager, and the sign
  STEs as plain PyTorch ops (``BINSENSE_FUSED_STE=0``);
- ``fast``: ``precision = "auto"``, ``channels_last = true``, ``compile = true`` and the
  fused STEs (the recipes' step).

All cases are timed interleaved, round by round (one round: ``--steps`` steps of every
case), so that the machine's drift moves every case alike; each case's figure is the
median over rounds of its per-step time. The output records the date, CPU model, ISA
flags, torch version and threads: paste it into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date

import torch

from binsense.train import TrainConfig
from binsense.train.accel import _cpu_flags, cpu_name, native_bf16
from binsense.train.trainer import Trainer

#: name[:width] -> model options; the float twin of a BNN is ``<name>_float``.
DEFAULT_MODELS = ["cnv", "vgg_small:0.5", "vgg_small:1.0", "compact_bnn", "resnet20"]
TWINS = {"cnv": "cnv_float", "vgg_small": "vgg_small_float", "compact_bnn": "compact_bnn_float"}
SETTINGS = {
    "eager": {"precision": "fp32", "channels_last": False, "compile": False},
    "fast": {"precision": "auto", "channels_last": True, "compile": True},
}
FUSED = {"eager": "0", "fast": "1"}


def cpu_facts() -> str:
    """CPU model and the ISA flags that decide the fast paths (bf16, AMX)."""
    flags = _cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{cpu_name()}; {' '.join(isa) or platform.machine()}"


class Case:
    def __init__(self, model: str, width: float | None, setting: str, batch: int) -> None:
        options = {} if width is None else {"width": width}
        self.label = f"{model}{'' if width is None else f' w{width:g}'} {setting}"
        self.setting = setting
        config = TrainConfig(
            dataset="cifar10", model=model, model_options=options, batch_size=batch,
            epochs=1, lr=1e-3, threads=2, **SETTINGS[setting],
        )  # fmt: skip
        self.trainer = Trainer(config, progress=False, log=lambda line: None)
        self.trainer.setup()
        self.trainer.make_forward()
        self.trainer.model.train()
        self.x, self.y = next(iter(self.trainer.train_loader))
        self.times: list[float] = []
        self.compile_s = 0.0

    def steps(self, n: int) -> float:
        os.environ["BINSENSE_FUSED_STE"] = FUSED[self.setting]
        t0 = time.perf_counter()
        for _ in range(n):
            self.trainer.train_step(self.x, self.y)
        return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="name[:width]")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="steps per case per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-twins", action="store_true", help="skip the float twins")
    args = p.parse_args()
    torch.set_num_threads(2)

    cases: list[Case] = []
    for spec in args.models:
        name, _, width = spec.partition(":")
        w = float(width) if width else None
        names = [name] + ([TWINS[name]] if name in TWINS and not args.no_twins else [])
        for model in names:
            for setting in SETTINGS:
                if setting == "eager" and model.endswith("_float"):
                    continue  # twins are compared at the fast setting only
                case = Case(model, w, setting, args.batch_size)
                t0 = time.perf_counter()
                case.steps(3)  # compile, warm caches
                case.compile_s = time.perf_counter() - t0
                cases.append(case)
                print(f"# ready: {case.label} (first 3 steps {case.compile_s:.1f} s)", flush=True)
    for _ in range(args.rounds):
        for case in cases:
            case.times.append(case.steps(args.steps))

    bf16 = native_bf16(torch.device("cpu"))
    print(f"# {date.today()}  {cpu_facts()}")
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
        f"{args.batch_size}, native bf16: {bf16 or 'none'}, "
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}"
    )
    print(f"# median of {args.rounds} interleaved rounds of {args.steps} steps")
    medians = {c.label: statistics.median(c.times) for c in cases}
    print(f"{'case':<28} {'ms/step':>9} {'img/s':>8}  min-max ms")
    for c in cases:
        lo, hi = min(c.times) * 1e3, max(c.times) * 1e3
        m = medians[c.label]
        print(f"{c.label:<28} {m * 1e3:9.1f} {args.batch_size / m:8.0f}  {lo:.0f}-{hi:.0f}")
    print("\nspeed-up fast vs eager (goal: >= 3x with AMX, >= 1.5x AVX-512 without):")
    for c in cases:
        if c.setting == "fast" and c.label.replace("fast", "eager") in medians:
            ratio = medians[c.label.replace("fast", "eager")] / medians[c.label]
            print(f"  {c.label.removesuffix(' fast'):<24} {ratio:5.2f}x")
    print("\nBNN / float twin step time, both fast (goal: <= 1.1):")
    for c in cases:
        base = c.label.split(" ")[0]
        if c.setting == "fast" and base in TWINS:
            twin = c.label.replace(base, TWINS[base], 1)
            if twin in medians:
                ratio = medians[c.label] / medians[twin]
                print(f"  {c.label.removesuffix(' fast'):<24} {ratio:5.2f}")


if __name__ == "__main__":
    main()
