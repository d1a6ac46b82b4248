r"""Deployed-model files: a :class:`~binsense.deploy.program.DeployedModel` on disk, as bits.

``save_deployed(deployed, "model.bsd")`` writes the integer program;
``load_deployed("model.bsd")`` gives it back, computing the
same logits bit for bit. ``binsense deploy --checkpoint RUN/checkpoint.pt --out model.bsd``
writes one; ``binsense deploy --load model.bsd --checkpoint RUN/checkpoint.pt --check``
checks it against the PyTorch model.

**The file** is a ``torch.save`` archive of plain data, read back with
``torch.load(..., weights_only=True)``, which runs no code from the file (the file is
read into memory first, so that an I/O error and bad content are told apart)::

    {"format": "binsense-deployed", "version": 2, "sha256": <hex>,
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
  directions, the weights of a binary ``Conv`` / ``Linear`` inside a float stage) one
  bit each;
- ``float32``: the other float tensors (of the float stages: a float first layer or
  head, batch norms and their affine forms, DeSign kernels), exactly as they are.

``sha256`` covers the manifest and every blob: a changed byte is reported as corruption.

**The manifest** (JSON) holds everything else::

    {"format": "binsense-deployed", "version": 2, "source": "RecipeModel", "meta": {...},
     "ops": [op, ...],
     "tensors": {name: {"blob": "int64", "offset": 0, "numel": n, "shape": [...],
                        "dtype": "int64", "enc": ENC, ...}}}

with ``ENC`` ``"raw"`` (values as they are), ``"words"`` (packed words, ``"width"``
valid bits a row), ``"int"`` (``"width"`` bits a value, plus ``"min"``), ``"bits"``
(bool) or ``"pm1"`` (±1); ``offset`` and ``numel`` count elements of the blob.

- an **op** is ``{"name": ..., "op": TYPE, ...}`` with ``TYPE`` one of
  :data:`OP_TYPES`: ``PackedConv``, ``PackedLinear``, ``Threshold``, ``PlanesInput``,
  ``MaxPoolInt`` and ``Shuffle`` with ``"params"`` (plain values, the op's ``spec()``)
  and ``"tensors"`` (names in ``"tensors"``); ``FloatStage`` with ``"sources"`` (the
  paths of the trained conv and linear layers it was lowered from) and ``"ops"`` (float
  ops); ``ResidualOp`` with its six parts as ops (``conv1``, ``threshold1``, ``conv2``
  and the float stages ``rest``, ``shortcut``, ``post``); ``ToInt8`` and ``FlattenOp``
  with nothing;
- a **float op** is ``{"type": TYPE, "params": {...}, "tensors": {...}}`` (its
  ``spec()``), with ``TYPE`` one of :data:`binsense.deploy.stage.FLOAT_OPS`:
  ``Standardize``, ``Conv``, ``Linear``, ``BatchNorm`` (with its affine ``form``),
  ``ScaleShift``, ``MaxPool``, ``AdaptiveAvgPool``, ``GlobalPool``, ``Flatten``,
  ``ReLU``, ``Hardtanh``, ``Sign``, ``DeSignShift``, ``ShortcutOp``.

No PyTorch module is stored: a program holding an op of another type is refused when
saved, with one line. On load, types are looked up in these fixed tables only (no name
is imported, no module is built), each op's ``from_spec`` checks every value
(:mod:`binsense.deploy.plain`), and the tensor records must match the blobs, each read
once: a manifest cannot make the loader allocate much more than the file holds.

**Versions.** This binsense writes and reads version 2. Version 1 (binsense before the
typed float ops) stored the float stages as PyTorch modules: such a file is refused with
one line saying how to write it again (``binsense deploy --checkpoint RUN/checkpoint.pt
--out FILE``).

**Errors** are one line (:class:`DeployFileError`, a
:class:`~binsense.errors.CheckpointError`): a missing, truncated or corrupt file, a
foreign file (a training checkpoint, any other archive), a file of an older or a newer
format version, a type outside the allow-list.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from binsense.deploy import ir, stage
from binsense.deploy.bits import pack_bits, unpack_bits
from binsense.deploy.program import DeployedModel, convert
from binsense.errors import BinsenseError, CheckpointError
from binsense.io import ReadError, atomic_write, os_error_text
from binsense.zoo import resolve_deployed_path

FORMAT = "binsense-deployed"
#: The format version this binsense writes and reads (an older file: module docstring).
VERSION = 2
#: The usual file name suffix (not enforced).
SUFFIX = ".bsd"

#: Op types a file may name (module docstring).
OP_TYPES = (
    "PlanesInput", "FloatStage", "ToInt8", "PackedConv", "PackedLinear", "MaxPoolInt",
    "Threshold", "FlattenOp", "ResidualOp", "Shuffle",
)  # fmt: skip
#: The ops stored as their ``spec()`` and rebuilt by ``from_spec``.
_SPEC_OPS: dict[str, type[ir.Op]] = {
    "PackedConv": ir.PackedConv, "PackedLinear": ir.PackedLinear, "Threshold": ir.Threshold,
    "PlanesInput": ir.PlanesInput, "MaxPoolInt": ir.MaxPoolInt, "Shuffle": ir.Shuffle,
}  # fmt: skip
#: A ResidualOp's parts and their op types, in the order of its fields.
_RESIDUAL_PARTS = (
    ("conv1", "PackedConv"), ("threshold1", "Threshold"), ("conv2", "PackedConv"),
    ("rest", "FloatStage"), ("shortcut", "FloatStage"), ("post", "FloatStage"),
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
_MAX_SIZE = 1 << 40  # bound on any count read from a manifest
#: What ``torch.load`` raises for bytes that are not a (complete) archive of plain data.
_UNREADABLE = (
    OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError, LookupError,
    TypeError, AttributeError, ImportError, AssertionError, struct.error, zipfile.BadZipFile,
)  # fmt: skip
_MAX_MANIFEST = 64 << 20  # bytes of manifest JSON

#: Largest file read as a deployed model: far above any BNN (a full-width VGG-small is
#: about 1 MB), far below what reading junk into memory may cost.
MAX_FILE_BYTES = 1 << 30
#: A ``torch.save`` archive is a zip file: its first four bytes.
_ZIP_MAGIC = b"PK\x03\x04"
#: Elements of all the tensors of a file stored in 0 bits (each all one value).
_MAX_CONSTANT = 1 << 20


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
        self.used: set[str] = set()  # each record is read once: no tensor twice in memory
        self.constant = 0  # elements of the tensors stored in 0 bits, so far

    def get(self, name: Any) -> Tensor:
        if not isinstance(name, str) or name not in self.records:
            raise _Bad(f"a tensor {str(name)[:60]!r} that the file does not hold")
        if name in self.used:
            raise _Bad(f"tensor {name[:60]!r} read twice")
        self.used.add(name)
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
        if count == 0:
            self.constant += n
            if self.constant > _MAX_CONSTANT:
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


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise _Bad(f"a name {str(value)[:60]!r}")
    return value


# ---------------------------------------------------------------- ops (load)


class _Loader:
    """Builds ops from a checked manifest: types from the fixed tables only, every value
    through the op's ``from_spec``."""

    def __init__(self, reader: _Reader, path: str) -> None:
        self.reader = reader
        self.path = path

    def refuse(self, kind: Any, what: str, allowed: tuple[str, ...]) -> DeployFileError:
        return DeployFileError(
            f"{self.path!r} names the {what} type {str(kind)[:60]!r}, which binsense does not "
            f"load (allowed: {', '.join(allowed)}); it was not written by this binsense or "
            "was altered."
        )

    def spec(self, cls: Any, kind: str, entry: dict) -> Any:
        """``cls.from_spec`` of the entry's params and tensors, its refusals as damage."""
        params = _dict(entry.get("params", {}), f"{kind} parameters")
        refs = _dict(entry.get("tensors", {}), f"{kind} tensors")
        tensors = {_name(k): self.reader.get(v) for k, v in refs.items()}
        try:
            return cls.from_spec(params, tensors)
        except KeyError as e:
            raise _Bad(f"{kind} without {e}") from None
        except BinsenseError as e:
            raise _Bad(f"{kind}: {str(e).rstrip('.')}") from None

    def float_op(self, entry: Any) -> stage.FloatOp:
        entry = _dict(entry, "a float op")
        kind = entry.get("type")
        cls = stage.FLOAT_OPS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise self.refuse(kind, "float op", tuple(stage.FLOAT_OPS))
        return self.spec(cls, kind, entry)

    def float_stage(self, entry: dict) -> ir.FloatStage:
        ops, sources = entry.get("ops"), entry.get("sources")
        if not isinstance(ops, list) or not isinstance(sources, list):
            raise _Bad("a FloatStage without its ops and sources")
        built = [self.float_op(e) for e in ops]
        layers = sum(isinstance(op, stage.Conv | stage.Linear) for op in built)
        if len(sources) != layers:
            raise _Bad(f"a FloatStage of {layers} conv / linear layers with {len(sources)} sources")
        return ir.FloatStage(built, [_name(s) for s in sources])

    def op(self, entry: Any, only: str | None = None) -> ir.Op:
        """The op of ``entry``; ``only``: the type it must have (a ResidualOp's part)."""
        entry = _dict(entry, "an op")
        kind = entry.get("op")
        if kind not in OP_TYPES:
            raise self.refuse(kind, "op", OP_TYPES)
        if only is not None and kind != only:
            raise _Bad(f"a ResidualOp part of type {kind}, not {only}")
        if kind in _SPEC_OPS:
            return self.spec(_SPEC_OPS[kind], kind, entry)
        if kind == "FloatStage":
            return self.float_stage(entry)
        if kind == "ToInt8":
            return ir.ToInt8()
        if kind == "FlattenOp":
            return ir.FlattenOp()
        # ResidualOp: its parts, each of its one type (no op nests another ResidualOp)
        parts = [self.op(entry.get(part), t) for part, t in _RESIDUAL_PARTS]
        return ir.ResidualOp(*parts)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ops (save)


