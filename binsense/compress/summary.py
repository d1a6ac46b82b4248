r"""Model size and operations in bits: what a deployed BNN stores and computes.

The anchor is Larq's ``larq.models.summary`` (one row per layer: output shape, parameters
by bit-width, memory, MACs by precision; totals with the ratio of binarised MACs). binsense
counts the *deployed* model, not the training-time one:

**Parameters by precision.**

- **1-bit**: the binary weights of :class:`~binsense.layers.BinaryConv2d` /
  :class:`~binsense.layers.BinaryLinear` (one sign bit each). Their latent real-valued
  weights are training-time state and do not count.
- **k-bit** (``1 < bits < 32``): the integer thresholds that a block's ``(norm, sign)``
  pair folds into, and the encoder's ADC-code thresholds.
- **32-bit**: float weights and biases (a float first layer, a float head), the affine
  parameters of a norm that is not followed by a sign, real-valued thresholds.

**Folded pairs** (:mod:`binsense.deploy.folding`). In a
:class:`~binsense.layers.BinaryBlock` whose ``norm`` (batch norm, ``ChannelAffine`` or
none) is followed by a sign quantizer or a DeSign with a sign, the pair is deployed as
compares, so it counts as thresholds, not as the norm's 4 parameters (γ, β, μ, σ):

- one threshold per channel after a sign; one per channel *and position class* after
  DeSign, ``C·m·n`` for an ``m x n`` kernel (Monroy et al. 2024; ``fold_bn_design``);
  a block without norm compares at a fixed point: 0 thresholds after a sign, the
  kernel's ``F·m·n`` after DeSign (unless the conv's own bias or scale makes them per
  channel);
- after a layer with binary MACs the compare acts on an integer popcount
  :math:`P \in [0, K]` (``K`` = fan-in, ``cin/groups · kh · kw`` or ``in_features``):
  ``threshold_bits`` each, by default :math:`\lceil \log_2(K + 2) \rceil + 1`:
  the ``K + 2`` distinct compares :math:`P \ge t`, ``t = 0..K+1`` (``t = 0``: always
  +1, ``t = K + 1``: never), plus one bit for the direction (a negative γ flips the
  compare). A max-pool between conv and norm keeps that range. (``⌈log2(K+1)⌉ + 1``
  differs only where ``K + 1`` is a power of two, where it cannot code "never".)
- after a float layer (or binary weights on a real input) the compare acts on a real
  number: each threshold counts at ``bn_bits``.

A norm not followed by a sign (the classifier's, the residual branch's, a float twin's)
is deployed as its per-channel affine map :math:`a x + b`: ``2·C`` parameters at
``bn_bits`` (as Larq, which fuses β with the moving mean and γ with the moving variance).
A DeSign that only shifts (``quantizer=None``) adds its kernel, ``F·m·n`` values at
``bn_bits``. A conv's bias and XNOR scale α are per-channel affine terms: inside a
:class:`~binsense.layers.BinaryBlock` with a norm or a folded pair they fold into it and
do not count again; elsewhere each counts at 32 bits.

**The encoder.** An encoder exposing ``thresholds_codes()`` (the binary encoders of
:mod:`binsense.encoders`) counts each integer code threshold at ``encoder_bits`` (8: an
8-bit ADC code) and nothing else; any other encoder counts its floating parameters and
buffers at 32 bits (the float encoder's per-channel mean and std).

**MACs** (multiply-accumulates of convolutions and linear layers; a MAC's precision is
that of its widest input, as in Larq): *binary* when the weights are binary **and** the
layer's input is ±1 (the output of a sign, DeSign or binary encoder, after max-pooling or
flattening: an XNOR-popcount), *float* otherwise — including a binary-weight layer on a
real input (pixels, a residual stream, an average-pooled map). Whether an input is ±1 is
observed, not guessed: :func:`summary` runs the model once (batch of 1, eval mode, no
gradient) with forward hooks and checks every input value. A model on the meta device
(:func:`binsense.models.check_model`) is first copied to the CPU with placeholder
values.

**Totals**: parameters per precision, memory in bits and **Mbit, with 1 Mbit = 2^20
bits** — Larq's convention: its memory column is in units of ``8 * 1024`` bits ("kB")
and its model size in binary prefixes (``memory_as_readable_str``: KiB, MiB; "we use
the binary prefix ... instead of the decimal prefix"); the exact bit count is always
given too. The share of binary MACs, and ``fully_binary``: every conv / linear MAC is
binary, the first layer and the head included.

``binsense summary --model NAME [--max-mbit M]`` (:func:`add_summary_command`) prints the
table and exits with status 1 when the model is over ``M`` Mbit. ``--checkpoint PATH``
summarises a trained model; reading a checkpoint is training's business, so the command
line passes the reader in (:data:`CheckpointReader`; this module never imports
:mod:`binsense.train`, which imports :mod:`binsense.compress`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from binsense import tomlfile
from binsense.errors import BinsenseError
from binsense.layers.binary import has_binary_weights, is_binary_layer
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign
from binsense.layers.folds import pair_folds
from binsense.layers.norm import ChannelAffine
from binsense.quant.sign import SignQuantizer

#: ``read(path, allow_large) -> (model, config)``: how ``binsense summary --checkpoint``
#: reads a trained model; ``config`` names its ``model`` and ``dataset`` (a
#: :class:`~binsense.train.TrainConfig`). The CLI passes one built on
#: :func:`binsense.train.load_model` (:func:`add_summary_command`).
CheckpointReader = Callable[[str, "bool | None"], tuple[nn.Module, Any]]

#: Bits in one Mbit: 2^20, Larq's binary-prefix convention (module docstring).
BITS_PER_MBIT = 2**20
#: Bits of a float weight, bias or (default) norm parameter.
FLOAT_BITS = 32

_AFFINE_NORMS = (_BatchNorm, ChannelAffine)
#: Modules accounted as one row each, whatever they contain.
_WHOLE = (_ConvNd, nn.Linear, *_AFFINE_NORMS, SignQuantizer, DeSign)


def auto_threshold_bits(fan_in: int) -> int:
    r"""Bits of one integer threshold on a popcount of ``fan_in`` binary products:
    :math:`\lceil \log_2(K + 2) \rceil + 1` (module docstring)."""
    return math.ceil(math.log2(fan_in + 2)) + 1


@dataclass(frozen=True)
class LayerRow:
    """One layer call of the dry run: shape, parameters by precision, memory, MACs.

    ``input`` is ``"±1"`` or ``"real"`` for a conv / linear layer (what its MACs read),
    empty otherwise; ``detail`` says how the parameters are deployed.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    params_1bit: int = 0
    params_kbit: int = 0
    params_32bit: int = 0
    bits: int = 0
    binary_macs: int = 0
    float_macs: int = 0
    input: str = ""
    detail: str = ""


