"""C export: builds with ``cc -std=c99 -O2 -Wall -Werror`` and gives the packed engine's
logits bit for bit (so its predictions) on real images, for the MNIST BNN and CIFAR-10
VGG-small-like BNNs (float first layer or binary encoder, DeSign thresholds, grouped convs,
channel shuffles); portable and builtin popcounts agree; memory figures are consistent."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from test_deploy_program import _calibrated

from binsense.data import load_dataset
from binsense.deploy import convert
from binsense.errors import BinsenseError
from binsense.export.c import compile_c, export_c, find_compiler, generate_c, run_c

calibrated = _calibrated  # a model with random BN parameters (negative gammas too)


def real_images(dataset: str, n: int = 32) -> torch.Tensor:
    """The first ``n`` test images (uint8) of a shared data set, or a skip."""
    folder = {"mnist": "MNIST", "cifar10": "cifar10-jpeg"}[dataset]
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"real {dataset} data not found under {SHARED_DATA}")
    return load_dataset(dataset, "test", data_dir=SHARED_DATA, download=False).images[:n]


needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc, clang)")

FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("mnist_bnn", "mnist", {"width": 0.25, "design": "2x2", "design_coupled": True}),
    ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2, "design": "2x2x4_shift"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "head": "float", "norm": "channel_affine"}),
    ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),
    ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc"}),
]


@needs_cc
@pytest.mark.parametrize(("name", "dataset", "options"), FAMILIES)
def test_compiled_c_equals_the_engine_bit_for_bit(name, dataset, options, tmp_path):
    model = calibrated(name, dataset, **options)
    deployed = convert(model)
    images = real_images(dataset, 24)
    info = export_c(deployed, tmp_path, tuple(images.shape[1:]))
    assert info.float_mismatches == 0
    binary = compile_c(tmp_path)
    x = images.float().div_(255.0)
    ref = deployed(x).numpy()
    logits = run_c(binary, images.numpy(), logits=True)
    assert np.array_equal(logits.view(np.uint32), ref.view(np.uint32))
    preds = run_c(binary, images.numpy())
    assert np.array_equal(preds, model(x).argmax(1).numpy())  # = PyTorch


@needs_cc
def test_builtin_popcount_and_pedantic_build_agree(tmp_path):
    deployed = convert(calibrated("compact_bnn", "cifar10", width=0.125))
    images = real_images("cifar10", 8)
    export_c(deployed, tmp_path, (3, 32, 32))
    portable = compile_c(tmp_path, ["-Wextra", "-pedantic"], out="portable")
    builtin = compile_c(tmp_path, ["-DBINSENSE_BUILTIN_POPCOUNT"], out="builtin")
    a = run_c(portable, images.numpy(), logits=True)
    b = run_c(builtin, images.numpy(), logits=True)
    assert np.array_equal(a, b) and np.array_equal(a, deployed(images.float() / 255).numpy())


def test_memory_figures_match_the_sources():
    deployed = convert(calibrated("vgg_small", "cifar10", width=0.0625, groups=2))
    files, info = generate_c(deployed, (3, 32, 32))
    header = files["model.h"]
    arena = int(re.search(r"#define MODEL_ARENA_WORDS (\d+)", header).group(1))
    assert info.activation_bytes == 8 * arena and "malloc" not in files["model.c"]
    packed = sum(op.weight_words.numel() for op in deployed.ops if hasattr(op, "weight_words"))
    assert info.weight_bytes >= 8 * packed  # packed words, plus thresholds and float parts
    assert info.binary_weights == sum(
        int(np.prod(op.weight_pm1.shape)) if hasattr(op, "weight_pm1") else
        op.weight_words.shape[0] * op.fan_in
        for op in deployed.ops if hasattr(op, "weight_words")
    )  # fmt: skip


def test_unsupported_programs_are_refused_with_one_line():
    deployed = convert(calibrated("resnet18_bnn", "cifar10", width=0.0625))
    with pytest.raises(BinsenseError, match="residual"):
        generate_c(deployed, (3, 32, 32))


@needs_cc
def test_a_broken_build_is_one_line(tmp_path):
    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25))
    export_c(deployed, tmp_path, (1, 28, 28))
    (tmp_path / "model.c").write_text("this is not C\n")
    with pytest.raises(BinsenseError, match="the C build failed"):
        compile_c(tmp_path)
    assert torch.__version__  # the environment is intact
