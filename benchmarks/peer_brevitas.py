"""Training step of Brevitas 0.13.4's CNV 1W1A vs binsense's CNV, timed interleaved.

Runs in Brevitas' own venv (brevitas and its ``brevitas_examples`` installed there; the
venv also sees this repository's torch and binsense, so both run in one process and are
timed round by round):

    python3 -m venv ~/binsense-work/peer-brevitas
    echo $PWD/.venv/lib/python3.11/site-packages \\
        > ~/binsense-work/peer-brevitas/lib/python3.11/site-packages/binsense-torch.pth
    ~/binsense-work/peer-brevitas/bin/pip install brevitas==0.13.4
    BINSENSE_DATA=../shared/data ~/binsense-work/peer-brevitas/bin/python \\
        benchmarks/peer_brevitas.py

Brevitas' step is its BNN-PYNQ trainer's (``brevitas_examples/bnn_pynq/trainer.py``):
forward, cross-entropy, backward, Adam, ``clip_weights(-1, 1)``, fp32 eager, as its
users run it; also under bf16 autocast + channels-last, to show what the settings alone
give it. binsense's is the recipes' step (``Trainer.train_step``, ``precision = "auto"``,
channels-last, compiled) on ``cnv`` (binary head, as Brevitas' CNV; float first conv,
where Brevitas' first conv has 1-bit weights on 8-bit input). Same batch of real
CIFAR-10 images for all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import brevitas
import torch
import torch.nn.functional as F
from bench_train import cpu_facts
from brevitas_examples.bnn_pynq.models import model_with_cfg

from binsense.train import TrainConfig
from binsense.train.trainer import Trainer


def brevitas_step(bf16: bool):
    model, _ = model_with_cfg("cnv_1w1a", pretrained=False)
    model.train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clip_weights(-1, 1)

    return step


def binsense_step():
    config = TrainConfig(
        dataset="cifar10", model="cnv", batch_size=128, epochs=1, lr=1e-3, threads=2,
        precision="auto", channels_last=True, compile=True,
    )  # fmt: skip
    trainer = Trainer(config, progress=False, log=lambda line: None)
    trainer.setup()
    trainer.make_forward()
    trainer.model.train()
    x, y = next(iter(trainer.train_loader))
    return (lambda _x, _y: trainer.train_step(_x, _y)), x, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(2)
    ours, x, y = binsense_step()
    cases = {
        "brevitas cnv_1w1a fp32 eager": brevitas_step(False),
        "brevitas cnv_1w1a bf16 channels-last": brevitas_step(True),
        "binsense cnv fast": ours,
    }
    for step in cases.values():
        for _ in range(3):
            step(x, y)  # warm-up, compilation
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, step in cases.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(f"# {cpu_facts()}; torch {torch.__version__}; brevitas {brevitas.__version__}")
    print(f"# batch {x.shape[0]}, 2 threads, median of {args.rounds} interleaved rounds")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, m in med.items():
        print(f"{name:<40} {m * 1e3:8.1f} ms/step {x.shape[0] / m:7.0f} img/s")
    ours_m = med["binsense cnv fast"]
    for name in list(med)[:2]:
        print(f"binsense fast vs {name}: {med[name] / ours_m:.2f}x (goal >= 3x vs fp32 eager)")


if __name__ == "__main__":
    main()
