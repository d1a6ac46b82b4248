r"""The deployed ops: what :func:`binsense.deploy.program.convert` emits and every reader
of a program (the reference run, the packed engine, the file format, ONNX, QONNX, C)
interprets. Each op holds its plain parameters; ``spec()`` / ``from_spec()`` give and
take them as JSON values and tensors, every value checked (a file cannot make the loader
allocate or index out of range).

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

from collections.abc import Sequence
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


def _blank(cls):
    """An instance of the module class ``cls`` without running its ``__init__``."""
    op = cls.__new__(cls)
    nn.Module.__init__(op)
    return op


def _weight_bits(words: Tensor, n: int) -> Tensor:
    """The ``n`` weight bits of packed ``words`` (last axis), checking the padding bits are
    1 (:func:`pack_bits` with ``pad_value=True``: they must add nothing)."""
    bits = unpack_bits(words, n, -1)
    if not torch.equal(pack_bits(bits, -1, True), words):
        raise BinsenseError("packed weights whose padding bits are not 1.")
    return bits


# ---------------------------------------------------------------- ops


def _cached(module: nn.Module, name: str, key: tuple, make):
    """``make()``, kept in ``module.__dict__[name]`` while ``key`` stays the same."""
    entry = module.__dict__.get(name)
    if entry is None or entry[0] != key:
        entry = (key, make())
        module.__dict__[name] = entry
    return entry[1]


def _tensor_key(t: Tensor) -> tuple:
    """Changes when ``t`` is replaced or written in place."""
    return (t.data_ptr(), t._version, tuple(t.shape))


class PackedConv(nn.Module):
    r"""A binary 2-D convolution on ±1 inputs, with packed weights (module docstring).

    ``weight_words``: int64 ``(C_out, k_h, k_w, words)`` per group's input channels;
    ``border``: int32 ``(C_out, H_out, W_out)`` correction for the zero padding of the
    trained model, built for one input size (rebuilt when another size comes).
    """

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
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
        self.groups = conv.groups
        self.stride = conv.stride
        self.padding = conv.padding
        self.kernel = conv.kernel_size
        self.out_channels, self.in_per_group = w.shape[0], w.shape[1]
        self.fan_in = self.in_per_group * self.kernel[0] * self.kernel[1]
        self.register_buffer("weight_pm1", w.to(torch.int8))
        # words along the input channels of each group; padding bits 1 (adds nothing)
        self.register_buffer("weight_words", pack_bits(w.permute(0, 2, 3, 1) > 0, -1, True))
        self._border: tuple[tuple[int, int], Tensor] | None = None

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
        op = _blank(cls)
        op.groups = plain_int(params["groups"], "groups")
        op.stride = plain_pair(params["stride"], "stride", 1)
        op.padding = plain_pair(params["padding"], "padding", 0)
        op.kernel = plain_pair(params["kernel"], "kernel", 1)
        check_geometry(op.kernel, op.padding, op.stride)
        op.out_channels = plain_int(params["out_channels"], "out_channels")
        op.in_per_group = plain_int(params["in_per_group"], "in_per_group")
        if op.out_channels % op.groups:
            raise BinsenseError(f"{op.out_channels} output channels in {op.groups} groups.")
        kh, kw = op.kernel
        op.fan_in = op.in_per_group * kh * kw
        shape = (op.out_channels, kh, kw, -(-op.in_per_group // WORD))
        words = plain_tensor(tensors, "weight_words", torch.int64, shape)
        w = torch.where(_weight_bits(words, op.in_per_group), 1, -1).to(torch.int8)
        op.register_buffer("weight_pm1", w.permute(0, 3, 1, 2).contiguous())
        op.register_buffer("weight_words", words)
        op._border = None
        return op

    def border(self, height: int, width: int) -> Tensor:
        """``+sum(w)`` over the padded taps at each output position, ``(C_out, H', W')``."""
        if self._border is not None and self._border[0] == (height, width):
            return self._border[1]
        ph, pw = self.padding
        pad = torch.ones(1, self.in_per_group * self.groups, height + 2 * ph, width + 2 * pw)
        pad[:, :, ph : ph + height, pw : pw + width] = 0
        border = F.conv2d(pad, self.weight_pm1.float(), stride=self.stride, groups=self.groups)
        self._border = ((height, width), border[0].round().to(torch.int32))
        return self._border[1]

    def forward(self, x: Tensor) -> Tensor:
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
        """:meth:`forward` by the C kernel (:func:`binsense.deploy.kernels.conv2d_words`),
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


