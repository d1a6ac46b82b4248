"""ONNX export: the graph gives the packed engine's logits bit for bit in onnxruntime, per
model family, on real images, and for hand-built float stages of every typed float op;
binarisation never uses ``Sign``; weights are stored as bits; a float op that does not
export is refused with one line; the command line writes it; without the extra the error
says how to install it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_export_c import calibrated, real_images
from torch import nn

from binsense.deploy import convert, ir, stage
from binsense.deploy.program import DeployedModel
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


def typed_program(*ops: stage.FloatOp) -> DeployedModel:
    """A program of one float stage of typed ops (:mod:`binsense.deploy.stage`)."""
    return DeployedModel(ir.OpList({"head": ir.FloatStage(tuple(ops))}))


def _standardize() -> stage.Standardize:
    return stage.Standardize(torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3]))


def _random_norm(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.2, 2)
        norm.weight.uniform_(-1, 1)  # negative gammas too
        norm.bias.uniform_(-0.5, 0.5)
    return norm.eval()


def test_typed_float_ops_equal_the_engine_bit_for_bit():
    """A float stage built from typed ops, no trained model: standardize, a float conv
    (the FMA chain), a batch norm (its recorded form), ReLU, max-pool, hardtanh, sign,
    flatten, a float linear layer on ±1 (the ordered sum) and a 1-D norm."""
    torch.manual_seed(0)
    body = stage.lower([
        ("conv", nn.Conv2d(3, 4, 3, padding=1)), ("norm", _random_norm(nn.BatchNorm2d(4))),
        ("relu", nn.ReLU()), ("pool", nn.MaxPool2d(2)), ("tanh", nn.Hardtanh(-0.5, 0.5)),
    ])  # fmt: skip
    head = stage.lower([("fc", nn.Linear(64, 5)), ("norm", _random_norm(nn.BatchNorm1d(5)))], 1)
    assert head.ops[0].pm1_input and not head.ops[0].sign_input
    deployed = typed_program(_standardize(), *body.ops, stage.Sign(), stage.Flatten(), *head.ops)
    x = torch.rand(32, 3, 8, 8)
    onnx_model, builder = build_onnx(deployed, (3, 8, 8))
    got = run_onnx(onnx_model, x.numpy())
    assert builder.float_mismatches == 0
    assert np.array_equal(got.view(np.uint32), deployed(x).numpy().view(np.uint32))
    assert np.array_equal(got[:1].view(np.uint32), deployed(x[:1]).numpy().view(np.uint32))
    ops = {n.op_type for n in onnx_model.graph.node}
    assert {"Relu", "MaxPool", "Clip", "CumSum"} <= ops and not {"Conv", "Gemm", "Sign"} & ops


@pytest.mark.parametrize("pool", ["sum", "mean", "adaptive"])
def test_global_pools_and_design_equal_the_engine_bit_for_bit(pool):
    """A coupled DeSign shift and sign, then a global pool of the ±1 map (exact sums)."""
    kernel = torch.tensor([[[0.25, -0.25], [-0.5, 0.5]]])
    design = stage.DeSignShift(kernel, torch.tensor([1.0, -0.5, 2.0]), True)
    pools = {"sum": [stage.GlobalPool("sum")], "mean": [stage.GlobalPool("mean")],
             "adaptive": [stage.AdaptiveAvgPool((1, 1)), stage.Flatten()]}  # fmt: skip
    deployed = typed_program(_standardize(), design, *pools[pool])
    x = torch.rand(8, 3, 4, 4)
    got = run_onnx(build_onnx(deployed, (3, 4, 4))[0], x.numpy())
    assert np.array_equal(got.view(np.uint32), deployed(x).numpy().view(np.uint32))


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        ([stage.ShortcutOp(1, 0, "slice"), stage.Flatten()],
         r"head_0_shortcutop: a ShortcutOp op does not export to ONNX .*binsense deploy"),
        ([stage.AdaptiveAvgPool((2, 2)), stage.Flatten()],
         r"only a global adaptive average pool exports \(output size 1"),
    ],
)  # fmt: skip
def test_float_ops_that_do_not_export_are_refused_with_one_line(ops, match):
    with pytest.raises(BinsenseError, match=match) as caught:
        build_onnx(typed_program(*ops), (3, 4, 4))
    assert "\n" not in str(caught.value)


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
