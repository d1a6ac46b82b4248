"""Model registry: every model builds, runs, has a float twin of the same layout."""

import pytest
import torch
from torch import nn

from binsense.data import dataset_info
from binsense.errors import BinsenseError, UnknownNameError
from binsense.layers import blocks_of, is_binary_layer
from binsense.models import build_model, count_parameters, describe_models, model_names
from binsense.quant import SignQuantizer


@pytest.mark.parametrize("name", model_names())
def test_every_model_runs_on_its_dataset(name):
    row = next(r for r in describe_models() if r["name"] == name)
    info = dataset_info(row["dataset"])
    model = build_model(name, info, width=0.25).eval()
    x = torch.rand(2, info.in_channels, *info.image_size)
    assert model(x).shape == (2, info.num_classes)


@pytest.mark.parametrize("name", ["mnist_bnn", "vgg_small", "cnv"])
def test_float_twin_has_same_layout(name):
    info = dataset_info("mnist" if name == "mnist_bnn" else "cifar10")
    bnn = build_model(name, info, width=0.25)
    twin = build_model(f"{name}_float", info, width=0.25)
    shapes = [p.shape for p in bnn.parameters()]
    assert shapes == [p.shape for p in twin.parameters()]
    assert any(is_binary_layer(m) for m in bnn.modules())
    assert not any(is_binary_layer(m) for m in twin.modules())
    assert not any(isinstance(m, SignQuantizer) for m in twin.modules())


def test_vgg_small_width_quarter_is_32_64_128():
    model = build_model("vgg_small", dataset_info("cifar10"), width=0.25)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 32, 64, 64, 128, 128]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not is_binary_layer(first)  # float first layer by default
    binary_first = build_model("vgg_small", dataset_info("cifar10"), first_layer="binary")
    assert is_binary_layer(next(m for m in binary_first.modules() if isinstance(m, nn.Conv2d)))


def test_bnn_hidden_activations_are_binary():
    model = build_model("vgg_small", dataset_info("cifar10"), width=0.25).eval()
    seen = []
    for block in blocks_of(model):  # block activations (weight quantizers live in layers)
        if isinstance(block.act, SignQuantizer):
            block.act.register_forward_hook(lambda mod, i, o: seen.append(o))
    model(torch.rand(2, 3, 32, 32))
    assert len(seen) == 8
    assert all(set(o.unique().tolist()) <= {-1.0, 1.0} for o in seen)


def test_width_changes_parameter_count():
    info = dataset_info("cifar10")
    small = count_parameters(build_model("vgg_small", info, width=0.25))
    full = count_parameters(build_model("vgg_small", info))
    assert full > 10 * small


def test_unknown_model_and_option_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'vgg_small'"):
        build_model("vgg_smal", dataset_info("cifar10"))
    with pytest.raises(BinsenseError, match="no option 'widht'"):
        build_model("vgg_small", dataset_info("cifar10"), widht=0.5)
    with pytest.raises(BinsenseError, match="first_layer"):
        build_model("cnv", dataset_info("cifar10"), first_layer="ternary")


