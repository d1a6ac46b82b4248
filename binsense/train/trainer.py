"""The training loop: seeded, resumable, with atomic per-epoch checkpoints.

A run folder holds ``config.json`` (the config plus provenance: versions, data
fingerprints, device), ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt``
(model, optimizer and scheduler state after the last finished epoch). Batch order and
augmentation of epoch *e* depend only on ``(seed, e)`` (see :class:`DeviceLoader`), and
the model is initialised from ``seed``, so a run interrupted at any point and resumed
from its last checkpoint ends with exactly the weights and metrics of an uninterrupted
run on the same machine.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import binsense
from binsense.data import Augment, DeviceLoader, ImageTensors, load_dataset
from binsense.errors import BinsenseError
from binsense.evaluate import evaluate
from binsense.io import atomic_torch_save, atomic_write_json, atomic_write_text
from binsense.layers import clip_latent_weights
from binsense.models import build_model
from binsense.train.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_config,
    checkpoint_path,
    load_checkpoint,
    load_state_strict,
)
from binsense.train.config import TrainConfig

InputTransform = Callable[[Tensor], Tensor]


@dataclass
class TrainResult:
    """The trained model (eval mode), its config and per-epoch metrics."""

    model: nn.Module
    config: TrainConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    complete: bool = True

    @property
    def test_accuracy(self) -> float:
        return self.metrics[-1]["test_acc"] if self.metrics else float("nan")


def environment_info(device: torch.device) -> dict[str, Any]:
    """Versions and machine facts recorded with every run."""
    info = {
        "binsense": binsense.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: constant, cosine to zero, or one-cycle."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "onecycle" and total_steps >= 3:  # (shorter: constant)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=max(config.warmup, 2.0 / total_steps),  # >= 1 step in each phase
            cycle_momentum=config.optimizer == "sgd",
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def load_data(
    config: TrainConfig, data_dir: str | Path | None
) -> tuple[ImageTensors, ImageTensors]:
    """Train and test splits of ``config.dataset``, subsetted as configured."""
    train_set = load_dataset(config.dataset, "train", data_dir=data_dir)
    test_set = load_dataset(config.dataset, "test", data_dir=data_dir)
    if config.train_subset:
        train_set = train_set.subset(config.train_subset, seed=config.seed)
    if config.test_subset:
        test_set = test_set.subset(config.test_subset, seed=config.seed)
    return train_set, test_set


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    input_transform: InputTransform | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> TrainResult:
    """Train ``config`` and return the model; checkpoint into ``run_dir`` each epoch.

    Args:
        config: what to train.
        run_dir: run folder (``None`` keeps everything in memory).
        data_dir: data-set folder (default: ``BINSENSE_DATA`` or the user cache).
        resume: continue from ``run_dir``'s checkpoint; without it an existing checkpoint
            is an error, so finished work is never overwritten.
        stop_after: stop once this many epochs are done (the schedule still spans
            ``config.epochs``; resume later to finish).
        input_transform: applied to each training batch in [0, 1] before the model
            (noise-aware training).
        progress: show a progress bar (``None``: only on a terminal).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    train_set, test_set = load_data(config, data_dir)
    torch.manual_seed(config.seed)
    model = build_model(config.model, train_set.info, **config.model_options).to(device)
    augment = Augment(crop_padding=config.crop_padding, flip=config.flip)
    train_loader = DeviceLoader(
        train_set,
        config.batch_size,
        shuffle=True,
        augment=augment,
        device=device,
        seed=config.seed,
    )
    test_loader = DeviceLoader(test_set, 512, shuffle=False, device=device)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer, config.epochs * len(train_loader))

    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        ckpt_file = checkpoint_path(run_path)
        if ckpt_file.exists():
            if not resume:
                raise BinsenseError(
                    f"{str(run_path)!r} already holds a checkpoint; pass --resume to continue "
                    "it, or choose another output folder."
                )
            ckpt = load_checkpoint(ckpt_file)
            if checkpoint_config(ckpt, ckpt_file).config_hash() != config.config_hash():
                raise BinsenseError(
                    f"cannot resume {str(run_path)!r}: it was trained with a different config; "
                    "resume with the same options or use another output folder."
                )
            load_state_strict(model, ckpt["model"], str(ckpt_file))
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, metrics = ckpt["epoch"], list(ckpt["metrics"])
            log(f"resuming {run_path} after epoch {start_epoch}/{config.epochs}")
        atomic_write_json(
            run_path / "config.json",
            {
                "config": config.to_dict(),
                "config_hash": config.config_hash(),
                "data": {"train": train_set.fingerprint, "test": test_set.fingerprint},
                "environment": environment_info(device),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )

    if config.train_noise is not None:
        # one augmentation call per batch, so the stream position after e epochs is known
        noise = config.train_noise.augment(config.seed)
        noise.load_state_dict({"step": start_epoch * len(train_loader), "seed": config.seed})
        input_transform = _compose(noise, input_transform)

    last_epoch = config.epochs if stop_after is None else min(stop_after, config.epochs)
    for epoch in range(start_epoch, last_epoch):
        row = _train_epoch(
            model, train_loader, optimizer, scheduler, config, epoch, input_transform, progress
        )
        result = evaluate(model, test_loader)
        row.update(test_loss=result.loss, test_acc=result.accuracy)
        metrics.append(row)
        log(
            f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  "
            f"train {row['train_acc']:.2%}  test {row['test_acc']:.2%}  "
            f"{row['train_images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f} s"
        )
        if run_path is not None:
            atomic_torch_save(
                checkpoint_path(run_path),
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": config.to_dict(),
                    "epoch": epoch + 1,
                    "complete": epoch + 1 == config.epochs,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "metrics": metrics,
                },
            )
            atomic_write_text(
                run_path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics)
            )
    model.eval()
    return TrainResult(
        model=model,
        config=config,
        metrics=metrics,
        run_dir=run_path,
        complete=len(metrics) == config.epochs,
    )


def _compose(first: InputTransform, then: InputTransform | None) -> InputTransform:
    return first if then is None else lambda x: then(first(x))


def _train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    epoch: int,
    input_transform: InputTransform | None,
    progress: bool | None,
) -> dict[str, Any]:
    model.train()
    loader.set_epoch(epoch)
    total_loss = torch.zeros((), device=loader.device)
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    n = 0
    t0 = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        leave=False,
        disable=None if progress is None else not progress,
        unit="batch",
    )
    for step, (x, y) in enumerate(bar):
        if input_transform is not None:
            x = input_transform(x)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clip_latent_weights(model)
        scheduler.step()
        total_loss += loss.detach() * y.numel()
        correct += (logits.argmax(1) == y).sum()
        n += y.numel()
        if step % 20 == 0 or step == len(loader) - 1:
            mean_loss = total_loss.item() / n  # one device sync every 20 steps
            if not math.isfinite(mean_loss):
                raise BinsenseError(
                    f"the training loss became {mean_loss} in epoch {epoch + 1} (step {step}); "
                    "lower the learning rate (--lr). Finished epochs are kept in the checkpoint."
                )
            elapsed = time.perf_counter() - t0
            bar.set_postfix(
                loss=f"{mean_loss:.3f}",
                acc=f"{correct.item() / n:.1%}",
                img_s=f"{n / max(elapsed, 1e-9):.0f}",
            )
    elapsed = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "lr": scheduler.get_last_lr()[0],
        "train_loss": total_loss.item() / n,
        "train_acc": correct.item() / n,
        "epoch_time_s": elapsed,
        "train_images_per_s": n / elapsed,
    }
