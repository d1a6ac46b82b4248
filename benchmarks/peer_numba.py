"""Time a numba XNOR-popcount GEMM on given ±1 matrices (run by ``bench_deploy.py``).

Issue 12 asks to choose between numba and a small C extension *by measuring*. This is
the numba side, written as well as numba allows: 64-bit packed words, the popcount as
LLVM's ``ctpop`` intrinsic (one ``popcnt``/``vpopcntq`` instruction, not a bit-trick
loop), compiled for the host CPU (numba's default: every ISA extension it has), in two
loop orders, of which the faster is reported:

- ``dot``: ``C[m, n] = sum_k popcount(A[m, k] ^ B[n, k])``, the inner loop a reduction
  over k;
- ``panel``: B stored transposed ``(K, N)``, the inner loop over n (independent outputs,
  what LLVM vectorizes best: the layout of binsense's panels).

It runs in its own virtual environment (numba pins its numpy range), imports only numpy
and numba, and never binsense::

    python3 -m venv /path/venv-numba && /path/venv-numba/bin/pip install numba
    /path/venv-numba/bin/python benchmarks/peer_numba.py IN.npz OUT.npz

``IN.npz`` holds ``x`` (M, K) and ``w`` (N, K) as int8 ±1. Packing is outside the timing
(as for binsense's prepacked column); compilation is outside it too (a warm-up call).
``OUT.npz`` gets ``y`` (M, N) float32 (the dot products, to check exactness) and a JSON
``info`` string (seconds per loop order, the faster one, versions, the CPU features
numba compiled for).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def pack(pm1: np.ndarray) -> np.ndarray:
    """int8 ±1 (R, K) -> uint64 words (R, ceil(K / 64)), bit i of word j = element 64 j + i
    (1 for +1), pad bits 0."""
    bits = pm1 > 0
    k = bits.shape[1]
    padded = np.zeros((bits.shape[0], -(-k // 64) * 64), dtype=bool)
    padded[:, :k] = bits
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64)


def kernels():
    from numba import njit, types
    from numba.extending import intrinsic

    @intrinsic
    def popcount(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @njit(boundscheck=False, fastmath=True, nogil=True)
    def dot(a, b, bits, out):
        m_, k_ = a.shape
        n_ = b.shape[0]
        for m in range(m_):
            for n in range(n_):
                s = np.uint64(0)
                for k in range(k_):
                    s += popcount(a[m, k] ^ b[n, k])
                out[m, n] = bits - 2 * np.int32(s)

    @njit(boundscheck=False, fastmath=True, nogil=True)
    def panel(a, bt, bits, out):
        m_, k_ = a.shape
        n_ = bt.shape[1]
        acc = np.zeros(n_, dtype=np.uint64)
        for m in range(m_):
            acc[:] = 0
            for k in range(k_):
                x = a[m, k]
                for n in range(n_):
                    acc[n] += popcount(x ^ bt[k, n])
            for n in range(n_):
                out[m, n] = bits - 2 * np.int32(acc[n])

    return dot, panel


def median_seconds(fn, repeats: int) -> float:
    fn()  # compiles (first call) and warms the caches
    times = []
    for _ in range(repeats):
        reps, start = 0, time.perf_counter()
        while True:  # each sample at least 20 ms long
            fn()
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= 0.02:
                break
        times.append(elapsed / reps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=1, help="numba runs 1 (no prange)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import llvmlite.binding as llvm
    import numba

    data = np.load(args.inp)
    x, w = data["x"], data["w"]
    a, b = pack(x), pack(w)
    bt = np.ascontiguousarray(b.T)
    bits = x.shape[1]
    dot, panel = kernels()
    outs = {name: np.empty((x.shape[0], w.shape[0]), dtype=np.int32) for name in ("dot", "panel")}
    seconds = {
        "dot": median_seconds(lambda: dot(a, b, bits, outs["dot"]), args.repeats),
        "panel": median_seconds(lambda: panel(a, bt, bits, outs["panel"]), args.repeats),
    }
    if not np.array_equal(outs["dot"], outs["panel"]):
        raise SystemExit("the two numba loop orders disagree")
    best = min(seconds, key=seconds.get)
    info = {
        "seconds": seconds[best],
        "kernel": best,
        "all": seconds,
        "threads": 1,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "cpu": llvm.get_host_cpu_name(),  # numba compiles for the host CPU
        "features": sorted(
            f[1:]
            for f in llvm.get_host_cpu_features().flatten().split(",")
            if f[0] == "+" and ("popcnt" in f or f[1:] in ("avx2", "avx512f"))
        ),
    }
    np.savez(args.out, y=outs[best].astype(np.float32), info=json.dumps(info))


if __name__ == "__main__":
    main()
