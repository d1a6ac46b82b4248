"""Checkpoints: atomic save, safe load (``weights_only=True``), model rebuild.

The trainer saves a checkpoint with :func:`binsense.io.atomic_torch_save` and
``checksum=True``, which seals it: a sha256 over its ``torch.save`` bytes is stored with
them and verified before they are parsed, so a damaged checkpoint (one flipped bit) is
a :class:`CheckpointError` ("is corrupt"), never a model with other weights. A
checkpoint written before checksums still loads; :func:`load_model` then notes, in one
line (:class:`UncheckedCheckpointWarning`), that damage to it cannot be detected.

Besides the model, optimizer and schedule, a checkpoint holds the state of the trainer's
callbacks (``callbacks``: name -> state, :mod:`binsense.train.callbacks`), e.g. the
pruning masks of a run still being pruned and the plan of a removed model, which
:func:`load_model` needs to rebuild the model's shape (:func:`callback_states` also reads
them where older checkpoints kept them).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from binsense.data import dataset_info
from binsense.errors import CheckpointError
from binsense.io import load_torch_file
from binsense.models import build_model, upgrade_options
from binsense.resources import check_config_fits
from binsense.train.config import TrainConfig

#: 2: recipe models (``encoder.* / blocks.* / head.*`` state-dict keys). 1: the
#: hand-wired ``nn.Sequential`` models before; still read (:func:`upgrade_state`).
CHECKPOINT_FORMAT = 2
_READABLE_FORMATS = (1, 2)


class UncheckedCheckpointWarning(UserWarning):
    """A checkpoint was written before checksums: it loads, but damage goes unnoticed."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], bool]:
    """Read a binsense checkpoint (no code is executed, its checksum verified) and check
    its format; also whether it carries a checksum (``False``: written before them)."""
    ckpt, sealed = load_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in _READABLE_FORMATS:
        raise CheckpointError(
            f"{str(path)!r} is not a binsense checkpoint (format {CHECKPOINT_FORMAT}); "
            "point --checkpoint at a run's checkpoint.pt."
        )
    return ckpt, sealed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a binsense checkpoint (no code is executed, its checksum verified) and check
    its format (:func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def note_unchecked(path: str | os.PathLike) -> None:
    """One line saying that the checkpoint at ``path`` predates checksums.

    Given once the model is loaded (by :func:`load_model`), so a checkpoint that is then
    refused for another reason gets only that reason's line.
    """
    warnings.warn(
        f"checkpoint {str(path)!r} predates checksums (an older binsense wrote it): it "
        "loads as it is, but damage to it cannot be detected; a new training writes one "
        "with a checksum.",
        UncheckedCheckpointWarning,
        stacklevel=3,
    )


def upgrade_state(model: nn.Module, state: dict[str, Any], source: str) -> dict[str, Any]:
    """A format-1 state dict (hand-wired ``nn.Sequential`` keys such as ``3.weight``)
    under ``model``'s recipe keys (``blocks.1.conv.weight``).

    The recipes create every tensor in the order the old builders did, so the entries
    match in order; each new key takes the first unused old entry with the same leaf name
    (``weight``, ``running_mean``, ``kernel``...) and shape. A checkpoint that does not
    match that way gets one line saying to retrain.
    """
    own = model.state_dict()
    pool = list(state.items())
    used = [False] * len(pool)
    out: dict[str, Any] = {}
    for key, tensor in own.items():
        leaf = key.rsplit(".", 1)[-1]
        for i, (old_key, value) in enumerate(pool):
            if used[i] or old_key.rsplit(".", 1)[-1] != leaf:
                continue
            if tuple(getattr(value, "shape", ())) == tuple(tensor.shape):
                used[i] = True
                out[key] = value
                break
        else:
            break
    if len(out) != len(own) or not all(used):
        raise CheckpointError(
            f"checkpoint {source!r} was written by binsense before model recipes (format 1) "
            "and does not map onto today's model; retrain it (binsense train / study run)."
        )
    return out


def load_state_strict(
    model: nn.Module, state: dict[str, Any], source: str, fmt: int | None = CHECKPOINT_FORMAT
) -> None:
    """``model.load_state_dict`` with a clear error when the checkpoint does not fit
    (a format-1 state dict is first renamed by :func:`upgrade_state`)."""
    own = model.state_dict()
    if fmt == 1 and set(state) != set(own):
        state = upgrade_state(model, state, source)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape mismatch at {shapes[0]}: checkpoint {tuple(state[shapes[0]].shape)} "
            f"vs model {tuple(own[shapes[0]].shape)}"
        )
        raise CheckpointError(
            f"checkpoint {source!r} does not match the model ({detail}); "
            "use the model name and options it was trained with."
        )
    model.load_state_dict(state)


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was trained with (clear error if invalid)."""
    try:
        config = dict(ckpt["config"])
        if ckpt.get("format") == 1:  # model options renamed by the recipe architecture
            config["model_options"] = upgrade_options(
                config["model"], config.get("model_options", {})
            )
        return TrainConfig(**config)
    except Exception as e:
        detail = str(e).splitlines()
        why = next(
            (line.strip() for line in detail[1:] if line.strip()), detail[0] if detail else ""
        )
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds an invalid config ({why[:160]}); it was written "
            "by an incompatible binsense version — retrain it."
        ) from None


def load_model(
    path: str | os.PathLike, *, allow_large: bool | None = None
) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model stored in a checkpoint, in eval mode, with its config.

    A checkpoint whose config asks for more memory than the machine has is refused
    before anything is allocated (:func:`binsense.resources.check_config_fits`).
    """
    ckpt, sealed = read_checkpoint(path)
    config = checkpoint_config(ckpt, path)
    check_config_fits(config, training=False, device="cpu", allow=allow_large)
    model = build_model(config.model, dataset_info(config.dataset), **config.model_options)
    pruning = callback_states(ckpt).get("prune", {})
    plan = pruning.get("prune_plan")
    if plan:  # saved after real removal: rebuild the smaller shape first
        from binsense.compress.prune import masks_from_plan, remove_pruned

        model = remove_pruned(model, masks_from_plan(model, plan))
    load_state_strict(model, ckpt["model"], str(path), ckpt.get("format"))
    masks = pruning.get("prune_masks")
    if masks:  # saved while pruning (full shape + masks): remove for real
        from binsense.compress.prune import apply_masks, masks_from_state, remove_pruned

        apply_masks(model, masks_from_state(masks))
        model = remove_pruned(model)
    model.eval()
    if not sealed:
        note_unchecked(path)
    return model, config


#: Top-level checkpoint entries of binsense before trainer callbacks -> the callback
#: whose state they are (:func:`callback_states`).
LEGACY_CALLBACK_KEYS: dict[str, tuple[str, ...]] = {"prune": ("prune_plan", "prune_masks")}


def callback_states(ckpt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The trainer callbacks' states in a checkpoint: callback name -> its state dict
    (:mod:`binsense.train.callbacks`; ``ckpt["callbacks"]``).

    A checkpoint written before callbacks kept the pruning state at the top level
    (``prune_plan``, ``prune_masks``, written by every training, ``None`` / ``{}`` when
    it did not prune): it is read as the ``prune`` callback's state when it holds any.
    """
    states = {str(k): dict(v) for k, v in (ckpt.get("callbacks") or {}).items()}
    for name, keys in LEGACY_CALLBACK_KEYS.items():
        if name not in states and any(ckpt.get(k) for k in keys):
            states[name] = {k: ckpt.get(k) for k in keys}
    return states


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(run_dir) / "checkpoint.pt"
