"""The training loop: seeded, resumable, with atomic per-epoch checkpoints.

A run folder holds ``config.json`` (the config plus provenance: versions, data
fingerprints, device), ``metrics.jsonl`` (one line per epoch) and ``checkpoint.pt``
(model, optimizer and scheduler state after the last finished epoch, and the state of
its callbacks). The loop is :class:`Trainer`, in small parts with seams (:class:`Hooks`:
the loss, after-step hooks such as latent clipping, the input transform, callbacks).
The config's ``init``, ``distill`` and ``prune`` fields are callbacks
(:mod:`binsense.train.callbacks`), which own their state: the starting weights of a
fine-tuning, the distillation loss from the teacher's checkpoint, and the pruning
schedule after every step; a pruned model is
removed for real after the last epoch's training pass, so the final evaluation and
checkpoint are of the smaller model. Batch order and
augmentation of epoch *e* depend only on ``(seed, e)`` (see :class:`DeviceLoader`), and
the model is initialised from ``seed``, so a run interrupted at any point and resumed
from its last checkpoint ends with exactly the weights and metrics of an uninterrupted
run on the same machine.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import binsense
from binsense.data import Augment, DeviceLoader, ImageTensors, load_dataset
from binsense.encoders import InputEncoder
from binsense.errors import BinsenseError, DataMismatchError, SettingsMismatchError
from binsense.evaluate import evaluate
from binsense.io import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    folder_lock,
)
from binsense.layers import clip_latent_weights
from binsense.models import build_model
from binsense.resources import check_config_fits, resolve_device
from binsense.train.accel import (
    CompiledForward,
    autocast,
    cpu_name,
    has_conv2d,
    native_bf16,
    resolve_precision,
    to_channels_last,
)
from binsense.train.callbacks import Callback, LossHook, ThermometerDrift, config_callbacks
from binsense.train.checkpoint import (
    CHECKPOINT_FORMAT,
    callback_states,
    checkpoint_config,
    checkpoint_path,
    load_checkpoint,
    load_state_strict,
)
from binsense.train.config import TrainConfig

InputTransform = Callable[[Tensor], Tensor]


#: ``hook(model, step)``: runs after every optimizer step (``step`` counts from 1).
StepHook = Callable[[nn.Module, int], None]


def cross_entropy(label_smoothing: float = 0.0) -> LossHook:
    """The default loss hook: cross-entropy on the logits, optional label smoothing."""

    def loss(logits: Tensor, targets: Tensor, inputs: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return loss


def latent_clipping(model: nn.Module, step: int) -> None:
    """After-step hook: clamp the latent weights of every binary layer
    (:func:`~binsense.layers.clip_latent_weights`, BinaryNet's clipping)."""
    clip_latent_weights(model)


@dataclass
class Hooks:
    """The trainer's seams.

    - ``loss``: the objective (default: :func:`cross_entropy` with the config's label
      smoothing); a callback's :meth:`~binsense.train.callbacks.Callback.training_loss`
      (knowledge distillation) replaces it.
    - ``after_step``: run in order after each optimizer step (default:
      :func:`latent_clipping`), before the callbacks' ``on_step_end``.
    - ``input_transform``: applied to each training batch in [0, 1] before the model
      (noise-aware training composes its sensor noise in front of it).
    - ``callbacks``: :class:`~binsense.train.callbacks.Callback` objects, called after
      the config's own; their state is saved in every checkpoint and restored on resume.

    Hooks are code, not configuration: they are not part of the run's config hash, so a
    run resumed with other hooks is the caller's responsibility (a checkpoint holding the
    state of a callback the resumed run lacks is refused). The config's ``distill`` and
    ``prune`` fields *are* configuration: the trainer adds their callbacks itself
    (:func:`~binsense.train.callbacks.config_callbacks`) and never changes this object.
    """

    loss: LossHook | None = None
    after_step: list[StepHook] = field(default_factory=lambda: [latent_clipping])
    input_transform: InputTransform | None = None
    callbacks: list[Callback] = field(default_factory=list)


@dataclass
class TrainResult:
    """The trained model (eval mode), its config, per-epoch metrics and provenance.

    ``provenance`` is what the run folder's ``config.json`` records: config and its hash,
    data fingerprints (``data.train`` / ``data.test``), environment, start time.
    """

    model: nn.Module
    config: TrainConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    complete: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)

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
        "cpu": cpu_name(),
        "native_bf16": native_bf16(device),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The model's parameters, with the input encoder's (learned thermometer thresholds)
    in a group without weight decay: decay would pull thresholds towards code 0."""
    encoder = getattr(model, "encoder", None)
    skip = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in skip]}]
    if skip:
        groups.append({"params": list(encoder.parameters()), "weight_decay": 0.0})
    return groups


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam or SGD (Nesterov momentum) over ``params`` (a list of parameter groups).

    Fused (one kernel per step for every tensor, rather than a Python loop over them)
    where this torch has the kernel for the parameters' device — the CPU since torch 2.4,
    CUDA: on 2 cores the CNV's Adam step alone takes 0.56 ms fused against 3.6 ms looped
    (``benchmarks/bench_optim.py``); in a whole ~100 ms training step the difference was
    within the machine's noise. Elsewhere the looped implementation, silently: the two
    compute the same update (up to float rounding), so the choice is not part of the run
    id; a run is deterministic on one machine and torch version either way, and a resumed
    run keeps the implementation it started with (its saved parameter groups carry it).
    """
    groups = list(params)
    if config.optimizer == "adam":
        kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
        cls: type[torch.optim.Optimizer] = torch.optim.Adam
    else:
        kwargs = {"lr": config.lr, "momentum": config.momentum,
                  "weight_decay": config.weight_decay, "nesterov": config.momentum > 0}  # fmt: skip
        cls = torch.optim.SGD
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / torch
        return cls(groups, **kwargs)


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


