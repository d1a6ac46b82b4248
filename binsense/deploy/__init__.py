"""Deployment: trained BNN -> integer form. Every folding rule that turns a block's
(norm, activation) pair into integer thresholds (:mod:`binsense.deploy.folding`), and the
conversion of a recipe model into an integer program with bit-packed binary layers and
its exactness check (:mod:`binsense.deploy.program`), the XNOR-popcount kernels
(:mod:`binsense.deploy.kernels`) and the file format (:mod:`binsense.deploy.fileformat`).
"""

from binsense.deploy.fileformat import DeployFileError, load_deployed, save_deployed
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
from binsense.deploy.program import CheckResult, DeployedModel, check_exact, convert

__all__ = [
    "CheckResult",
    "DeployFileError",
    "DeployedModel",
    "Thresholds",
    "check_exact",
    "convert",
    "bn_params64",
    "fold_bn_design",
    "fold_bn_sign",
    "fold_norm_sign",
    "fold_pair",
    "fold_sign_threshold",
    "load_deployed",
    "norm_params64",
    "register_folding_rule",
    "save_deployed",
    "threshold_design",
    "threshold_sign",
]
