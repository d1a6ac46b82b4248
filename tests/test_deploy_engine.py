"""The packed engine: bits flow between binary layers (fused conv + threshold, pool on
bits, planes straight from the ADC code, shuffle as a bit permutation, flatten + linear on
the packed map) and equal the op list's integers exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_deploy_program import _calibrated
from torch import nn

from binsense.data import dataset_info
from binsense.deploy import convert, kernels
from binsense.deploy.bits import pack_bits
from binsense.deploy.engine import (
    Packed,
    PackedEngine,
    _FusedConv,
    _PackedLinearFromMap,
    _PlanesWords,
    _regroup,
)
from binsense.deploy.ir import MaxPoolInt, OpList, PackedConv, Threshold
from binsense.layers import BinaryConv2d, DeSign
from binsense.layers.shape import ChannelShuffle
from binsense.quant import SteSign

pytestmark = pytest.mark.skipif(
    kernels.library() is None, reason="the XNOR C kernel does not build here (no C compiler)"
)


def _pm1(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).to(torch.int8) * 2 - 1


def _bn(c: int, seed: int = 0) -> nn.BatchNorm2d:
    """Random BN with zero, negative and constant channels."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.weight[0] = 0.0
        bn.bias[0] = 0.2  # constant +1
        bn.weight[1] = -abs(bn.weight[1])
        bn.bias.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 3)
        bn.running_var.copy_(torch.rand(c, generator=g) * 10 + 0.5)
    return bn.eval()


@pytest.mark.parametrize(
    ("cin", "cout", "groups", "size", "pool", "design"),
    [
        (70, 67, 1, 9, 2, None),  # odd channel counts, a 9x9 map pooled with a crop
        (64, 96, 2, 8, 0, "2x2"),  # DeSign classes, 2 groups of 32
        (128, 128, 2, 7, 2, "2x2x4_shift"),  # 3-D DeSign through the pool, 64 per group
        (24, 40, 1, 5, 3, None),  # a 3x3 pool
    ],
)
def test_fused_conv_pool_threshold_equals_the_ops(cin, cout, groups, size, pool, design):
    torch.manual_seed(0)
    conv = PackedConv.of(BinaryConv2d(cin, cout, 3, 1, 1, groups=groups))
    norm = _bn(cout)
    act = DeSign(design) if design else SteSign()
    threshold = Threshold.of(norm, act, conv.fan_in, cout, spatial=True)
    pool_op = MaxPoolInt.of(nn.MaxPool2d(pool)) if pool else None
    x = _pm1(3, cin, size, size + 1)
    y = conv(x)
    expected = threshold(pool_op(y) if pool_op else y)
    named = {"conv": conv, **({"pool": pool_op} if pool_op else {}), "threshold": threshold}
    (unit,) = OpList(named).units.values()  # the unit the program decides once
    assert unit.fused and unit.pool is pool_op and unit.tail is threshold
    fused = _FusedConv(unit)
    packed = Packed(kernels.pack_input(x, groups), cin, groups)
    got = fused(packed)
    assert got.channels == cout and torch.equal(got.pm1(), expected)
    assert bool((threshold.flip < 0).any())  # the AND side of the bit pool is exercised


def test_pool_on_bits_is_or_for_rising_and_and_for_falling_thresholds():
    words = torch.tensor([[[[0b01]], [[0b10]]], [[[0b11]], [[0b01]]]]).view(1, 2, 2, 1)
    down = torch.tensor([[[0b10]]])  # channel 1 falls: AND; channel 0 rises: OR
    assert kernels.pool_bits(words, 2, down).item() == 0b01  # OR of ch0 = 1, AND of ch1 = 0


