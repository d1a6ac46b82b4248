r"""The deployed ops: what :func:`binsense.deploy.program.convert` emits and every reader
of a program (the reference run, the packed engine, the file format, ONNX, QONNX, C)
interprets. Each op is a frozen dataclass (:class:`Op`) of tensors and plain values, made
from its trained module once (``Op.of(...)``; no :class:`~torch.nn.Module` stays in a
program); calling it is the reference run of its arithmetic. ``spec()`` /
``from_spec()`` give and take its fields as JSON values and tensors, every value checked
(a file cannot make the loader allocate or index out of range). :class:`OpList` holds a
program's ops in order, with their names.

- :class:`PlanesInput`: a binary encoder as integer compares on the 8-bit ADC code;
- :class:`FloatStage`: a float first layer, head or residual part as typed float32 ops
  (:mod:`binsense.deploy.stage`: no trained module stays in a program), summed in the
  order of :mod:`binsense.deploy.floatops`; :class:`ToInt8` after its sign;
- :class:`PackedConv` / :class:`PackedLinear`: XNOR-popcount on 64-bit words,
  :math:`y = 2\,\mathrm{popcount}(\overline{x \oplus w}) - K`, with the padding
  correction :attr:`PackedConv.border`;
- :class:`MaxPoolInt`, :class:`Threshold`, :class:`Shuffle`, :class:`FlattenOp`,
  :class:`ResidualOp`.

The package docstring of :mod:`binsense.deploy.program` gives the arithmetic (padding,
thresholds by enumeration).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binsense.deploy import kernels, stage
from binsense.deploy.bits import WORD, pack_bits, popcount64, to_bits, unpack_bits
from binsense.deploy.plain import (
    MAX_STRIDE,
    check_geometry,
    plain_int,
    plain_pair,
    plain_tensor,
)
from binsense.encoders.base import adc_code
from binsense.errors import BinsenseError
from binsense.layers.binary import BinaryConv2d, BinaryLinear
from binsense.layers.block import ResidualUnit
from binsense.layers.design import DeSign, design_thresholds
from binsense.layers.folds import fold_problem
from binsense.layers.shape import channel_shuffle
from binsense.quant.sign import SignQuantizer

# ---------------------------------------------------------------- plain data (files)
# ``spec()`` gives an op's plain parameters (JSON) and tensors, ``from_spec`` rebuilds it
# from them without the trained model (binsense.deploy.fileformat); every value is checked.


@dataclass(frozen=True, eq=False)
class Op(abc.ABC):
    """One op of a deployed program: a frozen dataclass of tensors and plain values (no
    :class:`~torch.nn.Module` inside); calling it is the reference run of its arithmetic.
    Readers switch on its type. Per-input-size tables (a conv's border, the C kernel's
    weight panels) are cached in the instance's ``__dict__``, never in its fields."""

    @abc.abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """The op's output for ``x`` (the reference run)."""

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """Plain parameters (JSON values) and tensors that rebuild it (``from_spec``)."""
        return {}, {}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Op:
        return cls()


def _weight_bits(words: Tensor, n: int) -> Tensor:
    """The ``n`` weight bits of packed ``words`` (last axis), checking the padding bits are
    1 (:func:`pack_bits` with ``pad_value=True``: they must add nothing)."""
    bits = unpack_bits(words, n, -1)
    if not torch.equal(pack_bits(bits, -1, True), words):
        raise BinsenseError("packed weights whose padding bits are not 1.")
    return bits


# ---------------------------------------------------------------- ops


def _cached(op: Op, name: str, key: tuple, make):
    """``make()``, kept in ``op.__dict__[name]`` while ``key`` stays the same."""
    entry = op.__dict__.get(name)
    if entry is None or entry[0] != key:
        entry = (key, make())
        op.__dict__[name] = entry
    return entry[1]


def _tensor_key(t: Tensor) -> tuple:
    """Changes when ``t`` is replaced or written in place."""
    return (t.data_ptr(), t._version, tuple(t.shape))


