"""Fixed-point quantizer, batch-norm quantization targets, exact BN -> threshold folding."""

import warnings

import pytest
import torch
from torch import nn

from binsense.deploy import fold_bn_sign, threshold_sign
from binsense.errors import BinsenseError, UnknownNameError
from binsense.evaluate.conditions import make_condition
from binsense.evaluate.noise_conditions import BnBitsCondition
from binsense.layers import BinaryConv2d, BinaryLinear
from binsense.layers.block import BinaryBlock
from binsense.layers.bn import (
    BnPairingWarning,
    QuantizedBatchNorm,
    bn_quantized,
    fold_bn_affine,
    quantize_bn,
    replace_batchnorm,
)
from binsense.quant import SteSign
from binsense.quant.fixed import (
    FixedQuantizer,
    auto_frac_bits,
    auto_frac_bits_tensor,
    quantize_fixed,
    quantize_fixed_ste,
)


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def random_bn(bn, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(3 * torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 20 + 0.5)
    return bn.eval()


def small_bnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        BinaryBlock(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), SteSign()),
        BinaryBlock(BinaryConv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), SteSign(),
                    nn.MaxPool2d(2)),
        nn.Flatten(),
        BinaryBlock(BinaryLinear(16 * 4 * 4, 10), nn.BatchNorm1d(10), nn.Identity()),
    )  # fmt: skip
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            random_bn(m, seed=i)
    return model.eval()


# --- fixed point -----------------------------------------------------------------------


def test_fixed_point_grid_rounding_and_saturation():
    x = torch.tensor([-5.0, -2.0, -0.3, 0.125, 0.375, 0.6, 1.7, 1.9, 5.0])
    q = quantize_fixed(x, bits=4, frac_bits=2)  # step 0.25, range [-2, 1.75]
    assert torch.equal(q, torch.tensor([-2.0, -2.0, -0.25, 0.0, 0.5, 0.5, 1.75, 1.75, 1.75]))
    assert torch.equal(
        quantize_fixed(torch.tensor([300.0]), 4, frac_bits=-6), torch.tensor([320.0])
    )


def test_auto_frac_bits_fit_the_largest_magnitude():
    x = torch.tensor([0.1, -3.0, 2.2])
    assert auto_frac_bits(x, 8) == 5  # floor(log2(127 / 3))
    q = quantize_fixed(x, 8)
    assert torch.equal(q * 32, (q * 32).round())
    assert (q - x).abs().max() <= 2**-6  # half a step, nothing saturates
    assert auto_frac_bits(torch.tensor([1000.0]), 4) == -8
    assert torch.equal(quantize_fixed(torch.zeros(3), 4), torch.zeros(3))
    for bits in (2, 3, 4, 6, 8, 16):
        y = torch.randn(1000) * 7
        f = auto_frac_bits(y, bits)
        codes = quantize_fixed(y, bits) * 2**f
        assert codes.max() <= 2 ** (bits - 1) - 1 and codes.min() >= -(2 ** (bits - 1))
        assert (quantize_fixed(y, bits) - y).abs().max() <= 2 ** (-f - 1)


def test_bits_32_is_float_passthrough_and_bad_bits_fail():
    x = torch.randn(10)
    assert quantize_fixed(x, 32) is x
    for bad in (1, 25, 31, 64):
        with pytest.raises(BinsenseError, match="bits"):
            quantize_fixed(x, bad)


def test_ste_gradient_passes_straight_and_optionally_stops_outside():
    x = torch.tensor([-3.0, -0.4, 0.3, 1.0, 3.0], requires_grad=True)
    quantize_fixed_ste(x, 4, frac_bits=2).sum().backward()
    assert torch.equal(x.grad, torch.ones(5))
    x.grad = None
    q = FixedQuantizer(4, frac_bits=2, zero_outside=True)(x)
    q.sum().backward()
    assert torch.equal(q.detach(), quantize_fixed(x.detach(), 4, 2))
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0]))


