"""Trainer callbacks: pieces of a training that own their state.

A :class:`Callback` is told what the :class:`~binsense.train.trainer.Trainer` does
(resume, start, every optimizer step, the end of the training pass, the end of each
epoch) and may give the training loss. What it must carry over an interruption it
returns from :meth:`~Callback.state_dict`: the trainer saves that in every checkpoint,
under ``checkpoint["callbacks"][callback.name]``, and on resume hands it back to
:meth:`~Callback.load_state_dict` before :meth:`~Callback.on_resume`. The trainer itself
knows nothing of what a callback does.

The config's compression fields are callbacks (:func:`config_callbacks`):
``distill`` is :class:`DistillCallback`, ``prune`` is :class:`PruneCallback`. Callbacks
of your own go in ``Hooks(callbacks=[...])`` (after the config's, in that order).

Checkpoints written before callbacks kept the pruning state at the top level
(``prune_plan``, ``prune_masks``); :func:`binsense.train.checkpoint.callback_states`
reads them as the ``prune`` callback's state, so such runs resume exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from binsense.compress.distill import Distillation
from binsense.compress.prune import (
    PruningSchedule,
    apply_masks,
    find_sites,
    masks_from_plan,
    masks_from_state,
    masks_of,
    masks_to_state,
    remove_pruned,
)
from binsense.errors import BinsenseError
from binsense.train.checkpoint import (
    checkpoint_config,
    checkpoint_path,
    load_checkpoint,
    load_model,
    load_state_strict,
)
from binsense.train.config import TrainConfig, TrainPrune, check_teacher_data

#: ``loss(logits, targets, inputs) -> scalar``: the training objective of one batch.
LossHook = Callable[[Tensor, Tensor, Tensor], Tensor]


class TrainerView(Protocol):
    """What a callback sees of the trainer (:class:`binsense.train.trainer.Trainer`), as a
    protocol, so this module does not import the loop that imports it."""

    config: TrainConfig
    model: nn.Module
    hooks: Any  # binsense.train.trainer.Hooks: its ``loss`` is read
    run_path: Path | None
    train_loader: Any
    start_epoch: int
    metrics: list[dict[str, Any]]

    def log(self, message: str) -> None: ...

    def replace_model(self, model: nn.Module) -> None: ...


class Callback:
    """Base of a trainer callback: every hook does nothing, the state is empty.

    Hooks, in the order the trainer calls them (each gets the trainer, whose ``model``,
    ``config``, ``optimizer``, ``step``, ``log``... it may read; to swap the model for
    another, call :meth:`~binsense.train.trainer.Trainer.replace_model`):

    - :meth:`on_resume` — when resuming from a checkpoint, after
      :meth:`load_state_dict` and before the model's weights are loaded: bring the model
      to the checkpoint's shape (or attach what the state dict does not hold);
    - :meth:`on_train_begin` — once the run is restored, when epochs are left to train
      (not for a finished run): load what the training needs, check the model;
    - :meth:`training_loss` — asked right after :meth:`on_train_begin`: a loss hook
      ``loss(logits, targets, inputs)`` that replaces the default cross-entropy, or
      ``None`` (at most one callback, and then no ``Hooks.loss``, may give one);
    - :meth:`on_step_end` — after every optimizer step (after ``Hooks.after_step``,
      before the learning-rate schedule steps); ``step`` counts from 1 over the run;
    - :meth:`on_train_end` — after the training pass of the run's last epoch (epoch
      ``config.epochs``), before that epoch's evaluation and checkpoint, which are
      therefore of the model it leaves;
    - :meth:`on_epoch_end` — after each epoch's evaluation, right before its
      checkpoint is written: the state it leaves is what :meth:`state_dict` saves.

    ``name`` is the key of the callback's state in the checkpoint (unique among a
    training's callbacks); ``None`` for a callback without state. A checkpoint whose
    callback state no callback of the resumed training takes is refused.
    """

    name: ClassVar[str | None] = None

    def on_resume(self, trainer: TrainerView) -> None:
        """Resuming: the state is loaded, the model's weights are not yet."""

    def on_train_begin(self, trainer: TrainerView) -> None:
        """Epochs are left to train: set up."""

    def training_loss(self) -> LossHook | None:
        """The loss hook this callback trains with, or ``None`` (the default loss)."""
        return None

    def on_step_end(self, trainer: TrainerView, step: int) -> None:
        """After optimizer step ``step`` (from 1)."""

    def on_train_end(self, trainer: TrainerView) -> None:
        """After the last epoch's training pass, before its evaluation and checkpoint."""

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        """After epoch ``epoch`` (from 0) is evaluated, before its checkpoint."""

    def provenance(self) -> dict[str, Any]:
        """Entries this callback adds to the run's provenance (``config.json``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this callback (plain values and tensors: the
        checkpoint is read with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned (on resume, before
        :meth:`on_resume`)."""


