"""The optimizer step alone: Adam looped (one tensor at a time), foreach, and fused.

    python benchmarks/bench_optim.py

The CNV's parameters (float first conv and head) with random gradients; each
implementation stepped 10 times per round, 5 rounds interleaved, median per step. Why
the trainer builds its optimizer fused (:func:`binsense.train.trainer.make_optimizer`).
"""

from __future__ import annotations

import platform
import time
from datetime import date

import torch

from binsense.data import dataset_info
from binsense.models import build_model
from binsense.train.accel import cpu_name

torch.set_num_threads(2)
model = build_model("cnv", dataset_info("cifar10"), head="float")
params = list(model.parameters())
for p in params:
    p.grad = torch.randn_like(p)
kinds = {"looped": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
opts = {k: torch.optim.Adam(params, lr=1e-3, **kw) for k, kw in kinds.items()}
times: dict[str, list[float]] = {k: [] for k in opts}
for _ in range(5):
    for k, o in opts.items():
        o.step()
        t = time.perf_counter()
        for _ in range(10):
            o.step()
        times[k].append((time.perf_counter() - t) / 10 * 1e3)
print(f"# {date.today()}, {cpu_name()}, {platform.machine()}, torch {torch.__version__}, 2 threads")
print(f"# cnv: {len(params)} tensors, {sum(p.numel() for p in params):,} parameters")
for k, v in times.items():
    print(f"Adam {k:8s} {sorted(v)[len(v) // 2]:6.2f} ms/step")
