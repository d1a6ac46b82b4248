r"""XNOR-popcount kernels for the deploy engine: a small C library, built on first use.

``xnor.c`` holds a blocked binary GEMM, :math:`C_{mn} = \sum_k
\mathrm{popcount}(\overline{A_{mk} \oplus B_{nk}})` on 64-bit words, with three paths
chosen at run time (never by ``-march``): **AVX-512 VPOPCNTDQ**, **AVX2** (the nibble
table popcount of Mula et al.) and **portable C** (``__builtin_popcountll``); plus the
packing of ±1 tensors into channel words, the im2col of packed words, and a convolution
driver whose epilogue adds the border correction (int32 out) or applies integer
thresholds and writes packed bits (fused, the next layer's input).

**Build** (:mod:`binsense.deploy.kernels.build`; this module holds the typed calls).
``pip install`` builds ``xnor.c`` into the package (``setup.py``:
``_xnor*.so``, with the source's hash compiled in), so no compiler is needed at run time.
Where that build is missing or stale (an edited source, a plain checkout), the first use
compiles ``xnor.c`` with the system C compiler (``$CC``, ``cc``,
``gcc`` or ``clang``; ``-O3 -fPIC -shared``, ``-fopenmp`` where it links) into
``$BINSENSE_CACHE/kernels/`` (else ``~/.cache/binsense/kernels/``), named by the hash of
the source and flags, written to a temporary file and renamed into place, and loads it
with :mod:`ctypes`. Without a compiler, or when the build fails, the engine warns once
and runs the PyTorch reference code (:mod:`binsense.deploy.ir`), which gives the same
integers. ``python -m binsense.deploy.kernels`` builds it ahead of time and prints the path
taken.

**Choosing a path.** :func:`backend` names the one in use: ``"avx512vpopcntdq"``,
``"avx2"``, ``"portable-c"`` or ``"torch"``; the best the CPU has unless
``$BINSENSE_KERNEL`` (``torch``, ``portable``, ``avx2``, ``avx512``) forces one (tests and
benchmarks). A forced path the CPU or the build cannot give is a :class:`BinsenseError`.
:func:`available` lists the paths this machine runs.

**Threads.** One by default; :func:`set_threads` or ``$BINSENSE_THREADS`` give more (the
row blocks of the GEMM shared out by OpenMP; ``1`` runs no thread team). Not tied to
``torch.get_num_threads()``: two OpenMP runtimes spinning on the same cores slow each
other down.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

from binsense.deploy.bits import pack_bits
from binsense.deploy.kernels import build
from binsense.deploy.kernels.build import cache_dir, compilers, library, source_key, where
from binsense.errors import BinsenseError

ENV = "BINSENSE_KERNEL"
THREADS_ENV = "BINSENSE_THREADS"

BACKENDS = ("avx512vpopcntdq", "avx2", "portable-c", "torch")
_ISA = {"portable-c": 1, "avx2": 2, "avx512vpopcntdq": 3}
_FORCED = {
    "torch": "torch",
    "portable": "portable-c",
    "portable-c": "portable-c",
    "avx2": "avx2",
    "avx512": "avx512vpopcntdq",
    "avx512vpopcntdq": "avx512vpopcntdq",
}
_FEATURE_BITS = {"popcnt": 1, "avx2": 2, "avx512vpopcntdq": 4}

_threads: int | None = None
_chosen: tuple[str, str] | None = None  # ($BINSENSE_KERNEL, its path), from backend()


def _reset() -> None:
    """Forget the loaded library, the warning and the chosen path (tests)."""
    global _chosen
    build.reset()
    _chosen = None


def cpu_features() -> list[str]:
    """The popcount ISA extensions this CPU has (``popcnt``, ``avx2``, ``avx512vpopcntdq``)."""
    lib = library()
    bits = lib.xnor_features() if lib is not None else 0
    return [name for name, bit in _FEATURE_BITS.items() if bits & bit]


def available() -> list[str]:
    """The paths this machine runs, fastest first; ``"torch"`` always."""
    lib = library()
    names = [n for n in BACKENDS[:-1] if lib is not None and lib.xnor_isa(_ISA[n]) > 0]
    return [*names, "torch"]


def backend() -> str:
    """The path in use: ``$BINSENSE_KERNEL`` when set, else the best :func:`available`."""
    forced = os.environ.get(ENV, "")
    global _chosen
    if build.tried() and _chosen is not None and _chosen[0] == forced:
        return _chosen[1]
    name = _backend(forced.strip().lower())
    _chosen = (forced, name)
    return name


def _backend(forced: str) -> str:
    if forced in ("", "auto"):
        lib = library()
        if lib is None:
            return "torch"
        return {1: "portable-c", 2: "avx2", 3: "avx512vpopcntdq"}[lib.xnor_isa(0)]
    if forced not in _FORCED:
        raise BinsenseError(
            f"{ENV}={forced!r} is not a kernel path; use one of torch, portable, avx2, avx512."
        )
    name = _FORCED[forced]
    if name != "torch" and name not in available():
        raise BinsenseError(
            f"{ENV}={forced}: this machine cannot run that path (it runs "
            f"{', '.join(available())}); unset {ENV} to use the best one."
        )
    return name


def openmp() -> bool:
    """Whether the library was built with OpenMP (threads > 1 then share out the rows)."""
    lib = library()
    return bool(lib is not None and lib.xnor_openmp())


def set_threads(threads: int | None) -> None:
    """Threads of the C kernels (``None``: ``$BINSENSE_THREADS``, else 1)."""
    global _threads
    _threads = None if threads is None else max(1, int(threads))


def get_threads() -> int:
    """Threads of the C kernels: :func:`set_threads`, else ``$BINSENSE_THREADS``, else 1."""
    if _threads is not None:
        return _threads
    try:
        return max(1, int(os.environ.get(THREADS_ENV, "1")))
    except ValueError:
        raise BinsenseError(f"{THREADS_ENV} must be a whole number of threads.") from None


# ---------------------------------------------------------------- calls


def _isa(name: str | None) -> tuple[ctypes.CDLL, int]:
    name = backend() if name is None else name
    lib = library()
    if name == "torch" or lib is None or name not in _ISA:
        raise BinsenseError(f"the C kernel path {name!r} is not available here.")
    return lib, _ISA[name]


def _check(rc: int) -> None:
    if rc == -1:
        raise BinsenseError("this CPU cannot run the requested kernel path.")
    if rc != 0:
        raise MemoryError("the XNOR kernel could not allocate its buffers.")


def _ptr(t: Tensor | None) -> int | None:
    """A tensor's address for ctypes, or NULL."""
    return None if t is None else t.data_ptr()


