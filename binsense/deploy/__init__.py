"""Deployment: trained BNN -> integer form. Today: every folding rule that turns a
block's (norm, activation) pair into integer thresholds (:mod:`binsense.deploy.folding`).
"""

from binsense.deploy.folding import (
    Thresholds,
    bn_params64,
    fold_bn_design,
    fold_bn_sign,
    fold_norm_sign,
    fold_pair,
    fold_sign_threshold,
    norm_params64,
    register_folding_rule,
    threshold_design,
    threshold_sign,
)

__all__ = [
    "Thresholds",
    "bn_params64",
    "fold_bn_design",
    "fold_bn_sign",
    "fold_norm_sign",
    "fold_pair",
    "fold_sign_threshold",
    "norm_params64",
    "register_folding_rule",
    "threshold_design",
    "threshold_sign",
]
