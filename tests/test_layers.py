"""Binary layers: forward equals a plain conv of signed tensors; gradients; groups."""

import torch
import torch.nn.functional as F

from binsense.layers import BinaryConv2d, BinaryLinear, clip_latent_weights


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_binary_conv_equals_conv_of_signed_tensors():
    torch.manual_seed(0)
    layer = BinaryConv2d(4, 6, 3, padding=1, input_quantizer="ste_sign")
    x = torch.randn(2, 4, 7, 7)
    expected = F.conv2d(sign(x), sign(layer.weight), padding=1)
    assert torch.equal(layer(x), expected)
    # integer outputs: popcount arithmetic, |y| <= fan-in
    assert torch.equal(layer(x), layer(x).round())
    assert layer(x).abs().max() <= 4 * 9


def test_grouped_binary_conv():
    torch.manual_seed(0)
    layer = BinaryConv2d(8, 12, 3, padding=1, groups=4, input_quantizer="ste_sign")
    assert layer.weight.shape == (12, 2, 3, 3)
    x = torch.randn(1, 8, 5, 5)
    expected = F.conv2d(sign(x), sign(layer.weight), padding=1, groups=4)
    assert torch.equal(layer(x), expected)


def test_scale_is_mean_abs_per_output_channel():
    torch.manual_seed(0)
    layer = BinaryLinear(5, 3, scale=True)
    x = torch.randn(4, 5)
    alpha = layer.weight.abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ (alpha * sign(layer.weight)).t())


def test_gradients_reach_latent_weights_through_ste():
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, input_quantizer="ste_sign")
    with torch.no_grad():
        layer.weight[0].fill_(2.0)  # outside the STE window: no gradient
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None
    assert torch.all(layer.weight.grad[0] == 0)
    assert layer.weight.grad[1:].abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_float_input_when_no_input_quantizer():
    torch.manual_seed(0)
    layer = BinaryLinear(6, 2)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ sign(layer.weight).t())


def test_clip_latent_weights():
    layer = torch.nn.Sequential(BinaryLinear(4, 4), torch.nn.Linear(4, 4))
    with torch.no_grad():
        layer[0].weight.mul_(10)
        layer[1].weight.mul_(10)
    before = layer[1].weight.clone()
    clip_latent_weights(layer)
    assert layer[0].weight.abs().max() <= 1.0
    assert torch.equal(layer[1].weight, before)  # float layers untouched