def test_non_finite_values_do_not_poison_the_automatic_step():
    nan, inf = float("nan"), float("inf")
    q = quantize_fixed(torch.tensor([0.30, 0.70, nan, -1.20]), 8)
    # f from the finite values only: floor(log2(127 / 1.2)) = 6, step 1/64 (was step 1)
    assert torch.equal(q[[0, 1, 3]], torch.tensor([19.0, 45.0, -77.0]) / 64)
    assert torch.isnan(q[2])
    x = torch.tensor([0.30, 0.70, inf, -inf, -1.20])
    assert auto_frac_bits(x, 8) == 6
    expected = torch.tensor([19.0, 45.0, 127.0, -128.0, -77.0]) / 64  # +-inf saturate
    assert torch.equal(quantize_fixed(x, 8), expected)
    assert torch.equal(quantize_fixed_ste(x, 8), expected)
    xg = x.clone().requires_grad_(True)
    q = FixedQuantizer(8, zero_outside=True)(xg)
    q.sum().backward()
    assert torch.equal(q.detach(), expected)
    assert torch.equal(xg.grad, torch.tensor([1.0, 1, 0, 0, 1]))  # no gradient at +-inf
    assert torch.equal(quantize_fixed(x, 4, frac_bits=2)[2:4], torch.tensor([1.75, -2.0]))


def test_auto_frac_bits_never_overflows():
    inf = float("inf")
    assert auto_frac_bits(torch.tensor([inf, -inf, float("nan")]), 8) == 0  # nothing finite
    assert auto_frac_bits(torch.tensor([1e-40]), 8) == 126  # subnormal max: step 2**-126
    assert auto_frac_bits(torch.tensor([3e38]), 2) == 1 - 127  # range end stays finite
    assert torch.isfinite(quantize_fixed(torch.tensor([3e38, 1e-40, 0.0]), 8)).all()


def test_per_channel_automatic_frac_bits():
    x = torch.tensor([[1.0, 0.1], [100.0, 0.01]])
    assert torch.equal(auto_frac_bits_tensor(x, 4, axis=0), torch.tensor([[2.0], [-4.0]]))
    for axis in (0, 1, -1):
        q = quantize_fixed(x, 4, axis=axis)
        for i in range(2):
            row = x.select(axis, i)
            assert torch.equal(q.select(axis, i), quantize_fixed(row, 4))
    tau = torch.tensor([1.0, 1000.0, 0.013])  # 1-D: every entry its own scale
    assert torch.equal(quantize_fixed(tau, 4, axis=0), torch.tensor([1.0, 1024.0, 0.013671875]))
    assert torch.equal(quantize_fixed(tau, 4), torch.tensor([0.0, 1024.0, 0.0]))
    with pytest.raises(BinsenseError, match="frac_bits='auto'"):
        quantize_fixed(x, 4, frac_bits=2, axis=0)
    with pytest.raises(BinsenseError, match="axis"):
        quantize_fixed(x, 4, axis=2)


# --- folding BN + sign into thresholds ------------------------------------------------


def tie_bn(channels, ties):
    """A BN with random channels plus hand-made edge cases, in exact float arithmetic."""
    bn = random_bn(nn.BatchNorm2d(channels), seed=1)
    bn.eps = 0.0  # so sigma is exactly 2 on the tie channels
    with torch.no_grad():
        for c, (gamma, beta, mean) in ties.items():
            bn.weight[c], bn.bias[c], bn.running_mean[c], bn.running_var[c] = gamma, beta, mean, 4.0
        bn.weight[1] = -bn.weight[1].abs()  # gamma < 0
        bn.weight[2], bn.bias[2] = 0.0, 0.7  # constant +1
        bn.weight[3], bn.bias[3] = 0.0, -0.7  # constant -1
        bn.weight[4], bn.bias[4] = 0.0, 0.0  # BN == 0 -> +1
    return bn