def _words(t: Tensor, name: str) -> Tensor:
    if t.dtype not in (torch.int64, torch.uint64) or t.device.type != "cpu":
        raise BinsenseError(f"{name}: packed words must be int64 CPU tensors, got {t.dtype}.")
    return t.contiguous()


def xnor_gemm(
    a: Tensor, b: Tensor, threads: int | None = None, backend: str | None = None
) -> Tensor:
    """``C[m, n] = sum_k popcount(~(a[m, k] ^ b[n, k]))``: int64 words ``(M, K)`` and
    ``(N, K)`` -> int32 ``(M, N)``."""
    lib, isa = _isa(backend)
    a, b = _words(a, "a"), _words(b, "b")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise BinsenseError(f"xnor_gemm: shapes {tuple(a.shape)} and {tuple(b.shape)} differ in K.")
    (m, k), n = a.shape, b.shape[0]
    c = torch.empty(m, n, dtype=torch.int32)
    rc = lib.xnor_gemm(
        a.data_ptr(), b.data_ptr(), c.data_ptr(), m, n, k, threads or get_threads(), isa
    )
    _check(rc)
    return c


def pack_b(b: Tensor) -> Tensor:
    """A weight matrix ``(N, K)`` of words as the GEMM's column panels (pack once, keep)."""
    lib = library()
    if lib is None:
        raise BinsenseError("the XNOR C kernel is not available.")
    b = _words(b, "b")
    n, k = b.shape
    out = torch.empty(max(1, lib.xnor_packed_b_words(n, k)), dtype=torch.int64)
    lib.xnor_pack_b(b.data_ptr(), n, k, out.data_ptr())
    return out


