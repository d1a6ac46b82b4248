r"""Deployed-model files: a :class:`~binsense.deploy.program.DeployedModel` on disk, as bits.

``save_deployed(deployed, "model.bsd")`` writes the integer program;
``load_deployed("model.bsd")`` gives it back, computing the
same logits bit for bit. ``binsense deploy --checkpoint RUN/checkpoint.pt --out model.bsd``
writes one; ``binsense deploy --load model.bsd --checkpoint RUN/checkpoint.pt --check``
checks it against the PyTorch model.

**The file** is a ``torch.save`` archive of plain data, read back with
``torch.load(..., weights_only=True)``, which runs no code from the file (the file is
read into memory first, so that an I/O error and bad content are told apart)::

    {"format": "binsense-deployed", "version": 1, "sha256": <hex>,
     "manifest": <zlib-compressed UTF-8 JSON (bytes)>,
     "blobs": {"int64": 1-D tensor, "float32": 1-D tensor}}

The tensors live in two flat **blobs**, so the file holds little beyond the bits
themselves (one archive entry per tensor would add about 200 bytes each; the manifest,
a few KB of JSON, is compressed for the same reason):

- ``int64``, bits packed 64 to a word: the binary layers' weights, one bit a weight (the
  rows of ``PackedConv`` / ``PackedLinear.weight_words`` without their padding bits,
  re-packed on load; the ``int8`` ±1 copy of the conv weights is unpacked from them);
  integer tensors (the thresholds ``tau``) as ``value - min`` in as many bits as their
  range needs; bool tensors (an encoder's code table) and ±1 tensors (the thresholds'
  directions, binary weights inside a float stage) one bit each;
- ``float32``: float tensors (the float stages: a float first layer or head, batch
  norms, DeSign kernels), exactly as they are.

``sha256`` covers the manifest and every blob: a changed byte is reported as corruption.

**The manifest** (JSON) holds everything else::

    {"format": "binsense-deployed", "version": 1, "source": "RecipeModel", "meta": {...},
     "ops": [op, ...],
     "tensors": {name: {"blob": "int64", "offset": 0, "numel": n, "shape": [...],
                        "dtype": "int64", "enc": ENC, ...}}}

with ``ENC`` ``"raw"`` (values as they are), ``"words"`` (packed words, ``"width"``
valid bits a row), ``"int"`` (``"width"`` bits a value, plus ``"min"``), ``"bits"``
(bool) or ``"pm1"`` (±1); ``offset`` and ``numel`` count elements of the blob.

- an **op** is ``{"name": ..., "op": TYPE, ...}`` with ``TYPE`` one of
  :data:`OP_TYPES`: ``PackedConv``, ``PackedLinear``, ``Threshold`` and ``PlanesInput``
  with ``"params"`` (plain numbers) and ``"tensors"`` (names in ``"tensors"``);
  ``MaxPoolInt`` with its ``"pool"`` module; ``FloatStage`` with its ``"modules"``;
  ``ResidualOp`` with its parts (``conv1``, ``threshold1``, ``conv2``, ``rest`` ops,
  ``shortcut`` and ``post`` modules); ``ChannelShuffle`` with its ``groups``;
  ``ToInt8`` and ``FlattenOp`` with nothing;
- a **module** of a float stage is ``{"type": TYPE, "args": {...}, "tensors": {...}}``
  (its constructor arguments and state dict), or, for the containers ``Sequential`` and
  ``BinaryBlock``, ``{"type": ..., "children": [[name, module], ...]}``, with ``TYPE``
  one of :data:`MODULE_TYPES`: ``Conv2d``, ``Linear``, ``BinaryConv2d`` /
  ``BinaryLinear`` (binary weights on a real input, stored as bits), ``BatchNorm1d`` /
  ``2d``, ``QuantizedBatchNorm``, ``ChannelAffine``, ``MaxPool2d``,
  ``AdaptiveAvgPool2d``, ``Flatten``, ``Identity``, ``ReLU``, ``Hardtanh``,
  ``FloatEncoder``, ``Sign`` (every sign quantizer: their forward is the same sign),
  ``DeSign`` (its kernel, with the sign or shift only, coupled to a batch norm of the
  same stage by its path), ``GlobalPool`` and ``Shortcut``.

A model holding any other module type is refused when saved, with one line. On load,
types are looked up in these fixed tables only (no name is imported), constructor
arguments are checked, and modules are built on the meta device and then given the
file's tensors, whose sizes the records must match: a manifest cannot make the loader
allocate much more than the file holds.

**Errors** are one line (:class:`DeployFileError`, a
:class:`~binsense.errors.CheckpointError`): a missing, truncated or corrupt file, a
foreign file (a training checkpoint, any other archive), a file of a newer format
version, a type outside the allow-list.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from binsense.deploy import ir
from binsense.deploy.bits import pack_bits, unpack_bits
from binsense.deploy.program import DeployedModel, convert
from binsense.encoders.base import FloatEncoder
from binsense.errors import BinsenseError, CheckpointError
from binsense.io import ReadError, atomic_write, os_error_text
from binsense.layers.binary import BinaryConv2d, BinaryLinear
from binsense.layers.block import BinaryBlock, Shortcut
from binsense.layers.bn import QuantizedBatchNorm
from binsense.layers.design import DeSign
from binsense.layers.norm import ChannelAffine
from binsense.layers.shape import ChannelShuffle, GlobalPool
from binsense.quant.sign import SignQuantizer, SteSign
from binsense.zoo import resolve_deployed_path

FORMAT = "binsense-deployed"
#: The format version this binsense writes; it reads versions 1..VERSION.
VERSION = 1
#: The usual file name suffix (not enforced).
SUFFIX = ".bsd"

#: Op types a file may name (module docstring).
OP_TYPES = (
    "PlanesInput", "FloatStage", "ToInt8", "PackedConv", "PackedLinear", "MaxPoolInt",
    "Threshold", "FlattenOp", "ResidualOp", "ChannelShuffle",
)  # fmt: skip

_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float32": torch.float32,
    "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_BLOB_DTYPES = ("int64", "float32", "float64")
_ENCODINGS = ("raw", "int", "bits", "pm1", "words")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_MAX_SIZE = 1 << 40  # bound on any count read from a manifest
#: What ``torch.load`` raises for bytes that are not a (complete) archive of plain data.
_UNREADABLE = (
    OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError, LookupError,
    TypeError, AttributeError, ImportError, AssertionError, struct.error, zipfile.BadZipFile,
)  # fmt: skip
_MAX_MANIFEST = 64 << 20  # bytes of manifest JSON
#: Largest output of an adaptive pool (binsense's global pools give 1).
_MAX_POOL_OUTPUT = 64
#: Most channels a shortcut may add by zero padding.
_MAX_SIZE_CHANNELS = 1 << 16


def _geometry(kernel, padding, stride, dilation) -> None:
    """:func:`~binsense.deploy.ir.check_geometry`, as a damaged-file error."""
    try:
        ir.check_geometry(kernel, padding, stride, dilation)
    except BinsenseError as e:
        raise _Bad(str(e).rstrip(".")) from None


#: Largest file read as a deployed model: far above any BNN (a full-width VGG-small is
#: about 1 MB), far below what reading junk into memory may cost.
MAX_FILE_BYTES = 1 << 30
#: A ``torch.save`` archive is a zip file: its first four bytes.
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_CONSTANT = 1 << 20  # elements of a tensor stored in 0 bits (all one value)


class DeployFileError(CheckpointError):
    """A deployed-model file is missing, corrupt, foreign, newer, or names a type that
    binsense does not load."""


class _Bad(Exception):
    """A manifest that does not describe a valid program (reported as corrupt)."""


# ---------------------------------------------------------------- tensors <-> blobs


class _Writer:
    """Collects named tensors into flat blobs: ``int64`` words (every bit-packed and
    integer tensor) and ``float32`` (float64) values."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}
        self.sizes: dict[str, int] = {}
        self.records: dict[str, dict] = {}

    def add(self, name: str, t: Tensor, enc: str | None = None, width: int = 0) -> str:
        """Store ``t`` as ``name``; ``enc="words"`` for packed words of ``width`` valid
        bits each row (the rest padding bits 1), ``"pm1"`` for ±1 values; else by dtype."""
        if name in self.records:  # pragma: no cover - names come from unique op paths
            raise BinsenseError(f"two tensors named {name!r} in one deployed model.")
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise BinsenseError(
                f"cannot save the deployed model: tensor {name!r} is {t.dtype}, which the file "
                f"format does not store ({', '.join(_DTYPES)})."
            )
        record: dict[str, Any] = {"shape": list(t.shape), "dtype": _DTYPE_NAMES[t.dtype]}
        if enc == "words" and not torch.equal(pack_bits(unpack_bits(t, width, -1), -1, True), t):
            enc = None  # padding bits not all 1: store the words as integers
        if enc is None:
            enc = "bits" if t.dtype == torch.bool else "raw" if t.is_floating_point() else "int"
            if enc == "int" and t.dim() and t.numel() and bool((t.abs() == 1).all()):
                enc = "pm1"  # threshold directions: one bit each
        if enc == "words":
            record["width"] = width
            data = _pack(unpack_bits(t, width, -1))  # the weights' bits, without padding
        elif enc in ("bits", "pm1"):
            if enc == "pm1" and not bool((t.abs() == 1).all()):
                raise BinsenseError(f"tensor {name!r} is not ±1 and cannot be stored as bits.")
            data = _pack(t > 0)
        elif enc == "int":
            lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
            bits = (hi - lo).bit_length()
            if bits > 62 or abs(lo) >= 1 << 62:
                enc, data = "raw", t.reshape(-1)
            else:  # t - lo in `bits` bits each (0 bits: all equal)
                shifts = torch.arange(bits, dtype=torch.int64)
                u = (t.reshape(-1, 1).to(torch.int64) - lo) >> shifts & 1
                data = _pack(u.to(torch.bool))
                record.update(min=lo, width=bits)
        else:
            data = t.reshape(-1)
        record["enc"] = enc
        blob = _DTYPE_NAMES[data.dtype]
        offset = self.sizes.get(blob, 0)
        self.parts.setdefault(blob, []).append(data)
        self.sizes[blob] = offset + data.numel()
        self.records[name] = {"blob": blob, "offset": offset, "numel": data.numel(), **record}
        return name

    def blobs(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in sorted(self.parts.items())}


