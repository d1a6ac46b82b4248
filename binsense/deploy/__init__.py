"""Deployment: trained BNN -> integer form, in layers that each import only those below:
the bit helpers (:mod:`~binsense.deploy.bits`), the folding table and rules that turn a
block's (norm, activation) pair into integer thresholds (:mod:`~binsense.deploy.folding`),
the op set (:mod:`~binsense.deploy.ir`), their shapes and memory
(:mod:`~binsense.deploy.shapes`), the packed engine (:mod:`~binsense.deploy.engine`) on the
XNOR-popcount kernels (:mod:`~binsense.deploy.kernels`), the conversion of a recipe model
into a program and its exactness check (:mod:`~binsense.deploy.program`), and the file
format (:mod:`~binsense.deploy.fileformat`).
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
    threshold_design,
    threshold_sign,
)
from binsense.deploy.infer import InferResult, check_loader_memory, file_input_shape, infer
from binsense.deploy.program import (
    CheckResult,
    DeployedModel,
    check_exact,
    convert,
    exact_program,
)
from binsense.layers.folds import fold_problem, pair_folds

__all__ = [
    "CheckResult",
    "DeployFileError",
    "DeployedModel",
    "InferResult",
    "Thresholds",
    "check_exact",
    "check_loader_memory",
    "convert",
    "exact_program",
    "bn_params64",
    "fold_bn_design",
    "fold_bn_sign",
    "fold_norm_sign",
    "fold_pair",
    "fold_problem",
    "fold_sign_threshold",
    "file_input_shape",
    "infer",
    "load_deployed",
    "norm_params64",
    "pair_folds",
    "save_deployed",
    "threshold_design",
    "threshold_sign",
]