@dataclass
class ModelSummary:
    """Per-layer rows (forward order) and totals; see the module docstring.

    :meth:`table` is the text form, :meth:`to_dict` the JSON-ready one.
    """

    rows: list[LayerRow]
    input_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    title: str = ""

    @property
    def params_1bit(self) -> int:
        return sum(r.params_1bit for r in self.rows)

    @property
    def params_kbit(self) -> int:
        return sum(r.params_kbit for r in self.rows)

    @property
    def params_32bit(self) -> int:
        return sum(r.params_32bit for r in self.rows)

    @property
    def total_bits(self) -> int:
        """Deployed memory of the model, in bits."""
        return sum(r.bits for r in self.rows)

    @property
    def mbit(self) -> float:
        """:attr:`total_bits` in Mbit (1 Mbit = 2^20 bits, Larq's convention)."""
        return self.total_bits / BITS_PER_MBIT

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def float_macs(self) -> int:
        return sum(r.float_macs for r in self.rows)

    @property
    def binary_mac_share(self) -> float:
        """Binary MACs / all MACs (0 for a model without MACs)."""
        total = self.binary_macs + self.float_macs
        return self.binary_macs / total if total else 0.0

    @property
    def fully_binary(self) -> bool:
        """Every conv / linear MAC is binary, the first layer and the head included."""
        return self.binary_macs > 0 and self.float_macs == 0

    def float_mac_layers(self) -> list[str]:
        """Names of the layers with float MACs (what keeps the model from fully binary)."""
        return [r.name for r in self.rows if r.float_macs]

    def over_budget(self, max_mbit: float) -> float:
        """How many Mbit the model is over ``max_mbit`` (<= 0: within it)."""
        return self.mbit - max_mbit

    def totals(self) -> dict[str, Any]:
        return {
            "params_1bit": self.params_1bit,
            "params_kbit": self.params_kbit,
            "params_32bit": self.params_32bit,
            "total_bits": self.total_bits,
            "mbit": self.mbit,
            "bits_per_mbit": BITS_PER_MBIT,
            "binary_macs": self.binary_macs,
            "float_macs": self.float_macs,
            "binary_mac_share": self.binary_mac_share,
            "fully_binary": self.fully_binary,
        }

    def to_dict(self) -> dict[str, Any]:
        """Rows, totals and the counting options, JSON-serialisable."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["output_shape"] = list(r.output_shape)
            rows.append(d)
        return {
            "title": self.title,
            "input_shape": list(self.input_shape),
            "options": dict(self.options),
            "layers": rows,
            "totals": self.totals(),
        }

    def table(self) -> str:
        """The summary as text: one line per layer, then the totals."""
        head = ["layer", "type", "output", "input", "1-bit", "k-bit", "32-bit", "bits",
                "binary MACs", "float MACs", "deployed as"]  # fmt: skip
        body = [
            [r.name, r.type, "x".join(map(str, r.output_shape)) or "-", r.input,
             _n(r.params_1bit), _n(r.params_kbit), _n(r.params_32bit), _n(r.bits),
             _n(r.binary_macs), _n(r.float_macs), r.detail]
            for r in self.rows
        ]  # fmt: skip
        total = ["total", "", "", "", _n(self.params_1bit), _n(self.params_kbit),
                 _n(self.params_32bit), _n(self.total_bits), _n(self.binary_macs),
                 _n(self.float_macs), ""]  # fmt: skip
        right = {4, 5, 6, 7, 8, 9}
        widths = [max(len(row[i]) for row in [head, *body, total]) for i in range(len(head))]

        def line(cells: list[str]) -> str:
            out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                   enumerate(zip(cells, widths, strict=True))]  # fmt: skip
            return "  ".join(out).rstrip()

        rule = "-" * len(line(head))
        shape = "x".join(map(str, self.input_shape))
        lines = [f"{self.title} (input {shape})" if self.title else f"input {shape}"]
        lines += [line(head), rule, *(line(r) for r in body), rule, line(total), ""]
        opts = self.options
        tb = opts.get("threshold_bits")
        tb_text = f"{tb} bits" if tb is not None else "ceil(log2(fan_in + 2)) + 1 bits"
        lines.append(
            f"memory: {self.total_bits:,} bits = {self.mbit:.4f} Mbit "
            f"(1 Mbit = 2^20 bits) = {self.total_bits / 8 / 1024:,.2f} KiB"
        )
        lines.append(
            f"parameters: {self.params_1bit:,} 1-bit, {self.params_kbit:,} k-bit, "
            f"{self.params_32bit:,} 32-bit (integer thresholds {tb_text}; real thresholds "
            f"and norm parameters {opts.get('bn_bits', FLOAT_BITS)} bits; encoder codes "
            f"{opts.get('encoder_bits', 8)} bits)"
        )
        lines.append(
            f"MACs: {self.binary_macs:,} binary, {self.float_macs:,} float "
            f"({self.binary_mac_share:.2%} binary)"
        )
        if self.fully_binary:
            lines.append("fully binary: yes")
        else:
            where = self.float_mac_layers()
            why = f"float MACs in {', '.join(where)}" if where else "no MACs"
            lines.append(f"fully binary: no ({why})")
        return "\n".join(lines)


def _n(v: int) -> str:
    return f"{v:,}" if v else "0"


# ---------------------------------------------------------------------- the dry run


@dataclass
class _Call:
    name: str
    module: nn.Module
    input_binary: bool
    output_shape: tuple[int, ...]
    output_elems: int
    block: BinaryBlock | None  # the innermost BinaryBlock running when it was called


def _is_pm1(x: Any) -> bool:
    return (
        isinstance(x, Tensor)
        and x.is_floating_point()
        and x.numel() > 0
        and bool((x.abs() == 1).all())
    )


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, Tensor):
                return o
    return None


def _is_encoder(module: nn.Module) -> bool:
    from binsense.encoders import InputEncoder

    return isinstance(module, InputEncoder) or hasattr(module, "thresholds_codes")


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that get a row: encoders, conv / linear layers, norms, signs and DeSign
    (whole), other leaves, containers with parameters of their own."""
    units: list[tuple[str, nn.Module]] = []
    skip: list[str] = []
    for name, m in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if m is not model and (_is_encoder(m) or isinstance(m, _WHOLE)):
            units.append((name, m))  # whole: the quantizers inside get no row of their own
            skip.append(name)
            continue
        has_children = next(m.children(), None) is not None
        if not has_children or len(m._parameters) > 0:
            units.append((name or type(m).__name__, m))
    return units