# ---------------------------------------------------------------------- distillation


def finished_checkpoint(
    path: Path, what: str, dataset: str, wanted: TrainConfig | None, hint: str
) -> tuple[dict[str, Any], TrainConfig]:
    """The checkpoint of a finished training that another training needs (``what``:
    ``"teacher"`` or ``"start"``), read and checked: it exists, its training finished, it
    was trained on ``dataset`` and, when ``wanted`` describes it, with exactly that
    config. Each problem is one :class:`~binsense.errors.BinsenseError` line (``hint``:
    the table that describes it, for the config mismatch). Returns the checkpoint and
    its config."""
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise BinsenseError(
            f"the {what} checkpoint {str(path)!r} does not exist; train the {what} first."
        )
    ckpt = load_checkpoint(path)
    trained = checkpoint_config(ckpt, path)
    if not ckpt.get("complete", False):
        raise BinsenseError(
            f"the {what} checkpoint {str(path)!r} holds {ckpt.get('epoch', 0)} of its "
            f"{trained.epochs} epochs; finish the {what}'s training first."
        )
    try:
        check_teacher_data(trained.dataset, dataset)
    except ValueError as e:
        raise BinsenseError(f"{what} checkpoint {str(path)!r}: {e}.") from None
    if wanted is not None and trained.config_hash() != wanted.config_hash():
        raise BinsenseError(
            f"the {what} checkpoint {str(path)!r} was trained with config "
            f"{trained.config_hash()}, but {hint} describes {wanted.config_hash()}; pass "
            "the checkpoint of that training."
        )
    return ckpt, trained