class Trainer:
    """One training run, in small parts: :meth:`setup`, :meth:`restore`,
    :meth:`record_provenance`, then per epoch :meth:`train_epoch`, :meth:`evaluate_epoch`,
    :meth:`save`; :meth:`run` does them in order. See :func:`train` for the arguments."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        *,
        data_dir: str | Path | None = None,
        hooks: Hooks | None = None,
        progress: bool | None = None,
        log: Callable[[str], None] = tqdm.write,
        allow_large: bool | None = None,
        teacher: nn.Module | str | os.PathLike | None = None,
        init: str | os.PathLike | None = None,
    ) -> None:
        self.config = config
        self.allow_large = allow_large
        self.run_path = Path(run_dir) if run_dir is not None else None
        self.data_dir = data_dir
        self.hooks = hooks if hooks is not None else Hooks()
        self.loss = self.hooks.loss or cross_entropy(config.label_smoothing)
        self.after_step: list[StepHook] = list(self.hooks.after_step)
        self.callbacks: list[Callback] = [
            *config_callbacks(config, teacher=teacher, init=init, allow_large=allow_large),
            *self.hooks.callbacks,
        ]
        names = [cb.name for cb in self.callbacks if cb.name is not None]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise BinsenseError(
                f"two trainer callbacks are named {twice[0]!r}; a checkpoint keeps each "
                "callback's state under its name, so names must be unique."
            )
        self.progress = progress
        self.log = log
        self.metrics: list[dict[str, Any]] = []
        self.engine_notes: set[str] = set()  # why the engine could not evaluate, once each
        self.start_epoch = 0
        self.step = 0
        self.provenance: dict[str, Any] = {}
        self.forward: CompiledForward | nn.Module | None = None
        self.precision = "fp32"
        self.channels_last = False

    def setup(self) -> None:
        """Data, model (initialised from the seed), loaders, optimizer and schedule."""
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device, check_available=True)
        self.precision, why = resolve_precision(config.precision, self.device)
        if config.precision != "fp32":
            self.log(why)
        self.train_set, self.test_set = load_data(config, self.data_dir)
        check_config_fits(config, info=self.train_set.info, training=True, allow=self.allow_large)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, self.train_set.info, **config.model_options)
        encoder = getattr(self.model, "encoder", None)
        if isinstance(encoder, InputEncoder) and encoder.needs_fit:
            encoder.fit(self.train_set)  # e.g. quantile thresholds; saved in the checkpoint
        if ThermometerDrift.encoders(self):  # a learned thermometer: record its drift
            self.callbacks.append(ThermometerDrift())
        self.channels_last = config.channels_last and has_conv2d(self.model)
        self.place_model()
        augment = Augment(crop_padding=config.crop_padding, flip=config.flip)
        self.train_loader = DeviceLoader(
            self.train_set, config.batch_size, shuffle=True, augment=augment,
            device=self.device, seed=config.seed,
        )  # fmt: skip
        self.test_loader = DeviceLoader(self.test_set, 512, shuffle=False, device=self.device)
        self.optimizer = make_optimizer(config, parameter_groups(self.model))
        self.scheduler = make_scheduler(
            config, self.optimizer, config.epochs * len(self.train_loader)
        )

    def place_model(self) -> None:
        """The model on its device, NHWC where ``channels_last`` applies."""
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def make_forward(self) -> None:
        """The training step's forward: the model, or :class:`CompiledForward`."""
        self.forward = CompiledForward(self.model) if self.config.compile else self.model

    def begin_callbacks(self) -> None:
        """Epochs are left to train (called once the run is restored): each callback's
        ``on_train_begin`` (the config's ``distill`` loads its teacher, ``prune`` checks
        the model and makes its schedule), then the loss a callback gives, if any."""
        for cb in self.callbacks:
            cb.on_train_begin(self)
        losses = [(cb, loss) for cb in self.callbacks if (loss := cb.training_loss()) is not None]
        if len(losses) > 1:
            raise BinsenseError(
                f"two trainer callbacks give the training loss ({type(losses[0][0]).__name__}, "
                f"{type(losses[1][0]).__name__}); use one of them."
            )
        if losses:
            if self.hooks.loss is not None:
                raise BinsenseError(
                    f"the callback {type(losses[0][0]).__name__} and the hooks both give a "
                    "training loss; use one of them."
                )
            self.loss = losses[0][1]

    def replace_model(self, model: nn.Module) -> None:
        """Train ``model`` from here on, in place of ``self.model`` (a callback changed
        its shape, e.g. pruning's real removal): placed on the device, a new optimizer
        on its parameters (its moments start afresh), the learning-rate schedule
        continued where it was, the training step's forward remade."""
        self.model = model
        self.place_model()
        schedule = self.scheduler.state_dict()
        self.optimizer = make_optimizer(self.config, parameter_groups(self.model))
        self.scheduler = make_scheduler(
            self.config, self.optimizer, self.config.epochs * len(self.train_loader)
        )
        self.scheduler.load_state_dict(schedule)
        if self.forward is not None:
            self.make_forward()

    def restore(self, resume: bool) -> None:
        """Continue from the run folder's checkpoint (``resume``), or refuse to overwrite it."""
        if self.run_path is None:
            return
        ckpt_file = checkpoint_path(self.run_path)
        if not ckpt_file.exists():
            return
        if not resume:
            raise BinsenseError(
                f"{str(self.run_path)!r} already holds a checkpoint; resume it (--resume, or "
                "train(..., resume=True)), or choose another output folder."
            )
        check_resume_settings(
            self.run_path, self.config, self.device, self.train_set, self.test_set,
            precision=self.precision,
        )  # fmt: skip
        ckpt = load_checkpoint(ckpt_file)
        if checkpoint_config(ckpt, ckpt_file).config_hash() != self.config.config_hash():
            raise BinsenseError(
                f"cannot resume {str(self.run_path)!r}: it was trained with a different "
                "config; resume with the same options or use another output folder."
            )
        self.restore_callbacks(callback_states(ckpt))
        load_state_strict(self.model, ckpt["model"], str(ckpt_file), ckpt.get("format"))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_epoch, self.metrics = ckpt["epoch"], list(ckpt["metrics"])
        self.step = self.start_epoch * len(self.train_loader)
        self.log(f"resuming {self.run_path} after epoch {self.start_epoch}/{self.config.epochs}")

    def restore_callbacks(self, states: dict[str, dict[str, Any]]) -> None:
        """Hand each callback its state from the checkpoint (``load_state_dict``), then
        ``on_resume`` (before the model's weights load: a pruned run's shape). State that
        no callback of this training takes is refused: resuming without it would not
        continue the same training."""
        names = {cb.name for cb in self.callbacks}
        for name, state in states.items():
            if state and name not in names:
                raise BinsenseError(
                    f"cannot resume {str(self.run_path)!r}: its checkpoint holds the state of "
                    f"the trainer callback {name!r}, which this training does not have; "
                    "resume with the same callbacks, or use another output folder."
                )
        for cb in self.callbacks:
            if cb.name is not None and cb.name in states:
                cb.load_state_dict(states[cb.name])
            cb.on_resume(self)

    def record_provenance(self) -> None:
        """What produced this run: config, data fingerprints, environment (``config.json``)."""
        self.provenance = {
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "data": {"train": self.train_set.fingerprint, "test": self.test_set.fingerprint},
            "environment": {**environment_info(self.device), "precision": self.precision},
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        for cb in self.callbacks:  # e.g. distillation's teacher
            self.provenance.update(cb.provenance())
        if self.run_path is not None:
            atomic_write_json(self.run_path / "config.json", self.provenance)

    def input_transform(self) -> InputTransform | None:
        """The batch transform: noise-aware training's sensor noise, then the hook's."""
        config, transform = self.config, self.hooks.input_transform
        if config.train_noise is None:
            return transform
        # one augmentation call per batch, so the stream position after e epochs is known
        noise = config.train_noise.augment(config.seed)
        noise.load_state_dict(
            {"step": self.start_epoch * len(self.train_loader), "seed": config.seed}
        )
        return _compose(noise, transform)

    def forward_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and gradients of one batch, at the run's precision; returns loss, logits."""
        with autocast(self.device, self.precision):
            logits = self.forward(x)
            loss = self.loss(logits.float(), y, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, logits

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns the (detached) loss and logits."""
        if self.channels_last:
            x = to_channels_last(x)
        forward = self.forward
        if isinstance(forward, CompiledForward) and forward.pending:
            loss, logits = forward.first_step(lambda: self.forward_backward(x, y))
            if forward.compiled:
                self.log(f"compiled the training step: first step {forward.compile_s:.1f} s")
        else:
            loss, logits = self.forward_backward(x, y)
        self.optimizer.step()
        self.step += 1
        for hook in self.after_step:
            hook(self.model, self.step)
        for cb in self.callbacks:
            cb.on_step_end(self, self.step)
        self.scheduler.step()
        return loss.detach(), logits.detach()

    def train_epoch(self, epoch: int, transform: InputTransform | None) -> dict[str, Any]:
        """One pass over the training set; returns the epoch's training metrics."""
        model, loader, config = self.model, self.train_loader, self.config
        model.train()
        loader.set_epoch(epoch)
        total_loss = torch.zeros((), device=loader.device)
        correct = torch.zeros((), dtype=torch.long, device=loader.device)
        n = 0
        t0 = time.perf_counter()
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
            disable=None if self.progress is None else not self.progress, unit="batch",
        )  # fmt: skip
        for step, (x, y) in enumerate(bar):
            if transform is not None:
                x = transform(x)
            loss, logits = self.train_step(x, y)
            total_loss += loss * y.numel()
            correct += (logits.argmax(1) == y).sum()
            n += y.numel()
            if step % 20 == 0 or step == len(loader) - 1:
                mean_loss = total_loss.item() / n  # one device sync every 20 steps
                if not math.isfinite(mean_loss):
                    raise BinsenseError(
                        f"the training loss became {mean_loss} in epoch {epoch + 1} (step "
                        f"{step}); lower the learning rate (--lr). Finished epochs are kept "
                        "in the checkpoint."
                    )
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{mean_loss:.3f}", acc=f"{correct.item() / n:.1%}",
                    img_s=f"{n / max(elapsed, 1e-9):.0f}",
                )  # fmt: skip
        elapsed = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": total_loss.item() / n,
            "train_acc": correct.item() / n,
            "epoch_time_s": elapsed,
            "train_images_per_s": n / elapsed,
        }
        compile_s = getattr(self.forward, "compile_s", None)
        if compile_s is not None and epoch == self.start_epoch:  # the epoch that compiled
            row["compile_s"] = compile_s
        return row

    def evaluate_epoch(self, row: dict[str, Any]) -> None:
        """Test loss and accuracy into the epoch's metrics row: by the fp32, uncompiled
        model, or by its deployed program (``eval_engine = "binsense"``, where exact)."""
        t0 = time.perf_counter()
        program = self.deployed() if self.config.eval_engine == "binsense" else None
        result = evaluate(self.model if program is None else program, self.test_loader)
        row.update(
            test_loss=result.loss, test_acc=result.accuracy, eval_time_s=time.perf_counter() - t0,
            eval_engine="pytorch" if program is None else "binsense",
        )  # fmt: skip

    def deployed(self) -> Any:
        """The model's deployed program where it gives the model's logits exactly
        (:func:`binsense.deploy.exact_program` on the first test images), else ``None``
        (each reason said once)."""
        from binsense.deploy.program import EXACT_CHECK_IMAGES, exact_program

        if self.device.type != "cpu":
            why = f"the engine runs on the CPU, this training on {self.device}"
            program = None
        else:
            x = next(iter(self.test_loader))[0][:EXACT_CHECK_IMAGES]
            program, why = exact_program(self.model.eval(), x)
        if program is None and why not in self.engine_notes:
            self.engine_notes.add(why)
            self.log(f"test accuracy by PyTorch, not the binsense engine: {why}")
        return program

    def save(self, epoch: int) -> None:
        """Atomic checkpoint and metrics after a finished epoch."""
        if self.run_path is None:
            return
        atomic_torch_save(
            checkpoint_path(self.run_path),
            {
                "format": CHECKPOINT_FORMAT,
                "config": self.config.to_dict(),
                "epoch": epoch + 1,
                "complete": epoch + 1 == self.config.epochs,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "metrics": self.metrics,
                "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks if cb.name},
            },
            checksum=True,
        )
        atomic_write_text(
            self.run_path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics)
        )

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Set up, restore, train the remaining epochs, return the result.

        A run folder is locked while it is written (a second training into it is refused
        with one line), and temporary files a killed writer left there are removed first.
        """
        if self.run_path is None:
            return self._run(resume, stop_after)
        with folder_lock(self.run_path, "`binsense train`"):
            clean_stale_temps(self.run_path)
            return self._run(resume, stop_after)

    def _run(self, resume: bool, stop_after: int | None) -> TrainResult:
        self.setup()
        self.restore(resume)
        config = self.config
        last_epoch = config.epochs if stop_after is None else min(stop_after, config.epochs)
        if self.start_epoch < last_epoch:  # (a finished run needs no teacher)
            self.begin_callbacks()
        self.record_provenance()
        self.make_forward()
        transform = self.input_transform()
        for epoch in range(self.start_epoch, last_epoch):
            row = self.train_epoch(epoch, transform)
            if epoch + 1 == config.epochs:
                for cb in self.callbacks:  # e.g. pruning's real removal
                    cb.on_train_end(self)
                self.make_forward()
            self.evaluate_epoch(row)
            bad = nonfinite_state(self.model)
            if bad:  # e.g. lr = 1e30: the loss can stay finite while BN statistics overflow
                raise BinsenseError(
                    f"training diverged in epoch {epoch + 1}: {bad[0]} holds inf or NaN; lower "
                    "the learning rate (--lr). Finished epochs are kept in the checkpoint."
                )
            self.metrics.append(row)
            self.log(
                f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  "
                f"train {row['train_acc']:.2%}  test {row['test_acc']:.2%}  "
                f"{row['train_images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f} s"
            )
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch)
            self.save(epoch)
        self.model.eval()
        return TrainResult(
            model=self.model,
            config=config,
            metrics=self.metrics,
            run_dir=self.run_path,
            complete=len(self.metrics) == config.epochs,
            provenance=self.provenance,
        )


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    input_transform: InputTransform | None = None,
    hooks: Hooks | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = tqdm.write,
    allow_large: bool | None = None,
    teacher: nn.Module | str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
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
        input_transform: shorthand for ``hooks.input_transform``.
        hooks: loss and after-step hooks, callbacks (:class:`Hooks`; default:
            cross-entropy and latent clipping, no callbacks of your own).
        progress: show a progress bar (``None``: only on a terminal).
        allow_large: build a model even when its memory estimate exceeds what the
            machine has (:func:`binsense.resources.check_config_fits`; ``None``: the
            ``BINSENSE_ALLOW_LARGE`` environment variable decides).
        teacher: with ``config.distill``: the teacher, as a model or the path of its
            checkpoint (a run folder or its ``checkpoint.pt``); needed when
            ``distill.teacher`` describes the teacher's training (the study runner
            passes the checkpoint of that training), and used instead of
            ``distill.teacher_checkpoint`` when given. A checkpoint must be of a finished
            training and, with ``distill.teacher``, of exactly that config.
        init: with ``config.init``: the checkpoint (or run folder) of the training to
            start from; needed when ``init.training`` describes it (the study runner
            passes it), used instead of ``init.checkpoint`` when given; checked as a
            teacher is.

    With ``config.prune``, the returned model (once every epoch is trained) is the pruned
    one, with smaller tensors; its checkpoint reloads at that shape
    (:func:`binsense.train.load_model`).
    """
    hooks = hooks if hooks is not None else Hooks()
    if input_transform is not None:
        hooks = replace(hooks, input_transform=_compose(input_transform, hooks.input_transform))
    trainer = Trainer(
        config, run_dir, data_dir=data_dir, hooks=hooks, progress=progress, log=log,
        allow_large=allow_large, teacher=teacher, init=init,
    )  # fmt: skip
    return trainer.run(resume=resume, stop_after=stop_after)


