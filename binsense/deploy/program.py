r"""Trained BNN -> integer program, with bit-packed binary layers (reference engine).

:func:`convert` walks a recipe model (:class:`~binsense.models.recipe.RecipeModel`:
encoder -> blocks -> head) and returns a :class:`DeployedModel`, a list of small ops:

- **input stage**: a binary encoder becomes integer compares on the 8-bit ADC code (its
  exact code table); a float encoder and a float first block stay float32 modules, up
  to their sign, their conv summed in the one order of :mod:`binsense.deploy.floatops`
  (batched PyTorch's on the checked CPUs; the same at every batch size);
- :class:`PackedConv` / :class:`PackedLinear`: a binary layer on ±1 inputs, its weights
  packed into 64-bit words along the input channels of each group, computed as
  :math:`y = 2\,\mathrm{popcount}(\overline{x \oplus w}) - K` with :math:`K` the fan-in;
- :class:`MaxPoolInt`: max-pool on the integer popcount (before the threshold, where the
  trained block pools);
- :class:`Threshold`: the block's (norm, act) pair as integer thresholds, one per
  channel (sign) or per channel and position class (DeSign);
- the head: the classifier's norm on the integer output (a per-class scale and shift) or
  a float linear layer.

**Padding.** The trained model pads its ±1 activations with 0, a value no bit can hold.
The packed layer pads with bit 0 (that is, −1) and adds back, at every output position,
the contribution of the padded taps: :math:`+\sum_{\text{padded taps}} w` (a fixed
integer map per output channel and position, :attr:`PackedConv.border`), as Larq Compute
Engine corrects its zero padding. Channel padding of the last 64-bit word uses bit 0 in
the input and bit 1 in the weights, so :math:`\overline{0 \oplus 1} = 0` adds nothing.

**Thresholds by enumeration.** PyTorch evaluates batch norm in float32; folding it in
float64 (:mod:`binsense.deploy.folding`) equals exact arithmetic but can disagree with
float32 for an integer within rounding of a threshold. So the deployed thresholds are
found by evaluating the trained (norm, act) modules themselves on every integer the
layer can output (:math:`-K..K`, per position class for DeSign): the engine then agrees
with the PyTorch model on every input, bit for bit, by construction; the float64 fold
checks it.

This is the reference engine (PyTorch integer and bitwise ops, exact, not fast); the
run-time-dispatched XNOR-popcount kernels and the file format build on its ops.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binsense.deploy import floatops, kernels
from binsense.encoders.base import FloatEncoder, adc_code
from binsense.errors import BinsenseError, unit_range_problem
from binsense.layers.binary import BinaryConv2d, BinaryLinear, is_binary_layer
from binsense.layers.block import BinaryBlock, ResidualUnit
from binsense.layers.design import DeSign, design_thresholds
from binsense.quant.sign import SignQuantizer

WORD = 64


# ---------------------------------------------------------------- bits


def pack_bits(bits: Tensor, dim: int = 1, pad_value: bool = False) -> Tensor:
    """Pack bool ``bits`` along ``dim`` into int64 words (bit ``i % 64`` of word
    ``i // 64``), padding the last word with ``pad_value``; ``dim`` becomes the word axis."""
    bits = bits.movedim(dim, -1)
    n = bits.shape[-1]
    words = -(-n // WORD)
    if words * WORD != n:
        fill = torch.full((*bits.shape[:-1], words * WORD - n), pad_value, dtype=torch.bool)
        bits = torch.cat([bits, fill.to(bits.device)], dim=-1)
    bits = bits.reshape(*bits.shape[:-1], words, WORD).to(torch.int64)
    shifts = torch.arange(WORD, device=bits.device, dtype=torch.int64)
    packed = (bits << shifts).sum(dim=-1)  # distinct bits: the sum is the bitwise or
    return packed.movedim(-1, dim)


def unpack_bits(words: Tensor, n: int, dim: int = 1) -> Tensor:
    """The inverse of :func:`pack_bits`: int64 ``words`` along ``dim`` -> the first ``n``
    bits (bool) along ``dim``."""
    words = words.movedim(dim, -1)
    shifts = torch.arange(WORD, device=words.device, dtype=torch.int64)
    bits = ((words.unsqueeze(-1) >> shifts) & 1).to(torch.bool)  # bit 63 too: >> keeps it
    bits = bits.reshape(*words.shape[:-1], words.shape[-1] * WORD)[..., :n]
    return bits.movedim(-1, dim)


def popcount64(words: Tensor) -> Tensor:
    """Set bits of each int64 word (int32), by the SWAR bit-count (Hacker's Delight 5-1)."""
    x = words - ((words >> 1) & 0x5555555555555555)  # masks clear the sign extension
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56).to(torch.int32) & 0x7F  # byte sums, wrapping


def to_bits(x: Tensor) -> Tensor:
    """±1 activations -> bool (+1 -> True)."""
    return x > 0


# ---------------------------------------------------------------- plain data (files)
# ``spec()`` gives an op's plain parameters (JSON) and tensors, ``from_spec`` rebuilds it
# from them without the trained model (binsense.deploy.fileformat); every value is checked.

#: Bound on a kernel side, stride or padding read from a file.
_MAX_SIDE = 1 << 16


def _blank(cls):
    """An instance of the module class ``cls`` without running its ``__init__``."""
    op = cls.__new__(cls)
    nn.Module.__init__(op)
    return op


def _plain_int(value, name: str, low: int = 1, high: int = 1 << 40) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BinsenseError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return value


def _plain_pair(value, name: str, low: int) -> tuple[int, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise BinsenseError(f"{name} must be a pair of integers, got {value!r}.")
    return (_plain_int(value[0], name, low, _MAX_SIDE), _plain_int(value[1], name, low, _MAX_SIDE))


def _plain_tensor(tensors: dict[str, Tensor], name: str, dtype: torch.dtype, shape=None) -> Tensor:
    t = tensors.get(name)
    if not isinstance(t, Tensor) or t.dtype != dtype:
        raise BinsenseError(f"tensor {name!r} must be a {dtype} tensor.")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise BinsenseError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}.")
    return t


def _weight_bits(words: Tensor, n: int) -> Tensor:
    """The ``n`` weight bits of packed ``words`` (last axis), checking the padding bits are
    1 (:func:`pack_bits` with ``pad_value=True``: they must add nothing)."""
    bits = unpack_bits(words, n, -1)
    if not torch.equal(pack_bits(bits, -1, True), words):
        raise BinsenseError("packed weights whose padding bits are not 1.")
    return bits


# ---------------------------------------------------------------- ops


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
        op.groups = _plain_int(params["groups"], "groups")
        op.stride = _plain_pair(params["stride"], "stride", 1)
        op.padding = _plain_pair(params["padding"], "padding", 0)
        op.kernel = _plain_pair(params["kernel"], "kernel", 1)
        check_geometry(op.kernel, op.padding, op.stride)
        op.out_channels = _plain_int(params["out_channels"], "out_channels")
        op.in_per_group = _plain_int(params["in_per_group"], "in_per_group")
        if op.out_channels % op.groups:
            raise BinsenseError(f"{op.out_channels} output channels in {op.groups} groups.")
        kh, kw = op.kernel
        op.fan_in = op.in_per_group * kh * kw
        shape = (op.out_channels, kh, kw, -(-op.in_per_group // WORD))
        words = _plain_tensor(tensors, "weight_words", torch.int64, shape)
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
            return kernels.conv2d(self, x)
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
        op.fan_in = _plain_int(params["fan_in"], "fan_in")
        out = _plain_int(params["out_features"], "out_features")
        words = _plain_tensor(tensors, "weight_words", torch.int64, (out, -(-op.fan_in // WORD)))
        _weight_bits(words, op.fan_in)
        op.register_buffer("weight_words", words)
        return op

    def forward(self, x: Tensor) -> Tensor:
        if kernels.runs(x):  # the C kernel (binsense.deploy.kernels); the same integers
            return kernels.linear(self, x)
        words = pack_bits(to_bits(x), 1, False)  # (B, words)
        xnor = ~(words.unsqueeze(1) ^ self.weight_words.to(x.device).unsqueeze(0))
        return 2 * popcount64(xnor).sum(dim=-1) - self.fan_in


class MaxPoolInt(nn.Module):
    """Max-pool on integer popcounts (where the trained block pools: before its norm)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        p = self.pool
        k, s = p.kernel_size, p.stride
        if (
            isinstance(k, int) and k == s and p.padding == 0 and p.dilation == 1 and not p.ceil_mode
        ):  # non-overlapping windows: a max over reshaped blocks, on the integers
            b, c, h, w = x.shape
            h, w = h // k * k, w // k * k
            blocks = x[:, :, :h, :w].reshape(b, c, h // k, k, w // k, k)
            return blocks.amax(dim=(3, 5))
        # float32 holds every popcount exactly (|x| <= fan-in < 2^24)
        return p(x.to(torch.float32)).to(torch.int32)


class Threshold(nn.Module):
    r"""Integer thresholds of a (norm, act) pair: ``+1`` iff ``flip * (y - tau) >= 0``.

    ``tau``: int64 ``(C,)``, or ``(C, m, n)`` per position class (DeSign); found by
    evaluating the trained modules on every integer :math:`-K..K` (module docstring).
    """

    def __init__(
        self, norm: nn.Module, act: nn.Module, fan_in: int, channels: int, spatial: bool
    ) -> None:
        super().__init__()
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
        tau = _plain_tensor(tensors, "tau", torch.int64)
        if tau.dim() not in (1, 3):
            raise BinsenseError(f"thresholds of shape {tuple(tau.shape)}: (C,) or (C, m, n).")
        flip = _plain_tensor(tensors, "flip", torch.int64, tau.shape)
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
        table = _plain_tensor(tensors, "table", torch.bool)
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
    """Modules kept in float32 (a float encoder or first block, a float head); their
    convs and linear layers in the one fixed summation order of
    :mod:`binsense.deploy.floatops` (one answer per image, whatever the batch)."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*modules).eval()

    def forward(self, x: Tensor) -> Tensor:
        return floatops.forward(self.body, x.to(torch.float32))


class ToInt8(nn.Module):
    """Float ±1 -> int8 ±1 (after a float stage that ends in a sign)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.to(torch.int8)


class FlattenOp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class ResidualOp(nn.Module):
    r"""A binary residual unit on a real residual stream (the ResNet-18 BNN).

    :math:`y = \mathrm{post}(\mathrm{act}_2(\mathrm{norm}_2(W_2 \ast h)) + s(x))` with
    :math:`h` the thresholded popcount of :math:`W_1 \ast \operatorname{sign}(x)`: both
    binary convs run packed; the stream, block 2's norm and DeSign shift, the shortcut
    and hardtanh stay float32 modules, computed as PyTorch does on the same integers.
    """

    def __init__(self, unit: ResidualUnit) -> None:
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
        self.rest = FloatStage(b2.norm, b2.act)
        self.shortcut = unit.shortcut
        self.post = unit.post

    @classmethod
    def from_parts(
        cls, conv1: PackedConv, threshold1: Threshold, conv2: PackedConv, rest: FloatStage,
        shortcut: nn.Module, post: nn.Module,
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


# ---------------------------------------------------------------- the program


def model_input(x: Tensor) -> Tensor:
    """A deployed model's input, checked: float images in [0, 1], or uint8 ADC codes.

    The program reads images as the data pipeline gives them to the trained model:
    float ``pixel / 255`` (:mod:`binsense.data`), which a binary encoder turns back into
    the 8-bit code. Anything else would be misread without a word: integer pixels
    0..255 are all "full scale" after the ADC's clip, a NaN becomes code -2^63 (an index
    error in the code table) or one arbitrary class. So:

    - a uint8 tensor holds ADC codes and becomes ``x.float() / 255`` exactly as the data
      pipeline computes it (the same logits as the float images);
    - any other integer (or bool) dtype is refused: its scale is unknown;
    - float images must be finite and within [0, 1] (no mean/std normalisation),
      checked in one ``aminmax`` pass per batch (a NaN makes both bounds NaN; an
      infinity shows as a bound), as :class:`binsense.noise.SensorNoise` checks its input.
    """
    if not isinstance(x, Tensor):
        raise BinsenseError(
            f"a deployed model takes a torch.Tensor of images (B, C, H, W), got {type(x).__name__}."
        )
    if x.dtype == torch.uint8:  # ADC codes: as the data pipeline makes them [0, 1] floats
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise BinsenseError(
            f"a deployed model takes float images in [0, 1] or uint8 codes, got dtype "
            f"{x.dtype}; convert first, e.g. x.to(torch.uint8) for 8-bit pixels or "
            "x.float() / 255."
        )
    what = unit_range_problem(x)
    if what is not None:
        raise BinsenseError(
            f"a deployed model takes images in [0, 1] (pixel / 255), got {what}; pass "
            "pixel / 255 without mean/std normalisation (or uint8 codes), and no NaN."
        )
    return x


#: Largest stride or dilation a deployed file may give a conv or pool.
MAX_STRIDE = 8


def check_geometry(
    kernel: tuple[int, ...] | int,
    padding: tuple[int, ...] | int,
    stride: tuple[int, ...] | int = 1,
    dilation: tuple[int, ...] | int = 1,
) -> None:
    """A conv's or pool's geometry as binsense writes it: padding at most the kernel
    size (binsense pads by at most half of it), stride and dilation at most
    :data:`MAX_STRIDE`. A file read from disk is checked with it, so a crafted padding
    of 65,536 cannot make an activation map of gigabytes (``BinsenseError``)."""

    def pair(v: tuple[int, ...] | int) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    for k, p, s, d in zip(pair(kernel), pair(padding), pair(stride), pair(dilation), strict=True):
        if p > k or not 1 <= s <= MAX_STRIDE or not 1 <= d <= MAX_STRIDE:
            raise BinsenseError(
                f"geometry kernel {kernel}, padding {padding}, stride {stride}, dilation "
                f"{dilation}: padding beyond the kernel or stride / dilation above "
                f"{MAX_STRIDE} is not a binsense layer."
            )


# ---------------------------------------------------------------- shapes and memory
# The per-image shape of every op's output, found from the ops' plain parameters without
# running a packed op, and the activation memory that follows from it; a file's program
# is checked against the input before any op runs (issue 24).

#: Bytes counted per activation element: int64, the widest intermediate of any op.
BYTES_PER_ELEMENT = 8


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _image(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise BinsenseError(f"{what} takes (C, H, W) maps, got shape {shape}")
    return shape  # type: ignore[return-value]


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # type: ignore[return-value]


def _pool_side(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's max-pool output length (``pooling_output_shape``), 0 where it refuses."""
    if 2 * p > k:  # pad at most half of the kernel (PyTorch's check of 2-D pools)
        return 0
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:  # the last window starts inside the input
        out -= 1
    return out


def _meta_run(module: nn.Module, shape: tuple[int, ...], workspace: bool) -> tuple[tuple, int]:
    """``(output shape, peak elements)`` of the float module ``module`` on one image of
    ``shape``: a copy of it on the meta device (no memory; its tensors are swapped for
    meta ones, not copied) runs its own forward; the peak is the largest input plus
    output of any of its modules (with ``workspace``, a conv or linear layer adds 4x its
    output: the float64 temporaries of :func:`~binsense.deploy.floatops.fma` in the
    PyTorch fallback of the fixed-order float conv)."""
    memo: dict[int, object] = {}
    for t in (*module.parameters(), *module.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
        )
    body = copy.deepcopy(module, memo)
    peak = [0]

    def hook(m: nn.Module, inputs: tuple, out) -> None:
        size = sum(i.numel() for i in inputs if isinstance(i, Tensor))
        if isinstance(out, Tensor):
            work = 4 * out.numel() if workspace and isinstance(m, nn.Conv2d | nn.Linear) else 0
            peak[0] = max(peak[0], size + out.numel() + work)

    for m in body.modules():
        m.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = body.eval()(torch.empty(1, *shape, device="meta"))
    except Exception as e:  # whatever the forward raises: the shape does not fit
        first = (str(e).splitlines() or [type(e).__name__])[0].rstrip(".")
        raise BinsenseError(
            f"{type(module).__name__} cannot take shape {shape}: {first[:200]}"
        ) from None
    if not isinstance(out, Tensor) or out.dim() < 2:
        raise BinsenseError(f"{type(module).__name__} does not give a batch of maps or vectors")
    return tuple(out.shape[1:]), peak[0]


def op_footprint(
    op: nn.Module, shape: tuple[int, ...], workspace: bool = False
) -> tuple[tuple[int, ...], int]:
    """``(output shape, peak elements)`` of ``op`` on one image whose input has ``shape``
    (no batch axis), from the op's parameters: no packed op runs, a float stage runs on
    the meta device. Every geometry field is checked against ``shape`` (channels, fan-in,
    a map smaller than a kernel, ...): a mismatch is one :class:`BinsenseError` line, as
    is an op type this walk does not know.

    The peak counts the op's input and output elements and, with ``workspace``, the
    temporaries of the PyTorch fallback path (:meth:`DeployedModel.memory_bytes`).
    """
    from binsense.models.compact import ChannelShuffle

    shape = tuple(int(s) for s in shape)
    n_in = _numel(shape)
    if isinstance(op, PackedConv):
        c, h, w = _image(shape, "PackedConv")
        if c != op.in_per_group * op.groups:
            raise BinsenseError(
                f"PackedConv takes {op.in_per_group * op.groups} channels ({op.in_per_group} "
                f"per group, {op.groups} group(s)), got {c}"
            )
        (kh, kw), (sh, sw), (ph, pw) = _pair(op.kernel), _pair(op.stride), _pair(op.padding)
        hp, wp = h + 2 * ph, w + 2 * pw
        if hp < kh or wp < kw:
            raise BinsenseError(
                f"PackedConv's {kh}x{kw} kernel does not fit a {h}x{w} map (padding {ph}, {pw})"
            )
        out = (op.out_channels, (hp - kh) // sh + 1, (wp - kw) // sw + 1)
        work = 0
        if workspace:  # input bits as int64 (x3), one tap's XNOR words (x4), int32 sums
            words = -(-op.in_per_group // WORD)
            work = 3 * op.groups * words * WORD * hp * wp + _numel(out)
            work += 4 * (op.out_channels // op.groups) * out[1] * out[2] * words
        return out, n_in + _numel(out) + work
    if isinstance(op, PackedLinear):
        if len(shape) != 1 or shape[0] != op.fan_in:
            raise BinsenseError(
                f"PackedLinear takes vectors of {op.fan_in} values, got shape {shape}"
            )
        rows, words = op.weight_words.shape
        work = 3 * words * WORD + 4 * rows * words if workspace else 0
        return (int(rows),), n_in + int(rows) + work
    if isinstance(op, MaxPoolInt):
        c, h, w = _image(shape, "MaxPoolInt")
        p = op.pool
        k, d, pad = _pair(p.kernel_size), _pair(p.dilation), _pair(p.padding)
        s = _pair(p.stride if p.stride is not None else p.kernel_size)
        sides = tuple(
            _pool_side(n, *g, p.ceil_mode) for n, *g in zip((h, w), k, s, pad, d, strict=True)
        )
        if min(sides) < 1:
            raise BinsenseError(
                f"MaxPoolInt (kernel {p.kernel_size}, stride {p.stride}, padding {p.padding}, "
                f"dilation {p.dilation}) does not fit a {h}x{w} map"
            )
        out = (c, *sides)
        return out, n_in + _numel(out)
    if isinstance(op, Threshold):
        tau = op.tau
        if shape[:1] != tuple(tau.shape[:1]) or (tau.dim() == 3 and len(shape) != 3):
            layout = "(C, m, n) per position class" if tau.dim() == 3 else "(C,)"
            raise BinsenseError(
                f"Threshold holds {tau.shape[0]} channel thresholds {layout}, got shape {shape}"
            )
        return shape, 2 * n_in
    if isinstance(op, PlanesInput):
        c, h, w = _image(shape, "PlanesInput")
        tc, _, k = op.table.shape
        if c != tc:
            raise BinsenseError(f"PlanesInput codes {tc} colour channel(s), got {c}")
        out = (c * k, h, w)
        return out, n_in + 2 * _numel(out)  # the gathered bits, then the int64 ±1
    if isinstance(op, FloatStage):
        out, peak = _meta_run(op.body, shape, workspace)
        return out, n_in + peak
    if isinstance(op, ToInt8):
        return shape, 2 * n_in
    if isinstance(op, FlattenOp):
        if not shape:
            raise BinsenseError("FlattenOp takes maps or vectors, got a scalar")
        return (n_in,), 2 * n_in
    if isinstance(op, ChannelShuffle):
        if not shape or shape[0] % op.groups:
            raise BinsenseError(
                f"ChannelShuffle of {op.groups} groups takes channels divisible by "
                f"{op.groups}, got shape {shape}"
            )
        return shape, 2 * n_in
    if isinstance(op, ResidualOp):
        _image(shape, "ResidualOp")
        peaks = []
        s = shape
        for part in ("conv1", "threshold1", "conv2", "rest"):
            try:
                s, peak = op_footprint(getattr(op, part), s, workspace)
            except BinsenseError as e:
                raise BinsenseError(f"ResidualOp {part}: {e}") from None
            peaks.append(peak)
        short, peak_short = _meta_run(op.shortcut, shape, workspace)
        if short != s:
            raise BinsenseError(f"ResidualOp's shortcut gives shape {short}, its branch {s}")
        post, peak_post = _meta_run(op.post, s, workspace)
        # the stream (kept for the shortcut) + the largest part + branch and shortcut at the sum
        return post, n_in + max(*peaks, peak_short, peak_post) + 2 * _numel(s)
    raise BinsenseError(
        f"the shape walk does not know the op type {type(op).__name__}, so its memory "
        "cannot be estimated"
    )


def _checked_shape(input_shape) -> tuple[int, int, int]:
    """An image shape ``(C, H, W)`` of positive integers, else one :class:`BinsenseError`."""
    if not (isinstance(input_shape, tuple | list) and len(input_shape) == 3) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_shape
    ):
        raise BinsenseError(f"an image shape is (C, H, W) positive integers, got {input_shape!r}.")
    return tuple(input_shape)  # type: ignore[return-value]


def op_output_shape(op: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``op`` (no batch axis) for inputs of ``shape``, without running
    a packed op (:func:`op_footprint`)."""
    return op_footprint(op, shape)[0]


@dataclass
class DeployedModel:
    """The integer program: ``ops`` in order; ``forward`` gives the logits.

    Every entry point (calling it, :meth:`predict`, :meth:`run_ops`, :meth:`trace`)
    takes float images in [0, 1] or uint8 ADC codes and refuses anything else with one
    line (:func:`model_input`).
    """

    ops: nn.Sequential
    source: str = ""
    #: (trained binary layer, its packed op) pairs, in forward order, for layer checks.
    layers: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """The logits: by the packed engine where the C kernel runs
        (:class:`binsense.deploy.engine.PackedEngine`, bits between binary layers), else
        by the op list (:meth:`run_ops`); both give the same integers."""
        x = self._input(x)
        if not kernels.runs(x):
            return self.ops(x)
        engine = self.__dict__.get("_engine")
        if engine is None:
            from binsense.deploy.engine import PackedEngine  # engine imports this module

            engine = self.__dict__["_engine"] = PackedEngine(self.ops)
        return engine(x)

    @torch.no_grad()
    def run_ops(self, x: Tensor) -> Tensor:
        """The logits by the op list, op by op on ±1 / integer NCHW tensors (the
        reference the packed engine is checked against)."""
        return self.ops(self._input(x))

    def _input(self, x: Tensor) -> Tensor:
        """:func:`model_input`, and images of a shape the program fits: the first batch of
        each shape is walked (:meth:`activation_shapes`), so a wrong channel count or size
        is one line naming the op, never garbage from a kernel that trusts its shapes."""
        x = model_input(x)
        fitted = self.__dict__.setdefault("_fitted_shapes", set())
        shape = tuple(x.shape[1:])
        if shape not in fitted:
            self.activation_shapes(shape)
            fitted.add(shape)
        return x

    def float_stages(self) -> list[FloatStage]:
        """The float stages (first layer, head, a residual unit's float part): the trained
        model's modules, shared, run in the order of :mod:`binsense.deploy.floatops`."""
        return [m for m in self.ops.modules() if isinstance(m, FloatStage)]

    def shared_float_stages(self, model: nn.Module) -> list[FloatStage]:
        """The float stages as modules of the trained ``model`` (this program's own when
        it was converted from that very model, else those of a fresh conversion)."""
        own = {id(m) for m in model.modules()}
        stages = self.float_stages()
        if all(id(m) in own for stage in stages for m in stage.body):
            return stages
        return convert(model).float_stages()

    @torch.no_grad()
    def reference(self, model: nn.Module, x: Tensor) -> Tensor:
        """The trained ``model``'s logits on ``x`` with its float layers summed in the
        deployed order (:func:`~binsense.deploy.floatops.ordered`): what the deployed
        logits equal bit for bit."""
        with floatops.ordered(*self.shared_float_stages(model)):
            return model.eval()(x)

    @torch.no_grad()
    def trace(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Each op's name and output, in order (for per-layer comparisons)."""
        x = self._input(x)
        for name, op in self.ops.named_children():
            x = op(x)
            yield name, x

    def predict(self, x: Tensor) -> Tensor:
        """The predicted classes: the argmax of the logits (input as for calling it)."""
        return self(x).argmax(1)

    def _walk(self, input_shape, workspace: bool) -> list[tuple[tuple[int, ...], int]]:
        """``(output shape, peak elements)`` of every op on one image (:func:`op_footprint`);
        the first op that does not fit its input is one :class:`BinsenseError` line."""
        shape = _checked_shape(input_shape)
        shown = "x".join(map(str, shape))
        steps = []
        for name, op in self.ops.named_children():
            try:
                out, peak = op_footprint(op, shape, workspace)
            except BinsenseError as e:
                raise BinsenseError(
                    f"the deployed program cannot run on images of shape {shown}: op {name!r}: "
                    f"{str(e).rstrip('.')}; give images of the size it was built for."
                ) from None
            steps.append((out, peak))
            shape = out
        return steps

    def activation_shapes(self, input_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
        """The output shape (no batch axis) of every op for images ``input_shape``
        (``C, H, W``), from the ops' parameters: no packed op runs, a float stage runs on
        the meta device (no memory). Every geometry field is checked against the input:
        a channel count, fan-in or map size that does not fit, or an op type the walk
        does not know, is one :class:`BinsenseError` line naming the op."""
        return [shape for shape, _ in self._walk(input_shape, False)]

    def memory_bytes(
        self, input_shape: tuple[int, int, int], batch: int = 1, *, workspace: bool | None = None
    ) -> int:
        r"""Estimated activation memory (bytes) of running this program on ``batch``
        images of ``input_shape`` (``C, H, W``), from :meth:`activation_shapes`' walk:

        .. math:: \text{bytes} = 8 \, B \, \max_i \,(\text{in}_i + \text{out}_i
                  + \text{work}_i)

        with :math:`B` the batch, :math:`\text{in}_i` and :math:`\text{out}_i` the
        elements of one image's input and output of op :math:`i` (the ops run one after
        the other, so one op's input and output are alive at a time; a float stage counts
        its input plus its largest module's input and output, a residual unit the stream,
        its largest part, and its branch and shortcut at the sum), and 8 bytes an element:
        int64, the widest intermediate. With ``workspace`` (default: when the C kernel
        does not run, :func:`binsense.deploy.kernels.backend` ``"torch"``),
        :math:`\text{work}_i` adds the PyTorch fallback's temporaries: for a packed conv
        or linear layer its input bits, padded to whole words, three times over (the
        padded copy, the bits as int64, shifted), four copies of one tap's XNOR words
        (:math:`C_\text{out}/G \cdot H' W' \cdot` words: the XNOR and the popcount's
        steps) and, for a conv, its output again (the int32 sums); for a float conv or
        linear layer four float64 copies of its output (the exact FMA). It is 0 on the C
        path, whose buffers hold words (64 activations each). Measured peaks of resident
        memory (VGG-small, the compact BNN and the ResNet-18 BNN, at batch 64 on the
        PyTorch path and 250 on the C path) were 0.1 to 0.7 times the estimate.

        An upper-ish estimate: the activations are int8 (±1), int32 (popcounts) or
        float32, so 8 bytes an element leaves room for the short-lived copies an op makes
        (a dtype conversion, a padded map). Not counted: the program's weights (in memory
        once it is loaded), a PyTorch model run beside it (``deploy --check``), and the
        allocator's own overhead.
        """
        batch = _plain_int(batch, "batch")
        if workspace is None:
            workspace = kernels.backend() == "torch"
        steps = self._walk(input_shape, workspace)
        peak = max([_numel(_checked_shape(input_shape)), *(p for _, p in steps)])
        return BYTES_PER_ELEMENT * batch * peak

    def check_memory(
        self,
        input_shape: tuple[int, int, int],
        batch: int = 1,
        *,
        what: str | None = None,
        allow: bool | None = None,
        available: int | None = None,
        workspace: bool | None = None,
        fix: str = "give fewer images at a time",
    ) -> int:
        """Refuse to run on ``batch`` images of ``input_shape`` before any op runs: the
        geometry walk (:meth:`activation_shapes`; :class:`BinsenseError`), then
        :func:`binsense.resources.check_fits` on :meth:`memory_bytes` (a
        :class:`~binsense.resources.ResourceError` line naming ``--allow-large``;
        ``allow`` or ``$BINSENSE_ALLOW_LARGE`` skip it, ``available`` overrides the
        measured memory; ``fix``: what the refusal tells the user to do first). Returns
        the estimate in bytes."""
        from binsense.resources import check_fits

        needed = self.memory_bytes(input_shape, batch, workspace=workspace)
        if what is None:
            shown = "x".join(map(str, _checked_shape(input_shape)))
            what = (
                f"running the deployed {self.source or 'program'} on a batch of {batch} "
                f"images of shape {shown}"
            )
        check_fits(needed, device="cpu", what=what, allow=allow, available=available, fix=fix)
        return needed

    def save(self, path, meta: dict | None = None):
        """Write this program to a file (:func:`binsense.deploy.fileformat.save_deployed`)."""
        from binsense.deploy.fileformat import save_deployed

        return save_deployed(self, path, meta)

    @classmethod
    def load(cls, path) -> DeployedModel:
        """A program from a file (:func:`binsense.deploy.fileformat.load_deployed`)."""
        from binsense.deploy.fileformat import load_deployed

        return load_deployed(path)


def _binary_input_block(block: BinaryBlock) -> bool:
    return is_binary_layer(block.conv) and isinstance(block.act, SignQuantizer | DeSign)


def _block_ops(block: BinaryBlock, name: str, ops: dict[str, nn.Module], layers: list) -> None:
    conv = block.conv
    packed: nn.Module = PackedConv(conv) if isinstance(conv, BinaryConv2d) else PackedLinear(conv)
    ops[f"{name}_conv"] = packed
    layers.append((conv, packed))
    if block.pool is not None:
        if not isinstance(block.pool, nn.MaxPool2d):
            raise BinsenseError(f"block {name}: only max-pools deploy on integers.")
        ops[f"{name}_pool"] = MaxPoolInt(block.pool)
    if isinstance(block.act, SignQuantizer | DeSign):
        channels = conv.out_channels if isinstance(conv, BinaryConv2d) else conv.out_features
        spatial = isinstance(conv, BinaryConv2d)
        ops[f"{name}_threshold"] = Threshold(
            block.norm, block.act, packed.fan_in, channels, spatial
        )
    elif isinstance(block.act, nn.Identity):  # the classifier: its norm on the integers
        ops[f"{name}_norm"] = FloatStage(block.norm)
    else:
        raise BinsenseError(f"block {name}: activation {type(block.act).__name__} does not deploy.")


def convert(model: nn.Module) -> DeployedModel:
    """A trained recipe model (eval mode) as an integer program (module docstring).

    Supports the plain recipes (MNIST BNN, VGG-small, CNV, the compact grouped BNN, with
    DeSign, groups, any norm, k-bit BN, binary encoders) and the ResNet-18 BNN (binary
    residual units on a float residual stream). The float CIFAR baselines have nothing
    binary to deploy and raise a clear :class:`BinsenseError`.
    """
    from binsense.models.recipe import RecipeModel

    if not isinstance(model, RecipeModel):
        raise BinsenseError("convert() takes a binsense recipe model (build_model / load_model).")
    model = model.eval()
    if not any(is_binary_layer(m) for m in model.modules()):
        raise BinsenseError("this model has no binary layer: there is nothing to deploy.")
    ops: dict[str, nn.Module] = {}
    layers: list[tuple[nn.Module, nn.Module]] = []
    pending: list[nn.Module] = []
    if isinstance(model.encoder, FloatEncoder):
        pending.append(model.encoder)
        stream = "float"
    else:
        if not getattr(model.encoder, "binary", False):
            raise BinsenseError(f"encoder {type(model.encoder).__name__} does not deploy.")
        ops["input"] = PlanesInput(model.encoder)
        stream = "binary"
    for i, module in enumerate(model.blocks):
        name = f"b{i}"
        if isinstance(module, ResidualUnit):
            if pending:
                ops["input"] = FloatStage(*pending)
                pending = []
            if stream != "float":
                raise BinsenseError(f"residual unit {name} needs a real residual stream.")
            op = ResidualOp(module)
            ops[name] = op
            layers += [(module.block1.conv, op.conv1), (module.block2.conv, op.conv2)]
        elif isinstance(module, BinaryBlock) and stream == "binary":
            if not _binary_input_block(module):
                raise BinsenseError(f"block {name} is not a binary block (binary conv + sign).")
            _block_ops(module, name, ops, layers)
        elif isinstance(module, BinaryBlock):  # the float first block (and encoder)
            pending.append(module)
            if isinstance(module.act, SignQuantizer | DeSign):
                ops["input"] = FloatStage(*pending)
                ops["input_sign"] = ToInt8()
                pending, stream = [], "binary"
            elif not isinstance(module.act, nn.Identity):
                raise BinsenseError(f"the float block {name} must end in a sign or nothing.")
        elif isinstance(module, nn.Flatten):
            ops[name] = FlattenOp()
        elif type(module).__name__ == "ChannelShuffle":
            ops[name] = module
        else:
            raise BinsenseError(f"{type(module).__name__} at blocks.{i} does not deploy.")
    if pending:
        raise BinsenseError("the model ends in float blocks before its head: nothing binary.")
    head = model.head
    if isinstance(head, BinaryBlock) and is_binary_layer(head.conv) and stream == "binary":
        if isinstance(head.conv, BinaryConv2d):  # the compact model's 1x1 conv head
            ops["head_conv"] = PackedConv(head.conv)
            layers.append((head.conv, ops["head_conv"]))
            ops["head_rest"] = FloatStage(*(m for m in (head.pool, head.norm) if m is not None))
        else:
            _block_ops(head, "head", ops, layers)
    else:
        ops["head"] = FloatStage(head)
    return DeployedModel(nn.Sequential(OrderedDict(ops)), type(model).__name__, layers)


# ---------------------------------------------------------------- exactness check


@dataclass
class CheckResult:
    """Engine vs PyTorch on a data set: counts of disagreements."""

    images: int
    prediction_mismatches: int
    logit_mismatches: int
    layers: int
    layer_mismatches: dict[str, int]
    #: images whose logits from the packed engine differ from the op list's (0 expected).
    engine_mismatches: int = 0

    @property
    def exact(self) -> bool:
        return (
            self.prediction_mismatches == 0
            and self.engine_mismatches == 0
            and not any(self.layer_mismatches.values())
        )

    def line(self) -> str:
        exact_layers = sum(1 for v in self.layer_mismatches.values() if v == 0)
        return (
            f"{self.images} images: predictions differ on {self.prediction_mismatches}, logits "
            f"differ on {self.logit_mismatches}; binary layers bit-exact {exact_layers}/"
            f"{self.layers}; packed engine vs op list: {self.engine_mismatches} differ"
        )


@torch.no_grad()
def check_exact(model: nn.Module, loader, deployed: DeployedModel | None = None) -> CheckResult:
    """Run ``model`` (eval mode) and its :func:`convert` on every batch of ``loader``
    (pairs ``(images in [0, 1], labels)``) and count disagreements: predictions, logits
    (bitwise), and each binary layer's integer output against the PyTorch layer's (the
    op list, :meth:`DeployedModel.run_ops`); and the packed engine's logits against the
    op list's (where the C kernel runs). The reference is the trained model with its
    float layers (those the deployed model shares) summed in the deployed model's one
    order (:func:`binsense.deploy.floatops.ordered`): PyTorch's own order depends on
    the batch size and the CPU, so its last bits are not a contract."""
    model = model.eval()
    deployed = deployed if deployed is not None else convert(model)
    stages = deployed.shared_float_stages(model)
    seen: dict[int, Tensor] = {}
    hooks = []
    for trained, packed in deployed.layers:
        for module in (trained, packed):
            hooks.append(
                module.register_forward_hook(
                    lambda m, i, o: seen.__setitem__(id(m), o)  # noqa: B023 - m is the arg
                )
            )
    names = [f"{i}:{type(t).__name__}" for i, (t, _) in enumerate(deployed.layers)]
    mismatches = dict.fromkeys(names, 0)
    images = pred = logit = engine = 0
    try:
        for x, _ in loader:
            seen.clear()
            with floatops.ordered(*stages):
                ref = model(x)
            out = deployed.run_ops(x)
            fast = deployed(x)
            engine += int((fast != out).flatten(1).any(1).sum())
            for name, (trained, packed) in zip(names, deployed.layers, strict=True):
                a, b = seen[id(trained)], seen[id(packed)]
                mismatches[name] += int((b.to(a.dtype) != a).flatten(1).any(1).sum())
            images += x.shape[0]
            pred += int((ref.argmax(1) != out.argmax(1)).sum())
            logit += int((ref != out).flatten(1).any(1).sum())
    finally:
        for h in hooks:
            h.remove()
    return CheckResult(images, pred, logit, len(names), mismatches, engine)


__all__ = [
    "CheckResult",
    "DeployedModel",
    "check_exact",
    "FloatStage",
    "model_input",
    "MaxPoolInt",
    "op_footprint",
    "op_output_shape",
    "PackedConv",
    "PackedLinear",
    "PlanesInput",
    "ResidualOp",
    "Threshold",
    "convert",
    "pack_bits",
    "popcount64",
    "unpack_bits",
]
