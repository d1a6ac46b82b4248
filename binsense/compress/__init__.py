"""Compression and its accounting: block pruning with real removal
(:mod:`binsense.compress.prune`), knowledge distillation (:mod:`binsense.compress.distill`)
and the size of a deployed BNN in bits (:mod:`binsense.compress.summary`)."""

from binsense.compress.distill import Distillation, distillation_loss, kd_loss
from binsense.compress.prune import (
    PrunePlan,
    PruningSchedule,
    apply_masks,
    build_pruned,
    channel_scores,
    clear_masks,
    find_sites,
    masks_from_plan,
    masks_from_state,
    masks_of,
    masks_to_state,
    prune,
    pruned_fraction,
    remove_pruned,
    select_masks,
)
from binsense.compress.summary import (
    BITS_PER_MBIT,
    LayerRow,
    ModelSummary,
    add_summary_command,
    auto_threshold_bits,
    summarize_model,
    summary,
)

__all__ = [
    "BITS_PER_MBIT",
    "PrunePlan",
    "PruningSchedule",
    "apply_masks",
    "build_pruned",
    "channel_scores",
    "clear_masks",
    "find_sites",
    "masks_from_plan",
    "masks_from_state",
    "masks_of",
    "masks_to_state",
    "prune",
    "pruned_fraction",
    "remove_pruned",
    "select_masks",
    "Distillation",
    "LayerRow",
    "ModelSummary",
    "add_summary_command",
    "auto_threshold_bits",
    "distillation_loss",
    "kd_loss",
    "summarize_model",
    "summary",
]