def test_folded_integer_thresholds_equal_bn_sign_on_binary_conv_output():
    torch.manual_seed(0)
    conv = BinaryConv2d(16, 32, 3, padding=1, input_quantizer="ste_sign")
    x = conv(torch.randn(8, 16, 8, 8)).detach()
    assert torch.equal(x, x.round())  # popcount arithmetic: integers
    ties = {  # (gamma, beta, mean) with tau an integer that occurs in x
        5: (2.0, 0.0, 0.0),  # tau = 0, gamma > 0
        6: (-2.0, 0.0, 0.0),  # tau = 0, gamma < 0: BN(0) = 0 -> +1
        7: (1.0, 1.0, 4.0),  # tau = 4 - 1 * 2 / 1 = 2
        8: (-1.0, -1.0, 4.0),  # tau = 4 - (-1) * 2 / (-1) = 2, gamma < 0
    }
    bn = tie_bn(32, ties)
    expected = sign(bn(x))
    for c, t in ((5, 0), (6, 0), (7, 2), (8, 2)):
        assert (x[:, c] == t).any()  # the tie happens
        assert torch.all(bn(x)[:, c][x[:, c] == t] == 0)
    tau, flip = fold_bn_sign(bn)
    assert torch.equal(threshold_sign(x, tau, flip), expected)
    tau_int, flip_int = fold_bn_sign(bn, integer_input=True)
    finite = torch.isfinite(tau_int)
    assert torch.equal(tau_int[finite], tau_int[finite].round())
    assert torch.equal(threshold_sign(x, tau_int, flip_int), expected)
    assert torch.equal(flip_int[:2], torch.tensor([1.0 if bn.weight[0] > 0 else -1.0, -1.0]))
    # gamma == 0: constant channels
    assert torch.all(expected[:, 2] == 1) and torch.all(expected[:, 3] == -1)
    assert torch.all(expected[:, 4] == 1)
    assert tau_int[2] == -torch.inf and tau_int[3] == torch.inf and tau_int[4] == -torch.inf
    # why sign(flip * (x - tau)) and not flip * sign(x - tau): the gamma < 0 tie
    wrong = flip_int.view(1, -1, 1, 1) * sign(x - tau_int.view(1, -1, 1, 1))
    assert not torch.equal(wrong[:, 6], expected[:, 6])


def test_folded_thresholds_exhaustive_over_every_popcount_value():
    fan_in = 16 * 9
    x = (
        torch.arange(-fan_in, fan_in + 1, dtype=torch.float32)
        .view(-1, 1, 1, 1)
        .expand(-1, 32, 1, 1)
    )
    bn = tie_bn(32, {5: (2.0, 0.0, 0.0), 7: (1.0, 1.0, 4.0), 8: (-1.0, -1.0, 4.0)})
    with torch.no_grad():
        bn.running_mean.mul_(10)  # thresholds spread over the popcount range
    tau, flip = fold_bn_sign(bn, integer_input=True)
    assert torch.equal(threshold_sign(x, tau, flip), sign(bn(x)))


# --- post-training BN quantization -----------------------------------------------------


def bn_outputs(model, x):
    """Pre-sign outputs of every BN layer (hooks)."""
    outs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o))
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    model(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("target", ["raw", "affine", "threshold"])
def test_32_bits_changes_nothing_and_16_bits_almost_nothing(target):
    model = small_bnn()
    x = torch.rand(4, 3, 8, 8)
    clean = model(x)
    with bn_quantized(model, 32, target):
        assert torch.equal(model(x), clean)
    if target != "threshold":
        with bn_quantized(model, 16, target):
            noisy = model(x)
        assert (noisy - clean).abs().max() < 1e-3 * clean.abs().max()
    else:  # only the signs are meaningful: the classifier BN (affine) and the signs agree
        with bn_quantized(model, 16, target):
            assert (model(x) - clean).abs().max() < 1e-3 * clean.abs().max()


def test_raw_target_puts_each_tensor_on_its_own_grid():
    model = small_bnn()
    bn = model[1].norm
    gamma, mean = bn.weight.detach().clone(), bn.running_mean.clone()
    sigma = torch.sqrt(bn.running_var + bn.eps)
    assert auto_frac_bits(gamma, 4) != auto_frac_bits(mean, 4)  # a shared grid would differ
    quantize_bn(model, 4, "raw")
    assert bn.eps == 0.0
    torch.testing.assert_close(bn.weight.detach(), quantize_fixed(gamma, 4), rtol=0, atol=0)
    torch.testing.assert_close(bn.running_mean, quantize_fixed(mean, 4), rtol=0, atol=0)
    sigma_q = quantize_fixed(sigma, 4).clamp_min(2.0 ** -auto_frac_bits(sigma, 4))
    torch.testing.assert_close(bn.running_var.sqrt(), sigma_q, rtol=0, atol=0)


def test_affine_target_computes_quantized_a_x_plus_b():
    bn = random_bn(nn.BatchNorm2d(12))
    a, b = fold_bn_affine(bn)
    x = torch.randn(3, 12, 5, 5)
    quantize_bn(nn.Sequential(bn), 6, "affine")
    expected = quantize_fixed(a, 6).view(1, -1, 1, 1) * x + quantize_fixed(b, 6).view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x), expected, rtol=1e-6, atol=1e-6)


