"""ONNX export: the graph gives the packed engine's logits bit for bit in onnxruntime, per
model family, on real images; binarisation never uses ``Sign``; weights are stored as bits;
the command line writes it; without the extra the error says how to install it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_export_c import calibrated, real_images

from binsense.deploy import convert
from binsense.errors import BinsenseError

pytest.importorskip(
    "onnxruntime", reason='the export extra is not installed: pip install -e ".[export]"'
)
from binsense.export.onnx import build_onnx, export_onnx, require_onnx, run_onnx  # noqa: E402

FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("mnist_bnn", "mnist", {"width": 0.25, "design": "2x2", "design_coupled": True}),
    ("mnist_bnn", "mnist", {"width": 0.25, "norm": "channel_affine"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2}),  # float first layer, groups
    ("vgg_small", "cifar10", {"width": 0.0625, "head": "float"}),
    ("cnv", "cifar10", {"width": 0.0625, "design": "2x2x4_shift", "bn_affine": False}),
    ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),  # binary encoder
    ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc"}),
]


@pytest.mark.parametrize(("name", "dataset", "options"), FAMILIES)
def test_onnx_equals_the_engine_bit_for_bit(name, dataset, options):
    model = calibrated(name, dataset, **options)
    deployed = convert(model)
    images = real_images(dataset)
    x = images.float().div_(255.0)
    shape = tuple(images.shape[1:])
    onnx_model, builder = build_onnx(deployed, shape)
    got = run_onnx(onnx_model, x.numpy())
    ref = deployed(x).numpy()
    assert builder.float_mismatches == 0
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))  # logits, bitwise
    assert np.array_equal(got.argmax(1), model(x).argmax(1).numpy())  # = PyTorch
    ops = {n.op_type for n in onnx_model.graph.node}
    assert "Sign" not in ops and "Where" in ops


def test_sign_of_zero_is_plus_one_in_the_graph():
    """A popcount of exactly the threshold, and a float 0 before the first sign, give +1."""
    model = calibrated("mnist_bnn", "mnist", width=0.25)
    with torch.no_grad():  # the first layer outputs exactly 0 everywhere: BN(0) = 0
        block = model.blocks[0]
        block.conv.weight.zero_()
        block.norm.running_mean.zero_()
        block.norm.bias.zero_()
    deployed = convert(model)
    x = torch.rand(2, 1, 28, 28)
    first = dict(deployed.trace(x))["input_sign"]
    assert bool((first == 1).all())  # sign(0) = +1 in the engine (and PyTorch)
    got = run_onnx(build_onnx(deployed, (1, 28, 28))[0], x.numpy())
    assert np.array_equal(got, deployed(x).numpy())


def test_weights_are_stored_as_bits(tmp_path):
    model = calibrated("vgg_small", "cifar10", width=0.125)
    deployed = convert(model)
    info = export_onnx(deployed, tmp_path / "m.onnx", (3, 32, 32))
    assert info.file_bytes == (tmp_path / "m.onnx").stat().st_size
    # bits + float parameters (the first conv's in float64: its multiply-add chain) + the
    # graph: a few KB per layer, and per first-layer tap (3 x 3 x 3) one exact FMA of about
    # 20 nodes (under 2 KB); below float32 weights
    taps = 27
    assert info.file_bytes < info.binary_weights / 8 + 8 * info.float_params + 32_000 + 2_000 * taps
    assert info.file_bytes < info.binary_weights  # < 1 byte per weight


def test_residual_units_are_refused_with_one_line():
    deployed = convert(calibrated("resnet18_bnn", "cifar10", width=0.0625))
    with pytest.raises(BinsenseError, match="residual"):
        build_onnx(deployed, (3, 32, 32))


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(BinsenseError, match=r"pip install -e \"\.\[export\]\""):
        require_onnx()


def test_cli_export_onnx_and_c_from_a_checkpoint_and_a_file(tiny_data, tmp_path, capsys):
    from binsense.cli import main
    from binsense.train import TrainConfig, train

    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    train(config, tmp_path / "run")
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["export", "--checkpoint", ckpt, "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "binary weights" in capsys.readouterr().out
    assert main(["deploy", "--checkpoint", ckpt, "--out", str(tmp_path / "m.bsd")]) == 0
    code = main(["export", "--deployed", str(tmp_path / "m.bsd"), "--c", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0 and "peak activation buffer" in out
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"model.h", "model.c", "main.c"}
    assert main(["export", "--checkpoint", ckpt]) == 2
    assert "give --onnx FILE" in capsys.readouterr().err
