"""compact_bnn: the compact grouped BNN of study S3 (binsense's topology)."""

import dataclasses

import pytest
import torch
from torch import nn

from binsense.data import dataset_info
from binsense.encoders import ENCODERS
from binsense.errors import BinsenseError
from binsense.layers import BinaryBlock, blocks_of, is_binary_layer
from binsense.layers.shape import ChannelShuffle, GlobalPool
from binsense.models import build_model, check_model, count_parameters
from binsense.quant import SignQuantizer

CIFAR = dataset_info("cifar10")


def at(side: int):
    return dataclasses.replace(CIFAR, image_size=(side, side))


def binary_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if is_binary_layer(m))


@pytest.mark.parametrize("side", [32, 64, 96])
@pytest.mark.parametrize("head", ["binary", "float"])
def test_runs_at_32_64_96_with_both_heads(side, head):
    model = build_model("compact_bnn", at(side), width=0.25, head=head).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, side, side)).shape == (2, 10)
    if head == "binary":
        assert isinstance(model.head, BinaryBlock) and is_binary_layer(model.head.conv)
        assert isinstance(model.head.pool, GlobalPool) and model.head.pool.mode == "sum"
    else:
        assert isinstance(model.head[-1], nn.Linear) and not is_binary_layer(model.head[-1])
    # resolution-agnostic: the same parameters at every size
    assert count_parameters(model) == count_parameters(
        build_model("compact_bnn", at(32), width=0.25, head=head)
    )


def test_width_one_layout_and_size():
    model = check_model("compact_bnn", CIFAR)  # meta device: shapes only
    convs = [b.conv for b in blocks_of(model) if isinstance(b.conv, nn.Conv2d)][:-1]
    assert [c.out_channels for c in convs] == [64, 64, 64, 128, 128, 256, 256]
    assert convs[0].groups == 1 and not is_binary_layer(convs[0])  # float stem by default
    assert all(c.groups == 4 and is_binary_layer(c) for c in convs[1:])
    shuffles = [m for m in model.blocks if isinstance(m, ChannelShuffle)]
    assert len(shuffles) == 5  # between every two grouped blocks
    grouped = 2 * 9 * 64 * 64 // 4 + 9 * (64 * 128 + 128 * 128 + 128 * 256 + 256 * 256) // 4
    assert grouped == 294_912
    assert binary_weights(model) == grouped + 256 * 10  # plus the binary head
    assert count_parameters(model) == 301_140  # + float stem 1728 + norms 1940


@pytest.mark.skipif("nbc" not in ENCODERS, reason="binary encoders not available")
def test_binary_encoder_makes_it_fully_binary_under_one_mbit():
    model = check_model("compact_bnn", CIFAR, encoder="nbc")
    stem = blocks_of(model)[0].conv
    assert is_binary_layer(stem) and stem.in_channels == 24  # 8 planes x RGB
    assert binary_weights(model) == 311_296
    thresholds = sum(b.conv.out_channels for b in blocks_of(model)[:-1])
    assert binary_weights(model) + 16 * thresholds < 2**20  # 16-bit thresholds: < 1 Mbit


def test_options_shuffle_downsample_stem_stride():
    plain = build_model("compact_bnn", CIFAR, width=0.25, shuffle=False)
    assert not any(isinstance(m, ChannelShuffle) for m in plain.modules())
    strided = build_model("compact_bnn", CIFAR, width=0.25, downsample="stride", stem_stride=2)
    assert not any(isinstance(m, nn.MaxPool2d) for m in strided.modules())
    strides = [b.conv.stride[0] for b in blocks_of(strided) if isinstance(b.conv, nn.Conv2d)]
    assert strides == [2, 1, 1, 2, 1, 2, 1, 1]
    pooled = build_model("compact_bnn", CIFAR, width=0.25)
    assert sum(isinstance(b.pool, nn.MaxPool2d) for b in blocks_of(pooled)) == 2
    deeper = build_model("compact_bnn", CIFAR, width=0.25, stages=2, depth=3, base=32, groups=2)
    convs = [b.conv for b in blocks_of(deeper) if isinstance(b.conv, nn.Conv2d)][:-1]
    assert [c.out_channels for c in convs] == [8, 8, 8, 8, 16, 16, 16]
    assert all(c.groups == 2 for c in convs[1:])
    stem_binary = build_model("compact_bnn", CIFAR, width=0.25, first_layer="binary")
    assert is_binary_layer(blocks_of(stem_binary)[0].conv)


def test_bad_options_are_clear_errors():
    for options, message in [
        ({"groups": 3}, "groups=3 must divide"),
        ({"downsample": "avg"}, "'downsample'"),
        ({"stem_stride": 3}, "'stem_stride'"),
        ({"shuffle": "yes"}, "'shuffle'"),
        ({"base": 0}, "'base'"),
    ]:
        with pytest.raises(BinsenseError, match=message):
            build_model("compact_bnn", CIFAR, width=0.25, **options)
    with pytest.raises(BinsenseError, match="at least 8 px"):
        build_model("compact_bnn", at(4), width=0.25, stem_stride=2)


def test_hidden_activations_are_binary_and_head_is_a_sum_pooled_binary_linear():
    model = build_model("compact_bnn", CIFAR, width=0.25).eval()
    seen = []
    for block in blocks_of(model):
        if isinstance(block.act, SignQuantizer):
            block.act.register_forward_hook(lambda mod, i, o: seen.append(o))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    assert len(seen) == 7 and all(set(o.unique().tolist()) <= {-1.0, 1.0} for o in seen)
    # 1x1 binary conv, then the sum over positions = binary linear on the summed maps
    head = model.head
    w = head.conv.binary_weight().flatten(1)
    expected = head.norm(features.sum((2, 3)) @ w.t())
    assert torch.equal(logits, expected)


def test_channel_shuffle_matches_torch_and_its_permutation():
    x = torch.randn(2, 12, 3, 3)
    shuffle = ChannelShuffle(4)
    y = shuffle(x)
    assert torch.equal(y, nn.ChannelShuffle(4)(x))
    p = shuffle.channel_permutation(12)
    assert torch.equal(y[:, p], x)
