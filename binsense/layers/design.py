r"""DeSign: the designed-dithering sign activation, and its zero-cost folded form.

DeSign (Monroy, Estupiñán, Gelvez-Barrera, Bacca, Arguello, "DeSign: designed dithering
sign activation for binary neural networks", IEEE J. Sel. Topics Signal Process. 2024,
doi:10.1109/JSTSP.2024.3467926, arXiv:2405.02220; authors' code: GitHub
``bemc22/DeSign``) replaces the sign of a BNN block by a sign with a *spatially periodic
threshold*, a fixed dither pattern:

.. math:: \mathrm{DeSign}(x)_{b,c,i,j} =
          \operatorname{sign}\big(x_{b,c,i,j} - g_c\,T_{c \bmod F,\ i \bmod m,\ j \bmod n}\big)

with :math:`x` the output of the batch norm that follows a binary convolution,
:math:`T` a fixed kernel of shape :math:`F \times m \times n` (a 2-D kernel has
:math:`F = 1`) tiled from the top-left corner over every feature map (channel :math:`c`
uses slice :math:`c \bmod F`; sizes need not be multiples of the kernel's), and
:math:`g_c` either 1 (*uncoupled*, the default) or the BN's scale :math:`\gamma_c`
(*coupled*, ``DeSign(bn=...)``, as in the authors' ``Threshold3D``: ``input -
spatial_thresh * gamma``). The authors' default freezes the BN affine parameters at
:math:`\gamma = 1, \beta = 0`, where the two coincide. ``sign(0) = +1``, as everywhere in
binsense.

**Backward**: the straight-through estimator of the injected quantizer is applied to the
shifted input :math:`u = x - g\,T` (default ``"approx_sign"``:
:math:`\partial q/\partial u = \max(0, 2 - |2u|)`, the ReCU/DeSign triangle). :math:`T`
is a buffer and gets no gradient. With coupling, :math:`\gamma` receives a gradient
through the threshold too (:math:`-\sum T\,\partial L/\partial u`), as in the authors'
code, where ``gamma`` is not detached.

**Kernels** are stored in BN-output units. The paper designs them on integer *levels*
(the possible values of a ReLU'd 3x3 binary convolution of ±1 inputs, see
:mod:`binsense.layers.design_search`), mapped to BN-domain thresholds by this table
(:data:`LEVEL_TO_THRESHOLD`, :func:`levels_to_thresholds`):

=====  =========
level  threshold
=====  =========
0      0.3118
1      0.6310
3      0.9671
5      1.3352
7      1.7656
9      2.3419
=====  =========

Presets (:func:`design_kernel_names`, :func:`get_design_kernel`), in levels, each named
after the file of the authors' code it reproduces (``thresholds/*.mat`` of
``bemc22/DeSign``, whose BN-domain values are exactly this table's):

- ``"2x2_v1"``: ``[[1, 1], [0, 3]]`` (``threshold_2x2_v1.mat``: the default of the
  authors' PyTorch ``Threshold2D`` and of their ``demo_activation`` notebooks);
- ``"2x2_v2"``: ``[[1, 1], [3, 3]]`` (``threshold_2x2_v2.mat``);
- ``"2x2"``: binsense's default 2-D kernel, an alias of ``"2x2_v2"``. It is the kernel
  binsense has used under this name from the start (it was described as "the paper's"
  kernel, but the authors' code ships both and defaults to ``v1``); the alias keeps
  that kernel so that existing study files (``design = "2x2"``) and their results do
  not change. Name ``"2x2_v1"`` or ``"2x2_v2"`` to be explicit;
- ``"2x2x4_shift"`` (3-D, :math:`F = 4`; ``threshold_2x2x4_shifting_n1_right_v1.mat``,
  the kernel of the authors' ``Threshold3D`` and of their trained networks): slices
  ``[[1, 1], [0, 3]]``, ``[[3, 3], [1, 5]]``, ``[[5, 5], [3, 7]]``, ``[[7, 7], [5, 9]]``;
- ``"3x3_sym"`` (``threshold_3x3_symmetric_v1.mat``): ``[[3, 1, 3], [1, 0, 1], [3, 1, 3]]``.

**Deployment at zero cost** (:func:`binsense.deploy.fold_bn_design`): BN then
DeSign is a BN with a per-position shift :math:`\beta' = \beta - g\,T_p`, so it folds like
BN + sign (:func:`binsense.deploy.fold_bn_sign`) into one threshold per channel *and
position class* :math:`p = (i \bmod m, j \bmod n)`: an integer compare per pixel on
popcount inputs, exactly as without dithering.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.errors import BinsenseError
from binsense.quant import SignQuantizer, get_quantizer
from binsense.registry import Registry

LEVEL_TO_THRESHOLD: dict[int, float] = {
    0: 0.3118,
    1: 0.6310,
    3: 0.9671,
    5: 1.3352,
    7: 1.7656,
    9: 2.3419,
}
"""Integer design level -> BN-domain threshold (Monroy et al. 2024)."""

DESIGN_KERNELS: Registry = Registry("DeSign kernel")
"""Preset kernels in integer design levels, by name (module docstring)."""
for _name, _levels in {
    "2x2_v1": [[1, 1], [0, 3]],  # authors' threshold_2x2_v1.mat (their Threshold2D default)
    "2x2_v2": [[1, 1], [3, 3]],  # authors' threshold_2x2_v2.mat
    "2x2": [[1, 1], [3, 3]],  # binsense's default name: = "2x2_v2" (kept for old studies)
    "2x2x4_shift": [
        [[1, 1], [0, 3]],
        [[3, 3], [1, 5]],
        [[5, 5], [3, 7]],
        [[7, 7], [5, 9]],
    ],
    "3x3_sym": [[3, 1, 3], [1, 0, 1], [3, 1, 3]],
}.items():
    DESIGN_KERNELS.add(_name, _levels)

KernelSpec = str | Tensor | Sequence


def design_kernel_names() -> list[str]:
    """Names of the preset kernels accepted by :func:`get_design_kernel`."""
    return DESIGN_KERNELS.names()


def levels_to_thresholds(levels: Tensor | Sequence) -> Tensor:
    """Map integer design levels (any shape) to BN-domain thresholds, float32.

    Raises :class:`BinsenseError` for a level not in {0, 1, 3, 5, 7, 9}.
    """
    # on the CPU also inside ``torch.device("meta")`` (model checks): the values are data
    t = torch.as_tensor(levels, dtype=torch.float64, device="cpu")
    out = torch.empty_like(t)
    done = torch.zeros_like(t, dtype=torch.bool)
    for level, value in LEVEL_TO_THRESHOLD.items():
        hit = t == level
        out[hit] = value
        done |= hit
    if not bool(done.all()):
        bad = sorted({float(v) for v in t[~done].tolist()})
        raise BinsenseError(
            f"invalid DeSign level(s) {', '.join(f'{v:g}' for v in bad)}; "
            f"levels are {', '.join(str(k) for k in LEVEL_TO_THRESHOLD)}."
        )
    return out.float()


def _as_kernel(values: Tensor | Sequence) -> Tensor:
    """A 2-D ``m x n`` or 3-D ``F x m x n`` kernel as an ``(F, m, n)`` tensor (dtype kept)."""
    try:
        t = values if isinstance(values, Tensor) else torch.as_tensor(values, device="cpu")
    except (TypeError, ValueError) as e:
        raise BinsenseError(f"a DeSign kernel must be a nested list of numbers: {e}") from None
    if not t.is_floating_point():
        t = t.float()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.numel() == 0:
        raise BinsenseError(
            f"a DeSign kernel must be 2-D (m x n) or 3-D (F x m x n) and non-empty, "
            f"got shape {tuple(t.shape)}."
        )
    if not bool(torch.isfinite(t).all()):
        raise BinsenseError("a DeSign kernel must hold finite values.")
    return t


def get_design_kernel(name_or_values: KernelSpec) -> Tensor:
    """A DeSign kernel as an ``(F, m, n)`` tensor of BN-domain thresholds.

    ``name_or_values`` is a preset name (:func:`design_kernel_names`; mapped through
    :data:`LEVEL_TO_THRESHOLD`; ``"2x2"`` is binsense's default, the authors'
    ``"2x2_v2"``, and ``"2x2_v1"`` is their ``Threshold2D`` default) or BN-domain
    values: a tensor or nested list, 2-D ``[m][n]`` or 3-D ``[F][m][n]`` (``F`` slices,
    channel ``c`` uses slice ``c mod F``).
    Use :func:`levels_to_thresholds` for a custom kernel given in integer levels. Returns
    a new float32 tensor (a float64 tensor stays float64).
    """
    if isinstance(name_or_values, str):
        return _as_kernel(levels_to_thresholds(DESIGN_KERNELS.get(name_or_values)))
    t = _as_kernel(name_or_values)
    return t.clone() if t.dtype == torch.float64 else t.float().clone()


def design_thresholds(kernel: KernelSpec, channels: int, height: int, width: int) -> Tensor:
    r"""The tiled threshold map ``T[c mod F, i mod m, j mod n]`` of shape ``(C, H, W)``.

    ``kernel`` is anything :func:`get_design_kernel` accepts; a tensor keeps its device
    and floating dtype. Works for any sizes (not only multiples of the kernel's).
    """
    is_ready = isinstance(kernel, Tensor) and kernel.dim() == 3 and kernel.is_floating_point()
    k = kernel if is_ready else get_design_kernel(kernel)
    f, m, n = k.shape
    dev = k.device
    c = torch.arange(channels, device=dev) % f
    i = torch.arange(height, device=dev) % m
    j = torch.arange(width, device=dev) % n
    return k[c.view(-1, 1, 1), i.view(1, -1, 1), j.view(1, 1, -1)]


def design_threshold_map(
    kernel: Tensor, scale: Tensor | None, channels: int, height: int, width: int
) -> Tensor:
    """The ``(C, H, W)`` map :math:`g_c \\, T[c \\bmod F, i \\bmod m, j \\bmod n]` of a
    float ``(F, m, n)`` kernel, with ``scale`` :math:`g` ``(C,)`` (``None``: 1)."""
    t = design_thresholds(kernel, channels, height, width)
    if scale is None:
        return t
    if scale.numel() != channels:
        raise BinsenseError(
            f"DeSign is coupled to a batch norm of {scale.numel()} channels, "
            f"got {channels} channels."
        )
    return scale.to(t.dtype).view(-1, 1, 1) * t


class DeSign(nn.Module):
    r"""Designed dithering sign: ``q(x - g * T)`` with a tiled fixed kernel ``T``.

    Args:
        kernel: preset name (``"2x2"`` = ``"2x2_v2"``, the default; ``"2x2_v1"``,
            ``"2x2x4_shift"``, ``"3x3_sym"``; module docstring) or BN-domain values,
            2-D ``m x n`` or 3-D ``F x m x n``. Stored as the
            buffer ``kernel`` of shape ``(F, m, n)`` (in the state dict; no gradient).
        quantizer: the sign quantizer whose surrogate gradient is used, by name or
            instance (:func:`binsense.quant.get_quantizer`); default ``"approx_sign"``.
            ``None``: shift only, :math:`x - gT`, for networks that binarise later — in
            the authors' ResNet the shift sits before the residual add and the next binary
            convolution's input quantizer takes the sign.
        bn: couple the thresholds to this batch norm's scale: :math:`g_c = \gamma_c`, its
            *current* ``weight`` at every forward (1 for a BN without affine parameters).
            The BN is referenced, not registered as a submodule, so it is not duplicated in
            ``state_dict``/``parameters()`` (it belongs to the surrounding model); a deep
            copy of the whole model keeps the link to the copied BN.
            :func:`~binsense.layers.bn.replace_batchnorm` re-points it. ``None`` (default):
            :math:`g_c = 1`.

    Input ``(B, C, H, W)`` of any size, device and floating dtype; output in {-1, +1}.
    Not a :class:`~binsense.quant.SignQuantizer`: BN + DeSign does not fold to one
    threshold per channel, so :func:`~binsense.layers.bn.quantize_bn` treats the BN
    before it as an ordinary (``"affine"``) BN; :func:`binsense.deploy.fold_bn_design`
    deploys it.
    """

    kernel: Tensor

    def __init__(
        self,
        kernel: KernelSpec = "2x2",
        quantizer: str | SignQuantizer | None = "approx_sign",
        bn: _BatchNorm | None = None,
    ) -> None:
        super().__init__()
        self.kernel_name = kernel if isinstance(kernel, str) else "custom"
        self.register_buffer("kernel", get_design_kernel(kernel).float())
        self.quantizer = get_quantizer(quantizer)
        self.coupled_bn = bn

    @property
    def coupled_bn(self) -> _BatchNorm | None:
        """The BN whose gamma scales the thresholds, or ``None`` (uncoupled)."""
        return self.__dict__["_coupled_bn"]

    @coupled_bn.setter
    def coupled_bn(self, bn: _BatchNorm | None) -> None:
        if bn is not None and not isinstance(bn, _BatchNorm):
            raise BinsenseError(f"DeSign(bn=...) expects a batch-norm layer, got {type(bn)}.")
        # In __dict__, not _modules: a reference, not a submodule (no duplicated state).
        self.__dict__["_coupled_bn"] = bn

    def __setattr__(self, name: str, value) -> None:
        if name == "coupled_bn":  # nn.Module.__setattr__ would register the BN as a child
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def scale(self) -> Tensor | None:
        r"""Per-channel :math:`g_c` (``None`` when uncoupled or the BN has no gamma)."""
        bn = self.coupled_bn
        return None if bn is None or bn.weight is None else bn.weight

    def thresholds(self, channels: int, height: int, width: int) -> Tensor:
        """The ``(C, H, W)`` threshold map ``g_c * T`` used by :meth:`forward`."""
        return design_threshold_map(self.kernel, self.scale(), channels, height, width)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise BinsenseError(f"DeSign expects [B, C, H, W] input, got {x.dim()}-D.")
        _, c, h, w = x.shape
        t = self.thresholds(c, h, w).to(device=x.device, dtype=x.dtype)
        shifted = x - t
        return shifted if self.quantizer is None else self.quantizer(shifted)

    def extra_repr(self) -> str:
        f, m, n = self.kernel.shape
        coupled = "" if self.coupled_bn is None else ", coupled to BN gamma"
        return f"kernel={self.kernel_name!r} ({f}x{m}x{n}){coupled}"


__all__ = [
    "DESIGN_KERNELS",
    "LEVEL_TO_THRESHOLD",
    "DeSign",
    "design_kernel_names",
    "design_threshold_map",
    "design_thresholds",
    "get_design_kernel",
    "levels_to_thresholds",
]