def _unknown(where: str, what: str, kind: str, known: Any) -> BinsenseError:
    return BinsenseError(
        f"cannot save the deployed model: {where} is a {kind} {what}, which the deployed-model "
        f"file does not know (known: {', '.join(known)})."
    )


def _float_entry(where: str, op: Any, w: _Writer) -> dict:
    """A float op as its ``spec()``; a binary conv's or linear layer's ±1 weight as bits."""
    t = type(op)
    if stage.FLOAT_OPS.get(t.__name__) is not t:
        raise _unknown(where, "float op", t.__name__, stage.FLOAT_OPS)
    params, tensors = op.spec()
    binary = isinstance(op, stage.Conv | stage.Linear) and op.binary
    refs = {
        k: w.add(f"{where}.{k}", v, "pm1" if binary and k == "weight" else None)
        for k, v in tensors.items()
    }
    return {"type": t.__name__, "params": params, "tensors": refs}


def _op_entry(name: str, op: ir.Op, w: _Writer) -> dict:
    t = type(op)
    entry: dict[str, Any] = {"name": name, "op": t.__name__}
    if _SPEC_OPS.get(t.__name__) is t:
        params, tensors = op.spec()
        entry["params"] = params
        width = params.get("in_per_group", params.get("fan_in", 0))  # bits in a word row
        entry["tensors"] = {
            k: w.add(f"{name}.{k}", v, "words" if k == "weight_words" else None, width)
            for k, v in tensors.items()
        }
    elif t is ir.FloatStage:
        entry["sources"] = [str(s) for s in op.sources]
        entry["ops"] = [_float_entry(f"{name}.{i}", f, w) for i, f in enumerate(op.ops)]
    elif t in (ir.ToInt8, ir.FlattenOp):
        pass
    elif t is ir.ResidualOp:
        for part, _ in _RESIDUAL_PARTS:
            entry[part] = _op_entry(f"{name}.{part}", getattr(op, part), w)
    else:
        raise _unknown(f"op {name!r}", "op", t.__name__, OP_TYPES)
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
    checkpoint names). An op or float op of a type the format does not know, or a
    parameter that is not plain JSON data, is refused with one line
    (:class:`~binsense.errors.BinsenseError`) before anything is written.
    """
    w = _Writer()
    ops = [_op_entry(name, op, w) for name, op in deployed.ops.named()]
    manifest = {
        "format": FORMAT, "version": VERSION, "source": deployed.source,
        "meta": _plain_meta(meta), "ops": ops, "tensors": w.records,
    }  # fmt: skip
    try:
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:  # an op's parameter (meta was checked above)
        raise BinsenseError(
            f"cannot save the deployed model: an op parameter is not plain JSON data ({e})."
        ) from None
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
            f"reads (version {VERSION}); upgrade binsense."
        )
    if version < VERSION:  # version 1: float stages as PyTorch modules
        raise DeployFileError(
            f"deployed model {name!r} was written by an older binsense (format version "
            f"{version}, which stored PyTorch modules; this binsense reads version {VERSION}); "
            "write it again from its checkpoint: binsense deploy --checkpoint "
            "RUN/checkpoint.pt --out FILE."
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
        named: dict[str, ir.Op] = {}
        for entry in ops:
            op_name = _name(_dict(entry, "an op").get("name"))
            if op_name in named or "." in op_name:
                raise _Bad(f"op name {op_name!r}")
            named[op_name] = loader.op(entry)
        source = manifest.get("source", "")
    except (_Bad, zlib.error, ArithmeticError, AssertionError, AttributeError, LookupError,
            RuntimeError, TypeError, ValueError) as e:  # fmt: skip
        raise _corrupt(name, str(e)[:200] or type(e).__name__) from None
    model = DeployedModel(ir.OpList(named), str(source), [])
    return DeployedFile(model, manifest, p.stat().st_size)


def load_deployed(path: str | os.PathLike) -> DeployedModel:
    """The :class:`~binsense.deploy.program.DeployedModel` saved at ``path``.

    Its ``layers`` (trained layer, packed op pairs) are empty: :func:`attach_layers`
    pairs them with a PyTorch model for per-layer checks.
    """
    return read_deployed(path).model


def packed_ops(deployed: DeployedModel) -> list[ir.Op]:
    """The packed binary ops of ``deployed`` in forward order (as ``convert`` lists them)."""
    out: list[ir.Op] = []
    for op in deployed.ops:
        if isinstance(op, ir.PackedConv | ir.PackedLinear):
            out.append(op)
        elif isinstance(op, ir.ResidualOp):
            out += [op.conv1, op.conv2]
    return out


def attach_layers(deployed: DeployedModel, model: nn.Module, path: str = "the file") -> None:
    """Pair the packed ops of a loaded ``deployed`` with the binary layers of the PyTorch
    ``model`` it was converted from, for :func:`~binsense.deploy.check_exact`'s per-layer
    counts; a file whose program does not have the model's shape (its op types, packed
    layer shapes, or float stages' source layers) is refused."""
    reference = convert(model)
    ours = [type(op).__name__ for op in deployed.ops]
    theirs = [type(op).__name__ for op in reference.ops]
    loaded = packed_ops(deployed)
    sources = [s.sources for s in deployed.float_stages()]  # the float layers' paths
    same = ours == theirs and len(loaded) == len(reference.layers) and all(
        a.weight_words.shape == b.weight_words.shape
        for a, (_, b) in zip(loaded, reference.layers, strict=True)
    ) and sources == [s.sources for s in reference.float_stages()]  # fmt: skip
    if not same:
        raise DeployFileError(
            f"{path} is not a conversion of this checkpoint's model (its ops, layer shapes "
            "or float layers differ); pass the checkpoint it was written from."
        )
    deployed.layers = [(t, p) for (t, _), p in zip(reference.layers, loaded, strict=True)]


__all__ = [
    "FORMAT",
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
