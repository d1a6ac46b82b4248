"""DeSign: tiling, gradients, BN coupling, presets, exact folding, kernel scoring, CLI."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from binsense.cli import main
from binsense.deploy import fold_bn_design, threshold_design
from binsense.errors import BinsenseError, UnknownNameError
from binsense.layers import (
    LEVEL_TO_THRESHOLD,
    DeSign,
    design_kernel_names,
    design_thresholds,
    get_design_kernel,
    levels_to_thresholds,
    quantize_bn,
    replace_batchnorm,
)
from binsense.layers.block import BinaryBlock
from binsense.layers.bn import bn_quantized
from binsense.layers.design_search import (
    REFERENCE_KERNEL,
    candidate_kernels,
    dither_binarize,
    equivalent_kernels,
    load_gray_images,
    named_kernel,
    score_kernels,
    simulate_feature_maps,
    to_grayscale,
)
from binsense.quant import SignQuantizer, get_quantizer, quantizer_names
from binsense.quant.fixed import quantize_fixed

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sign(t):
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def loop_thresholds(kernel, c, h, w):
    """The reference tiling, one pixel at a time."""
    f, m, n = kernel.shape
    out = torch.empty(c, h, w, dtype=kernel.dtype)
    for ci in range(c):
        for i in range(h):
            for j in range(w):
                out[ci, i, j] = kernel[ci % f, i % m, j % n]
    return out


def random_bn(channels, seed=0, zero=(), negative=()):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.3)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(5 * torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 30 + 0.5)
        for c in negative:
            bn.weight[c] = -bn.weight[c]
        for c in zero:
            bn.weight[c] = 0.0
    return bn.eval()


CUSTOM_3D = [[[0.1, -0.2, 0.3]], [[1.0, 2.0, -1.5]], [[0.0, 0.5, 0.25]]]  # F=3, 1x3


# --- kernels and presets ------------------------------------------------------------------


def test_presets_equal_the_level_table():
    assert design_kernel_names() == ["2x2", "2x2_v1", "2x2_v2", "2x2x4_shift", "3x3_sym"]
    t = LEVEL_TO_THRESHOLD
    assert t == {0: 0.3118, 1: 0.6310, 3: 0.9671, 5: 1.3352, 7: 1.7656, 9: 2.3419}
    expected = torch.tensor([[[0.6310, 0.6310], [0.9671, 0.9671]]])
    assert torch.equal(get_design_kernel("2x2"), expected)
    shift = get_design_kernel("2x2x4_shift")
    assert shift.shape == (4, 2, 2)
    for s, levels in enumerate(
        [[[1, 1], [0, 3]], [[3, 3], [1, 5]], [[5, 5], [3, 7]], [[7, 7], [5, 9]]]
    ):
        assert torch.equal(shift[s], torch.tensor([[t[v] for v in r] for r in levels]))
    sym = get_design_kernel("3x3_sym")[0]
    assert sym[1, 1] == torch.tensor(0.3118) and sym[0, 0] == torch.tensor(0.9671)
    assert torch.equal(sym, sym.T) and torch.equal(sym, sym.flip(0))
    assert torch.equal(levels_to_thresholds([[9, 0]]), torch.tensor([[2.3419, 0.3118]]))


def test_the_authors_two_2x2_kernels_and_the_default_alias():
    # bemc22/DeSign thresholds/threshold_2x2_v1.mat and threshold_2x2_v2.mat, in levels
    v1 = get_design_kernel("2x2_v1")
    v2 = get_design_kernel("2x2_v2")
    assert torch.equal(v1, levels_to_thresholds([[[1, 1], [0, 3]]]))
    assert torch.equal(v1, torch.tensor([[[0.6310, 0.6310], [0.3118, 0.9671]]]))
    assert torch.equal(v2, levels_to_thresholds([[[1, 1], [3, 3]]]))
    assert torch.equal(v2, torch.tensor([[[0.6310, 0.6310], [0.9671, 0.9671]]]))
    # "2x2" keeps the kernel binsense always used (v2), so old studies do not change
    assert torch.equal(get_design_kernel("2x2"), v2)
    assert torch.equal(DeSign().kernel, v2)
    assert torch.equal(get_design_kernel("2x2x4_shift")[0], v1[0])  # the 3-D kernel's slice 0


def test_unknown_preset_and_invalid_levels_and_shapes():
    with pytest.raises(UnknownNameError, match="2x2x4_shift") as e:
        get_design_kernel("2x3")
    assert "3x3_sym" in str(e.value) and "did you mean" in str(e.value)
    with pytest.raises(BinsenseError, match="unknown DeSign kernel"):
        DeSign("nope")
    with pytest.raises(BinsenseError, match=r"invalid DeSign level\(s\) 2, 4"):
        levels_to_thresholds([[1, 2], [4, 3]])
    with pytest.raises(BinsenseError, match="2-D"):
        get_design_kernel([1.0, 2.0])
    with pytest.raises(BinsenseError, match="finite"):
        get_design_kernel([[1.0, float("nan")]])
    shift = DeSign("2x2", quantizer=None)  # shift only: x - T, binarised downstream
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(shift(x), x - design_thresholds("2x2", 2, 3, 3))


@pytest.mark.parametrize("kernel", ["2x2", "3x3_sym", "2x2x4_shift", CUSTOM_3D])
@pytest.mark.parametrize("size", [(6, 7, 5), (1, 2, 2), (5, 1, 9)])
def test_tiling_matches_a_per_pixel_loop(kernel, size):
    k = get_design_kernel(kernel)
    assert torch.equal(design_thresholds(kernel, *size), loop_thresholds(k, *size))


def test_channel_period_f4_with_six_channels():
    t = design_thresholds("2x2x4_shift", 6, 4, 4)
    k = get_design_kernel("2x2x4_shift")
    assert torch.equal(t[4], t[0]) and torch.equal(t[5], t[1])
    assert torch.equal(t[3, :2, :2], k[3])
    assert not torch.equal(t[0], t[1])


# --- the activation -----------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["2x2", "3x3_sym", "2x2x4_shift"])
def test_forward_is_sign_of_shifted_input_for_odd_sizes(kernel):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 7, 5)
    t = loop_thresholds(get_design_kernel(kernel), 6, 7, 5)
    x[0, 0, 0, 0] = t[0, 0, 0]  # u = 0 -> +1
    y = DeSign(kernel)(x)
    assert torch.equal(y, sign(x - t))
    assert y[0, 0, 0, 0] == 1.0
    assert set(y.unique().tolist()) == {-1.0, 1.0}


def test_forward_keeps_dtype_and_needs_4d():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y = DeSign("3x3_sym")(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, sign(x - design_thresholds("3x3_sym", 3, 5, 4).double()))
    with pytest.raises(BinsenseError, match="B, C, H, W"):
        DeSign()(torch.randn(3, 4))


@pytest.mark.parametrize("name", quantizer_names())
def test_gradient_is_the_quantizers_surrogate_at_the_shifted_input(name):
    torch.manual_seed(1)
    q = get_quantizer(name)
    d = DeSign("2x2x4_shift", quantizer=q)
    x = (torch.randn(2, 6, 5, 7) * 1.5).requires_grad_()
    g = torch.randn(2, 6, 5, 7)
    d(x).backward(g)
    u = x.detach() - design_thresholds("2x2x4_shift", 6, 5, 7)
    assert torch.allclose(x.grad, g * q.surrogate_grad(u))
    assert d.kernel.grad is None and not d.kernel.requires_grad
    assert list(d.parameters()) == []


def test_default_gradient_is_the_recu_triangle():
    d = DeSign()
    assert d.quantizer.width == 1.0
    x = torch.randn(1, 2, 6, 6).requires_grad_()
    d(x).sum().backward()
    u = x.detach() - design_thresholds("2x2", 2, 6, 6)
    assert torch.allclose(x.grad, (2 - (2 * u).abs()).clamp_min(0))


def test_design_is_not_a_sign_quantizer():
    assert not isinstance(DeSign(), SignQuantizer)


# --- coupling to the BN scale -------------------------------------------------------------


def test_coupled_thresholds_use_current_gamma_and_pass_it_a_gradient():
    bn = random_bn(6, negative=(1,), zero=(2,)).train()
    d = DeSign("2x2x4_shift", bn=bn)
    t = design_thresholds("2x2x4_shift", 6, 5, 3)
    gamma = bn.weight.detach().clone().view(-1, 1, 1)
    assert torch.equal(d.thresholds(6, 5, 3), gamma * t)
    x = torch.randn(4, 6, 5, 3)
    assert torch.equal(d(x), sign(x - gamma * t))
    with torch.no_grad():
        bn.weight.mul_(2)  # the current gamma, not a copy
    assert torch.equal(d.thresholds(6, 5, 3), 2 * gamma * t)
    # dL/dgamma through the threshold: -sum(dL/du * T); dL/du = triangle(u)
    bn.weight.grad = None
    d(x).sum().backward()
    u = x - bn.weight.detach().view(-1, 1, 1) * t
    expected = -((2 - (2 * u).abs()).clamp_min(0) * t).sum((0, 2, 3))
    assert torch.allclose(bn.weight.grad, expected)


def test_coupling_is_a_reference_not_a_submodule():
    bn = random_bn(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bn, DeSign("2x2", bn=bn))
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys))
    assert [k for k in keys if k.startswith("2.")] == ["2.kernel"]
    assert len(list(model.parameters())) == 4  # conv w, b; bn w, b
    assert list(model[2].children()) == [model[2].quantizer]
    other = random_bn(4, seed=3)
    model[2].coupled_bn = other
    assert model[2].coupled_bn is other and "coupled_bn" not in model[2]._modules
    model[2].coupled_bn = bn
    twin = copy.deepcopy(model)
    assert twin[2].coupled_bn is twin[1] and twin[1] is not bn
    x = torch.randn(2, 3, 9, 8)
    assert torch.equal(twin(x), model(x))
    replace_batchnorm(model, 8)
    assert model[2].coupled_bn is model[1] and model[1] is not bn


def test_coupling_without_affine_and_wrong_channels():
    bn = nn.BatchNorm2d(3, affine=False).eval()
    d = DeSign("2x2", bn=bn)
    assert torch.equal(d.thresholds(3, 4, 4), design_thresholds("2x2", 3, 4, 4))
    with pytest.raises(BinsenseError, match="4 channels"):
        DeSign("2x2", bn=nn.BatchNorm2d(4))(torch.randn(1, 3, 4, 4))
    with pytest.raises(BinsenseError, match="batch-norm"):
        DeSign("2x2", bn=nn.Linear(2, 2))


# --- folding: BN + DeSign -> thresholds per channel and position class ----------------------


@pytest.mark.parametrize("kernel", ["2x2x4_shift", "3x3_sym", CUSTOM_3D])
@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("integer_input", [False, True])
def test_folded_design_equals_bn_then_design_on_every_integer(kernel, coupled, integer_input):
    bn = random_bn(6, seed=2, negative=(1, 4), zero=(2, 5))
    with torch.no_grad():
        bn.bias[5] = -0.2  # gamma = 0 and beta < 0
    d = DeSign(kernel, bn=bn if coupled else None)
    x = torch.arange(-40, 41, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 6, 7, 5)
    tau, flip = fold_bn_design(bn, d, integer_input=integer_input)
    _, m, n = get_design_kernel(kernel).shape
    assert tau.shape == (6, m, n) and tau.dtype == torch.float64
    assert torch.equal(flip, torch.tensor([1.0, -1, 1, 1, -1, 1]))
    if integer_input:
        finite = torch.isfinite(tau)
        assert torch.equal(tau[finite], tau[finite].round())
    with torch.no_grad():
        expected = d(bn(x))
    assert torch.equal(threshold_design(x, tau, flip), expected)
    assert not torch.all(expected == expected[:1])  # the thresholds fall inside the range


@pytest.mark.parametrize("coupled", [False, True])
def test_folded_design_exact_at_ties(coupled):
    """Dyadic values: BN and DeSign are exact in float32, and BN(x) == g*T happens."""
    kernel = [[0.5, 1.0], [0.0, 2.0]]
    bn = nn.BatchNorm2d(3, eps=0.0).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -2.0, 0.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
        bn.running_mean.zero_()
        bn.running_var.fill_(4.0)  # sigma = 2: BN(x) = gamma * x / 2
    d = DeSign(kernel, bn=bn if coupled else None)
    x = torch.arange(-6, 7, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 5, 3)
    with torch.no_grad():
        u = bn(x) - d.thresholds(3, 5, 3)
        expected = d(bn(x))
    assert (u[:, :2] == 0).sum() >= 4  # ties at gamma > 0 and gamma < 0
    for integer_input in (False, True):
        tau, flip = fold_bn_design(bn, d, integer_input)
        assert torch.equal(threshold_design(x, tau, flip), expected)


def test_fold_accepts_a_kernel_spec_and_rejects_a_foreign_coupling():
    bn = random_bn(4)
    tau, flip = fold_bn_design(bn, "2x2")
    assert torch.equal(tau, fold_bn_design(bn, DeSign("2x2"))[0])
    with pytest.raises(BinsenseError, match="different batch-norm"):
        fold_bn_design(bn, DeSign("2x2", bn=random_bn(4, seed=1)))
    with pytest.raises(BinsenseError, match="same C"):
        threshold_design(torch.zeros(1, 3, 4, 4), tau, flip)


# --- quantize_bn with DeSign -------------------------------------------------------------


def test_quantize_bn_affine_target_treats_a_design_fed_bn_as_affine():
    design_model = BinaryBlock(nn.Conv2d(2, 4, 3), random_bn(4), DeSign("2x2"))
    bn = design_model.norm
    a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    quantize_bn(design_model, 6, "affine")
    assert torch.equal(bn.weight.detach(), quantize_fixed(a, 6))  # affine form
    assert torch.equal(bn.running_var, torch.ones(4))


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_quantize_bn_threshold_target_folds_design_then_quantizes(coupled, scale):
    """Q2 of the cross-study issue: tau = mu + sigma (g T - beta) / gamma per channel and
    position class, quantized as the deployed threshold (not mu, sigma one by one)."""
    bn = random_bn(8, seed=3)
    with torch.no_grad():
        bn.weight[:3] = -bn.weight[:3].abs()  # gamma < 0: the compare flips
        bn.weight[3] = 0.0  # gamma = 0: a constant channel
    design = DeSign("2x2x4_shift", bn=bn if coupled else None)
    block = BinaryBlock(nn.Identity(), bn, design).eval()
    x = torch.randint(-40, 41, (5, 8, 6, 6)).float()
    before = block(x)
    tau, flip = fold_bn_design(bn, design)
    finite = torch.isfinite(tau)
    tau_q = tau.clone()
    axis = 0 if scale == "channel" else None
    tau_q[finite] = quantize_fixed(tau.float(), 3, axis=axis).double()[finite]
    expected = threshold_design(x, tau_q, flip)
    with bn_quantized(block, 3, "threshold", scale):
        quantized = block(x)
    assert torch.equal(quantized, expected)
    assert not torch.equal(quantized, before)  # 3 bits do change decisions
    assert torch.equal(block(x), before)  # BN and DeSign (kernel, coupling) restored
    assert design.coupled_bn is (bn if coupled else None)
    assert torch.equal(quantized[:, 3], expected[:, 3])  # constant channel stays constant
    assert quantized[:, 3].unique().numel() == 1


def test_quantize_bn_refuses_to_rewrite_a_coupled_gamma():
    bn = random_bn(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), bn, DeSign("2x2", bn=bn)).eval()
    before = copy.deepcopy(model.state_dict())
    for target in ("affine", "threshold"):
        with pytest.raises(BinsenseError, match="coupled to a DeSign"):
            quantize_bn(model, 6, target)
        with pytest.raises(BinsenseError), bn_quantized(model, 6, target):
            pass
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    gamma = bn.weight.detach().clone()
    quantize_bn(model, 6, "raw")
    assert torch.equal(bn.weight.detach(), quantize_fixed(gamma, 6))
    t = design_thresholds("2x2", 4, 4, 4)
    assert torch.equal(model[2].thresholds(4, 4, 4), bn.weight.detach().view(-1, 1, 1) * t)


# --- kernel scoring -----------------------------------------------------------------------


def test_scores_of_a_constant_image_by_hand():
    image = torch.ones(1, 1, 4, 4)  # white: binary +1 everywhere
    conv = torch.ones(1, 3, 3)  # all +1: ReLU output 9 everywhere
    assert torch.equal(simulate_feature_maps(image, conv), torch.full((1, 1, 4, 4), 9.0))
    cand = torch.tensor([[[9.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    r = score_kernels(image, conv_kernels=conv, candidates=cand)
    # output -1 on class (0, 0) only; 9 anchors: 4 of class (0,0) (2 differences each),
    # 2 + 2 with one difference, 1 with none; |difference| = 2
    assert r.tv[0].item() == pytest.approx((4 * 2 * math.sqrt(2) + 4 * 2) / 9)
    assert r.mse[0].item() == pytest.approx(4 / 16)  # 4 of 16 pixels are 0 instead of 1
    assert r.psnr[0].item() == pytest.approx(10 * math.log10(4))
    assert r.tv[1] == 0 and r.mse[1] == 0 and r.psnr[1] == pytest.approx(100.0)  # capped
    assert r.ranks("tv").tolist() == [2, 1] and r.ranks("psnr").tolist() == [2, 1]


def brute_force(images, conv, cand):
    feats = simulate_feature_maps(images, conv)  # (N, K, H, W)
    gray = to_grayscale(images).unsqueeze(1)
    tv, mse, psnr = [], [], []
    for k in cand:
        o = dither_binarize(feats, k)
        dx = o[..., :-1, 1:] - o[..., :-1, :-1]
        dy = o[..., 1:, :-1] - o[..., :-1, :-1]
        tv.append(torch.sqrt(dx**2 + dy**2).mean())
        err = (((o + 1) / 2 - gray) ** 2).mean((-2, -1))
        mse.append(err.mean())
        psnr.append((10 * torch.log10(1 / err.clamp_min(1e-10))).mean())
    return torch.stack(tv), torch.stack(psnr), torch.stack(mse)


def test_scores_equal_a_brute_force_simulation():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(3, 3, 7, 5, generator=g) * 255).to(torch.uint8)
    conv = torch.randint(0, 2, (2, 3, 3), generator=g).double() * 2 - 1
    cand = candidate_kernels(2)[::7]
    r = score_kernels(images, conv_kernels=conv, candidates=cand, chunk=50)
    tv, psnr, mse = brute_force(images, conv, cand)
    assert torch.allclose(r.tv, tv) and torch.allclose(r.mse, mse)
    assert torch.allclose(r.psnr, psnr)
    r3 = score_kernels(images, conv_kernels=conv, candidates=candidate_kernels((1, 3))[:40])
    tv3, psnr3, mse3 = brute_force(images, conv, candidate_kernels((1, 3))[:40])
    assert torch.allclose(r3.tv, tv3) and torch.allclose(r3.mse, mse3)


def test_candidates_ranks_and_records():
    cand = candidate_kernels(2)
    assert cand.shape == (1296, 2, 2) and cand[0].sum() == 0 and cand[-1].sum() == 36
    with pytest.raises(BinsenseError, match="candidates"):
        candidate_kernels(3)
    eq = equivalent_kernels(REFERENCE_KERNEL)
    assert eq[0] == ((1, 1), (3, 3))
    assert set(eq) == {((1, 1), (3, 3)), ((3, 3), (1, 1)), ((1, 3), (1, 3)), ((3, 1), (3, 1))}
    images = torch.rand(2, 1, 6, 6)
    r = score_kernels(images, conv_kernels=2)
    recs = r.records("psnr", top=5)
    assert [x.rank_psnr for x in recs] == sorted(x.rank_psnr for x in recs)
    assert recs[0].rank_psnr == 1 and len(recs) == 5
    ref = r.record([[1, 1], [3, 3]])
    assert ref.kernel == ((1, 1), (3, 3)) and ref.as_dict()["kernel"] == [[1, 1], [3, 3]]
    assert ref.rank_tv == 1 + int((r.tv < r.tv[r.index(REFERENCE_KERNEL)]).sum())
    with pytest.raises(BinsenseError, match="not among"):
        r.index([[2, 2], [2, 2]])
    with pytest.raises(UnknownNameError):
        r.ranks("ssim")


def cifar_test_images(per_class):
    root = SHARED_DATA / "cifar10-jpeg" / "test"
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[:per_class]]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg").is_dir(), reason="no shared CIFAR-10")
def test_reference_kernel_ranks_on_real_cifar_images():
    """Measured, not the paper's claim: the reference is in the upper half, not the top."""
    r = score_kernels(cifar_test_images(5))  # 50 images, 8 convs
    recs = [r.record(k) for k in equivalent_kernels(REFERENCE_KERNEL)]
    assert min(x.rank_psnr for x in recs) <= 324  # top quarter by PSNR
    assert min(x.rank_tv for x in recs) <= 648  # upper half by low TV
    assert r.record([[9, 9], [9, 9]]).rank_tv == 1  # constant output: the trivial TV optimum


