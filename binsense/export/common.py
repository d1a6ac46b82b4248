r"""What every exporter needs from a :class:`~binsense.deploy.program.DeployedModel`.

- :func:`op_shapes`: each op's output shape for one input size (exports are static),
  computed without running an op, after a memory check;
- :func:`pm1_weight`, :func:`threshold_arrays`: the ±1 weights and the integer
  thresholds of the packed ops, as numpy arrays; :func:`tiled`: position-class arrays
  tiled over a map;
- :func:`pack_bits_u8`: bits packed 8 to a byte (little-endian bit order);
- :func:`no_residual`: the one-line refusal of residual units.

A float stage's norm is exported in the affine form its op records
(:attr:`binsense.deploy.stage.BatchNorm.form`: :class:`~binsense.deploy.stage.Affine`,
probed once by :func:`binsense.deploy.stage.lower`), so no exporter probes a module.
"""

from __future__ import annotations

import numpy as np
import torch

from binsense.deploy import ir
from binsense.deploy.bits import unpack_bits
from binsense.deploy.program import DeployedModel
from binsense.errors import BinsenseError
from binsense.layers.design import design_thresholds

#: Integers are exact in float32 below this bound (the exports compute popcounts in float).
FLOAT_EXACT = 1 << 24


def no_residual(deployed: DeployedModel, what: str) -> None:
    """Raise one line when ``deployed`` holds a residual unit (not exported)."""
    if any(isinstance(op, ir.ResidualOp) for op in deployed.ops):
        raise BinsenseError(
            f"the {what} export does not support residual units (the ResNet-18 BNN); run it "
            "with the packed engine (binsense deploy)."
        )


def op_shapes(deployed: DeployedModel, input_shape: tuple[int, int, int]) -> list[tuple]:
    """The output shape (without the batch axis) of every op, for images ``input_shape``
    (``C, H, W``), by the analytic walk (:meth:`DeployedModel.activation_shapes`: no op
    runs, every geometry field checked against the input, one line if one does not fit).

    The program's activations are checked first to fit in memory for two images
    (:meth:`DeployedModel.check_memory`; ``--allow-large`` or ``BINSENSE_ALLOW_LARGE=1``
    skips that): an export holds arrays as large as one image's maps (DeSign thresholds
    tiled over a map, the C arena); the ONNX builder runs each float op on the meta
    device for its shape (no memory).
    """
    shown = "x".join(map(str, input_shape))
    what = f"exporting the deployed {deployed.source or 'program'} for images of shape {shown}"
    fix = "give the image size the program was built for"
    deployed.check_memory(input_shape, 2, what=what, workspace=False, fix=fix)
    return deployed.activation_shapes(input_shape)


def pm1_weight(op: ir.PackedConv | ir.PackedLinear) -> np.ndarray:
    """The ±1 weights of a packed op as int8: ``(C_out, C_in/g, k_h, k_w)`` for a conv,
    ``(out, fan_in)`` for a linear layer."""
    if isinstance(op, ir.PackedConv):
        return op.weight_pm1.cpu().numpy().astype(np.int8)
    bits = unpack_bits(op.weight_words.cpu(), op.fan_in, 1)
    return np.where(bits.numpy(), 1, -1).astype(np.int8)


def threshold_arrays(th: ir.Threshold, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(tau, flip)`` int64 for a threshold on outputs of ``shape`` (no batch axis):
    ``(C,)`` per channel, or ``(C, m, n)`` per DeSign position class (tiled from the
    top-left corner of the ``H x W`` map by the caller)."""
    tau, flip = th.tau.cpu(), th.flip.cpu()
    if tau.dim() == 3 and len(shape) != 3:
        raise BinsenseError("position-class thresholds on a non-spatial layer.")
    return tau.numpy().astype(np.int64), flip.numpy().astype(np.int64)


def tiled(classes: np.ndarray, height: int, width: int) -> np.ndarray:
    """A ``(C, m, n)`` position-class array tiled over ``(C, H, W)`` from the top-left
    corner (:func:`binsense.layers.design.design_thresholds`)."""
    t = torch.from_numpy(classes.astype(np.float64))
    return design_thresholds(t, t.shape[0], height, width).numpy().astype(classes.dtype)


def pack_bits_u8(bits: np.ndarray) -> np.ndarray:
    """Bool ``bits`` (flattened, C order) packed 8 to a uint8, bit ``i % 8`` of byte
    ``i // 8`` (the last byte padded with 0)."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1), bitorder="little")


__all__ = [
    "FLOAT_EXACT",
    "no_residual",
    "op_shapes",
    "pack_bits_u8",
    "pm1_weight",
    "threshold_arrays",
    "tiled",
]
