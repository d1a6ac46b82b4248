"""The deploy engine's XNOR-popcount kernels against torch fp32, one thread.

Two pieces of issue 12's evidence:

- **Kernel**: one binary 3x3 conv layer (padding 1, stride 1) on packed input words, to
  int32 (border correction applied) and to packed output words (fused integer threshold,
  the next layer's input), against ``torch.nn.functional.conv2d`` in float32 at the same
  shape: 64->64 @ 32x32, 128->128 @ 16x16, 256->256 @ 8x8, 512->512 @ 4x4, batch 1 and 16.
  The time of the C conv splits into the packed im2col and the GEMM; both are timed alone
  (materialized im2col, then the GEMM on it), and so is packing the ±1 float input into
  words (outside the packed-in -> packed-out layer: between binary layers the fused
  output already is the next input).
- **Peer shape**: the GEMM M=256, K=4608 bits (72 words), N=512 against a float32
  ``torch.matmul`` of the same shape (the bnn-lab comparison runs separately, from its own
  virtual environment).

Every kernel result is checked against the float result before it is timed. Times are
medians over ``--repeats`` runs (each run long enough to time: a few ms). Usage::

    python benchmarks/bench_deploy.py [--paths all] [--threads 1] [--repeats 7]

``--paths all`` times every kernel path this CPU runs (AVX-512 VPOPCNTDQ, AVX2, portable
C) instead of the best one alone.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from binsense.deploy import kernels
from binsense.deploy.program import PackedConv, pack_bits
from binsense.layers import BinaryConv2d

SHAPES = [(64, 32), (128, 16), (256, 8), (512, 4)]  # channels in = out, height = width
BATCHES = [1, 16]


def _time(fn: Callable[[], object], repeats: int, min_seconds: float = 0.004) -> float:
    """Median seconds per call over ``repeats`` runs of enough calls to fill ``min_seconds``."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pm1(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def bench_conv(channels: int, size: int, batch: int, path: str, threads: int, repeats: int):
    torch.manual_seed(channels)
    conv = BinaryConv2d(channels, channels, 3, 1, 1)
    packed = PackedConv(conv)
    weight = conv.binary_weight().detach()
    x = _pm1(batch, channels, size, size, seed=size)
    y_float = F.conv2d(x, weight, None, 1, 1)

    words = kernels.pack_input(x)  # packed in: (B, H, W, words)
    weights = kernels.conv_weights(packed.weight_words, 1)
    dims = kernels.conv_dims(batch, size, size, 1, channels, channels, (3, 3), (1, 1), (1, 1))
    bias = (packed.border(size, size) - packed.fan_in).flatten(1).contiguous()
    g = torch.Generator().manual_seed(1)  # a threshold per channel, as after batch norm
    tau = torch.randint(-8, 9, (channels, 1), generator=g, dtype=torch.int32)
    flip = torch.where(torch.rand(channels, 1, generator=g) < 0.1, -1, 1).to(torch.int8)
    threshold = kernels.fuse_threshold(bias, tau, flip)

    def int32_out():
        return kernels.conv2d_words(words, weights, dims, bias, None, threads, path)

    def packed_out():
        return kernels.conv2d_words(words, weights, dims, None, threshold, threads, path)

    y_int = int32_out()
    if not torch.equal(y_int.float(), y_float):
        raise SystemExit(f"{path}: the conv {channels}@{size} b{batch} is not exact")
    bits = flip.view(1, -1, 1, 1) * (y_int - tau.view(1, -1, 1, 1)) >= 0
    if not torch.equal(packed_out(), pack_bits(bits.permute(0, 2, 3, 1), -1)):
        raise SystemExit(f"{path}: the fused conv {channels}@{size} b{batch} is not exact")

    a = kernels.im2col(words, dims)
    t = {
        "torch": _time(lambda: F.conv2d(x, weight, None, 1, 1), repeats),
        "int32": _time(int32_out, repeats),
        "fused": _time(packed_out, repeats),
        "im2col": _time(lambda: kernels.im2col(words, dims), repeats),
        "gemm": _time(
            lambda: kernels.gemm_packed(a, weights.panels, channels, threads, path), repeats
        ),
        "pack": _time(lambda: kernels.pack_input(x), repeats),
    }
    return t