@pytest.mark.parametrize(("k", "h", "w"), [(2, 6, 7), (3, 7, 9)])
def test_pool_on_bits_equals_the_max_pool_of_the_signs(k, h, w):
    """Every window and word against max-pool (rising) and min-pool (falling) of ±1, with
    the rows and columns past the last full window dropped."""
    g = torch.Generator().manual_seed(k)
    bits = torch.rand(2, h, w, 130, generator=g) > 0.5  # 3 words, the last partly used
    falling = torch.rand(h // k, w // k, 130, generator=g) > 0.5
    pm1 = bits.permute(0, 3, 1, 2).float() * 2 - 1
    up = F.max_pool2d(pm1, k) > 0
    low = -F.max_pool2d(-pm1, k) > 0
    expected = torch.where(falling.permute(2, 0, 1), low, up).permute(0, 2, 3, 1)
    got = kernels.pool_bits(pack_bits(bits, -1), k, pack_bits(falling, -1))
    assert torch.equal(got, pack_bits(expected, -1))


def test_regroup_and_shuffle_permute_the_bits():
    """A shuffle of the packed bits is ChannelShuffle's permutation of the channels
    (channel ``k*n + j`` to position ``j*g + k``), and the layout follows the groups."""
    bits = torch.rand(2, 3, 4, 96) > 0.5
    p = Packed(pack_bits(bits, -1), 96, 1)
    perm = torch.argsort(ChannelShuffle(4).channel_permutation(96))  # out[c] = in[perm[c]]
    q = _regroup(p, 3, shuffle=4)  # then 3 groups of 32 channels: one word each
    assert q.words.shape[-1] == 3 and torch.equal(q.bits(), bits[..., perm])
    assert _regroup(q, 3) is q
    x = torch.where(bits, 1.0, -1.0).permute(0, 3, 1, 2)
    assert torch.equal(ChannelShuffle(4)(x).permute(0, 2, 3, 1) > 0, q.bits())


@pytest.mark.parametrize(
    ("name", "dataset", "options", "steps"),
    [
        ("vgg_small", "cifar10", {"width": 0.125, "groups": 2}, {_FusedConv, _PackedLinearFromMap}),
        ("cnv", "cifar10", {"width": 0.125, "design": "2x2"}, {_FusedConv, _PackedLinearFromMap}),
        ("compact_bnn", "cifar10", {"width": 0.25, "encoder": "glt"}, {_FusedConv, _PlanesWords}),
        ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc"}, {_PlanesWords}),
        ("resnet18_bnn", "cifar10", {"width": 0.0625}, set()),
    ],
)
def test_engine_equals_the_op_list_and_pytorch(name, dataset, options, steps):
    model = _calibrated(name, dataset, **options)
    info = dataset_info(dataset)
    x = torch.rand(
        5, info.in_channels, *info.image_size, generator=torch.Generator().manual_seed(2)
    )
    deployed = convert(model)
    engine = PackedEngine(deployed.ops)
    with torch.no_grad():
        expected = model(x)
        got = engine(x)
    assert torch.equal(got, deployed.run_ops(x))
    # the float layers in the deployed order (binsense.deploy.floatops): bit for bit; and
    # PyTorch's own order (resnet18_bnn: a float stream into a float head) to the last bits
    assert torch.equal(got, deployed.reference(model, x))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    used = {type(s) for s in engine._steps.values()}
    assert steps <= used, f"the packed path was not taken: {used}"


@pytest.mark.parametrize(("batch", "chunks"), [(5, [1, 1, 1, 1, 1]), (40, [1] * 40)])
def test_float_first_stage_chunks_change_no_bit(monkeypatch, batch, chunks):
    from binsense.deploy import engine as engine_mod

    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model = _calibrated("vgg_small", "cifar10", width=0.125)
    with torch.no_grad():
        whole = PackedEngine(convert(model).ops)(x)  # one chunk (8 MB of activations)
    monkeypatch.setattr(engine_mod, "FLOAT_CHUNK_BYTES", 1)  # every chunk one image
    sizes: list[int] = []  # the images of each float chunk (packed by its sign)
    pack = kernels.pack_input

    def spy(y, groups=1, sign=False):
        if sign:
            sizes.append(len(y))
        return pack(y, groups, sign)

    monkeypatch.setattr(engine_mod.kernels, "pack_input", spy)
    with torch.no_grad():
        got = PackedEngine(convert(model).ops)(x)
        expected = model(x)
    assert sizes == chunks
    assert torch.equal(got, whole)
    assert torch.equal(got, expected)  # batched PyTorch sums in the same order here


def test_program_uses_the_op_list_where_the_kernel_does_not_run(monkeypatch):
    model = _calibrated("mnist_bnn", "mnist", width=0.25)
    deployed = convert(model)
    monkeypatch.setenv(kernels.ENV, "torch")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(deployed(x), model(x))
    assert "_engine" not in deployed.__dict__


def test_sign_packing_maps_zero_to_plus_one_like_the_quantizer():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("nan"), 2.0, float("-inf")]).view(1, 7, 1, 1)
    bits = kernels.pack_input(x, sign=True).item()
    expected = SteSign()(x).view(-1) > 0
    assert [bool(bits >> i & 1) for i in range(7)] == expected.tolist()
    assert [bool(bits >> i & 1) for i in range(7)] == [True, True, True, False, False, True, False]