def test_threshold_target_quantizes_tau_and_keeps_sign_of_gamma():
    model = small_bnn()
    bn, head = model[1].norm, model[3].norm
    with torch.no_grad():
        bn.weight[:4] = -bn.weight[:4].abs()
    tau, flip = fold_bn_sign(bn)
    a_head, b_head = fold_bn_affine(head)
    x = torch.randint(-72, 73, (6, 16, 4, 4)).float()
    quantize_bn(model, 4, "threshold")
    tau_q = quantize_fixed(tau.float(), 4).double()
    assert torch.equal(sign(bn(x)), threshold_sign(x, tau_q, flip))
    assert torch.equal(bn.weight.detach(), flip)  # sign(gamma) kept
    z = torch.randn(5, 10)  # the classifier BN feeds no sign: affine target
    expected = quantize_fixed(a_head, 4) * z + quantize_fixed(b_head, 4)
    torch.testing.assert_close(head(z), expected, rtol=1e-6, atol=1e-6)


def dead_channel_block(c=16):
    """BN + sign with channel 0 nearly dead (gamma = 1e-4: |tau_0| = |mu - beta sigma/gamma|)."""
    bn = random_bn(nn.BatchNorm2d(c), seed=0)
    with torch.no_grad():
        bn.weight[0] = 1e-4
    return BinaryBlock(nn.Identity(), bn, SteSign()).eval()


