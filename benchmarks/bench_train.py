"""Training throughput of a BNN vs its float twin (same layout, batch and machine).

    python benchmarks/bench_train.py --model vgg_small --width 0.25 --batch-size 128

Times full training steps (forward, backward, Adam step, latent-weight clipping) on
random [0, 1] images after a warm-up, interleaving the two models so that machine load
affects both alike, and prints images/s and the binary/float step-time ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch
import torch.nn.functional as F

from binsense.data import dataset_info
from binsense.layers import clip_latent_weights
from binsense.models import build_model, model_spec


def step_time(model, opt, x, y) -> float:
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    clip_latent_weights(model)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    info = dataset_info(model_spec(args.model).default_dataset)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, info.in_channels, *info.image_size, device=device)
    y = torch.randint(0, info.num_classes, (args.batch_size,), device=device)
    runs = {}
    for name in (args.model, f"{args.model}_float"):
        model = build_model(name, info, width=args.width).to(device).train()
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), [])
    for i in range(args.warmup + args.steps):
        for model, opt, times in runs.values():
            t = step_time(model, opt, x, y)
            if i >= args.warmup:
                times.append(t)

    machine = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(f"# {date.today()}  {machine}  torch {torch.__version__}  threads {threads}  {device}")
    print(f"# {args.model} width {args.width}, batch {args.batch_size}, median of {args.steps}")
    medians = {}
    for name, (_, _, times) in runs.items():
        medians[name] = statistics.median(times)
        ms, ips = medians[name] * 1e3, args.batch_size / medians[name]
        print(f"{name:<20} {ms:8.1f} ms/step {ips:8.0f} img/s")
    ratio = medians[args.model] / medians[f"{args.model}_float"]
    print(f"binary/float step-time ratio: {ratio:.3f} (target <= 1.25)")


if __name__ == "__main__":
    main()