def nonfinite_state(model: nn.Module) -> list[str]:
    """Names of parameters and batch-norm statistics that hold inf or NaN."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    bad += [
        n
        for n, b in model.named_buffers()
        if n.endswith(("running_mean", "running_var"))
        and b.is_floating_point()
        and not torch.isfinite(b).all()
    ]
    return bad


def _epochs_done(folder: Path) -> int | str:
    try:
        with (folder / "metrics.jsonl").open(encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return "some"


def check_resume_settings(
    folder: Path,
    config: TrainConfig,
    device: torch.device,
    train_set: ImageTensors,
    test_set: ImageTensors,
    *,
    precision: str = "fp32",
) -> None:
    """A partly trained run continues only with the settings it was started with.

    The thread count, the device and the precision ``auto`` chose change the trained
    weights without being part of the run's config hash, and the data must be the data
    it was trained on: each is compared with what the run folder's ``config.json``
    recorded; a difference is one line
    (:class:`~binsense.errors.SettingsMismatchError` / ``DataMismatchError``).
    """
    try:
        recorded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        environment, recorded_data = recorded["environment"], recorded["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record to check against (it is written again by the training)
    epochs = _epochs_done(folder)
    now = {
        "threads": config.threads or torch.get_num_threads(),
        "device": str(device),
        "precision": precision,
    }
    for key, value in now.items():
        was = environment.get(key, "fp32" if key == "precision" else None)
        if was is not None and str(was) != str(value):
            raise SettingsMismatchError(
                f"run {str(folder)!r} has {epochs} epoch(s) trained with {key} = {was!r} and "
                f"would continue with {key} = {value!r}; {key} changes the trained weights but "
                f"is not part of the run id. Set {key} = {json.dumps(was)} (in [train], or "
                f"--{key}) to resume it exactly, or delete the folder to train it again."
            )
    if not isinstance(recorded_data, dict):
        return
    for split, current in (("train", train_set), ("test", test_set)):
        was = recorded_data.get(split)
        if was and was != current.fingerprint:
            raise DataMismatchError(
                f"run {str(folder)!r} has {epochs} epoch(s) trained on {split} data with "
                f"fingerprint {was[:16]}…, but the {split} data now has "
                f"{current.fingerprint[:16]}…; a training never mixes data — restore the "
                "original data, or delete the folder to train it again."
            )


def _compose(first: InputTransform, then: InputTransform | None) -> InputTransform:
    return first if then is None else lambda x: then(first(x))