def test_per_channel_thresholds_survive_a_nearly_dead_channel():
    block = dead_channel_block()
    bn = block.norm
    tau, _ = fold_bn_sign(bn)
    assert tau[0].abs() > 1e4 and tau[1:].abs().max() < 50
    sigma = torch.sqrt(bn.running_var + bn.eps).view(1, -1, 1, 1)
    noise = torch.randn(64, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    x = bn.running_mean.view(1, -1, 1, 1) + 2 * sigma * noise  # around each threshold
    ref = block(x)
    step = torch.exp2(-auto_frac_bits_tensor(tau.float(), 8, axis=0)).double().view(1, -1, 1, 1)
    far = (x.double() - tau.view(1, -1, 1, 1)).abs() > step  # more than a step from tau_c
    with bn_quantized(block, 8, "threshold", scale="channel"):
        flips_channel = block(x) != ref
    with bn_quantized(block, 8, "threshold"):  # default: one scale for the layer
        flips_tensor = block(x) != ref
    # per channel: flips only within one quantization step of each channel's threshold
    assert not (flips_channel & far).any()
    assert flips_channel.float().mean() < 1e-3  # measured 0.05 %
    # per tensor: tau_0 ~ 3.3e4 sets the step to 2**9 = 512, every other tau rounds to 0
    assert (flips_tensor[:, 1:] & far[:, 1:]).float().mean() > 0.1  # measured 28 %
    assert torch.equal(ref, block(x))  # restored


@pytest.mark.parametrize("target", ["raw", "affine"])
def test_channel_scale_puts_each_channel_on_its_own_grid(target):
    bn = random_bn(nn.BatchNorm2d(12))
    with torch.no_grad():
        bn.weight[0] = 1e-4
    gamma, beta, mean = bn.weight.detach().clone(), bn.bias.detach().clone(), bn.running_mean
    mean, sigma = mean.clone(), torch.sqrt(bn.running_var + bn.eps)
    a, b = fold_bn_affine(bn)
    quantize_bn(nn.Sequential(bn), 6, target, scale="channel")
    if target == "affine":
        expected = [(bn.weight, a), (bn.bias, b)]
    else:
        expected = [(bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean)]
        sigma_q = quantize_fixed(sigma, 6, axis=0)
        assert sigma_q.min() > 0  # each sigma on its own grid never rounds to 0
        assert torch.equal(bn.running_var.sqrt(), sigma_q)
    for got, t in expected:
        for c in range(12):  # each channel quantized alone (its own fractional bits)
            assert torch.equal(got.detach()[c : c + 1], quantize_fixed(t[c : c + 1], 6))


def test_bn_scale_option_and_conditions_keep_old_condition_ids():
    with pytest.raises(UnknownNameError, match="channel"):
        quantize_bn(nn.Sequential(), 4, "raw", scale="chanel")
    old = make_condition("bn_bits", bits=8, target="threshold")
    assert old.scale == "tensor" and "scale" not in old.params()  # hash of old studies kept
    new = make_condition("bn_bits", bits=8, target="threshold", scale="channel")
    assert new.params()["scale"] == "channel"
    with pytest.raises(BinsenseError, match="channel"):
        make_condition("bn_bits", bits=8, scale="chanel")
    plain = make_condition("sensor_noise", type="column_offset", level=0.05, bn_bits=8)
    assert "bn_scale" not in plain.params()
    sensor = make_condition(
        "sensor_noise",
        type="column_offset",
        level=0.05,
        bn_bits=8,
        bn_target="threshold",
        bn_scale="channel",
    )
    assert sensor.params()["bn_scale"] == "channel"
    block = dead_channel_block()
    x = torch.randn(4, 16, 5, 5, generator=torch.Generator().manual_seed(0)) * 5
    with bn_quantized(block, 8, "threshold", "channel"):
        expected = block(x)
    with bn_quantized(block, 8, "threshold"):
        assert not torch.equal(block(x), expected)  # the scale makes a difference here
    for cond in (new, sensor):
        with cond.applied(block, 0) as transform:
            assert torch.equal(block(x), expected)
            assert (transform is None) == (cond is new)


def test_error_shrinks_with_bits():
    model = small_bnn()
    x = torch.rand(8, 3, 8, 8)
    clean = bn_outputs(model, x)[0]
    errors = []
    for bits in (3, 4, 6, 8, 16):
        with bn_quantized(model, bits, "raw"):
            errors.append((bn_outputs(model, x)[0] - clean).abs().mean().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3


def test_bn_quantized_restores_bit_exactly_also_after_exception():
    model = small_bnn()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    eps = [m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for target in ("raw", "affine", "threshold"):
        with pytest.raises(RuntimeError, match="boom"), bn_quantized(model, 3, target):
            assert model[0].norm.eps == 0.0
            raise RuntimeError("boom")
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved[k]), (target, k)
        assert eps == [
            m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
    with pytest.raises(UnknownNameError, match="threshold"):
        quantize_bn(model, 4, "treshold")


# --- QuantizedBatchNorm ----------------------------------------------------------------


def test_quantized_batchnorm_eval_matches_affine_target_and_float_at_32_bits():
    bn = random_bn(nn.BatchNorm2d(12))
    x = torch.randn(3, 12, 5, 5)
    float_q = QuantizedBatchNorm.from_batchnorm(bn, 32)
    torch.testing.assert_close(float_q(x), bn(x), rtol=1e-5, atol=1e-5)
    q6 = QuantizedBatchNorm.from_batchnorm(bn, 6)
    quantize_bn(nn.Sequential(bn), 6, "affine")
    torch.testing.assert_close(q6(x), bn(x), rtol=1e-6, atol=1e-6)


def test_quantized_batchnorm_trains_like_batchnorm_with_ste_gradients():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6)
    q = QuantizedBatchNorm.from_batchnorm(ref, 8)
    assert q.training
    x = torch.randn(10, 6, 4, 4) * 3 + 1
    y_ref, y_q = ref(x), q(x)
    torch.testing.assert_close(q.running_mean, ref.running_mean)
    torch.testing.assert_close(q.running_var, ref.running_var)
    assert (y_q - y_ref).abs().max() < 0.05  # 8-bit affine of the batch statistics
    y_q.pow(2).sum().backward()
    assert q.weight.grad.abs().sum() > 0 and q.bias.grad.abs().sum() > 0
    model = replace_batchnorm(small_bnn(), 4)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 3 and all(isinstance(m, QuantizedBatchNorm) for m in bns)
    model(torch.rand(2, 3, 8, 8))


def test_bn_bits_condition_quantizes_then_restores():
    model = small_bnn()
    x = torch.rand(4, 3, 8, 8)
    clean = model(x)
    cond = make_condition("bn_bits", bits=2, target="affine")
    assert isinstance(cond, BnBitsCondition) and cond.draw_count() == 1
    with cond.applied(model, 0) as transform:
        assert transform is None
        assert not torch.equal(model(x), clean)
    assert torch.equal(model(x), clean)
    with pytest.raises(BinsenseError, match="bits"):
        make_condition("bn_bits", bits=40)


def test_sensor_noise_condition_with_quantized_bn():
    model = small_bnn()
    x = torch.rand(4, 3, 8, 8)
    plain = make_condition("sensor_noise", type="column_offset", level=0.05)
    both = make_condition("sensor_noise", type="column_offset", level=0.05, bn_bits=2)
    assert plain.params()["bn_bits"] == 32 and both.params()["bn_bits"] == 2
    with plain.applied(model, 0) as noisy:
        y_plain = model(noisy(x))
    with both.applied(model, 0) as noisy:
        assert torch.equal(noisy(x), plain.noise().apply(x, 0))  # same sensor instance
        assert not torch.equal(model(noisy(x)), y_plain)  # and BN at 2 bits
    with plain.applied(model, 0) as noisy:
        assert torch.equal(model(noisy(x)), y_plain)  # restored exactly


def test_bn_without_affine_params():
    first = random_bn(nn.BatchNorm2d(4))
    block = BinaryBlock(nn.Identity(), nn.BatchNorm2d(4, affine=False), SteSign())
    model = nn.Sequential(first, block)
    model.eval()
    with torch.no_grad():
        model[1].norm.running_mean.uniform_(-2, 2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BinsenseError, match="affine"):
        quantize_bn(model, 4, "affine")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())  # untouched
    x = torch.randn(2, 4, 3, 3) * 3
    expected = threshold_sign(
        x, quantize_fixed(model[1].norm.running_mean, 4).double(), torch.ones(4)
    )
    quantize_bn(model, 4, "threshold")  # the first BN feeds no sign, but it has affine params
    assert torch.equal(sign(model[1].norm(x)), expected)


def test_threshold_target_warns_once_for_a_bn_sign_pair_outside_a_binary_block():
    """Issue 24: nn.Sequential(bn, sign) got the affine form without a word (thousands of
    sign flips at 2 bits); binsense pairs a norm with its sign only through BinaryBlock."""
    x = torch.randint(-72, 73, (8, 16, 6, 6)).float()
    loose = nn.Sequential(random_bn(nn.BatchNorm2d(16)), SteSign()).eval()
    tau, flip = fold_bn_sign(loose[0])
    with pytest.warns(BnPairingWarning) as record:
        quantize_bn(loose, 2, "threshold")
    assert len(record) == 1
    message = str(record[0].message)
    assert "BinaryBlock" in message and "affine" in message and "\n" not in message
    thresholds = threshold_sign(x, quantize_fixed(tau.float(), 2).double(), flip)
    assert not torch.equal(sign(loose(x)), thresholds)  # what the warning is about

    block = BinaryBlock(nn.Identity(), random_bn(nn.BatchNorm2d(16)), SteSign()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the explicit pair: its threshold, no warning
        quantize_bn(block, 2, "threshold")
        assert torch.equal(sign(block(x)), thresholds)
        quantize_bn(nn.Sequential(random_bn(nn.BatchNorm2d(4))), 2, "threshold")  # no sign
        quantize_bn(small_bnn(), 2, "threshold")  # the classifier's BN feeds no sign
        quantize_bn(nn.Sequential(random_bn(nn.BatchNorm2d(16)), SteSign()), 2, "affine")