@pytest.mark.parametrize("name,params", [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_cifar_resnet_sizes_match_he_et_al(name, params):
    assert count_parameters(build_model(name, dataset_info("cifar10"))) == pytest.approx(
        params, rel=0.01
    )


@pytest.mark.parametrize("name,bn_layers", [("resnet20", 19), ("resnet56", 55), ("vgg16", 13)])
def test_batch_norm_switch(name, bn_layers):
    info = dataset_info("cifar10")
    with_bn = build_model(name, info, width=0.25)
    without = build_model(name, info, width=0.25, norm="none").eval()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == bn_layers
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert torch.isfinite(without(torch.rand(2, 3, 32, 32))).all()


def test_resnet_without_bn_blocks_start_as_identity():
    from binsense.layers import ResidualUnit

    model = build_model("resnet20", dataset_info("cifar10"), width=0.5, norm="none")
    unit = next(m for m in model.modules() if isinstance(m, ResidualUnit))
    x = torch.rand(2, 8, 6, 6)  # non-negative, as after a ReLU
    assert torch.equal(unit(x), x)


@pytest.mark.parametrize(("name", "branches"), [("resnet20", 9), ("resnet56", 27)])
def test_fixup_resnet_is_fixups_recipe(name, branches):
    """Fixup (Zhang, Dauphin & Ma 2019): no BN; every unit and the classifier start at
    zero output (the logits are exactly 0), the branch's first conv is He-normal scaled
    by L^-1/2 (its std, measured over all of them), one scalar bias before each conv,
    activation and the classifier, one multiplier per branch; weight noise's
    ``weight`` names skip the scalars."""
    from binsense.layers import ResidualUnit
    from binsense.layers.norm import ScalarScale, ScalarShift

    torch.manual_seed(0)
    model = build_model(name, dataset_info("cifar10"), norm="fixup")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.equal(model(torch.rand(2, 3, 32, 32)), torch.zeros(2, 10))
    units = [m for m in model.modules() if isinstance(m, ResidualUnit)]
    assert len(units) == branches
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(units[0](x), x)  # the identity at initialisation
    ratios = []
    for u in units:
        w = u.block1.conv[1].weight
        ratios.append(w.std().item() / ((2 / w[0].numel()) ** 0.5 * branches**-0.5))
        assert not u.block2.conv[1].weight.any()
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.05)
    shifts = [m for m in model.modules() if isinstance(m, ScalarShift)]
    assert len(shifts) == 4 * branches + 1
    assert len([m for m in model.modules() if isinstance(m, ScalarScale)]) == branches
    assert not any(n.endswith("weight") for m in shifts for n, _ in m.named_parameters())


def test_fixup_elsewhere_is_one_line():
    from binsense.errors import BinsenseError

    with pytest.raises(BinsenseError, match="float CIFAR ResNets"):
        build_model("cnv", dataset_info("cifar10"), norm="fixup")
    with pytest.raises(BinsenseError, match="takes norm 'batch_norm' or 'none', got 'fixup'"):
        build_model("vgg11", dataset_info("cifar10"), norm="fixup")


@pytest.mark.parametrize("name", ["mnist_bnn", "vgg_small", "cnv", "vgg_small_float"])
def test_bnn_without_batch_norm_uses_channel_affine(name):
    from binsense.layers import ChannelAffine

    info = dataset_info("mnist" if name == "mnist_bnn" else "cifar10")
    with_bn = build_model(name, info, width=0.25)
    without = build_model(name, info, width=0.25, norm="channel_affine")
    bns = [m for m in with_bn.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    affines = [m for m in without.modules() if isinstance(m, ChannelAffine)]
    assert len(affines) == len(bns) > 0
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in without.modules())
    # After a binary layer the affine starts at 1/sqrt(fan-in): its output is unit-scale.
    second = [m for m in without.modules() if isinstance(m, nn.Conv2d)][1]
    fan_in = second.in_channels * 9
    expected = fan_in**-0.5 if is_binary_layer(second) else 1.0
    assert affines[1].scale.detach() == pytest.approx(torch.full_like(affines[1].scale, expected))


@pytest.mark.parametrize("name", ["mnist_bnn", "mnist_bnn_float"])
def test_mnist_bnn_blocks_make_it_deeper(name):
    """``blocks = n`` conv blocks per stage: 2n + 2 norms (2n convs, the FC, the head),
    the same widths; n = 1 is the plain mnist_bnn (same parameter shapes)."""
    from binsense.layers import ChannelAffine

    info = dataset_info("mnist")
    plain = build_model(name, info, width=0.25)
    assert [p.shape for p in build_model(name, info, width=0.25, blocks=1).parameters()] == [
        p.shape for p in plain.parameters()
    ]
    for n, norms in ((1, 4), (2, 6), (3, 8), (5, 12), (7, 16)):
        model = build_model(name, info, width=0.25, blocks=n).eval()
        convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs == [8] * n + [16] * n
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert len(bns) == norms
        without = build_model(name, info, width=0.25, blocks=n, norm="channel_affine")
        assert sum(isinstance(m, ChannelAffine) for m in without.modules()) == norms
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(BinsenseError, match="blocks"):
        build_model(name, info, blocks=0)


@pytest.mark.parametrize("norm", ["channel_affine", "none"])
def test_mnist_float_twin_without_batch_norm_is_he_initialised(norm):
    """Without BN the float twin's convs start He-normal (std sqrt(2 / fan-in)), so a deep
    ReLU stack keeps its activation scale; with BN, and in the BNN, PyTorch's default."""
    info = dataset_info("mnist")
    torch.manual_seed(0)
    convs = [
        m
        for m in build_model("mnist_bnn_float", info, blocks=3, norm=norm).modules()
        if isinstance(m, nn.Conv2d)
    ]
    for conv in convs[1:]:  # 32 -> 32 and 64 -> 64 channels: 9k-37k weights each
        fan_in = conv.in_channels * 9
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    for name, options in (("mnist_bnn_float", {}), ("mnist_bnn", {"norm": norm})):
        conv = [m for m in build_model(name, info, blocks=3, **options).modules()
                if isinstance(m, nn.Conv2d)][-1]  # fmt: skip
        default = (3 * conv.in_channels * 9) ** -0.5  # kaiming_uniform_(a=sqrt(5))
        assert conv.weight.std().item() == pytest.approx(default, rel=0.05)


def test_bnn_without_batch_norm_trains(tiny_data):
    from binsense.train import TrainConfig, train

    options = {"width": 0.5, "norm": "channel_affine"}
    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=4, batch_size=16,
                         lr=0.01, model_options=options)  # fmt: skip
    result = train(config)
    assert result.metrics[-1]["test_acc"] > 0.6  # 3 classes: chance is 1/3