def bench_gemm(path: str, threads: int, repeats: int):
    m, n, kbits = 256, 512, 4608
    k = kbits // 64
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**63), 2**63 - 1, (m, k), generator=g, dtype=torch.int64)
    b = torch.randint(-(2**63), 2**63 - 1, (n, k), generator=g, dtype=torch.int64)
    c = kernels.xnor_gemm(a, b, threads, path)
    # exact: the ±1 float product of the unpacked bits equals 2 C - K
    shifts = torch.arange(64, dtype=torch.int64)
    af = ((a.unsqueeze(-1) >> shifts) & 1).flatten(1).float() * 2 - 1
    bf = (((b.unsqueeze(-1) >> shifts) & 1).flatten(1).float() * 2 - 1).T.contiguous()
    if not torch.equal((2 * c - kbits).float(), af @ bf):
        raise SystemExit(f"{path}: the GEMM is not exact")
    panels = kernels.pack_b(b)
    return {
        "torch": _time(lambda: af @ bf, repeats),
        "gemm": _time(lambda: kernels.xnor_gemm(a, b, threads, path), repeats),
        "packed": _time(lambda: kernels.gemm_packed(a, panels, n, threads, path), repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", choices=["best", "all"], default="best")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if kernels.library() is None:
        raise SystemExit("the XNOR C kernel could not be built here (a C compiler is needed)")
    paths = kernels.available()[:-1] if args.paths == "all" else [kernels.backend()]

    print(f"# bench_deploy  {datetime.date.today().isoformat()}")
    print(f"CPU: {_cpu_name()}; popcount ISA: {', '.join(kernels.cpu_features()) or 'none'}")
    print(f"kernel paths here: {', '.join(kernels.available())}; timed: {', '.join(paths)}")
    print(
        f"threads: {args.threads} (torch and kernel); torch {torch.__version__}; "
        f"OpenMP in the kernel: {kernels.openmp()}; median of {args.repeats}"
    )
    print()
    print("## Kernel: binary 3x3 conv, packed in, vs torch fp32 conv2d (times in µs)")
    print()
    print(
        "| path | layer | batch | torch fp32 | int32 out | speed-up | packed out (fused) | "
        "speed-up | im2col alone | GEMM alone | pack ±1 float input |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    speedups: dict[str, list[float]] = {p: [] for p in paths}
    for path in paths:
        for channels, size in SHAPES:
            for batch in BATCHES:
                t = bench_conv(channels, size, batch, path, args.threads, args.repeats)
                speedups[path].append(t["torch"] / t["fused"])
                print(
                    f"| {path} | {channels}->{channels} @ {size}x{size} | {batch} | "
                    f"{_us(t['torch'])} | {_us(t['int32'])} | {t['torch'] / t['int32']:.1f}x | "
                    f"{_us(t['fused'])} | "
                    f"{t['torch'] / t['fused']:.1f}x | {_us(t['im2col'])} | {_us(t['gemm'])} | "
                    f"{_us(t['pack'])} |",
                    flush=True,
                )
    print()
    for path, s in speedups.items():
        print(f"{path}: median speed-up (fused) {statistics.median(s):.1f}x over {len(s)} layers")
    print()
    print("## Peer shape: GEMM M=256, K=4608 bits, N=512 vs torch fp32 matmul (times in µs)")
    print()
    print("| path | torch fp32 matmul | xnor_gemm (packs B) | speed-up | B prepacked | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in paths:
        t = bench_gemm(path, args.threads, args.repeats)
        print(
            f"| {path} | {_us(t['torch'])} | {_us(t['gemm'])} | {t['torch'] / t['gemm']:.1f}x | "
            f"{_us(t['packed'])} | {t['torch'] / t['packed']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
