"""Throughput of one augmented CIFAR-10 training epoch: DeviceLoader vs torchvision DataLoader.

Three ways to serve the 50,000 training images with random crop (padding 4) + horizontal
flip as float32 batches on the target device:

1. ``binsense DeviceLoader``: uint8 tensors on the device, batched augmentation;
2. ``torchvision ImageFolder``: the usual ``DataLoader(ImageFolder(...))`` with
   ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor`` per sample,
   decoding JPEGs in ``--workers`` worker processes;
3. ``DataLoader, decoded tensors``: the same per-sample transforms (``transforms.v2``) on
   the already decoded uint8 tensors, so no decoding cost -- the fair comparison.

Each epoch is timed from the creation of the iterator (worker start-up included) to the
last batch on the device. Usage::

    python benchmarks/bench_loader.py --data-dir ../shared/data [--limit 10000] [--threads 1]

On a CPU shared with other busy processes, torch's intra-op threads can slow each other
down badly; ``--threads 1`` gives the main process one thread (DataLoader workers always
run with one).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
from torchvision.transforms import v2

from binsense.data import Augment, DeviceLoader, load_dataset, resolve_data_dir
from binsense.data.tensors import fingerprint_tensors


class _PerSampleTensors(Dataset):
    """Decoded uint8 images with a per-sample transform, as a map-style data set."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def _time_epoch(batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> float:
    """Images per second of one pass over ``batches``, each moved to ``device``."""
    start = time.perf_counter()
    count = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        count += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, torch threads: {torch.get_num_threads()}"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding cifar10-jpeg/")
    parser.add_argument("--limit", type=int, default=None, help="use only N training images")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of the main process"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data_dir = resolve_data_dir(args.data_dir)

    start = time.perf_counter()
    data = load_dataset("cifar10", "train", data_dir=data_dir)
    load_s = time.perf_counter() - start
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    indices = indices[: args.limit].sort().values
    images, labels = data.images[indices], data.labels[indices]
    data = dataclasses.replace(
        data, images=images, labels=labels, fingerprint=fingerprint_tensors(images, labels)
    )
    loader_args = dict(
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )

    rows: list[tuple[str, str]] = []
    loader = DeviceLoader(data, args.batch_size, augment=Augment(4, flip=True), device=device)
    rows.append(
        ("binsense DeviceLoader (batched crop+flip)", f"{_time_epoch(loader, device):,.0f}")
    )

    folder = Path(data_dir) / "cifar10-jpeg" / "train"
    if folder.is_dir():
        tv = transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
             transforms.ToTensor()]
        )  # fmt: skip
        subset = Subset(datasets.ImageFolder(str(folder), transform=tv), indices.tolist())
        rate = _time_epoch(DataLoader(subset, **loader_args), device)
        rows.append(
            (f"torchvision ImageFolder, {args.workers} workers (JPEG decode)", f"{rate:,.0f}")
        )
    else:
        rows.append(("torchvision ImageFolder", f"n/a ({folder} not found)"))

    per_sample = v2.Compose(
        [
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    tensors = _PerSampleTensors(data.images, data.labels, per_sample)
    rate = _time_epoch(DataLoader(tensors, **loader_args), device)
    rows.append(
        (f"DataLoader, decoded tensors, v2 per sample, {args.workers} workers", f"{rate:,.0f}")
    )

    print(f"machine: {_machine(device)}; device: {device}")
    print(
        f"torch {torch.__version__}; date {datetime.datetime.now().isoformat(timespec='seconds')}"
    )
    print(f"CIFAR-10 train, {len(data):,} images, batch {args.batch_size}, crop(4) + flip")
    print(f"load_dataset('cifar10', 'train'): {load_s:.2f} s")
    width = max(len(name) for name, _ in rows)
    print(f"| {'loader':<{width}} | images/s |")
    print(f"|{'-' * (width + 2)}|----------|")
    for name, rate in rows:
        print(f"| {name:<{width}} | {rate:>8} |")


if __name__ == "__main__":
    main()