def test_design_replaces_the_sign_after_binary_convs_only():
    from binsense.layers import DeSign

    info = dataset_info("cifar10")
    model = build_model("vgg_small", info, width=0.25, design="2x2x4_shift", bn_affine=False)
    blocks = blocks_of(model.blocks)
    designs = [b for b in blocks if isinstance(b.act, DeSign)]
    assert len(designs) == 5  # the 5 binary convs; not the float first conv, not the FCs
    for b in designs:
        assert isinstance(b.norm, nn.BatchNorm2d) and not b.norm.affine
    assert isinstance(blocks[0].act, SignQuantizer)  # after the float first conv: a sign
    assert sum(isinstance(b.act, SignQuantizer) for b in blocks) == 1 + 2  # + the two FCs
    out = []
    for b in designs:
        b.act.register_forward_hook(lambda mod, i, o: out.append(o))
    model.eval()(torch.rand(2, 3, 32, 32))
    assert all(set(o.unique().tolist()) <= {-1.0, 1.0} for o in out)


@pytest.mark.parametrize("design", [None, "2x2"])
def test_resnet18_bnn_layout_and_design_placement(design):
    from binsense.layers import DeSign, ResidualUnit

    model = build_model("resnet18_bnn", dataset_info("cifar10"), width=0.125, design=design)
    blocks = [m for m in model.modules() if isinstance(m, ResidualUnit)]
    assert len(blocks) == 8
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert not is_binary_layer(convs[0]) and all(is_binary_layer(c) for c in convs[1:])
    assert sum(isinstance(m, DeSign) for m in model.modules()) == (0 if design is None else 16)
    # binarisation has one home: the unit's input sign and block 1's act feed the binary
    # convs; block 2's act is the identity or the DeSign shift before the residual add
    assert all(isinstance(b.binarize, SignQuantizer) for b in blocks)
    assert not any(is_binary_layer(c) and c.input_quantizer is not None for c in convs)
    if design is None:
        assert all(isinstance(b.block1.act, SignQuantizer) for b in blocks)
        assert all(isinstance(b.block2.act, nn.Identity) for b in blocks)
    else:
        assert all(b.block1.act.quantizer is not None for b in blocks)
        assert all(b.block2.act.quantizer is None for b in blocks)
    y = model(torch.rand(3, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (3, 10) and blocks[0].block1.conv.weight.grad.abs().sum() > 0
