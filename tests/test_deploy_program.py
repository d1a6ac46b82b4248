"""The integer program: bit packing, packed convs with exact zero-padding correction,
thresholds by enumeration (negative / zero gamma, DeSign classes, k-bit BN), and whole
models equal to PyTorch bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binsense.cli import main
from binsense.data import dataset_info
from binsense.deploy import check_exact, convert
from binsense.deploy.bits import pack_bits, popcount64
from binsense.deploy.folding import fold_pair
from binsense.deploy.ir import PackedConv, PackedLinear, Threshold
from binsense.errors import BinsenseError
from binsense.layers import BinaryConv2d, BinaryLinear, ChannelAffine, DeSign, quantize_bn
from binsense.layers.folds import pair_folds
from binsense.models import build_model
from binsense.quant import SteSign
from binsense.train import TrainConfig, train


def _pm1(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def test_pack_bits_and_popcount():
    bits = torch.zeros(1, 70, dtype=torch.bool)
    bits[0, [0, 3, 64, 69]] = True
    words = pack_bits(bits, 1)
    assert words.shape == (1, 2) and words.tolist() == [[1 + 8, 1 + 32]]
    assert popcount64(torch.tensor([0, 1, -1, 2**62, -(2**63)])).tolist() == [0, 1, 64, 1, 1]
    padded = pack_bits(torch.zeros(1, 3, dtype=torch.bool), 1, pad_value=True)
    assert popcount64(padded).item() == 61


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "padding", "groups", "size"),
    [(3, 8, 1, 1, 1, 7), (70, 16, 1, 1, 1, 5), (64, 32, 2, 1, 4, 9), (8, 8, 1, 0, 2, 6)],
)
def test_packed_conv_equals_the_zero_padded_float_conv(cin, cout, stride, padding, groups, size):
    torch.manual_seed(0)
    conv = BinaryConv2d(cin, cout, 3, stride, padding, groups=groups)
    x = _pm1(2, cin, size, size + 1)
    expected = F.conv2d(x, conv.binary_weight().detach(), None, stride, padding, groups=groups)
    got = PackedConv.of(conv)(x)
    assert got.dtype == torch.int32 and torch.equal(got.float(), expected)  # borders too


def test_packed_linear_with_an_odd_fan_in():
    torch.manual_seed(0)
    lin = BinaryLinear(131, 7)
    x = _pm1(5, 131)
    assert torch.equal(PackedLinear.of(lin)(x).float(), x @ lin.binary_weight().detach().T)


def _bn(c: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.weight[0], bn.weight[1] = 0.0, 0.0
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.bias[0], bn.bias[1] = 0.3, -0.3  # constant +1 and constant -1
        bn.weight[2] = -abs(bn.weight[2])  # negative gamma
        bn.running_mean.copy_(torch.randn(c, generator=g) * 4)
        bn.running_var.copy_(torch.rand(c, generator=g) * 20 + 0.5)
    return bn.eval()


@pytest.mark.parametrize("kind", ["bn", "affine", "design2d", "design3d", "bn4bit"])
def test_thresholds_equal_the_trained_pair_on_every_integer(kind):
    c, k = 8, 36
    norm: nn.Module = _bn(c)
    act: nn.Module = SteSign()
    if kind == "affine":
        norm = ChannelAffine(c)
        with torch.no_grad():
            norm.scale.copy_(torch.tensor([0.0, -0.4, 0.2, 1.0, -1.0, 0.05, 0.3, -0.2]))
            norm.shift.copy_(torch.linspace(-2, 2, c))
    elif kind.startswith("design"):
        act = DeSign("2x2" if kind == "design2d" else "2x2x4_shift")
    elif kind == "bn4bit":
        quantize_bn(nn.Sequential(norm), 4)
    y = torch.arange(-k, k + 1, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, c, 5, 6)
    threshold = Threshold.of(norm, act, k, c, spatial=True)
    with torch.no_grad():
        expected = act(norm(y.contiguous()))
    assert torch.equal(threshold(y.to(torch.int32)).float(), expected)
    # the float64 rule of the folding table agrees, except where float32 rounds the norm's
    # output onto the threshold (the affine case: -0.2 * 10 + 2 is 0.0 in float32, -3e-8
    # in float64); that is why the deployed thresholds come from enumeration
    folded = fold_pair(norm, act, integer_input=True, channels=c)
    differ = folded.apply(y.contiguous()).float() != expected
    with torch.no_grad():
        near = norm(y.contiguous()).abs() < 1e-5
    assert not (differ & ~near).any()
    assert differ.any() == (kind == "affine")


def test_a_pair_outside_the_folding_table_is_refused_in_one_line():
    bn = _bn(4)
    with pytest.raises(BinsenseError, match="no threshold: ReLU is not a sign"):
        Threshold.of(bn, nn.ReLU(), 9, 4, spatial=True)
    with pytest.raises(BinsenseError, match="only shifts"):
        Threshold.of(bn, DeSign("2x2", quantizer=None), 9, 4, spatial=True)
    assert not pair_folds(nn.LayerNorm(4), SteSign()) and pair_folds(bn, SteSign())


def _calibrated(name: str, dataset: str, **options) -> nn.Module:
    torch.manual_seed(0)
    info = dataset_info(dataset)
    model = build_model(name, info, **options)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(-1, 1)  # negative gammas too
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        model(torch.rand(16, info.in_channels, *info.image_size))
    return model.eval()


@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [
        ("mnist_bnn", "mnist", {"width": 0.25}),
        ("mnist_bnn", "mnist", {"width": 0.25, "norm": "channel_affine"}),
        ("mnist_bnn", "mnist", {"width": 0.25, "design": "2x2", "design_coupled": True}),
        ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc"}),
        ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2, "head": "float"}),
        ("cnv", "cifar10", {"width": 0.0625, "design": "2x2x4_shift", "bn_affine": False}),
        ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),
    ],
)
def test_converted_model_equals_pytorch_bit_for_bit(name, dataset, options):
    model = _calibrated(name, dataset, **options)
    info = dataset_info(dataset)
    x = torch.rand(
        4, info.in_channels, *info.image_size, generator=torch.Generator().manual_seed(1)
    )
    result = check_exact(model, [(x, None)])
    assert result.exact and result.logit_mismatches == 0 and result.layers >= 2


def test_k_bit_batch_norm_deploys_the_same_way():
    model = _calibrated("mnist_bnn", "mnist", width=0.25)
    quantize_bn(model, 4, "raw")
    x = torch.rand(4, 1, 28, 28)
    assert check_exact(model, [(x, None)]).exact


@pytest.mark.parametrize("design", [None, "2x2x4_shift"])
def test_resnet18_bnn_deploys_with_a_float_residual_stream(design):
    model = _calibrated("resnet18_bnn", "cifar10", width=0.0625, design=design)
    result = check_exact(model, [(torch.rand(3, 3, 32, 32), None)])
    assert result.exact and result.logit_mismatches == 0 and result.layers == 16


def test_resnet20_bnn_is_a_quarter_megabit_and_deploys_exactly():
    from binsense.compress.summary import summary

    model = _calibrated("resnet20_bnn", "cifar10", width=1.0)
    size = summary(model, (3, 32, 32))
    # 16*16*9*6 + (16*32 + 32*32*5) * 9 + (32*64 + 64*64*5) * 9 binary weights
    assert size.params_1bit == 267_264 and size.params_1bit / 2**20 < 0.3
    result = check_exact(model, [(torch.rand(3, 3, 32, 32), None)])
    assert result.exact and result.logit_mismatches == 0 and result.layers == 18


def test_float_models_are_refused_with_one_line():
    model = build_model("resnet20", dataset_info("cifar10"), width=0.25).eval()
    with pytest.raises(BinsenseError, match="nothing to deploy"):
        convert(model)


def test_cli_deploy_check_on_a_trained_checkpoint(tiny_data, tmp_path, capsys):
    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    train(config, tmp_path / "run")
    code = main(["deploy", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--check"])
    out = capsys.readouterr().out
    assert code == 0 and "predictions differ on 0, logits differ on 0" in out
    assert "bit-exact 3/3" in out


# ---------------------------------------------------------------- the input (issue 24)

#: A float-encoder model, a binary-encoder one and the compact model with a GLT encoder.
_INPUT_MODELS = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc"}),
    ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "glt"}),
]


def _codes(info, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, info.in_channels, *info.image_size), generator=g).to(
        torch.uint8
    )


@pytest.mark.parametrize(("name", "dataset", "options"), _INPUT_MODELS)
def test_uint8_codes_give_the_logits_of_the_float_images(name, dataset, options):
    """uint8 images are ADC codes: read as code / 255, exactly as the data pipeline does."""
    model = _calibrated(name, dataset, **options)
    deployed = convert(model)
    codes = _codes(dataset_info(dataset))
    x = codes.to(torch.float32).div_(255.0)  # binsense.data's DeviceLoader
    assert torch.equal(deployed(codes), deployed(x))
    assert torch.equal(deployed.run_ops(codes), model(x))
    assert torch.equal(deployed.predict(codes), model(x).argmax(1))


@pytest.mark.parametrize(("name", "dataset", "options"), _INPUT_MODELS)
@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("int64", "dtype torch.int64"),
        ("int16", "dtype torch.int16"),
        ("bool", "dtype torch.bool"),
        ("pixels", "values in [0, 255]"),
        ("normalised", "values in [-"),
        ("nan", "NaN values"),
        ("inf", "infinite values"),
        ("list", "got list"),
    ],
)
def test_misread_inputs_are_refused_with_one_line(name, dataset, options, case, words):
    """Integer pixels, floats outside [0, 1], NaN and infinities were misread without a
    word (every NaN image one class; an index of -2^63 in a GLT code table)."""
    deployed = convert(_calibrated(name, dataset, **options))
    codes = _codes(dataset_info(dataset))
    x = codes.float() / 255
    bad = {
        "int64": codes.long(),
        "int16": codes.to(torch.int16),
        "bool": codes > 127,
        "pixels": codes.float(),
        "normalised": (x - 0.5) / 0.25,
        "nan": x.clone().index_fill_(0, torch.tensor([1]), float("nan")),
        "inf": x.clone().index_fill_(0, torch.tensor([2]), float("inf")),
        "list": x.tolist(),
    }[case]
    for entry in (deployed, deployed.predict, deployed.run_ops, lambda t: list(deployed.trace(t))):
        with pytest.raises(BinsenseError) as info:
            entry(bad)
        message = str(info.value)
        assert words in message and "\n" not in message
