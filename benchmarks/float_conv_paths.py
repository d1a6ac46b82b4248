"""The fixed-order float conv on each C path: CNV's first conv (3 -> 64 channels, 3x3, no
padding) on 500 CIFAR-sized images, in one batch and in chunks of 20 (as the engine's
float stage runs it), best of 7, the paths interleaved; checks that they give the same
bits.

    python benchmarks/float_conv_paths.py
"""

import os
import time

import torch

from binsense.deploy import floatops, kernels

torch.manual_seed(0)
w, b = torch.randn(64, 3, 3, 3), torch.randn(64)
paths = [p for p in ("avx2", "avx512") if kernels._FORCED[p] in kernels.available()]
for chunk in (500, 20):
    x = torch.rand(chunk, 3, 32, 32)
    best: dict[str, float] = {}
    out: dict[str, torch.Tensor] = {}
    for _ in range(7):
        for path in paths:
            os.environ[kernels.ENV] = path
            t = time.perf_counter()
            for _ in range(500 // chunk):
                out[path] = floatops.conv2d(x, w, b, (1, 1), (0, 0), 1)
            best[path] = min(best.get(path, 1e9), time.perf_counter() - t)
    same = all(torch.equal(out[paths[0]], y) for y in out.values())
    shown = ", ".join(f"{p} {1000 * t:.1f} ms" for p, t in best.items())
    print(f"500 images in chunks of {chunk}: {shown}; same bits: {same}")
