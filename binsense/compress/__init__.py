"""Compression and its accounting: the size of a deployed BNN in bits
(:mod:`binsense.compress.summary`) and knowledge distillation
(:mod:`binsense.compress.distill`)."""

from binsense.compress.distill import Distillation, distillation_loss, kd_loss
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