def gemm_packed(
    a: Tensor, panels: Tensor, n: int, threads: int | None = None, backend: str | None = None
) -> Tensor:
    """:func:`xnor_gemm` against panels from :func:`pack_b` of an ``(n, K)`` matrix."""
    lib, isa = _isa(backend)
    a = _words(a, "a")
    m, k = a.shape
    c = torch.empty(m, n, dtype=torch.int32)
    rc = lib.xnor_gemm_packed(
        a.data_ptr(), panels.data_ptr(), c.data_ptr(), m, n, k, threads or get_threads(), isa
    )
    _check(rc)
    return c


def pack_input(x: Tensor, groups: int = 1, sign: bool = False) -> Tensor:
    r"""±1 ``(B, C, H, W)`` (or ``(B, C)``) -> int64 words ``(B, H, W, G * wpg)`` (``(B, G *
    wpg)``): each pixel's channels of each group packed (bit 1 iff ``x > 0``), pad bits 0.
    ``sign=True`` packs the sign of float32 values instead: bit 1 iff ``x >= 0``
    (:math:`\operatorname{sign}(0) = +1`, NaN gives 0, as binsense's sign quantizers)."""
    lib = library()
    if lib is None:
        raise BinsenseError("the XNOR C kernel is not available.")
    if sign and x.dtype != torch.float32:
        raise BinsenseError(f"pack_input(sign=True) takes float32 values, got {x.dtype}.")
    if x.dtype == torch.bool or x.dtype == torch.uint8:
        code = 0
    elif x.dtype == torch.int8:
        code = 1
    elif x.dtype == torch.float32:
        code = 3 if sign else 2
    else:
        x, code = x > 0, 0
    x = x.contiguous()
    b, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    hw = 1
    for s in spatial:
        hw *= s
    wpg = -(-(c // groups) // 64)
    out = torch.empty(b, *spatial, groups * wpg, dtype=torch.int64)
    _check(lib.xnor_pack_nchw(x.data_ptr(), code, b, c, hw, groups, out.data_ptr()))
    return out


def pool_bits(words: Tensor, k: int, down: Tensor) -> Tensor:
    """Non-overlapping ``k x k`` max-pool of thresholded bits: int64 words ``(B, H, W, nw)``
    -> ``(B, H // k, W // k, nw)``, OR where the threshold rises and AND where it falls
    (``down``: words ``(H // k, W // k, nw)``, bit set = falling)."""
    lib = library()
    if lib is None:
        raise BinsenseError("the XNOR C kernel is not available.")
    words, down = _words(words, "words"), _words(down, "down")
    b, h, w, nw = words.shape
    if down.shape != (h // k, w // k, nw):
        raise BinsenseError(f"pool_bits: falling bits of shape {tuple(down.shape)} for a "
                            f"{h // k}x{w // k}x{nw} pooled map.")  # fmt: skip
    out = torch.empty(b, h // k, w // k, nw, dtype=torch.int64)
    lib.xnor_pool_bits(words.data_ptr(), b, h, w, nw, k, down.data_ptr(), out.data_ptr())
    return out


class Dim(IntEnum):
    """The slots of a convolution's ``dims`` vector (:func:`conv_dims`), in ``xnor.c``'s
    order (``enum { D_B, ... D_WO }``): batch, input height and width, groups, 64-bit
    words per group of input channels, output channels per group, kernel, stride and
    padding (height, width), output height and width."""

    B, H, W, G, WPG, COUTG, KH, KW, SH, SW, PH, PW, HO, WO = range(14)


def conv_dims(
    batch: int,
    height: int,
    width: int,
    groups: int,
    in_per_group: int,
    out_per_group: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Tensor:
    """The int64 shape vector of the C convolution (its ``dims``; slots :class:`Dim`)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    hout, wout = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    wpg = -(-in_per_group // 64)
    values = [batch, height, width, groups, wpg, out_per_group, kh, kw, sh, sw, ph, pw]
    return torch.tensor([*values, hout, wout], dtype=torch.int64)


def im2col(words: Tensor, dims: Tensor, group: int = 0) -> Tensor:
    """Group ``group``'s packed im2col matrix ``(B * H' * W', k_h * k_w * wpg)`` of input
    words from :func:`pack_input` (spatial padding words 0)."""
    lib = library()
    if lib is None:
        raise BinsenseError("the XNOR C kernel is not available.")
    d = dims.tolist()
    rows, k = d[Dim.B] * d[Dim.HO] * d[Dim.WO], d[Dim.KH] * d[Dim.KW] * d[Dim.WPG]
    out = torch.empty(rows, k, dtype=torch.int64)
    lib.xnor_im2col(_words(words, "words").data_ptr(), dims.data_ptr(), group, out.data_ptr())
    return out


@dataclass(frozen=True)
class ConvWeights:
    """A packed conv's weights in the two forms the C convolution multiplies: ``rows``
    ``(G, ceil(C_out / G / 4) * 4, k_h k_w wpg)`` (int32 output: the weights are the rows
    of the product) and ``panels`` (the fused threshold: the weights are its columns).
    The panels' nibble halves, which the AVX2 fused path reads, are made on its first
    call and kept (:meth:`split_panels`)."""

    rows: Tensor
    panels: Tensor
    groups: int
    _split: dict = field(default_factory=dict, compare=False, repr=False)

    def split_panels(self, lib: ctypes.CDLL, isa: int) -> Tensor | None:
        """The panels as split panels if path ``isa`` reads them, else None (both kept per
        path: no C call after the first)."""
        if isa not in self._split:
            out = None
            if lib.xnor_fused_split(isa) == 1:
                out = torch.empty(2 * self.panels.numel(), dtype=torch.int64)
                lib.xnor_split_panels(self.panels.data_ptr(), self.panels.numel(), out.data_ptr())
            self._split[isa] = out
        return self._split[isa]


def conv_weights(weight_words: Tensor, groups: int) -> ConvWeights:
    """Packed conv weights ``(C_out, k_h, k_w, wpg)`` (``PackedConv.weight_words``) in the
    C convolution's forms (pack once, keep)."""
    mats = _words(weight_words, "weight_words").reshape(groups, weight_words.shape[0] // groups, -1)
    rows = -(-mats.shape[1] // 4) * 4
    padded = torch.zeros(groups, rows, mats.shape[2], dtype=torch.int64)
    padded[:, : mats.shape[1]] = mats
    return ConvWeights(padded, torch.cat([pack_b(m) for m in mats]), groups)


@dataclass(frozen=True)
class FusedThreshold:
    """Integer thresholds in the form the fused C epilogue reads (:func:`fuse_threshold`)."""

    offset: Tensor  # int32 (H' W', C_out)
    invert: Tensor  # int64 words (H' W', ceil(C_out / 64))


def fuse_threshold(bias: Tensor, tau: Tensor, flip: Tensor) -> FusedThreshold:
    """The threshold op ``+1 iff flip * (y - tau) >= 0`` on ``y = 2 count + bias``, as the
    fused epilogue's bit ``(2 count + offset >= 0) xor invert``: ``bias`` int ``(C_out,
    H' W')`` (border correction minus fan-in), ``tau`` and ``flip`` (±1) broadcastable to
    it. ``y <= tau`` is ``not (y - tau - 1 >= 0)``."""
    bias = bias.to(torch.int64)
    tau, flip = torch.broadcast_to(tau, bias.shape), torch.broadcast_to(flip, bias.shape)
    down = flip < 0
    offset = (bias - tau.to(torch.int64) - down.to(torch.int64)).to(torch.int32)
    return FusedThreshold(offset.T.contiguous(), pack_bits(down.T, 1).contiguous())


def conv2d_words(
    words: Tensor,
    weights: ConvWeights,
    dims: Tensor,
    bias: Tensor | None = None,
    threshold: FusedThreshold | None = None,
    threads: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """The binary convolution on packed input words (:func:`pack_input`).

    With ``bias`` (int32 ``(C_out, H' W')``: the border correction minus the fan-in): int32
    ``(B, C_out, H', W') = 2 * xnor_count + bias``. With ``threshold`` instead
    (:func:`fuse_threshold`): each output position's threshold bits packed into int64
    words ``(B, H', W', ceil(C_out / 64))``, pad bits 0 (the next layer's input).
    """
    lib, isa = _isa(backend)
    d = dims.tolist()
    b, hout, wout, cout = d[Dim.B], d[Dim.HO], d[Dim.WO], d[Dim.G] * d[Dim.COUTG]
    words = _words(words, "words")
    nt = threads or get_threads()
    if threshold is None:
        if bias is None or bias.numel() != cout * hout * wout:
            raise BinsenseError(f"conv bias: expected {cout}x{hout}x{wout} int32 values.")
        bias = bias.to(torch.int32).contiguous()
        y = torch.empty(b, cout, hout, wout, dtype=torch.int32)
        rc = lib.xnor_conv2d(
            words.data_ptr(), weights.rows.data_ptr(), weights.panels.data_ptr(),
            dims.data_ptr(), 0,
            bias.data_ptr(), y.data_ptr(), None, None, nt, isa, None,
        )  # fmt: skip
    else:
        if threshold.offset.shape != (hout * wout, cout):
            raise BinsenseError(f"fused threshold: expected {hout * wout}x{cout} offsets.")
        y = torch.empty(b, hout, wout, -(-cout // 64), dtype=torch.int64)
        rc = lib.xnor_conv2d(
            words.data_ptr(), None, weights.panels.data_ptr(), dims.data_ptr(), 1,
            threshold.offset.data_ptr(), None, threshold.invert.data_ptr(), y.data_ptr(),
            nt, isa, _ptr(weights.split_panels(lib, isa)),
        )  # fmt: skip
    _check(rc)
    return y


def float_conv(
    x: Tensor,
    taps: Tensor,
    bias: Tensor | None,
    out_channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> Tensor | None:
    """A float convolution in the one fixed order of :mod:`binsense.deploy.floatops` by the
    C kernel (``xnor_float_conv``), or ``None`` where the library is not built. ``taps``:
    the weight as ``(G, KH, KW, C / G, O / G)`` float32 (:func:`floatops.tap_major`)."""
    lib = library()
    if lib is None:
        return None
    x = x.to(torch.float32).contiguous()
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = torch.empty(n, out_channels, ho, wo, dtype=torch.float32)
    if y.numel() == 0:
        return y
    dims = torch.tensor(
        [n, c, h, w, out_channels, groups, kh, kw, sh, sw, ph, pw, ho, wo], dtype=torch.int64
    )
    b = None if bias is None else bias.to(torch.float32).contiguous()
    isa = _ISA.get(backend(), 0)  # the XNOR kernels' path (0, the best, under "torch")
    _check(lib.xnor_float_conv(_ptr(x), _ptr(taps), _ptr(b), _ptr(y), _ptr(dims), isa))
    return y


def runs(x: Tensor) -> bool:
    """Whether the C path takes ``x`` (a CPU tensor, a C path chosen)."""
    return x.device.type == "cpu" and backend() != "torch"


__all__ = [
    "BACKENDS",
    "Dim",
    "available",
    "backend",
    "cache_dir",
    "compilers",
    "source_key",
    "where",
    "conv2d_words",
    "conv_dims",
    "conv_weights",
    "ConvWeights",
    "fuse_threshold",
    "FusedThreshold",
    "cpu_features",
    "gemm_packed",
    "get_threads",
    "im2col",
    "library",
    "openmp",
    "pack_b",
    "pack_input",
    "pool_bits",
    "runs",
    "set_threads",
    "xnor_gemm",
]
