"""The float parts of a deployed model in one fixed order (binsense.deploy.floatops): the
exact FMA equals C's fmaf on the double-rounding cases, the C kernel equals the PyTorch
reference bit for bit, and the engine gives one answer per image at every batch size
(issue #24 item 1), for every family with a float first layer or a float head."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
import torch
from test_deploy_program import _calibrated
from test_export_c import real_images

from binsense.deploy import convert, floatops, kernels
from binsense.deploy.engine import PackedEngine


def _libm_fmaf():
    path = ctypes.util.find_library("m")
    if path is None:
        pytest.skip("no C math library to compare with")
    fn = ctypes.CDLL(path).fmaf
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float] * 3
    return fn


def test_fma_rounds_once_where_float64_rounds_twice():
    """Short mantissas make x * y land on float32 halfway points; a tiny z then decides
    the rounding. ``float32(float64(x * y + z))`` gets some wrong; the emulation none."""
    fmaf = _libm_fmaf()
    rng = np.random.default_rng(0)
    n = 20_000
    x = (rng.integers(1, 2**12, n) * 2.0**-11).astype(np.float32)
    y = (rng.integers(1, 2**13, n) * 2.0**-12).astype(np.float32)
    z = rng.choice([-1, 1], n) * rng.integers(1, 2**8, n) * 2.0 ** -rng.integers(20, 60, n)
    z = z.astype(np.float32)
    want = np.array(
        [fmaf(*v) for v in zip(x.tolist(), y.tolist(), z.tolist(), strict=True)], np.float32
    )
    got = floatops.fma(*(torch.from_numpy(v) for v in (x, y, z))).numpy()
    naive = (x.astype(np.float64) * y + z).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert (naive != want).sum() > 0  # the cases are hard: rounding twice fails on some


def test_fma_ties_go_to_even_and_follow_the_exact_sum():
    x = torch.tensor([1 + 2**-12], dtype=torch.float32)  # x * x = 1 + 2^-11 + 2^-24: a tie
    for z, want in ((2.0**-60, 1 + 2**-11 + 2**-23), (-(2.0**-60), 1 + 2**-11), (0.0, 1 + 2**-11)):
        got = floatops.fma(x, x, torch.tensor([z], dtype=torch.float32))
        assert got.item() == want


CONVS = [  # (n, c, h, w, o, k, stride, padding, groups)
    (3, 3, 16, 16, 16, 3, 1, 1, 1),
    (2, 3, 12, 12, 8, 3, 1, 0, 1),
    (2, 8, 9, 9, 8, 3, 2, 1, 2),
    (4, 40, 1, 1, 10, 1, 1, 0, 1),  # a linear layer
    (2, 3, 13, 11, 64, 3, 1, 0, 1),  # CNV's first conv: 4-position blocks and row ends
    (2, 3, 10, 10, 96, 3, 2, 1, 1),  # 64 + 32 channels, stride 2, padding
    (1, 4, 7, 9, 48, 3, 1, 1, 2),  # 24 channels per group: the AVX2 block, not AVX-512's
]
#: The C paths the float conv has (each a kernel of its own for some shapes).
PATHS = ["portable", "avx2", "avx512"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("n", "c", "h", "w", "o", "k", "s", "p", "g"), CONVS)
def test_kernel_equals_the_reference_bit_for_bit(monkeypatch, path, n, c, h, w, o, k, s, p, g):
    if kernels.library() is None:
        pytest.skip("the C kernel library is not built here")
    if kernels._FORCED[path] not in kernels.available():
        pytest.skip(f"this CPU has no {path} path")
    monkeypatch.setenv(kernels.ENV, path)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, c, h, w, generator=gen)
    weight = torch.randn(o, c // g, k, k, generator=gen)
    bias = torch.randn(o, generator=gen)
    got = floatops.conv2d(x, weight, bias, (s, s), (p, p), g)
    ref = floatops.conv2d_reference(x, weight, bias, (s, s), (p, p), g)
    assert torch.equal(got, ref)
    direct = torch.nn.functional.conv2d(x, weight, bias, s, p, 1, g)
    assert torch.allclose(got, direct, atol=1e-5)  # the same conv, up to the order


def test_linear_is_the_left_to_right_sum_on_pm1_inputs():
    gen = torch.Generator().manual_seed(2)
    x = torch.where(torch.rand(6, 300, generator=gen) < 0.5, -1.0, 1.0)
    weight, bias = torch.randn(5, 300, generator=gen) * 0.1, torch.randn(5, generator=gen)
    acc = torch.zeros(6, 5)
    for k in range(300):
        acc = acc + x[:, k : k + 1] * weight[:, k]  # exact products, one rounding a sum
    assert torch.equal(floatops.linear(x, weight, bias), acc + bias)


FLOAT_FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("vgg_small", "cifar10", {"width": 0.125, "design": "2x2x4_shift"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "head": "float"}),
    ("cnv", "cifar10", {"width": 0.0625, "head": "float"}),
    ("resnet18_bnn", "cifar10", {"width": 0.0625}),
    ("resnet20_bnn", "cifar10", {"width": 0.25}),
]


@pytest.mark.parametrize(("name", "dataset", "options"), FLOAT_FAMILIES)
def test_the_engine_gives_one_answer_per_image_at_every_batch(name, dataset, options):
    model = _calibrated(name, dataset, **options)
    engine = PackedEngine(convert(model).ops)
    images = real_images(dataset, 64)
    x = images.float().div_(255.0)
    with torch.no_grad():
        whole = engine(x)
        for batch in (1, 7, 32):
            parts = torch.cat([engine(x[i : i + batch]) for i in range(0, len(x), batch)])
            assert torch.equal(parts, whole), f"batch {batch}"
        assert torch.equal(whole.argmax(1), model(x).argmax(1))  # = PyTorch (no near tie)