def load_teacher(
    config: TrainConfig,
    teacher: nn.Module | str | os.PathLike | None,
    *,
    allow_large: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The distillation teacher of ``config`` and what to record of it.

    ``teacher`` (a model, a run folder or its ``checkpoint.pt``) is used when given,
    else ``config.distill.teacher_checkpoint``. A checkpoint must be of a finished
    training of the student's data set and, when ``distill.teacher`` describes the
    teacher's training, of exactly that config (:func:`finished_checkpoint`). Building
    the teacher leaves the random state alone (the student's initialisation and batches
    stay those of the seed).
    """
    d = config.distill
    assert d is not None
    source = teacher if teacher is not None else d.teacher_checkpoint
    if source is None:
        raise BinsenseError(
            "distill.teacher describes the teacher's training, but no teacher checkpoint "
            "was given: train the teacher first and pass its checkpoint (train(..., "
            "teacher=PATH)), set distill.teacher_checkpoint = PATH instead, or run it in "
            "a study, which trains the teacher first."
        )
    if isinstance(source, nn.Module):
        return source, {"model": type(source).__name__}
    path = Path(source)
    _, trained = finished_checkpoint(
        path, "teacher", config.dataset, config.teacher_config(), "distill.teacher"
    )
    path = checkpoint_path(path) if path.is_dir() else path
    info = {"checkpoint": str(path), "config_hash": trained.config_hash()}
    with torch.random.fork_rng(devices=[]):  # building it leaves the student's RNG alone
        model, _ = load_model(path, allow_large=allow_large)
    return model, info


class InitCallback(Callback):
    """Fine-tuning (the config's ``init``, :class:`~binsense.train.config.TrainInit`): at
    :meth:`on_train_begin` of a run that starts at epoch 0, the model's parameters and
    batch-norm statistics are loaded from a finished training's checkpoint (the
    ``init`` path given to the trainer, else ``init.checkpoint``), strictly. A resumed
    run has its own weights: nothing is loaded, and a start whose config hash differs
    from the recorded one is refused, as for a teacher.

    State and provenance: ``{"start": {"checkpoint": PATH, "config_hash": H,
    "test_acc": A}}``, what the run started from.
    """

    name: ClassVar[str | None] = "init"

    def __init__(self, init: str | os.PathLike | None = None) -> None:
        self.init = init
        self.start_info: dict[str, Any] | None = None

    def on_train_begin(self, trainer: TrainerView) -> None:
        config = trainer.config
        assert config.init is not None, "InitCallback needs a config with init"
        source = self.init if self.init is not None else config.init.checkpoint
        if source is None:
            raise BinsenseError(
                "init.training describes the starting training, but no checkpoint was "
                "given: train it first and pass its checkpoint (train(..., init=PATH)), set "
                "init.checkpoint = PATH instead, or run it in a study, which trains it first."
            )
        path = Path(source)
        path = checkpoint_path(path) if path.is_dir() else path
        ckpt, trained = finished_checkpoint(
            path, "start", config.dataset, config.init_config(), "init.training"
        )
        was = (self.start_info or {}).get("config_hash")
        if was is not None and was != trained.config_hash():
            raise BinsenseError(
                f"the finished epochs of {str(trainer.run_path)!r} started from a training "
                f"with config {was}, but the start checkpoint {str(path)!r} now holds config "
                f"{trained.config_hash()}; resume with that start, or delete the folder."
            )
        metrics = ckpt.get("metrics") or [{}]
        self.start_info = {
            "checkpoint": str(path),
            "config_hash": trained.config_hash(),
            "test_acc": metrics[-1].get("test_acc"),
        }
        if trainer.start_epoch == 0:  # a resumed run keeps its own weights
            load_state_strict(trainer.model, ckpt["model"], str(path), ckpt.get("format"))
            acc = self.start_info["test_acc"]
            shown = "" if acc is None else f" (test accuracy {acc:.2%})"
            trainer.log(f"starting from {path}{shown}")

    def provenance(self) -> dict[str, Any]:
        return {} if self.start_info is None else {"start": self.start_info}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.start_info is None else {"start": dict(self.start_info)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        start = state.get("start")
        self.start_info = dict(start) if start else None


class DistillCallback(Callback):
    """Knowledge distillation (the config's ``distill``): the training loss becomes
    :class:`~binsense.compress.distill.Distillation` from a frozen teacher.

    At :meth:`on_train_begin` the teacher is loaded (:func:`load_teacher`: the
    ``teacher`` given to the trainer, else ``distill.teacher_checkpoint``; checked to be
    a finished training of the student's data set and, with ``distill.teacher``, of
    that config) and the loss is built with the config's ``alpha``, ``temperature`` and
    ``label_smoothing``. A finished run needs no teacher: none is loaded.

    State: ``{"teacher": {...}}``, what the finished epochs were distilled from (the
    checkpoint path and its config hash, or the model's class). On resume the teacher
    is loaded again; one whose config hash differs from the recorded one is refused
    (the run would continue with another teacher). The teacher's record also goes
    into the run's provenance (``config.json``'s ``teacher``).
    """

    name: ClassVar[str | None] = "distill"

    def __init__(
        self, teacher: nn.Module | str | os.PathLike | None = None, *,
        allow_large: bool | None = None,
    ) -> None:  # fmt: skip
        self.teacher = teacher
        self.allow_large = allow_large
        self.loss: Distillation | None = None
        self.teacher_info: dict[str, Any] | None = None
        self.restored: dict[str, Any] | None = None

    def on_train_begin(self, trainer: TrainerView) -> None:
        config = trainer.config
        d = config.distill
        assert d is not None, "DistillCallback needs a config with distill"
        if trainer.hooks.loss is not None:
            raise BinsenseError(
                "the config distils from a teacher (distill) and the hooks give a loss of "
                "their own; use one of them."
            )
        model, info = load_teacher(config, self.teacher, allow_large=self.allow_large)
        was = (self.restored or {}).get("config_hash")
        if was is not None and info.get("config_hash") not in (None, was):
            raise BinsenseError(
                f"the finished epochs of {str(trainer.run_path)!r} were distilled from a "
                f"teacher trained with config {was}, but the teacher checkpoint "
                f"{info['checkpoint']!r} now holds config {info['config_hash']}; resume "
                "with that teacher, or delete the folder to train it again."
            )
        self.teacher_info = info
        self.loss = Distillation(
            model, alpha=d.alpha, temperature=d.temperature,
            label_smoothing=config.label_smoothing,
        )  # fmt: skip

    def training_loss(self) -> LossHook | None:
        return self.loss

    def provenance(self) -> dict[str, Any]:
        return {} if self.teacher_info is None else {"teacher": self.teacher_info}

    def state_dict(self) -> dict[str, Any]:
        info = self.teacher_info if self.teacher_info is not None else self.restored
        return {} if info is None else {"teacher": dict(info)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        teacher = state.get("teacher")
        self.restored = dict(teacher) if teacher else None


# ---------------------------------------------------------------------- pruning


class ThermometerDrift(Callback):
    """How far a learned thermometer's thresholds move (S3's GLT; added by the trainer to
    any model with a :class:`~binsense.encoders.glt.LearnedThermometer`): each epoch's
    metrics row gets ``glt_shift_max`` and ``glt_shift_mean`` (codes, over every
    threshold, from where training started) and ``glt_grad`` (the mean over the epoch's
    steps of the L2 norm of the thresholds' parameters' gradient). Issue #27 asks
    whether the tone curve moves at scale, and if not why: this is the record.

    State: the starting thresholds (so a resumed run measures from the same start; a
    run resumed from before this callback existed reports nothing).
    """

    name: ClassVar[str | None] = "glt_drift"

    def __init__(self) -> None:
        self.start: list[Tensor] | None = None
        self.grad_sum, self.steps = 0.0, 0
        self.found: list[Any] = []  # the encoders, found once per epoch (not per step)

    @staticmethod
    def encoders(trainer: TrainerView) -> list[Any]:
        from binsense.encoders.glt import LearnedThermometer

        return [m for m in trainer.model.modules() if isinstance(m, LearnedThermometer)]

    @torch.no_grad()
    def on_train_begin(self, trainer: TrainerView) -> None:
        self.found = self.encoders(trainer)
        if trainer.start_epoch == 0:
            self.start = [e.continuous_thresholds().detach().cpu() for e in self.found]

    def on_step_end(self, trainer: TrainerView, step: int) -> None:
        grads = [
            p.grad.detach().float().pow(2).sum()
            for e in self.found
            for p in (e.t0, e.delta)
            if p.grad is not None
        ]
        if grads:
            self.grad_sum += float(torch.stack(grads).sum().sqrt())
        self.steps += 1

    @torch.no_grad()
    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        if self.start is not None and trainer.metrics:
            self.found = self.encoders(trainer)  # (a callback may have swapped the model)
            now = [e.continuous_thresholds().detach().cpu() for e in self.found]
            shift = torch.cat(
                [(a - b).abs().flatten() for a, b in zip(now, self.start, strict=True)]
            )
            trainer.metrics[-1].update(
                glt_shift_max=float(shift.max()),
                glt_shift_mean=float(shift.mean()),
                glt_grad=self.grad_sum / max(self.steps, 1),
            )
        self.grad_sum, self.steps = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {} if self.start is None else {"start": list(self.start)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        start = state.get("start")
        self.start = list(start) if start else None


class PruneCallback(Callback):
    """Gradual block pruning (the config's ``prune``, :class:`~binsense.train.config.TrainPrune`;
    or a :class:`~binsense.compress.prune.PruningSchedule` of your own in
    ``Hooks.callbacks``).

    - :meth:`on_train_begin`: refuses a model with no prunable block at the block size
      (one line naming why), and makes the schedule over the run's optimizer steps;
    - :meth:`on_step_end`: the schedule raises the sparsity (Zhu & Gupta's cubic ramp)
      and re-attaches the masks to the model;
    - :meth:`on_train_end`: the masked units are removed for real
      (:func:`~binsense.compress.prune.remove_pruned`), so the final evaluation and
      checkpoint are of the smaller model
      (:meth:`~binsense.train.trainer.Trainer.replace_model`: a new optimizer, the
      learning-rate schedule kept);
    - :meth:`on_epoch_end`: records the state below, for the epoch's checkpoint.

    State: ``{"prune_plan": ..., "prune_masks": ...}``: the kept channels of a removed
    model (``model.prune_plan``, ``None`` before removal) and the masks of a model still
    being pruned (:func:`~binsense.compress.prune.masks_to_state`); the same entries
    checkpoints held at their top level before callbacks. :meth:`on_resume` rebuilds
    the smaller shape from the plan (a finished run) and re-attaches the masks (an
    unfinished one), so a resumed run continues bit for bit.
    """

    name: ClassVar[str | None] = "prune"

    def __init__(self, prune: TrainPrune | PruningSchedule) -> None:
        self.prune = prune
        self.schedule: PruningSchedule | None = (
            prune if isinstance(prune, PruningSchedule) else None
        )
        self.plan: dict[str, list[int]] | None = None
        self.masks: dict[str, list[bool]] = {}

    def on_resume(self, trainer: TrainerView) -> None:
        if self.plan:  # a finished run: its checkpoint holds the removed model
            model = trainer.model
            trainer.replace_model(remove_pruned(model, masks_from_plan(model, self.plan)))
        if self.masks:  # pruning in progress: the masks go on (the weights load after)
            apply_masks(trainer.model, masks_from_state(self.masks))

    def on_train_begin(self, trainer: TrainerView) -> None:
        block_size = self.prune.block_size
        sites = find_sites(trainer.model, block_size)
        if not any(site.prunable for site in sites.values()):
            why = "; ".join(f"{n}: {s.reason}" for n, s in sites.items() if s.reason)
            raise BinsenseError(
                f"prune: model {trainer.config.model!r} has no block that splits into units "
                f"of {block_size} channels ({why or 'no blocks'}); lower "
                "prune.block_size or widen the model."
            )
        if isinstance(self.prune, TrainPrune):
            total = trainer.config.epochs * len(trainer.train_loader)
            self.schedule = self.prune.schedule(total)

    def on_step_end(self, trainer: TrainerView, step: int) -> None:
        if self.schedule is not None:
            self.schedule(trainer.model, step)

    def on_train_end(self, trainer: TrainerView) -> None:
        model = trainer.model
        if not masks_of(model):
            return
        before = sum(p.numel() for p in model.parameters())
        trainer.replace_model(remove_pruned(model))
        after = sum(p.numel() for p in trainer.model.parameters())
        trainer.log(f"pruned blocks removed: {before:,} -> {after:,} parameters")

    def on_epoch_end(self, trainer: TrainerView, epoch: int) -> None:
        plan = getattr(trainer.model, "prune_plan", None)
        self.plan = {k: list(v) for k, v in plan.items()} if plan else None
        self.masks = masks_to_state(masks_of(trainer.model))

    def state_dict(self) -> dict[str, Any]:
        plan = None if self.plan is None else {k: list(v) for k, v in self.plan.items()}
        return {"prune_plan": plan, "prune_masks": dict(self.masks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        plan = state.get("prune_plan")
        self.plan = {k: list(v) for k, v in plan.items()} if plan else None
        self.masks = {k: list(v) for k, v in (state.get("prune_masks") or {}).items()}


# ---------------------------------------------------------------------- the config's


def config_callbacks(
    config: TrainConfig,
    *,
    teacher: nn.Module | str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    allow_large: bool | None = None,
) -> list[Callback]:
    """The callbacks ``config`` asks for, in order: ``init`` -> :class:`InitCallback`
    (from ``init`` if given), ``distill`` -> :class:`DistillCallback` (from ``teacher``
    if given), ``prune`` -> :class:`PruneCallback`."""
    out: list[Callback] = []
    if config.init is not None:
        out.append(InitCallback(init))
    if config.distill is not None:
        out.append(DistillCallback(teacher, allow_large=allow_large))
    if config.prune is not None:
        out.append(PruneCallback(config.prune))
    return out


__all__ = [
    "Callback",
    "DistillCallback",
    "InitCallback",
    "PruneCallback",
    "ThermometerDrift",
    "config_callbacks",
    "finished_checkpoint",
    "load_teacher",
]