def _is_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


@torch.no_grad()
def _materialized(model: nn.Module) -> nn.Module:
    """``model`` itself, or a CPU copy with placeholder values if it is on the meta device."""
    if not _is_meta(model):
        return model
    net = copy.deepcopy(model).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        if p.is_floating_point():
            p.normal_(0.0, 0.1, generator=gen)
        else:
            p.zero_()
    for b in net.buffers():
        if b.is_floating_point():
            b.fill_(0.5)
        else:
            b.zero_()
    for m in net.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
    return net


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _dry_run(model: nn.Module, input_shape: tuple[int, ...]) -> list[_Call]:
    calls: list[_Call] = []
    stack: list[BinaryBlock] = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0] if args else None
            out = _first_tensor(output)
            shape = tuple(out.shape[1:]) if out is not None else ()
            elems = out[0].numel() if out is not None and out.dim() > 0 else 0
            block = stack[-1] if stack else None
            calls.append(_Call(name, module, _is_pm1(x), shape, elems, block))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in _units(model)]

    def enter(module: nn.Module, args: tuple) -> None:
        stack.append(module)

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        stack.pop()

    for m in model.modules():
        if isinstance(m, BinaryBlock):
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
    modes = [(m, m.training) for m in model.modules()]
    device, dtype = _device_dtype(model)
    x = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        model.eval()
        with torch.no_grad():
            model(x.to(device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return calls


# ---------------------------------------------------------------------- the accounting


def _per_channel_terms(conv: nn.Module) -> int:
    """Per-output-channel affine terms of a conv / linear: bias and XNOR scale."""
    out = 0
    if getattr(conv, "bias", None) is not None:
        out += conv.bias.numel()
    if is_binary_layer(conv) and getattr(conv, "scale", False):
        out += conv.weight.shape[0]
    return out


class _Counter:
    """Parameters of one row, by bit-width."""

    def __init__(self) -> None:
        self.p1 = self.pk = self.p32 = self.bits = 0

    def add(self, count: int, bits: int) -> None:
        if count <= 0:
            return
        if bits == 1:
            self.p1 += count
        elif bits >= FLOAT_BITS:
            self.p32 += count
        else:
            self.pk += count
        self.bits += count * bits


def _check_bits(value: int | None, flag: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= FLOAT_BITS:
        raise BinsenseError(f"{flag} must be an integer from 1 to {FLOAT_BITS}, got {value!r}.")


def summary(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    threshold_bits: int | None = None,
    bn_bits: int = FLOAT_BITS,
    encoder_bits: int = 8,
    title: str = "",
) -> ModelSummary:
    """Size in bits and binary / float MACs of ``model`` on inputs of ``input_shape``.

    Args:
        model: any binsense model (a :class:`~binsense.models.RecipeModel` or any module
            of binsense layers), on any device, the meta device included. It is run
            once on a random batch of one, in eval mode and without gradient; its
            training flags are restored.
        input_shape: one input without the batch dimension, e.g. ``(3, 32, 32)``.
        threshold_bits: bits of each integer threshold of a folded (norm, sign) pair
            after a binary layer; ``None`` (default): ``ceil(log2(fan_in + 2)) + 1``,
            what a compare on that layer's popcount needs.
        bn_bits: bits of a real-valued threshold and of each affine norm parameter.
        encoder_bits: bits of each code threshold of an encoder with ``thresholds_codes()``.
        title: a heading for :meth:`ModelSummary.table`.

    The counting rules are in the module docstring.
    """
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise BinsenseError(
            f"input_shape must be positive integers, e.g. (3, 32, 32); got {shape}."
        )
    _check_bits(threshold_bits, "threshold_bits", allow_none=True)
    _check_bits(bn_bits, "bn_bits")
    _check_bits(encoder_bits, "encoder_bits")
    net = _materialized(model)
    calls = _dry_run(net, shape)

    binary_out: dict[int, bool] = {}  # id(conv) -> whether its MACs were binary
    seen: set[int] = set()
    rows: list[LayerRow] = []
    for call in calls:
        m = call.module
        first = id(m) not in seen
        seen.add(id(m))
        block = call.block
        role = next((r for r in ("conv", "norm", "act") if block is not None
                     and getattr(block, r) is m), "")  # fmt: skip
        if not role:
            block = None
        c = _Counter()
        bin_macs = float_macs = 0
        kind, detail = "", ""
        if isinstance(m, nn.Identity):
            continue
        if _is_encoder(m):
            if hasattr(m, "thresholds_codes"):
                n = int(m.thresholds_codes().numel())
                if first:
                    c.add(n, encoder_bits)
                detail = f"{n} code thresholds x {encoder_bits} b"
            else:
                tensors = [t for t in itertools.chain(m.parameters(), m.buffers())
                           if t.is_floating_point()]  # fmt: skip
                n = sum(t.numel() for t in tensors)
                if first:
                    c.add(n, FLOAT_BITS)
                detail = f"{n} float values" if n else ""
        elif isinstance(m, (_ConvNd, nn.Linear)):
            binary_w = has_binary_weights(m)
            quantized = binary_w and getattr(m, "input_quantizer", None) is not None
            in_pm1 = quantized or call.input_binary
            kind = "±1" if in_pm1 else "real"
            macs = call.output_elems * m.weight[0].numel()
            binary = binary_w and in_pm1
            binary_out[id(m)] = binary
            if binary:
                bin_macs = macs
            else:
                float_macs = macs
            terms = _per_channel_terms(m)
            absorbed = (
                block is not None
                and role == "conv"
                and (isinstance(block.norm, _AFFINE_NORMS) or pair_folds(block.norm, block.act))
            )
            if first:
                c.add(m.weight.numel(), 1 if binary_w else FLOAT_BITS)
                if not absorbed:
                    c.add(terms, FLOAT_BITS)
            detail = "binary W" if binary_w else "float W"
            if terms:
                detail += ", bias/scale folded" if absorbed else ", bias/scale 32 b"
        elif block is not None and role == "norm" and pair_folds(m, block.act):
            detail = "folded into the next compare"
        elif block is not None and role == "act" and pair_folds(block.norm, m):
            conv = block.conv
            channels = call.output_shape[0] if call.output_shape else 0
            per_channel = isinstance(block.norm, _AFFINE_NORMS) or _per_channel_terms(conv) > 0
            if isinstance(m, DeSign):
                f, kh, kw = m.kernel.shape
                n = channels * kh * kw if per_channel else min(f, channels) * kh * kw
            else:
                n = channels if per_channel else 0
            if binary_out.get(id(conv), False):
                bits = (
                    threshold_bits if threshold_bits is not None
                    else auto_threshold_bits(conv.weight[0].numel())
                )  # fmt: skip
                what = "integer"
            else:
                bits, what = bn_bits, "real"
            if first:
                c.add(n, bits)
            detail = f"{n} {what} thresholds x {bits} b" if n else "fixed compare"
        elif isinstance(m, _AFFINE_NORMS):
            channels = m.num_features if isinstance(m, _BatchNorm) else m.scale.numel()
            if first:
                c.add(2 * channels, bn_bits)
            detail = f"affine (a, b) x {bn_bits} b"
        elif isinstance(m, DeSign):
            n = m.kernel.numel()
            if first:
                c.add(n, bn_bits)
            detail = f"{n} kernel shifts x {bn_bits} b" if m.quantizer is None else (
                f"{n} real thresholds x {bn_bits} b"
            )  # fmt: skip
        elif isinstance(m, SignQuantizer):
            detail = "sign (compare at 0)"
        else:
            own = list(m.parameters(recurse=False))
            n = sum(p.numel() for p in own)
            if first:
                c.add(n, FLOAT_BITS)
            if n:
                detail = "float parameters"
        rows.append(
            LayerRow(
                name=call.name, type=type(m).__name__, output_shape=call.output_shape,
                params_1bit=c.p1, params_kbit=c.pk, params_32bit=c.p32, bits=c.bits,
                binary_macs=bin_macs, float_macs=float_macs, input=kind, detail=detail,
            )
        )  # fmt: skip
    options = {"threshold_bits": threshold_bits, "bn_bits": bn_bits, "encoder_bits": encoder_bits}
    return ModelSummary(rows, shape, options, title)


def summarize_model(
    name: str,
    dataset: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    allow_large: bool | None = None,
    **bits: Any,
) -> ModelSummary:
    """:func:`summary` of registry model ``name`` built (on the CPU, freshly
    initialised) for ``dataset`` (default: the model's own) with model ``options``
    (validated by :func:`binsense.models.build_model`). ``bits``: :func:`summary`'s
    options.

    The model's weights are allocated, so first its size is estimated on the meta device
    and a model that cannot fit is refused with one line
    (:func:`binsense.resources.check_model_fits`; ``allow_large`` or
    ``$BINSENSE_ALLOW_LARGE`` skips that): ``--width 1e6`` is not a 13.8 GB attempt
    ending in an allocation error.
    """
    from binsense.data import dataset_info
    from binsense.models import build_model, model_spec
    from binsense.resources import check_model_fits

    spec = model_spec(name)
    info = dataset_info(dataset or spec.default_dataset)
    width = (options or {}).get("width")
    shown = f" (width {width:g})" if isinstance(width, int | float) else ""
    check_model_fits(
        name, info, options, training=False, allow=allow_large,
        what=f"summarising {name!r}{shown}",
    )  # fmt: skip
    with torch.device("cpu"):
        model = build_model(name, info, **(options or {}))
    shape = (info.in_channels, *info.image_size)
    title = f"{name} on {info.name}"
    return summary(model, shape, title=title, **bits)


# ---------------------------------------------------------------------- command line


def _model_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BinsenseError(f"--model-option expects KEY=VALUE, got {item!r}.")
        out[key.strip().replace("-", "_")] = tomlfile.literal(value.strip())
    return out


def cmd_summary(args: argparse.Namespace, read_checkpoint: CheckpointReader | None = None) -> int:
    """``binsense summary``: print the table; exit 1 when over ``--max-mbit``.

    The model is checked to fit in memory before it is built (``--allow-large``, before
    or after the command, skips that), as ``train`` and ``eval`` check theirs.
    ``--checkpoint`` needs ``read_checkpoint`` (:data:`CheckpointReader`)."""
    allow = True if getattr(args, "allow_large", False) else None
    if args.max_mbit is not None and not (math.isfinite(args.max_mbit) and args.max_mbit > 0):
        raise BinsenseError(f"--max-mbit must be a finite number > 0, got {args.max_mbit}.")
    bits = {"threshold_bits": args.threshold_bits, "bn_bits": args.bn_bits,
            "encoder_bits": args.encoder_bits}  # fmt: skip
    if args.checkpoint:
        given = [f for f, v in (("--model", args.model), ("--dataset", args.dataset),
                                ("--width", args.width), ("--model-option", args.model_option))
                 if v]  # fmt: skip
        if given:
            raise BinsenseError(
                f"{given[0]} does not go with --checkpoint: the checkpoint names its model, "
                "data set and options."
            )
        if read_checkpoint is None:
            raise BinsenseError(
                "summary --checkpoint needs a checkpoint reader: add the command with "
                "add_summary_command(sub, read_checkpoint=...) (binsense.cli does)."
            )
        from binsense.data import dataset_info

        model, config = read_checkpoint(args.checkpoint, allow)
        info = dataset_info(config.dataset)
        result = summary(
            model, (info.in_channels, *info.image_size),
            title=f"{config.model} on {info.name} ({args.checkpoint})", **bits,
        )  # fmt: skip
    else:
        if not args.model:
            raise BinsenseError("summary needs --model NAME or --checkpoint PATH.")
        options = _model_options(args.model_option)
        if args.width is not None:
            options["width"] = args.width
        result = summarize_model(args.model, args.dataset, options, allow_large=allow, **bits)
    print(json.dumps(result.to_dict()) if args.json else result.table())
    if args.max_mbit is not None:
        over = result.over_budget(args.max_mbit)
        if over > 0:
            limit_bits = math.floor(args.max_mbit * BITS_PER_MBIT)
            print(
                f"over budget: {result.mbit:.4f} Mbit > {args.max_mbit:g} Mbit by "
                f"{over:.4f} Mbit ({result.total_bits - limit_bits:,} bits; 1 Mbit = 2^20 bits)",
                file=sys.stderr,
            )
            return 1
        if not args.json:
            print(f"within budget: {result.mbit:.4f} Mbit <= {args.max_mbit:g} Mbit")
    return 0


def add_summary_command(
    sub: argparse._SubParsersAction, *, read_checkpoint: CheckpointReader | None = None
) -> argparse.ArgumentParser:
    """Register ``binsense summary`` on the main CLI's sub-commands; returns its parser.

    ``read_checkpoint`` (:data:`CheckpointReader`) serves ``--checkpoint PATH``; without
    it that option is an error (:mod:`binsense.cli` passes
    :func:`binsense.train.load_model`'s)."""
    p = sub.add_parser(
        "summary",
        help="model size in bits and binary / float MACs (Larq-style), with a size check",
        description="Per layer: output shape, parameters by precision (1-bit, k-bit, "
        "32-bit), memory in bits, binary and float MACs; totals in Mbit (1 Mbit = 2^20 "
        "bits, Larq's convention), the share of binary MACs and whether the model is "
        "fully binary. Batch norms count at their deployed width: a (norm, sign) pair as "
        "integer thresholds. With --max-mbit, exits with status 1 when the model is over.",
    )
    p.add_argument("--model", help="model name (see `binsense models`)")
    p.add_argument("--dataset", help="data set it is built for (default: the model's own)")
    p.add_argument("--width", type=float, help="model width multiplier")
    p.add_argument(
        "--model-option", action="append", default=[], metavar="KEY=VALUE",
        help="model option, e.g. first_layer=binary (repeatable)",
    )  # fmt: skip
    p.add_argument("--checkpoint", metavar="PATH", help="summarise a trained run's checkpoint.pt")
    p.add_argument(
        "--max-mbit", type=float, metavar="M",
        help="exit with status 1 when the model is over M Mbit (2^20 bits)",
    )  # fmt: skip
    p.add_argument(
        "--threshold-bits", type=int, metavar="B",
        help="bits per integer threshold (default: ceil(log2(fan_in + 2)) + 1 per layer)",
    )  # fmt: skip
    p.add_argument(
        "--bn-bits", type=int, default=FLOAT_BITS, metavar="B",
        help="bits per norm parameter and real threshold (default 32)",
    )  # fmt: skip
    p.add_argument(
        "--encoder-bits", type=int, default=8, metavar="B",
        help="bits per encoder code threshold (default 8)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=functools.partial(cmd_summary, read_checkpoint=read_checkpoint))
    return p


__all__ = [
    "BITS_PER_MBIT",
    "CheckpointReader",
    "LayerRow",
    "ModelSummary",
    "add_summary_command",
    "auto_threshold_bits",
    "cmd_summary",
    "summarize_model",
    "summary",
]