# --- CLI --------------------------------------------------------------------------------


def test_cli_design_kernel(tiny_data, tmp_path, capsys):
    args = ["design-kernel", "--dataset", tiny_data, "--images", "6", "--top", "3"]
    assert main([*args, "--json", "--criterion", "psnr"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["candidates"] == 1296 and row["images"] == 6 and len(row["top"]) == 3
    assert [t["rank_psnr"] for t in row["top"]] == sorted(t["rank_psnr"] for t in row["top"])
    assert row["reference"][0]["kernel"] == [[1, 1], [3, 3]] and len(row["reference"]) == 4
    plot, demo = tmp_path / "scores.png", tmp_path / "demo.png"
    assert main([*args, "--plot", str(plot), "--demo", str(demo)]) == 0
    out = capsys.readouterr().out
    assert "reference (paper)  [[1, 1], [3, 3]]" in out and "of 1296" in out
    assert plot.stat().st_size > 1000 and demo.stat().st_size > 1000
    assert main([*args, "--size", "3"]) == 2
    assert "error: 6^9 = 10,077,696" in capsys.readouterr().err


def test_cli_design_kernel_scores_named_kernels(tiny_data, capsys):
    """A study's trained kernels beside the ranking: sign is the all-zero kernel, the
    presets are their levels; the named record is the ranking's own record."""
    args = ["design-kernel", "--dataset", tiny_data, "--images", "6", "--top", "0"]
    assert main([*args, "--json", "--kernel", "2x2_v1", "--kernel", "sign"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["named"]["sign"]["kernel"] == [[0, 0], [0, 0]]
    assert row["named"]["2x2_v1"]["kernel"] == [[1, 1], [0, 3]]
    gray = load_gray_images(tiny_data, 6, None)
    ranking = score_kernels(gray, size=2, conv_kernels=8, seed=0)
    assert row["named"]["2x2_v1"] == ranking.record(named_kernel("2x2_v1")).as_dict()
    assert main([*args, "--kernel", "2x2x4_shift"]) == 2
    assert "has shape (4, 2, 2), and the search scores 2x2 kernels" in capsys.readouterr().err
    with pytest.raises(BinsenseError, match="unknown DeSign kernel 'x'; the names: sign, 2x2"):
        named_kernel("x")
    assert named_kernel("sign", 3) == ((0, 0, 0),) * 3


@pytest.mark.parametrize("design", ["2x2", "2x2x4_shift"])
def test_deployed_model_thresholds_equal_bn_then_design(design):
    """Zero cost, model level: in a VGG-small BNN with DeSign, each BN + DeSign pair is an
    integer compare per channel and position class on the popcount it receives."""
    from binsense.data import dataset_info
    from binsense.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg_small", dataset_info("cifar10"), width=0.125, design=design)
    kids = list(model.children())
    pairs = [(kids[i - 1], m) for i, m in enumerate(kids) if isinstance(m, DeSign)]
    for bn, _ in pairs:  # trained-looking statistics, some negative gammas
        bn.running_mean.uniform_(-20, 20)
        bn.running_var.uniform_(5, 200)
        bn.weight.data.uniform_(-2, 2)
        bn.bias.data.uniform_(-1, 1)
    inputs, outputs = {}, {}
    for bn, d in pairs:
        bn.register_forward_hook(lambda m, i, o: inputs.update({id(m): i[0]}))
        d.register_forward_hook(lambda m, i, o: outputs.update({id(m): o}))
    model.eval()(torch.rand(4, 3, 32, 32))
    for bn, d in pairs:
        popcount, out = inputs[id(bn)], outputs[id(d)]
        assert torch.equal(popcount, popcount.round())  # integer popcounts (max-pooled)
        tau, flip = fold_bn_design(bn, d, integer_input=True)
        assert torch.equal(tau, tau.round())
        assert torch.equal(threshold_design(popcount, tau, flip), out)