@dataclass(frozen=True, eq=False)
class PackedConv(Op):
    r"""A binary 2-D convolution on ±1 inputs, with packed weights (module docstring).

    ``weight_words``: int64 ``(C_out, k_h, k_w, words)`` per group's input channels,
    padding bits 1 (they add nothing); ``weight_pm1``: the same weights as int8 ±1
    ``(C_out, C_in / groups, k_h, k_w)``; :meth:`border`: int32 ``(C_out, H_out, W_out)``
    correction for the zero padding of the trained model, built for one input size.
    """

    out_channels: int
    in_per_group: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    weight_words: Tensor
    weight_pm1: Tensor

    @property
    def fan_in(self) -> int:
        return self.in_per_group * self.kernel[0] * self.kernel[1]

    @classmethod
    def of(cls, conv: BinaryConv2d) -> PackedConv:
        """The op of a trained binary conv (its binary weights, packed)."""
        if conv.scale or conv.bias is not None or conv.input_quantizer is not None:
            raise BinsenseError(
                "the deploy step packs binary convs without XNOR scale, bias or input "
                "quantizer (the recipe models' form)."
            )
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise BinsenseError("the deploy step packs convs with dilation 1 and zero padding.")
        with torch.no_grad():
            w = conv.binary_weight().detach().cpu()
        if not torch.all(w.abs() == 1):
            raise BinsenseError("binary conv weights must be ±1 to pack (sign quantizer).")
        words = pack_bits(w.permute(0, 2, 3, 1) > 0, -1, True)
        return cls(w.shape[0], w.shape[1], tuple(conv.kernel_size), tuple(conv.stride),
                   tuple(conv.padding), conv.groups, words, w.to(torch.int8))  # fmt: skip

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """Plain parameters and the packed words that rebuild this op (:meth:`from_spec`)."""
        params = {
            "out_channels": self.out_channels, "in_per_group": self.in_per_group,
            "kernel": list(self.kernel), "stride": list(self.stride),
            "padding": list(self.padding), "groups": self.groups,
        }  # fmt: skip
        return params, {"weight_words": self.weight_words}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> PackedConv:
        """The op of :meth:`spec`'s data (checked; ``weight_pm1`` unpacked from the words)."""
        groups = plain_int(params["groups"], "groups")
        stride = plain_pair(params["stride"], "stride", 1)
        padding = plain_pair(params["padding"], "padding", 0)
        kernel = plain_pair(params["kernel"], "kernel", 1)
        check_geometry(kernel, padding, stride)
        out_channels = plain_int(params["out_channels"], "out_channels")
        in_per_group = plain_int(params["in_per_group"], "in_per_group")
        if out_channels % groups:
            raise BinsenseError(f"{out_channels} output channels in {groups} groups.")
        kh, kw = kernel
        shape = (out_channels, kh, kw, -(-in_per_group // WORD))
        words = plain_tensor(tensors, "weight_words", torch.int64, shape)
        w = torch.where(_weight_bits(words, in_per_group), 1, -1).to(torch.int8)
        return cls(out_channels, in_per_group, kernel, stride, padding, groups, words,
                   w.permute(0, 3, 1, 2).contiguous())  # fmt: skip

    def border(self, height: int, width: int) -> Tensor:
        """``+sum(w)`` over the padded taps at each output position, ``(C_out, H', W')``."""

        def make() -> Tensor:
            ph, pw = self.padding
            pad = torch.ones(1, self.in_per_group * self.groups, height + 2 * ph, width + 2 * pw)
            pad[:, :, ph : ph + height, pw : pw + width] = 0
            border = F.conv2d(pad, self.weight_pm1.float(), stride=self.stride, groups=self.groups)
            return border[0].round().to(torch.int32)

        return _cached(self, "_border", (height, width), make)

    def __call__(self, x: Tensor) -> Tensor:
        """``x``: ±1 (any dtype) ``(B, C_in, H, W)`` -> int32 ``(B, C_out, H', W')``."""
        if kernels.runs(x):  # the C kernel (binsense.deploy.kernels); the same integers
            return self._by_kernel(x)
        b, c, h, w = x.shape
        ph, pw = self.padding
        bits = F.pad(to_bits(x), (pw, pw, ph, ph), value=False)
        kh, kw = self.kernel
        sh, sw = self.stride
        hout, wout = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        g, cg = self.groups, self.in_per_group
        cout_g = self.out_channels // g
        # (B, G, H_p, W_p, words): each pixel's group channels packed, padding bits 0
        words = pack_bits(bits.view(b, g, cg, *bits.shape[2:]).permute(0, 1, 3, 4, 2), -1, False)
        out = torch.zeros(b, self.out_channels, hout, wout, dtype=torch.int32, device=x.device)
        wwords = self.weight_words.to(x.device)
        for gi in range(g):
            wg = wwords[gi * cout_g : (gi + 1) * cout_g]  # (Cg_out, kh, kw, words)
            acc = torch.zeros(b, cout_g, hout, wout, dtype=torch.int32, device=x.device)
            for i in range(kh):
                for j in range(kw):
                    tap = words[:, gi, i : i + sh * hout : sh, j : j + sw * wout : sw, :]
                    xnor = ~(tap.unsqueeze(1) ^ wg[:, i, j].view(1, cout_g, 1, 1, -1))
                    acc += popcount64(xnor).sum(dim=-1)
            out[:, gi * cout_g : (gi + 1) * cout_g] = acc
        return 2 * out - self.fan_in + self.border(h, w).to(x.device)

    def _by_kernel(self, x: Tensor) -> Tensor:
        """The op by the C kernel (:func:`binsense.deploy.kernels.conv2d_words`),
        its weight panels, bias and dims kept between calls of the same geometry."""
        b, _, h, w = x.shape
        g, ww = self.groups, self.weight_words
        weights = _cached(
            self, "_xnor_weights", _tensor_key(ww), lambda: kernels.conv_weights(ww, g)
        )
        border = self.border(h, w)
        bias = _cached(
            self,
            "_xnor_bias",
            (h, w, id(border), self.fan_in),
            lambda: (
                (border.to(torch.int32) - self.fan_in).reshape(border.shape[0], -1).contiguous()
            ),
        )
        dims = _cached(self, "_xnor_dims", (b, h, w), lambda: kernels.conv_dims(
            b, h, w, g, self.in_per_group, self.out_channels // g, self.kernel,
            self.stride, self.padding))  # fmt: skip
        return kernels.conv2d_words(kernels.pack_input(x, g), weights, dims, bias)


@dataclass(frozen=True, eq=False)
class PackedLinear(Op):
    """A binary linear layer on ±1 inputs with packed weights (no padding):
    ``weight_words`` int64 ``(out, words)``, padding bits 1."""

    fan_in: int
    weight_words: Tensor

    @classmethod
    def of(cls, linear: BinaryLinear) -> PackedLinear:
        """The op of a trained binary linear layer."""
        if linear.scale or linear.bias is not None or linear.input_quantizer is not None:
            raise BinsenseError("the deploy step packs binary linear layers without scale or bias.")
        with torch.no_grad():
            w = linear.binary_weight().detach().cpu()
        return cls(w.shape[1], pack_bits(w > 0, 1, True))

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """Plain parameters and the packed words that rebuild this op (:meth:`from_spec`)."""
        params = {"out_features": int(self.weight_words.shape[0]), "fan_in": self.fan_in}
        return params, {"weight_words": self.weight_words}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> PackedLinear:
        """The op of :meth:`spec`'s data (checked)."""
        fan_in = plain_int(params["fan_in"], "fan_in")
        out = plain_int(params["out_features"], "out_features")
        words = plain_tensor(tensors, "weight_words", torch.int64, (out, -(-fan_in // WORD)))
        _weight_bits(words, fan_in)
        return cls(fan_in, words)

    def __call__(self, x: Tensor) -> Tensor:
        if kernels.runs(x):  # the C kernel (binsense.deploy.kernels); the same integers
            return self._by_kernel(x)
        words = pack_bits(to_bits(x), 1, False)  # (B, words)
        xnor = ~(words.unsqueeze(1) ^ self.weight_words.to(x.device).unsqueeze(0))
        return 2 * popcount64(xnor).sum(dim=-1) - self.fan_in

    def _by_kernel(self, x: Tensor) -> Tensor:
        """The op by the C kernel (:func:`binsense.deploy.kernels.gemm_packed`; int64
        as the PyTorch path), its weight panels kept between calls."""
        ww = self.weight_words
        panels = _cached(self, "_xnor_panels", _tensor_key(ww), lambda: kernels.pack_b(ww))
        c = kernels.gemm_packed(kernels.pack_input(x, 1), panels, ww.shape[0])
        return (2 * c - self.fan_in).to(torch.int64)


@dataclass(frozen=True, eq=False)
class MaxPoolInt(Op):
    """Max-pool on integer popcounts (where the trained block pools: before its norm),
    with the trained pool's geometry as plain pairs."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    @classmethod
    def of(cls, pool: nn.MaxPool2d) -> MaxPoolInt:
        """The op of a trained max-pool."""
        if pool.return_indices:
            raise BinsenseError("a max-pool returning indices does not deploy.")

        def pair(v) -> tuple[int, int]:
            return tuple(v) if isinstance(v, tuple | list) else (int(v), int(v))

        stride = pool.stride if pool.stride is not None else pool.kernel_size
        return cls(pair(pool.kernel_size), pair(stride), pair(pool.padding),
                   pair(pool.dilation), bool(pool.ceil_mode))  # fmt: skip

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """The geometry as plain values (:meth:`from_spec`)."""
        params = {"kernel": list(self.kernel), "stride": list(self.stride),
                  "padding": list(self.padding), "dilation": list(self.dilation),
                  "ceil_mode": self.ceil_mode}  # fmt: skip
        return params, {}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> MaxPoolInt:
        """The op of :meth:`spec`'s data (checked)."""
        kernel = plain_pair(params["kernel"], "kernel", 1)
        stride = plain_pair(params["stride"], "stride", 1)
        padding = plain_pair(params["padding"], "padding", 0)
        dilation = plain_pair(params["dilation"], "dilation", 1)
        check_geometry(kernel, padding, stride, dilation)
        if not isinstance(params["ceil_mode"], bool):
            raise BinsenseError("ceil_mode must be true or false.")
        return cls(kernel, stride, padding, dilation, params["ceil_mode"])

    @property
    def blocks(self) -> int | None:
        """The side ``k`` of non-overlapping ``k x k`` windows (stride ``k``, no padding,
        dilation or ceil mode), else ``None``."""
        k = self.kernel[0]
        plain = self.kernel == (k, k) and self.stride == (k, k) and self.padding == (0, 0)
        if plain and self.dilation == (1, 1) and not self.ceil_mode:
            return k
        return None

    def __call__(self, x: Tensor) -> Tensor:
        k = self.blocks
        if k is not None:  # non-overlapping windows: a max over reshaped blocks, on the integers
            b, c, h, w = x.shape
            h, w = h // k * k, w // k * k
            blocks = x[:, :, :h, :w].reshape(b, c, h // k, k, w // k, k)
            return blocks.amax(dim=(3, 5))
        # float32 holds every popcount exactly (|x| <= fan-in < 2^24)
        y = F.max_pool2d(x.to(torch.float32), self.kernel, self.stride, self.padding,
                         self.dilation, self.ceil_mode)  # fmt: skip
        return y.to(torch.int32)


@dataclass(frozen=True, eq=False)
class Threshold(Op):
    r"""Integer thresholds of a (norm, act) pair: ``+1`` iff ``flip * (y - tau) >= 0``.

    ``tau``: int64 ``(C,)``, or ``(C, m, n)`` per position class (DeSign); found by
    evaluating the trained modules on every integer :math:`-K..K` (module docstring).
    """

    tau: Tensor
    flip: Tensor

    @classmethod
    def of(
        cls, norm: nn.Module, act: nn.Module, fan_in: int, channels: int, spatial: bool
    ) -> Threshold:
        """The thresholds of a trained (norm, act) pair on integers ``-fan_in..fan_in``."""
        problem = fold_problem(norm, act)
        if problem is not None:
            raise BinsenseError(f"this (norm, activation) pair is no threshold: {problem}.")
        norm, act = norm.eval(), act.eval()
        values = torch.arange(-fan_in, fan_in + 1, dtype=torch.float32)
        n = values.numel()
        classes = tuple(act.kernel.shape[1:]) if isinstance(act, DeSign) else ()
        if spatial:
            probe = values.view(n, 1, 1, 1).expand(n, channels, *(classes or (1, 1)))
        else:
            probe = values.view(n, 1).expand(n, channels)
        with torch.no_grad():
            signs = act(norm(probe.contiguous())) > 0
        signs = signs.reshape(n, channels, *classes)  # one row per integer value
        # a (norm, sign) pair is monotone in y: +1 from tau upwards (flip +1) or up to tau
        # (flip -1); all +1 or all -1 is a constant channel
        always, never = signs.all(0), ~signs.any(0)
        rising = signs[-1] & ~always | never
        first_pos = signs.to(torch.int8).argmax(0)
        last_pos = n - 1 - signs.flip(0).to(torch.int8).argmax(0)
        tau = torch.where(rising, first_pos, last_pos).to(torch.int64) - fan_in
        tau = torch.where(always, -fan_in - 1, torch.where(never, fan_in + 1, tau))
        flip = torch.where(rising | always, 1, -1).to(torch.int64)
        cls._check_monotone(signs, tau, flip, values)
        return cls(tau, flip)

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """No plain parameters; the tensors ``tau`` and ``flip`` (:meth:`from_spec`)."""
        return {}, {"tau": self.tau, "flip": self.flip}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Threshold:
        """The op of :meth:`spec`'s data: int64 ``tau`` ``(C,)`` or ``(C, m, n)``, ``flip``
        ±1 of the same shape."""
        tau = plain_tensor(tensors, "tau", torch.int64)
        if tau.dim() not in (1, 3):
            raise BinsenseError(f"thresholds of shape {tuple(tau.shape)}: (C,) or (C, m, n).")
        flip = plain_tensor(tensors, "flip", torch.int64, tau.shape)
        if not bool((flip.abs() == 1).all()):
            raise BinsenseError("threshold directions must be +1 or -1.")
        return cls(tau, flip)

    @staticmethod
    def _check_monotone(signs: Tensor, tau: Tensor, flip: Tensor, values: Tensor) -> None:
        v = values.to(torch.int64).view(-1, *([1] * (signs.dim() - 1)))
        rebuilt = (flip.unsqueeze(0) * (v - tau.unsqueeze(0))) >= 0
        if not torch.equal(rebuilt, signs):
            raise BinsenseError(
                "a (norm, activation) pair is not a threshold on integers (not monotone); "
                "it cannot be deployed as integer compares."
            )

    def _signed(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(flip, flip * tau)`` as int32, broadcast to ``y`` (cached per map size)."""
        return _cached(self, "_signed_cache", (tuple(y.shape[1:]), y.device),
                       lambda: self._make_signed(y))  # fmt: skip

    def _make_signed(self, y: Tensor) -> tuple[Tensor, Tensor]:
        tau, flip = self.tau.to(y.device), self.flip.to(y.device)
        if tau.dim() == 3:  # per position class, tiled from the top-left corner
            c, h, w = tau.shape[0], y.shape[2], y.shape[3]
            tau = design_thresholds(tau.double(), c, h, w).to(torch.int64).unsqueeze(0)
            flip = design_thresholds(flip.double(), c, h, w).to(torch.int64).unsqueeze(0)
        else:
            shape = (1, -1, *([1] * (y.dim() - 2)))
            tau, flip = tau.view(shape), flip.view(shape)
        # |tau| <= K + 1 and |y| <= K: int32 products cannot overflow
        return flip.to(torch.int32), (flip * tau).to(torch.int32)

    def __call__(self, y: Tensor) -> Tensor:
        """int32 popcounts ``(B, C, ...)`` -> int8 ±1: ``flip * y >= flip * tau``."""
        flip, flip_tau = self._signed(y)
        return (y.to(torch.int32) * flip >= flip_tau).to(torch.int8).mul_(2).sub_(1)


@dataclass(frozen=True, eq=False)
class PlanesInput(Op):
    """A binary encoder as integer compares: ADC code -> ±1 planes via its code table
    (bool ``(C, 256, K)``)."""

    table: Tensor

    @classmethod
    def of(cls, encoder: nn.Module) -> PlanesInput:
        """The op of a trained binary encoder (its exact code table)."""
        return cls(encoder.code_table().cpu())

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """No plain parameters; the bool code table (:meth:`from_spec`)."""
        return {}, {"table": self.table}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> PlanesInput:
        """The op of :meth:`spec`'s data: a bool ``(C, 256, K)`` code table."""
        table = plain_tensor(tensors, "table", torch.bool)
        if table.dim() != 3 or table.shape[1] != 256:
            raise BinsenseError(f"a code table of shape {tuple(table.shape)}: (C, 256, K).")
        return cls(table)

    def __call__(self, x: Tensor) -> Tensor:
        codes = adc_code(x).to(torch.int64)  # (B, C, H, W)
        table = self.table.to(x.device)
        c, _, k = table.shape
        bits = table[torch.arange(c, device=x.device).view(1, c, 1, 1), codes]  # B,C,H,W,K
        bits = bits.permute(0, 1, 4, 2, 3).reshape(x.shape[0], c * k, *x.shape[2:])
        return torch.where(bits, 1, -1).to(torch.int8)


@dataclass(frozen=True, eq=False)
class FloatStage(Op):
    """Float32 ops (a float encoder or first block, a float head, a residual unit's float
    part): typed ops of :mod:`binsense.deploy.stage`, their convs and linear layers in
    the one fixed summation order of :mod:`binsense.deploy.floatops` (one answer per
    image, whatever the batch). ``sources``: the paths, in the trained model, of the conv
    and linear layers they came from (:meth:`DeployedModel.reference`)."""

    ops: tuple[stage.FloatOp, ...]
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # any sequences given: kept as tuples (frozen)
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "sources", tuple(self.sources))

    @classmethod
    def lower(cls, modules: Sequence[tuple[str, nn.Module]], bound: int = 0) -> FloatStage:
        """The stage of trained ``(path, module)`` pairs (:func:`binsense.deploy.stage.lower`;
        ``bound``: the largest integer its input holds, 0 for real values)."""
        lowered = stage.lower(modules, bound)
        return cls(tuple(lowered.ops), tuple(lowered.sources))

    def pre_sign(self) -> tuple[stage.FloatOp, ...] | None:
        """The ops up to the pre-activation of a final sign (a float first block
        ``conv -> [pool] -> norm -> sign``), or ``None`` when it ends otherwise."""
        if self.ops and type(self.ops[-1]) is stage.Sign:
            return self.ops[:-1]
        return None

    def __call__(self, x: Tensor) -> Tensor:
        return stage.run_ops(self.ops, x.to(torch.float32))


@dataclass(frozen=True, eq=False)
class ToInt8(Op):
    """Float ±1 -> int8 ±1 (after a float stage that ends in a sign)."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.to(torch.int8)


@dataclass(frozen=True, eq=False)
class Shuffle(Op):
    """A channel shuffle of ``groups`` (:func:`binsense.layers.shape.channel_shuffle`)."""

    groups: int

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        return {"groups": self.groups}, {}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Shuffle:
        return cls(plain_int(params["groups"], "groups"))

    def __call__(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)


@dataclass(frozen=True, eq=False)
class FlattenOp(Op):
    """``x.flatten(1)``."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@dataclass(frozen=True, eq=False)
class ResidualOp(Op):
    r"""A binary residual unit on a real residual stream (the ResNet-18 BNN).

    :math:`y = \mathrm{post}(\mathrm{act}_2(\mathrm{norm}_2(W_2 \ast h)) + s(x))` with
    :math:`h` the thresholded popcount of :math:`W_1 \ast \operatorname{sign}(x)`: both
    binary convs run packed; the stream, block 2's norm and DeSign shift, the shortcut
    and hardtanh are float stages (typed float32 ops), computed as PyTorch does on the
    same integers.
    """

    conv1: PackedConv
    threshold1: Threshold
    conv2: PackedConv
    rest: FloatStage
    shortcut: FloatStage
    post: FloatStage

    @classmethod
    def of(cls, unit: ResidualUnit, path: str = "") -> ResidualOp:
        """The op of a trained residual unit at ``path`` in its model."""
        b1, b2 = unit.block1, unit.block2
        if not isinstance(unit.binarize, SignQuantizer) or not (
            isinstance(b1.conv, BinaryConv2d) and isinstance(b2.conv, BinaryConv2d)
        ):
            raise BinsenseError("only binary residual units (a sign on the stream) deploy.")
        if b1.pool is not None or b2.pool is not None:
            raise BinsenseError("a residual unit with pooling inside does not deploy.")
        conv1, conv2 = PackedConv.of(b1.conv), PackedConv.of(b2.conv)
        threshold1 = Threshold.of(b1.norm, b1.act, conv1.fan_in, b1.conv.out_channels, True)
        at = f"{path}." if path else ""
        rest = FloatStage.lower(
            [(f"{at}block2.norm", b2.norm), (f"{at}block2.act", b2.act)], conv2.fan_in
        )
        shortcut = FloatStage.lower([(f"{at}shortcut", unit.shortcut)])
        post = FloatStage.lower([(f"{at}post", unit.post)])
        return cls(conv1, threshold1, conv2, rest, shortcut, post)

    def __call__(self, x: Tensor, observe: Observer | None = None) -> Tensor:
        x = x.to(torch.float32)
        signs = torch.where(x >= 0, 1, -1).to(torch.int8)  # sign(0) = +1
        y1 = self.conv1(signs)
        y2 = self.conv2(self.threshold1(y1))
        if observe is not None:
            observe(self.conv1, y1)
            observe(self.conv2, y2)
        return self.post(self.rest(y2.to(torch.float32)) + self.shortcut(x))


@dataclass(frozen=True)
class ConvUnit:
    """A binary conv of a program with what consumes its integers: an optional
    :class:`MaxPoolInt`, then ``tail`` (a :class:`Threshold`, a float head stage, another
    op, or ``None`` at the end of the program) at index ``tail_index``. Found once, when
    the program is built (:attr:`OpList.units`); the engine runs a ``fused`` unit as one
    C call (conv, pool on bits, threshold), the C export lowers a unit to one layer."""

    conv: PackedConv
    pool: MaxPoolInt | None
    tail: Op | None
    tail_index: int

    @property
    def fused(self) -> bool:
        """Conv, a non-overlapping pool or none, and a threshold: one fused C call."""
        no_pool = self.pool is None or self.pool.blocks is not None
        return isinstance(self.tail, Threshold) and no_pool


def _conv_unit(ops: Sequence[Op], i: int) -> ConvUnit:
    """The :class:`ConvUnit` of the :class:`PackedConv` at ``ops[i]``."""
    conv, j = ops[i], i + 1
    pool = ops[j] if j < len(ops) and isinstance(ops[j], MaxPoolInt) else None
    j += pool is not None
    return ConvUnit(conv, pool, ops[j] if j < len(ops) else None, j)


#: ``observe(op, output)``: called by :meth:`OpList.__call__` after each op runs.
Observer = Callable[[Op, Tensor], None]


class OpList(Sequence[Op]):
    """The ops of a deployed program in order, each with its name: a plain sequence
    (``ops[i]``, ``len``, iteration), :meth:`named` pairs, and the reference run."""

    def __init__(self, named: Mapping[str, Op] | Iterable[tuple[str, Op]]) -> None:
        pairs = list(named.items() if isinstance(named, Mapping) else named)
        for name, op in pairs:
            if not isinstance(op, Op):
                raise BinsenseError(f"op {name!r} is a {type(op).__name__}, not a deployed op.")
        self.names = tuple(name for name, _ in pairs)
        self.ops = tuple(op for _, op in pairs)
        #: Each binary conv's unit (conv, pool, what takes its integers), by op index:
        #: the fusion the engine and the C export both follow, decided here once.
        self.units = {
            i: _conv_unit(self.ops, i)
            for i, op in enumerate(self.ops)
            if isinstance(op, PackedConv)
        }

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, i):  # type: ignore[override]
        return self.ops[i]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def named(self) -> Iterator[tuple[str, Op]]:
        """``(name, op)`` in order."""
        return zip(self.names, self.ops, strict=True)

    def walk(self) -> Iterator[Op]:
        """Every op, the parts of a residual unit included (after it)."""
        for op in self.ops:
            yield op
            if isinstance(op, ResidualOp):
                yield from (op.conv1, op.threshold1, op.conv2, op.rest, op.shortcut, op.post)

    def __call__(self, x: Tensor, observe: Observer | None = None) -> Tensor:
        """The ops in order on ``x`` (the reference run); ``observe(op, out)`` after each
        op (and each binary conv inside a residual unit)."""
        for op in self.ops:
            x = op(x, observe) if isinstance(op, ResidualOp) else op(x)
            if observe is not None:
                observe(op, x)
        return x


__all__ = [
    "ConvUnit",
    "Observer",
    "Op",
    "OpList",
    "MAX_STRIDE",
    "FlattenOp",
    "FloatStage",
    "MaxPoolInt",
    "PackedConv",
    "PackedLinear",
    "PlanesInput",
    "ResidualOp",
    "Shuffle",
    "Threshold",
    "ToInt8",
    "check_geometry",
]
