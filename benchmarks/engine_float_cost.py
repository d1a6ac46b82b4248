"""Engine throughput on a zoo model (float first conv and head): batch 500 over 2,000
CIFAR-10 test images (best of 3) and batch 1 over 200, 1 thread. Run it on two commits
(``PYTHONPATH=<other worktree>``) to compare, alternating runs::

    BINSENSE_DATA=../shared/data python benchmarks/engine_float_cost.py LABEL
"""

import sys
import time

import torch

from binsense.data import load_dataset
from binsense.deploy.fileformat import read_deployed

torch.set_num_threads(1)
d = read_deployed("zoo:cifar10-cnv").model
x = load_dataset("cifar10", "test").images[:2000].float().div_(255)
d(x[:500])
best = 1e9
for _ in range(3):
    t = time.perf_counter()
    for i in range(0, 2000, 500):
        d(x[i : i + 500])
    best = min(best, time.perf_counter() - t)
t1 = time.perf_counter()
for i in range(200):
    d(x[i : i + 1])
b1 = (time.perf_counter() - t1) / 200
print(f"{sys.argv[1]}: batch 500: {2000 / best:.0f} img/s; batch 1: {1000 * b1:.2f} ms/image")
