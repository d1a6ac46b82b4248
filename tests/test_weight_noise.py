"""Analog weight noise: statistics of each convention, seeding, exact restore, binary layers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binsense.errors import BinsenseError, UnknownNameError
from binsense.evaluate.conditions import make_condition
from binsense.evaluate.noise_conditions import WeightNoiseCondition
from binsense.layers import BinaryConv2d, BinaryLinear
from binsense.layers.bn import fold_bn_affine
from binsense.noise import WeightNoise, snr_db_to_eta
from binsense.quant import SteSign

ETA = 0.1


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0)


def big_linear():
    torch.manual_seed(0)
    layer = nn.Linear(512, 256, bias=False)
    with torch.no_grad():  # rows with different magnitudes, to tell the references apart
        layer.weight.mul_(torch.linspace(0.5, 2.0, 256)[:, None])
    return layer


def small_bnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), SteSign(),
        BinaryConv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8), SteSign(),
        nn.Flatten(), BinaryLinear(8 * 4 * 4, 10), nn.BatchNorm1d(10), nn.Linear(10, 10),
    )  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.rand(16, 3, 8, 8))
    return model.eval()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, saved):
    state = model.state_dict()
    assert state.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("reference", ["std", "max", "channel_max", "absolute"])
def test_additive_noise_has_eta_times_reference_scale(reference):
    layer = big_linear()
    w = layer.weight.detach().clone()
    scale = {
        "std": w.std(correction=0),
        "max": w.abs().max(),
        "channel_max": w.abs().amax(dim=1, keepdim=True),
        "absolute": torch.tensor(1.0),
    }[reference]
    with WeightNoise(eta=ETA, reference=reference).applied(layer, seed=0):
        z = (layer.weight.detach() - w) / scale
    assert abs(z.std().item() - ETA) < 0.02 * ETA  # 131k samples
    assert abs(z.mean().item()) < 0.02 * ETA
    if reference == "channel_max":  # the per-row std follows each row's own max
        assert z.std(dim=1).min() > 0.8 * ETA and z.std(dim=1).max() < 1.2 * ETA


def test_multiplicative_noise_is_relative_and_snr_converts():
    layer = big_linear()
    w = layer.weight.detach().clone()
    with WeightNoise(eta=ETA, mode="multiplicative").applied(layer, seed=0):
        rel = layer.weight.detach() / w - 1
    assert abs(rel.std().item() - ETA) < 0.02 * ETA
    assert snr_db_to_eta(20.0) == pytest.approx(0.1)
    assert WeightNoise(snr_db=40.0).eta == pytest.approx(0.01)
    with pytest.raises(BinsenseError, match="exactly one"):
        WeightNoise(eta=0.1, snr_db=20.0)
    with pytest.raises(UnknownNameError, match="channel_max"):
        WeightNoise(eta=0.1, reference="chanel_max")


def test_restores_bit_exactly_after_context_and_after_exception():
    model = small_bnn()
    saved = snapshot(model)
    x = torch.rand(4, 3, 8, 8)
    clean = model(x)
    noise = WeightNoise(eta=0.5, include_bn=True, include_bias=True)
    with noise.applied(model, seed=3):
        assert not torch.equal(model(x), clean)
    assert_same_state(model, saved)
    assert torch.equal(model(x), clean)
    with pytest.raises(RuntimeError, match="boom"), noise.applied(model, seed=3):
        raise RuntimeError("boom")
    assert_same_state(model, saved)
    binarized = WeightNoise(eta=0.5, binarized=True)
    with pytest.raises(RuntimeError, match="boom"), binarized.applied(model, seed=3):
        raise RuntimeError("boom")
    assert_same_state(model, saved)
    assert all(m.weight_quantizer is not None for m in (model[3], model[8]))
    assert torch.equal(model(x), clean)


def test_same_seed_same_draw_different_seed_different_draw():
    model = small_bnn()
    noise = WeightNoise(eta=0.2)

    def noisy_weights(seed):
        with noise.applied(model, seed):
            return [m.weight.detach().clone() for m in (model[0], model[3], model[8])]

    a, b, c = noisy_weights(1), noisy_weights(1), noisy_weights(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not any(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_bn_untouched_unless_included_and_running_stats_never():
    model = small_bnn()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    with WeightNoise(eta=0.3, mode="multiplicative").applied(model, seed=0):
        for bn, saved in zip(bns, before, strict=True):
            assert all(torch.equal(bn.state_dict()[k], v) for k, v in saved.items())
    with WeightNoise(eta=0.3, mode="multiplicative", include_bn=True).applied(model, seed=0):
        for bn, saved in zip(bns, before, strict=True):
            assert not torch.equal(bn.weight, saved["weight"])
            assert not torch.equal(bn.bias, saved["bias"])
            assert torch.equal(bn.running_mean, saved["running_mean"])
            assert torch.equal(bn.running_var, saved["running_var"])


def test_folded_bn_noise_perturbs_the_affine_form():
    bn = nn.BatchNorm1d(4096).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-2.0, 2.0)
        bn.running_var.uniform_(0.5, 4.0)
    a, b = fold_bn_affine(bn)
    noise = WeightNoise(eta=ETA, mode="multiplicative", include_bn=True, bn_form="folded")
    with noise.applied(nn.Sequential(bn), seed=0):
        a_n, b_n = fold_bn_affine(bn)
        x = torch.randn(8, 4096)
        torch.testing.assert_close(bn(x), a_n * x + b_n, atol=1e-5, rtol=1e-5)
    assert abs((a_n / a - 1).std().item() - ETA) < 0.05 * ETA
    assert abs((b_n / b - 1).std().item() - ETA) < 0.05 * ETA


@pytest.mark.parametrize("scale", [False, True])
def test_binarized_mode_perturbs_the_effective_binary_weight(scale):
    torch.manual_seed(0)
    layer = BinaryConv2d(16, 32, 3, padding=1, scale=scale, input_quantizer="ste_sign")
    w = layer.weight.detach().clone()
    effective = layer.binary_weight().detach()  # alpha * sign(w)
    x = torch.randn(2, 16, 6, 6)
    with WeightNoise(eta=ETA, binarized=True).applied(layer, seed=0):
        noisy = layer.weight.detach().clone()
        dev = (noisy - effective) / effective.abs().max()
        assert abs(dev.std().item() - ETA) < 0.05 * ETA
        assert torch.equal(sign(noisy), sign(effective))  # 10 % noise never flips +-1
        if not scale:
            assert set(effective.unique().tolist()) == {-1.0, 1.0}
        # the forward pass computes with the noisy binarised weight itself
        torch.testing.assert_close(layer(x), F.conv2d(sign(x), noisy, padding=1))
    assert torch.equal(layer.weight, w) and layer.weight_quantizer is not None
    assert layer.scale is scale
    torch.testing.assert_close(layer(x), F.conv2d(sign(x), effective, padding=1))


def test_latent_mode_on_binary_layers_only_matters_through_sign_flips():
    torch.manual_seed(0)
    layer = BinaryLinear(256, 64, input_quantizer="ste_sign")
    w = layer.weight.detach().clone()
    x = torch.randn(3, 256)
    with WeightNoise(eta=ETA).applied(layer, seed=0):
        noisy = layer.weight.detach().clone()
        torch.testing.assert_close(layer(x), sign(x) @ sign(noisy).t())
    assert abs(((noisy - w) / w.abs().max()).std().item() - ETA) < 0.05 * ETA
    flipped = (sign(noisy) != sign(w)).float().mean().item()
    assert 0 < flipped < 0.5


def test_bias_noise_only_when_asked():
    layer = nn.Linear(64, 32)
    bias = layer.bias.detach().clone()
    with WeightNoise(eta=ETA).applied(layer, seed=0):
        assert torch.equal(layer.bias, bias)
    with WeightNoise(eta=ETA, reference="channel_max", include_bias=True).applied(layer, 0):
        assert not torch.equal(layer.bias, bias)


def test_weight_noise_condition_perturbs_and_restores():
    model = small_bnn()
    saved = snapshot(model)
    x = torch.rand(4, 3, 8, 8)
    clean = model(x)
    cond = make_condition("weight_noise", eta=0.3, draws=4)
    assert isinstance(cond, WeightNoiseCondition) and cond.draw_count() == 4
    outs = []
    for draw in range(2):
        with cond.applied(model, draw) as transform:
            assert transform is None
            outs.append(model(x))
    assert not torch.equal(outs[0], clean) and not torch.equal(outs[0], outs[1])
    assert_same_state(model, saved)
    with pytest.raises(UnknownNameError, match="multiplicative"):
        make_condition("weight_noise", eta=0.1, mode="multiplcative")
