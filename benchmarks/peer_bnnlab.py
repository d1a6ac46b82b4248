"""Time bnn-lab's packed binary GEMM on given ±1 matrices (run by ``bench_deploy.py``).

Runs inside bnn-lab's own virtual environment (bnn-lab 1.0.0 pins ``torch<2.13``, so it
cannot share binsense's), imports only numpy and bnn-lab, and never binsense::

    python3 -m venv /path/venv-bnnlab && /path/venv-bnnlab/bin/pip install bnn-lab==1.0.0
    /path/venv-bnnlab/bin/python benchmarks/peer_bnnlab.py IN.npz OUT.npz --threads 1

``IN.npz`` holds ``x`` (M, K) and ``w`` (N, K) as int8 ±1. The timed call is bnn-lab's
native GEMM on pre-packed operands (``binary_gemm_native_prepacked``, its fastest entry
point: packing is outside the timing, as for binsense's prepacked column), median of
``--repeats`` runs. ``OUT.npz`` gets ``y`` (M, N) float32 (the dot products, to check
exactness against binsense) and a JSON ``info`` string (seconds, kernel path, threads,
versions).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from peer_numba import median_seconds  # the same timing loop (numpy-only, no numba import)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import bnn
    from bnn.kernels import packed

    data = np.load(args.inp)
    x, w = data["x"], data["w"]
    packed.set_num_threads(args.threads)
    xp, n = packed.pack_binary_pm1(x, axis=1)
    wp, _ = packed.pack_binary_pm1(w, axis=1)
    if not packed.native_kernel_available():
        raise SystemExit("bnn-lab's native kernel is not available here")
    y = packed.binary_gemm_native_prepacked(xp, wp, n)  # the result checked
    info = {
        "seconds": median_seconds(
            lambda: packed.binary_gemm_native_prepacked(xp, wp, n), args.repeats
        ),
        "kernel": packed.kernel_name(),
        "threads": packed.get_num_threads(),
        "openmp": packed.openmp_enabled(),
        "bnn_lab": bnn.__version__,
        "numpy": np.__version__,
    }
    np.savez(args.out, y=y, info=json.dumps(info))


if __name__ == "__main__":
    main()