class PackedLinear(nn.Module):
    """A binary linear layer on ±1 inputs with packed weights (no padding)."""

    def __init__(self, linear: BinaryLinear) -> None:
        super().__init__()
        if linear.scale or linear.bias is not None or linear.input_quantizer is not None:
            raise BinsenseError("the deploy step packs binary linear layers without scale or bias.")
        with torch.no_grad():
            w = linear.binary_weight().detach().cpu()
        self.fan_in = w.shape[1]
        self.register_buffer("weight_words", pack_bits(w > 0, 1, True))

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """Plain parameters and the packed words that rebuild this op (:meth:`from_spec`)."""
        params = {"out_features": int(self.weight_words.shape[0]), "fan_in": self.fan_in}
        return params, {"weight_words": self.weight_words}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> PackedLinear:
        """The op of :meth:`spec`'s data (checked)."""
        op = _blank(cls)
        op.fan_in = plain_int(params["fan_in"], "fan_in")
        out = plain_int(params["out_features"], "out_features")
        words = plain_tensor(tensors, "weight_words", torch.int64, (out, -(-op.fan_in // WORD)))
        _weight_bits(words, op.fan_in)
        op.register_buffer("weight_words", words)
        return op

    def forward(self, x: Tensor) -> Tensor:
        if kernels.runs(x):  # the C kernel (binsense.deploy.kernels); the same integers
            return self._by_kernel(x)
        words = pack_bits(to_bits(x), 1, False)  # (B, words)
        xnor = ~(words.unsqueeze(1) ^ self.weight_words.to(x.device).unsqueeze(0))
        return 2 * popcount64(xnor).sum(dim=-1) - self.fan_in

    def _by_kernel(self, x: Tensor) -> Tensor:
        """:meth:`forward` by the C kernel (:func:`binsense.deploy.kernels.gemm_packed`; int64
        as the PyTorch path), its weight panels kept between calls."""
        ww = self.weight_words
        panels = _cached(self, "_xnor_panels", _tensor_key(ww), lambda: kernels.pack_b(ww))
        c = kernels.gemm_packed(kernels.pack_input(x, 1), panels, ww.shape[0])
        return (2 * c - self.fan_in).to(torch.int64)


class MaxPoolInt(nn.Module):
    """Max-pool on integer popcounts (where the trained block pools: before its norm),
    with the trained pool's geometry as plain pairs."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        if pool.return_indices:
            raise BinsenseError("a max-pool returning indices does not deploy.")

        def pair(v) -> tuple[int, int]:
            return tuple(v) if isinstance(v, tuple | list) else (int(v), int(v))

        self.kernel = pair(pool.kernel_size)
        self.stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = pair(pool.padding)
        self.dilation = pair(pool.dilation)
        self.ceil_mode = bool(pool.ceil_mode)

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """The geometry as plain values (:meth:`from_spec`)."""
        params = {"kernel": list(self.kernel), "stride": list(self.stride),
                  "padding": list(self.padding), "dilation": list(self.dilation),
                  "ceil_mode": self.ceil_mode}  # fmt: skip
        return params, {}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> MaxPoolInt:
        """The op of :meth:`spec`'s data (checked)."""
        op = _blank(cls)
        op.kernel = plain_pair(params["kernel"], "kernel", 1)
        op.stride = plain_pair(params["stride"], "stride", 1)
        op.padding = plain_pair(params["padding"], "padding", 0)
        op.dilation = plain_pair(params["dilation"], "dilation", 1)
        check_geometry(op.kernel, op.padding, op.stride, op.dilation)
        if not isinstance(params["ceil_mode"], bool):
            raise BinsenseError("ceil_mode must be true or false.")
        op.ceil_mode = params["ceil_mode"]
        return op

    @property
    def blocks(self) -> int | None:
        """The side ``k`` of non-overlapping ``k x k`` windows (stride ``k``, no padding,
        dilation or ceil mode), else ``None``."""
        k = self.kernel[0]
        plain = self.kernel == (k, k) and self.stride == (k, k) and self.padding == (0, 0)
        if plain and self.dilation == (1, 1) and not self.ceil_mode:
            return k
        return None

    def forward(self, x: Tensor) -> Tensor:
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


class Threshold(nn.Module):
    r"""Integer thresholds of a (norm, act) pair: ``+1`` iff ``flip * (y - tau) >= 0``.

    ``tau``: int64 ``(C,)``, or ``(C, m, n)`` per position class (DeSign); found by
    evaluating the trained modules on every integer :math:`-K..K` (module docstring).
    """

    def __init__(
        self, norm: nn.Module, act: nn.Module, fan_in: int, channels: int, spatial: bool
    ) -> None:
        super().__init__()
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
        self.register_buffer("tau", tau)
        self.register_buffer("flip", flip)
        self._check_monotone(signs, tau, flip, values)

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """No plain parameters; the tensors ``tau`` and ``flip`` (:meth:`from_spec`)."""
        return {}, {"tau": self.tau, "flip": self.flip}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Threshold:
        """The op of :meth:`spec`'s data: int64 ``tau`` ``(C,)`` or ``(C, m, n)``, ``flip``
        ±1 of the same shape."""
        op = _blank(cls)
        tau = plain_tensor(tensors, "tau", torch.int64)
        if tau.dim() not in (1, 3):
            raise BinsenseError(f"thresholds of shape {tuple(tau.shape)}: (C,) or (C, m, n).")
        flip = plain_tensor(tensors, "flip", torch.int64, tau.shape)
        if not bool((flip.abs() == 1).all()):
            raise BinsenseError("threshold directions must be +1 or -1.")
        op.register_buffer("tau", tau)
        op.register_buffer("flip", flip)
        return op

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
        key = (tuple(y.shape[1:]), y.device)
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        tau, flip = self.tau.to(y.device), self.flip.to(y.device)
        if tau.dim() == 3:  # per position class, tiled from the top-left corner
            c, h, w = tau.shape[0], y.shape[2], y.shape[3]
            tau = design_thresholds(tau.double(), c, h, w).to(torch.int64).unsqueeze(0)
            flip = design_thresholds(flip.double(), c, h, w).to(torch.int64).unsqueeze(0)
        else:
            shape = (1, -1, *([1] * (y.dim() - 2)))
            tau, flip = tau.view(shape), flip.view(shape)
        # |tau| <= K + 1 and |y| <= K: int32 products cannot overflow
        value = (flip.to(torch.int32), (flip * tau).to(torch.int32))
        self._cache = (key, value)
        return value

    def forward(self, y: Tensor) -> Tensor:
        """int32 popcounts ``(B, C, ...)`` -> int8 ±1: ``flip * y >= flip * tau``."""
        flip, flip_tau = self._signed(y)
        return (y.to(torch.int32) * flip >= flip_tau).to(torch.int8).mul_(2).sub_(1)


class PlanesInput(nn.Module):
    """A binary encoder as integer compares: ADC code -> ±1 planes via its code table."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.register_buffer("table", encoder.code_table().cpu())  # bool (C, 256, K)

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        """No plain parameters; the bool code table (:meth:`from_spec`)."""
        return {}, {"table": self.table}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> PlanesInput:
        """The op of :meth:`spec`'s data: a bool ``(C, 256, K)`` code table."""
        op = _blank(cls)
        table = plain_tensor(tensors, "table", torch.bool)
        if table.dim() != 3 or table.shape[1] != 256:
            raise BinsenseError(f"a code table of shape {tuple(table.shape)}: (C, 256, K).")
        op.register_buffer("table", table)
        return op

    def forward(self, x: Tensor) -> Tensor:
        codes = adc_code(x).to(torch.int64)  # (B, C, H, W)
        table = self.table.to(x.device)
        c, _, k = table.shape
        bits = table[torch.arange(c, device=x.device).view(1, c, 1, 1), codes]  # B,C,H,W,K
        bits = bits.permute(0, 1, 4, 2, 3).reshape(x.shape[0], c * k, *x.shape[2:])
        return torch.where(bits, 1, -1).to(torch.int8)


class FloatStage(nn.Module):
    """Float32 ops (a float encoder or first block, a float head, a residual unit's float
    part): typed ops of :mod:`binsense.deploy.stage`, their convs and linear layers in
    the one fixed summation order of :mod:`binsense.deploy.floatops` (one answer per
    image, whatever the batch). ``sources``: the paths, in the trained model, of the conv
    and linear layers they came from (:meth:`DeployedModel.reference`)."""

    def __init__(self, ops: Sequence[stage.FloatOp], sources: Sequence[str] = ()) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.sources = tuple(sources)

    @classmethod
    def lower(cls, modules: Sequence[tuple[str, nn.Module]], bound: int = 0) -> FloatStage:
        """The stage of trained ``(path, module)`` pairs (:func:`binsense.deploy.stage.lower`;
        ``bound``: the largest integer its input holds, 0 for real values)."""
        lowered = stage.lower(modules, bound)
        return cls(lowered.ops, lowered.sources)

    def pre_sign(self) -> tuple[stage.FloatOp, ...] | None:
        """The ops up to the pre-activation of a final sign (a float first block
        ``conv -> [pool] -> norm -> sign``), or ``None`` when it ends otherwise."""
        if self.ops and type(self.ops[-1]) is stage.Sign:
            return self.ops[:-1]
        return None

    def forward(self, x: Tensor) -> Tensor:
        return stage.run_ops(self.ops, x.to(torch.float32))


class ToInt8(nn.Module):
    """Float ±1 -> int8 ±1 (after a float stage that ends in a sign)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.to(torch.int8)


class Shuffle(nn.Module):
    """A channel shuffle of ``groups`` (:func:`binsense.layers.shape.channel_shuffle`)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = plain_int(groups, "groups")

    def spec(self) -> tuple[dict, dict[str, Tensor]]:
        return {"groups": self.groups}, {}

    @classmethod
    def from_spec(cls, params: dict, tensors: dict[str, Tensor]) -> Shuffle:
        return cls(params["groups"])

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)


class FlattenOp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class ResidualOp(nn.Module):
    r"""A binary residual unit on a real residual stream (the ResNet-18 BNN).

    :math:`y = \mathrm{post}(\mathrm{act}_2(\mathrm{norm}_2(W_2 \ast h)) + s(x))` with
    :math:`h` the thresholded popcount of :math:`W_1 \ast \operatorname{sign}(x)`: both
    binary convs run packed; the stream, block 2's norm and DeSign shift, the shortcut
    and hardtanh are float stages (typed float32 ops), computed as PyTorch does on the
    same integers.
    """

    def __init__(self, unit: ResidualUnit, path: str = "") -> None:
        super().__init__()
        b1, b2 = unit.block1, unit.block2
        if not isinstance(unit.binarize, SignQuantizer) or not (
            isinstance(b1.conv, BinaryConv2d) and isinstance(b2.conv, BinaryConv2d)
        ):
            raise BinsenseError("only binary residual units (a sign on the stream) deploy.")
        if b1.pool is not None or b2.pool is not None:
            raise BinsenseError("a residual unit with pooling inside does not deploy.")
        self.conv1 = PackedConv(b1.conv)
        self.threshold1 = Threshold(
            b1.norm, b1.act, self.conv1.fan_in, b1.conv.out_channels, spatial=True
        )
        self.conv2 = PackedConv(b2.conv)
        at = f"{path}." if path else ""
        self.rest = FloatStage.lower(
            [(f"{at}block2.norm", b2.norm), (f"{at}block2.act", b2.act)], self.conv2.fan_in
        )
        self.shortcut = FloatStage.lower([(f"{at}shortcut", unit.shortcut)])
        self.post = FloatStage.lower([(f"{at}post", unit.post)])

    @classmethod
    def from_parts(
        cls, conv1: PackedConv, threshold1: Threshold, conv2: PackedConv, rest: FloatStage,
        shortcut: FloatStage, post: FloatStage,
    ) -> ResidualOp:  # fmt: skip
        """The op from its rebuilt parts (a file; :mod:`binsense.deploy.fileformat`)."""
        op = _blank(cls)
        op.conv1, op.threshold1, op.conv2 = conv1, threshold1, conv2
        op.rest, op.shortcut, op.post = rest, shortcut, post
        return op

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        signs = torch.where(x >= 0, 1, -1).to(torch.int8)  # sign(0) = +1
        y2 = self.conv2(self.threshold1(self.conv1(signs)))
        return self.post(self.rest(y2.to(torch.float32)) + self.shortcut(x))


@dataclass(frozen=True)
class ConvUnit:
    """A binary conv of a program with what consumes its integers: an optional
    :class:`MaxPoolInt`, then ``tail`` (a :class:`Threshold`, a float head stage, another
    op, or ``None`` at the end of the program) at index ``tail_index``. The one place that
    finds a conv's group; the engine fuses it into one C call where it can, the C export
    lowers it to one layer."""

    conv: PackedConv
    pool: MaxPoolInt | None
    tail: nn.Module | None
    tail_index: int


def conv_unit(ops: Sequence[nn.Module], i: int) -> ConvUnit:
    """The :class:`ConvUnit` of the :class:`PackedConv` at ``ops[i]``."""
    conv, j = ops[i], i + 1
    pool = ops[j] if j < len(ops) and isinstance(ops[j], MaxPoolInt) else None
    j += pool is not None
    return ConvUnit(conv, pool, ops[j] if j < len(ops) else None, j)


__all__ = [
    "ConvUnit",
    "conv_unit",
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