def _pack(bits: Tensor) -> Tensor:
    """Bool ``bits`` (any shape), flattened and packed into int64 words."""
    flat = bits.reshape(1, -1)
    return pack_bits(flat, 1).reshape(-1) if flat.numel() else torch.zeros(0, dtype=torch.int64)


def _unpack(words: Tensor, n: int) -> Tensor:
    """The first ``n`` bits of int64 ``words`` (flat bool)."""
    return unpack_bits(words.view(1, -1), n, 1).reshape(-1)


class _Reader:
    """Named tensors out of the blobs, every record checked against them."""

    def __init__(self, records: Any, blobs: dict[str, Tensor]) -> None:
        self.records = _dict(records, "tensors")
        self.blobs = blobs

    def get(self, name: Any) -> Tensor:
        if not isinstance(name, str) or name not in self.records:
            raise _Bad(f"a tensor {str(name)[:60]!r} that the file does not hold")
        r = _dict(self.records[name], f"tensor {name}")
        blob = _choice(r.get("blob"), _BLOB_DTYPES, "blob")
        enc = _choice(r.get("enc"), _ENCODINGS, "encoding")
        dtype = _DTYPES[_choice(r.get("dtype"), tuple(_DTYPES), "dtype")]
        offset, numel = _count(r.get("offset")), _count(r.get("numel"))
        shape = r.get("shape")
        if not isinstance(shape, list) or len(shape) > 8:
            raise _Bad(f"tensor {name}: shape {shape!r}")
        shape = [_count(s) for s in shape]
        n = math.prod(shape)
        data = self.blobs.get(blob)
        if data is None or offset + numel > data.numel():
            raise _Bad(f"tensor {name} lies outside the {blob} blob")
        data = data[offset : offset + numel]
        if enc == "raw":
            if numel != n or data.dtype != dtype:
                raise _Bad(f"tensor {name}: {numel} {data.dtype} values for {shape} {dtype}")
            return data.reshape(shape).clone()
        # bit-packed: the words hold `count` bits
        width = _count(r.get("width", 1), 0, "width")
        count = n * width if enc == "int" else n
        if enc == "words":
            if dtype != torch.int64 or not shape or -(-width // 64) != shape[-1] or width < 1:
                raise _Bad(f"tensor {name}: {width}-bit words of shape {shape}")
            count = n // shape[-1] * width
        if blob != "int64" or numel != -(-count // 64):
            raise _Bad(f"tensor {name}: {numel} words for {count} bits")
        if count == 0 and n > _MAX_CONSTANT:
            raise _Bad(f"tensor {name}: {n} constant values")
        bits = _unpack(data, count)
        if enc == "words":
            return pack_bits(bits.reshape(*shape[:-1], width), -1, True).reshape(shape)
        if enc == "bits":
            if dtype != torch.bool:
                raise _Bad(f"tensor {name}: bits as {dtype}")
            return bits.reshape(shape)
        if enc == "pm1":
            return torch.where(bits, 1, -1).to(dtype).reshape(shape)
        lo = r.get("min")  # enc == "int"
        if dtype.is_floating_point or dtype == torch.bool or width > 62 or not (
            isinstance(lo, int) and not isinstance(lo, bool) and abs(lo) < 1 << 62
        ):  # fmt: skip
            raise _Bad(f"tensor {name}: {width}-bit integers from {lo!r} as {dtype}")
        shifts = torch.arange(width, dtype=torch.int64)
        values = (bits.view(n, width).to(torch.int64) << shifts).sum(-1) + lo
        return values.to(dtype).reshape(shape)


# ---------------------------------------------------------------- plain values (load)


def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{what} is not a table")
    return value


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _Bad(f"{what} {value!r}")
    return value


def _count(value: Any, low: int = 0, what: str = "a count") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_SIZE:
        raise _Bad(f"{what} {value!r}")
    return value


def _flag(args: dict, key: str) -> bool:
    value = args.get(key)
    if not isinstance(value, bool):
        raise _Bad(f"{key} {value!r} (true or false)")
    return value


def _number(args: dict, key: str, allow_none: bool = False) -> float | None:
    value = args.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(f"{key} {value!r} (a finite number)")
    return float(value)


def _int(args: dict, key: str, low: int = 0) -> int:
    return _count(args.get(key), low, key)


def _ints(args: dict, key: str, low: int = 0, n: int = 2) -> int | tuple[int, ...]:
    """An int or a list of ``n`` ints (a kernel size, stride, padding)."""
    value = args.get(key)
    if isinstance(value, list):
        if len(value) != n:
            raise _Bad(f"{key} {value!r}")
        return tuple(_count(v, low, key) for v in value)
    return _count(value, low, key)


def _plain(value: Any) -> Any:
    """Tuples as lists (JSON)."""
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------- float-stage modules


def _is_sign(m: nn.Module) -> bool:
    return isinstance(m, SignQuantizer) and type(m).forward is SignQuantizer.forward


def _unknown(m: nn.Module, where: str) -> BinsenseError:
    return BinsenseError(
        f"cannot save the deployed model: {where} holds a {type(m).__name__} module, which the "
        f"deployed-model file does not know (known: {', '.join(MODULE_TYPES)})."
    )


def _binary_args(m: BinaryConv2d | BinaryLinear, where: str) -> dict:
    if m.scale:
        raise BinsenseError(
            f"cannot save the deployed model: {where} is a binary layer with an XNOR scale "
            "inside a float stage, which the file format does not store."
        )
    for q in (m.weight_quantizer, m.input_quantizer):
        if q is not None and not _is_sign(q):
            raise _unknown(q, where)
    return {"weight_sign": m.weight_quantizer is not None, "input_sign": m.input_quantizer
            is not None}  # fmt: skip


def _module_args(m: nn.Module, where: str, scope: dict[int, str]) -> tuple[str, dict]:
    """``(type name, constructor arguments)`` of a leaf module of a float stage."""
    t = type(m)
    if t in (nn.Conv2d, BinaryConv2d):
        args = {
            "in_channels": m.in_channels, "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size), "stride": list(m.stride),
            "padding": _plain(m.padding), "dilation": list(m.dilation), "groups": m.groups,
            "bias": m.bias is not None, "padding_mode": m.padding_mode,
        }  # fmt: skip
        if t is BinaryConv2d:
            args.update(_binary_args(m, where))
        return t.__name__, args
    if t in (nn.Linear, BinaryLinear):
        args = {"in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}  # fmt: skip
        if t is BinaryLinear:
            args.update(_binary_args(m, where))
        return t.__name__, args
    if t in (nn.BatchNorm1d, nn.BatchNorm2d, QuantizedBatchNorm):
        args = {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats}  # fmt: skip
        if t is QuantizedBatchNorm:
            args.update(bits=m.bits, qat=m.qat)
        return t.__name__, args
    if t is ChannelAffine:
        return "ChannelAffine", {"channels": m.scale.numel()}
    if t is nn.MaxPool2d:
        if m.return_indices:
            raise _unknown(m, where)
        return "MaxPool2d", {
            "kernel_size": _plain(m.kernel_size), "stride": _plain(m.stride),
            "padding": _plain(m.padding), "dilation": _plain(m.dilation),
            "ceil_mode": m.ceil_mode,
        }  # fmt: skip
    if t is nn.AdaptiveAvgPool2d:
        return "AdaptiveAvgPool2d", {"output_size": _plain(m.output_size)}
    if t is nn.Flatten:
        return "Flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}
    if t is nn.Identity:
        return "Identity", {}
    if t is nn.ReLU:
        return "ReLU", {}
    if t is nn.Hardtanh:
        return "Hardtanh", {"min_val": m.min_val, "max_val": m.max_val}
    if t is FloatEncoder:
        return "FloatEncoder", {"channels": m.out_channels}
    if _is_sign(m):
        return "Sign", {"surrogate": t.__name__}
    if t is DeSign:
        if m.quantizer is not None and not _is_sign(m.quantizer):
            raise _unknown(m.quantizer, where)
        coupled = None
        if m.coupled_bn is not None:
            coupled = scope.get(id(m.coupled_bn))
            if coupled is None:
                raise BinsenseError(
                    f"cannot save the deployed model: the DeSign at {where} is coupled to a "
                    "batch norm outside its float stage."
                )
        return "DeSign", {"kernel_name": m.kernel_name, "sign": m.quantizer is not None,
                          "coupled": coupled}  # fmt: skip
    if t is GlobalPool:
        return "GlobalPool", {"mode": m.mode}
    if t is Shortcut:
        return "Shortcut", {"stride": m.stride, "pad": m.pad, "mode": m.mode}
    raise _unknown(m, where)


def _module_entry(m: nn.Module, where: str, w: _Writer, scope: dict[int, str]) -> dict:
    t = type(m)
    if t in (nn.Sequential, BinaryBlock):
        children = [
            [name, _module_entry(child, f"{where}.{name}", w, scope)]
            for name, child in m.named_children()
        ]
        return {"type": t.__name__, "children": children}
    if next(m.children(), None) is not None and t not in (DeSign, BinaryConv2d, BinaryLinear):
        raise _unknown(m, where)  # (their children are sign quantizers, stored as flags)
    kind, args = _module_args(m, where, scope)
    tensors = {}
    for key, value in m.state_dict().items():
        binary_weight = key == "weight" and kind in ("BinaryConv2d", "BinaryLinear")
        if binary_weight and args["weight_sign"]:
            with torch.no_grad():
                value = m.binary_weight()
            tensors[key] = w.add(f"{where}.{key}", value, "pm1")
        else:
            tensors[key] = w.add(f"{where}.{key}", value)
    return {"type": kind, "args": args, "tensors": tensors}


def _build_leaf(kind: str, a: dict, state: dict[str, Tensor]) -> nn.Module:
    """A leaf module of ``kind`` from checked arguments (on the meta device: the file's
    tensors are assigned afterwards)."""
    if kind in ("Conv2d", "BinaryConv2d"):
        padding = a.get("padding")
        if not (isinstance(padding, str) and padding in ("same", "valid")):
            padding = _ints(a, "padding")
        conv_args = (
            _int(a, "in_channels", 1), _int(a, "out_channels", 1), _ints(a, "kernel_size", 1),
            _ints(a, "stride", 1), padding, _ints(a, "dilation", 1), _int(a, "groups", 1),
            _flag(a, "bias"),
        )  # fmt: skip
        if not isinstance(padding, str):
            _geometry(conv_args[2], padding, conv_args[3], conv_args[5])
        mode = _choice(a.get("padding_mode"), _PADDING_MODES, "padding_mode")
        if kind == "Conv2d":
            return nn.Conv2d(*conv_args, padding_mode=mode)
        conv = BinaryConv2d(
            *conv_args, weight_quantizer=SteSign() if _flag(a, "weight_sign") else None,
            input_quantizer=SteSign() if _flag(a, "input_sign") else None,
        )  # fmt: skip
        conv.padding_mode = mode
        return conv
    if kind in ("Linear", "BinaryLinear"):
        lin_args = (_int(a, "in_features", 1), _int(a, "out_features", 1), _flag(a, "bias"))
        if kind == "Linear":
            return nn.Linear(*lin_args)
        return BinaryLinear(
            *lin_args, weight_quantizer=SteSign() if _flag(a, "weight_sign") else None,
            input_quantizer=SteSign() if _flag(a, "input_sign") else None,
        )  # fmt: skip
    if kind in ("BatchNorm1d", "BatchNorm2d", "QuantizedBatchNorm"):
        bn_args = (
            _int(a, "num_features", 1), _number(a, "eps"), _number(a, "momentum", True),
            _flag(a, "affine"), _flag(a, "track_running_stats"),
        )  # fmt: skip
        if kind == "QuantizedBatchNorm":
            return QuantizedBatchNorm(bn_args[0], _int(a, "bits", 1), *bn_args[1:],
                                      qat=_flag(a, "qat"))  # fmt: skip
        return (nn.BatchNorm1d if kind == "BatchNorm1d" else nn.BatchNorm2d)(*bn_args)
    if kind == "ChannelAffine":
        return ChannelAffine(_int(a, "channels", 1))
    if kind == "MaxPool2d":
        stride = None if a.get("stride") is None else _ints(a, "stride", 1)
        pool_args = (_ints(a, "kernel_size", 1), stride, _ints(a, "padding"),
                     _ints(a, "dilation", 1))  # fmt: skip
        _geometry(pool_args[0], pool_args[2], stride or 1, pool_args[3])
        return nn.MaxPool2d(*pool_args, ceil_mode=_flag(a, "ceil_mode"))
    if kind == "AdaptiveAvgPool2d":
        size = a.get("output_size")
        if isinstance(size, list):
            if len(size) != 2:
                raise _Bad(f"output_size {size!r}")
            size = tuple(None if s is None else _count(s, 1, "output_size") for s in size)
        else:
            size = _count(size, 1, "output_size")
        if any(
            s is not None and s > _MAX_POOL_OUTPUT
            for s in (size if isinstance(size, tuple) else (size,))
        ):
            raise _Bad(f"output_size {size!r} (at most {_MAX_POOL_OUTPUT})")
        return nn.AdaptiveAvgPool2d(size)
    if kind == "Flatten":
        start, end = a.get("start_dim"), a.get("end_dim")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise _Bad(f"Flatten dims {start!r}, {end!r}")
        return nn.Flatten(start, end)
    if kind == "Identity":
        return nn.Identity()
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Hardtanh":
        return nn.Hardtanh(_number(a, "min_val"), _number(a, "max_val"))
    if kind == "FloatEncoder":
        channels = _int(a, "channels", 1)
        info = _EncoderInfo(channels)
        return FloatEncoder(info, [0.0] * channels, [1.0] * channels)  # type: ignore[arg-type]
    if kind == "Sign":
        return SteSign()  # every sign quantizer has the same forward: sign, sign(0) = +1
    if kind == "DeSign":
        kernel = state.get("kernel")
        if not isinstance(kernel, Tensor):
            raise _Bad("a DeSign without its kernel")
        design = DeSign(kernel.to("cpu"), SteSign() if _flag(a, "sign") else None)
        name = a.get("kernel_name")
        design.kernel_name = name if isinstance(name, str) else "custom"
        return design
    if kind == "GlobalPool":
        return GlobalPool(_choice(a.get("mode"), ("sum", "mean"), "GlobalPool mode"))
    if kind == "Shortcut":
        mode = _choice(a.get("mode"), ("avg_pool", "slice"), "Shortcut mode")
        pad, stride = _int(a, "pad"), _int(a, "stride", 1)
        if pad > _MAX_SIZE_CHANNELS or stride > ir.MAX_STRIDE:
            raise _Bad(f"shortcut pad {pad}, stride {stride}")
        return Shortcut(0, pad, stride, mode)
    raise _Bad(f"module type {kind!r}")  # pragma: no cover - checked by the caller


@dataclass(frozen=True)
class _EncoderInfo:
    """What :class:`FloatEncoder` reads of a data set's description."""

    in_channels: int


#: Module types a float stage may hold (module docstring): the allow-list of the loader.
MODULE_TYPES = (
    "Sequential", "BinaryBlock", "Conv2d", "Linear", "BinaryConv2d", "BinaryLinear",
    "BatchNorm1d", "BatchNorm2d", "QuantizedBatchNorm", "ChannelAffine", "MaxPool2d",
    "AdaptiveAvgPool2d", "Flatten", "Identity", "ReLU", "Hardtanh", "FloatEncoder", "Sign",
    "DeSign", "GlobalPool", "Shortcut",
)  # fmt: skip


class _Loader:
    """Builds ops and modules from a checked manifest."""

    def __init__(self, reader: _Reader, path: str) -> None:
        self.reader = reader
        self.path = path

    def refuse(self, kind: Any, what: str, allowed: tuple[str, ...]) -> DeployFileError:
        return DeployFileError(
            f"{self.path!r} names the {what} type {str(kind)[:60]!r}, which binsense does not "
            f"load (allowed: {', '.join(allowed)}); it was not written by this binsense or "
            "was altered."
        )

    def module(self, entry: Any, couplings: list[tuple[DeSign, str]]) -> nn.Module:
        entry = _dict(entry, "a module")
        kind = entry.get("type")
        if kind not in MODULE_TYPES:
            raise self.refuse(kind, "module", MODULE_TYPES)
        if kind in ("Sequential", "BinaryBlock"):
            children = entry.get("children")
            if not isinstance(children, list):
                raise _Bad(f"{kind} without children")
            built: dict[str, nn.Module] = {}
            for item in children:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                    raise _Bad(f"a child of {kind}: {str(item)[:60]}")
                built[item[0]] = self.module(item[1], couplings)
            if kind == "Sequential":
                if list(built) != [str(i) for i in range(len(built))]:
                    raise _Bad("Sequential children must be named 0, 1, ...")
                return nn.Sequential(*built.values())
            if not {"conv", "norm", "act"} <= set(built) <= {"conv", "pool", "norm", "act"}:
                raise _Bad(f"BinaryBlock children {sorted(built)}")
            return BinaryBlock(built["conv"], built["norm"], built["act"], built.get("pool"))
        args = _dict(entry.get("args", {}), f"{kind} arguments")
        refs = _dict(entry.get("tensors", {}), f"{kind} tensors")
        state = {_name(k): self.reader.get(v) for k, v in refs.items()}
        with torch.device("meta"):
            m = _build_leaf(kind, args, state)
        try:
            m.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise _Bad(f"{kind}: {str(e).splitlines()[0][:200]}") from None
        if any(t.is_meta for t in (*m.parameters(), *m.buffers())):
            raise _Bad(f"{kind} without all its tensors")
        if kind == "DeSign" and args.get("coupled") is not None:
            couplings.append((m, _name(args["coupled"])))
        return m.eval()

    def stage(self, entry: dict) -> ir.FloatStage:
        modules = entry.get("modules")
        if not isinstance(modules, list) or not modules:
            raise _Bad("a FloatStage without modules")
        couplings: list[tuple[DeSign, str]] = []
        stage = ir.FloatStage(*(self.module(m, couplings) for m in modules))
        paths = dict(stage.body.named_modules())
        for design, path in couplings:
            bn = paths.get(path)
            if not isinstance(bn, _BatchNorm):
                raise _Bad(f"a DeSign coupled to {path!r}, not a batch norm of its stage")
            design.coupled_bn = bn
        return stage

    def op(self, entry: Any) -> nn.Module:
        entry = _dict(entry, "an op")
        kind = entry.get("op")
        if kind not in OP_TYPES:
            raise self.refuse(kind, "op", OP_TYPES)
        if kind in ("PackedConv", "PackedLinear", "Threshold", "PlanesInput"):
            cls = {"PackedConv": ir.PackedConv, "PackedLinear": ir.PackedLinear,
                   "Threshold": ir.Threshold, "PlanesInput": ir.PlanesInput}[kind]  # fmt: skip
            params = _dict(entry.get("params", {}), f"{kind} parameters")
            refs = _dict(entry.get("tensors", {}), f"{kind} tensors")
            tensors = {_name(k): self.reader.get(v) for k, v in refs.items()}
            try:
                return cls.from_spec(params, tensors)
            except KeyError as e:
                raise _Bad(f"{kind} without {e}") from None
            except BinsenseError as e:
                raise _Bad(f"{kind}: {e}") from None
        if kind == "FloatStage":
            return self.stage(entry)
        if kind == "ToInt8":
            return ir.ToInt8()
        if kind == "FlattenOp":
            return ir.FlattenOp()
        if kind == "MaxPoolInt":
            pool = self.module(entry.get("pool"), [])
            if not isinstance(pool, nn.MaxPool2d):
                raise _Bad("MaxPoolInt without a MaxPool2d")
            return ir.MaxPoolInt(pool)
        if kind == "ChannelShuffle":
            return ChannelShuffle(_int(_dict(entry.get("params"), "params"), "groups", 1))
        # ResidualOp
        parts = [self.op(entry.get(k)) for k in ("conv1", "threshold1", "conv2", "rest")]
        types = (ir.PackedConv, ir.Threshold, ir.PackedConv, ir.FloatStage)
        if not all(isinstance(p, t) for p, t in zip(parts, types, strict=True)):
            raise _Bad("a ResidualOp whose parts are not conv, threshold, conv, float stage")
        shortcut = self.module(entry.get("shortcut"), [])
        post = self.module(entry.get("post"), [])
        return ir.ResidualOp.from_parts(*parts, shortcut, post)  # type: ignore[arg-type]


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise _Bad(f"a name {str(value)[:60]!r}")
    return value


# ---------------------------------------------------------------- ops (save)


def _op_entry(name: str, op: nn.Module, w: _Writer) -> dict:
    t = type(op)
    entry: dict[str, Any] = {"name": name, "op": t.__name__}
    if t in (ir.PackedConv, ir.PackedLinear, ir.Threshold, ir.PlanesInput):
        params, tensors = op.spec()
        entry["params"] = params
        width = params.get("in_per_group", params.get("fan_in", 0))  # bits in a word row
        entry["tensors"] = {
            k: w.add(f"{name}.{k}", v, "words" if k == "weight_words" else None, width)
            for k, v in tensors.items()
        }
    elif t is ir.FloatStage:
        scope = {id(m): path for path, m in op.body.named_modules()}
        entry["modules"] = [
            _module_entry(m, f"{name}.{i}", w, scope) for i, m in enumerate(op.body)
        ]
    elif t in (ir.ToInt8, ir.FlattenOp):
        pass
    elif t is ir.MaxPoolInt:
        entry["pool"] = _module_entry(op.pool, f"{name}.pool", w, {})
    elif t is ChannelShuffle:
        entry["params"] = {"groups": op.groups}
    elif t is ir.ResidualOp:
        for part in ("conv1", "threshold1", "conv2", "rest"):
            entry[part] = _op_entry(f"{name}.{part}", getattr(op, part), w)
        entry["shortcut"] = _module_entry(op.shortcut, f"{name}.shortcut", w, {})
        entry["post"] = _module_entry(op.post, f"{name}.post", w, {})
    else:
        raise BinsenseError(
            f"cannot save the deployed model: op {name!r} is a {t.__name__}, which the "
            f"deployed-model file does not know (known: {', '.join(OP_TYPES)})."
        )
    return entry


def _digest(manifest: bytes, blobs: dict[str, Tensor]) -> str:
    h = hashlib.sha256(manifest)
    for key in sorted(blobs):
        h.update(key.encode())
        h.update(blobs[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def _plain_meta(meta: dict | None) -> dict:
    meta = dict(meta or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BinsenseError(f"deployed-model meta must be plain JSON data: {e}.") from None
    return meta


def save_deployed(
    deployed: DeployedModel, path: str | os.PathLike, meta: dict | None = None
) -> Path:
    """Write ``deployed`` to ``path`` atomically (module docstring); returns the path.

    ``meta``: plain JSON data kept in the manifest (the CLI writes the model, data set and
    checkpoint names). An op or module of a type the format does not know is refused
    with one line (:class:`~binsense.errors.BinsenseError`) before anything is written.
    """
    w = _Writer()
    ops = [_op_entry(name, op, w) for name, op in deployed.ops.named_children()]
    manifest = {
        "format": FORMAT, "version": VERSION, "source": deployed.source,
        "meta": _plain_meta(meta), "ops": ops, "tensors": w.records,
    }  # fmt: skip
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode()
    packed = zlib.compress(text, 9)  # a few KB of JSON: a tenth of a compact model's bits
    blobs = w.blobs()
    payload = {
        "format": FORMAT, "version": VERSION, "sha256": _digest(packed, blobs),
        "manifest": packed, "blobs": blobs,
    }  # fmt: skip
    return atomic_write(path, lambda f: torch.save(payload, f))


# ---------------------------------------------------------------- load


@dataclass
class DeployedFile:
    """A loaded file: the program, its manifest (JSON data) and its size on disk."""

    model: DeployedModel
    manifest: dict
    size_bytes: int

    @property
    def meta(self) -> dict:
        return self.manifest.get("meta", {})


def _corrupt(path: str, why: str) -> DeployFileError:
    return DeployFileError(
        f"deployed model {path!r} is corrupt ({why}); write it again "
        "(binsense deploy --checkpoint ... --out FILE)."
    )


def _check_header(p: Path, name: str) -> None:
    """Size and first bytes of ``p``, before it is read whole: a file over
    :data:`MAX_FILE_BYTES`, or one that does not start as a ``torch.save`` archive, is
    refused in one line without reading (or allocating) the rest."""
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DeployFileError(
            f"{name!r} is {size / 2**30:.1f} GiB, larger than any deployed model "
            f"({MAX_FILE_BYTES / 2**30:.0f} GiB at most): not a binsense deployed model; "
            "write one with binsense deploy --checkpoint ... --out FILE."
        )
    with p.open("rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise DeployFileError(
            f"{name!r} is truncated, corrupt or not a binsense deployed model (it does not "
            "start as one); write it again (binsense deploy --checkpoint ... --out FILE)."
        )


def read_deployed(path: str | os.PathLike) -> DeployedFile:
    """Load a deployed-model file, its manifest and size (errors: module docstring).

    ``path`` may name a model of the zoo, ``zoo:NAME`` (:mod:`binsense.zoo`)."""
    p = resolve_deployed_path(path)
    name = str(p)
    if not p.is_file():
        raise DeployFileError(f"deployed model {name!r} does not exist; check the path.")
    try:  # read first: an I/O error is not the content's fault, and what follows is
        _check_header(p, name)  # size and magic before the whole file is read
        data = p.read_bytes()
    except OSError as e:
        why = os_error_text(e)
        raise ReadError(f"cannot read {name!r}: {why}; the file itself may be fine.") from None
    try:  # plain data only: no code from the file runs
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise ReadError(f"not enough memory to load {name!r}.", out_of_memory=True) from None
    except _UNREADABLE:
        raise DeployFileError(
            f"{name!r} is truncated, corrupt or not a binsense deployed model (it does not "
            "load as one); write it again (binsense deploy --checkpoint ... --out FILE)."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and ("model" in obj or "state_dict" in obj or "config" in obj):
            hint = " (a training checkpoint? pass it as --checkpoint)"
        raise DeployFileError(
            f"{name!r} is not a binsense deployed model{hint}; write one with "
            "binsense deploy --checkpoint ... --out FILE."
        )
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _corrupt(name, f"format version {version!r}")
    if version > VERSION:
        raise DeployFileError(
            f"deployed model {name!r} has format version {version}, newer than this binsense "
            f"reads (up to {VERSION}); upgrade binsense."
        )
    packed, blobs, digest = obj.get("manifest"), obj.get("blobs"), obj.get("sha256")
    if not (isinstance(packed, bytes) and isinstance(blobs, dict) and isinstance(digest, str)):
        raise _corrupt(name, "parts are missing")
    for key, blob in blobs.items():
        if key not in _BLOB_DTYPES or not isinstance(blob, Tensor) or blob.dim() != 1 or (
            _DTYPE_NAMES.get(blob.dtype) != key
        ):  # fmt: skip
            raise _corrupt(name, f"blob {str(key)[:40]!r}")
    try:  # a damaged tensor record can fail inside the digest itself
        matches = _digest(packed, blobs) == digest
    except Exception:  # noqa: BLE001 - whatever a damaged blob raises, it is damage
        matches = False
    if not matches:
        raise _corrupt(name, "its checksum does not match its content")
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(packed, _MAX_MANIFEST)
        if inflate.unconsumed_tail or not inflate.eof:
            raise _Bad("the manifest is incomplete or too large")
        manifest = json.loads(text)
        _dict(manifest, "the manifest")
        ops = manifest.get("ops")
        if not isinstance(ops, list) or not ops:
            raise _Bad("no ops")
        loader = _Loader(_Reader(manifest.get("tensors"), blobs), name)
        named: dict[str, nn.Module] = {}
        for entry in ops:
            op_name = _name(_dict(entry, "an op").get("name"))
            if op_name in named or "." in op_name:
                raise _Bad(f"op name {op_name!r}")
            named[op_name] = loader.op(entry)
        source = manifest.get("source", "")
    except (_Bad, zlib.error, ArithmeticError, AssertionError, AttributeError, LookupError,
            RuntimeError, TypeError, ValueError) as e:  # fmt: skip
        raise _corrupt(name, str(e)[:200] or type(e).__name__) from None
    model = DeployedModel(nn.Sequential(OrderedDict(named)).eval(), str(source), [])
    return DeployedFile(model, manifest, p.stat().st_size)


def load_deployed(path: str | os.PathLike) -> DeployedModel:
    """The :class:`~binsense.deploy.program.DeployedModel` saved at ``path``.

    Its ``layers`` (trained layer, packed op pairs) are empty: :func:`attach_layers`
    pairs them with a PyTorch model for per-layer checks.
    """
    return read_deployed(path).model


def packed_ops(deployed: DeployedModel) -> list[nn.Module]:
    """The packed binary ops of ``deployed`` in forward order (as ``convert`` lists them)."""
    out: list[nn.Module] = []
    for op in deployed.ops:
        if isinstance(op, ir.PackedConv | ir.PackedLinear):
            out.append(op)
        elif isinstance(op, ir.ResidualOp):
            out += [op.conv1, op.conv2]
    return out


def attach_layers(deployed: DeployedModel, model: nn.Module, path: str = "the file") -> None:
    """Pair the packed ops of a loaded ``deployed`` with the binary layers of the PyTorch
    ``model`` it was converted from, for :func:`~binsense.deploy.check_exact`'s per-layer
    counts; a file whose program does not have the model's shape is refused."""
    reference = convert(model)
    ours = [type(op).__name__ for op in deployed.ops]
    theirs = [type(op).__name__ for op in reference.ops]
    loaded = packed_ops(deployed)
    same = ours == theirs and len(loaded) == len(reference.layers) and all(
        a.weight_words.shape == b.weight_words.shape
        for a, (_, b) in zip(loaded, reference.layers, strict=True)
    )  # fmt: skip
    if not same:
        raise DeployFileError(
            f"{path} is not a conversion of this checkpoint's model (its ops or layer shapes "
            "differ); pass the checkpoint it was written from."
        )
    deployed.layers = [(t, p) for (t, _), p in zip(reference.layers, loaded, strict=True)]


__all__ = [
    "FORMAT",
    "MODULE_TYPES",
    "OP_TYPES",
    "SUFFIX",
    "VERSION",
    "DeployFileError",
    "DeployedFile",
    "attach_layers",
    "load_deployed",
    "packed_ops",
    "read_deployed",
    "save_deployed",
]
