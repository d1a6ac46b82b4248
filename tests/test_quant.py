"""Sign quantizers: forward values and the exact surrogate gradients."""

import pytest
import torch

from binsense.errors import UnknownNameError
from binsense.quant import SteSign, SwishSign, TriangleSign, get_quantizer, quantizer_names

X = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5])


def grad_of(q, x):
    x = x.clone().requires_grad_(True)
    q(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("name", quantizer_names())
def test_forward_is_sign_with_zero_to_plus_one(name):
    y = get_quantizer(name)(X)
    assert torch.equal(y, torch.tensor([-1.0, -1, -1, -1, 1, 1, 1, 1, 1]))
    assert y.dtype == X.dtype


def test_ste_sign_gradient_is_clipped_identity():
    assert torch.equal(grad_of(SteSign(), X), torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1, 0]))
    g = grad_of(SteSign(clip_value=0.5), X)
    assert torch.equal(g, torch.tensor([0.0, 0, 0, 1, 1, 1, 1, 0, 0]))


def test_ste_sign_clip_value_none_is_unclipped():
    # Larq: clip_value=None means "gradients are not clipped" (plain STE, gradient 1)
    for q in (SteSign(clip_value=None), get_quantizer("ste_sign", clip_value=None)):
        assert q.clip_value is None and "clip_value=None" in repr(q)
        assert torch.equal(grad_of(q, X * 100), torch.ones_like(X))
        assert torch.equal(q(X), get_quantizer("ste_sign")(X))


def test_approx_sign_gradient_is_bireal_triangle():
    g = grad_of(get_quantizer("approx_sign"), X)
    expected = (2 - 2 * X.abs()).clamp_min(0)  # Bi-Real: d/dx (2x -+ x^2)
    torch.testing.assert_close(g, expected, rtol=0, atol=0)
    assert g[4] == 2.0 and g[1] == 0.0


def test_triangle_width_keeps_area_two():
    q = TriangleSign(width=2.0)
    xs = torch.linspace(-3, 3, 60001)
    g = grad_of(q, xs)
    assert torch.trapezoid(g, xs).item() == pytest.approx(2.0, abs=1e-3)
    assert g[30000].item() == pytest.approx(1.0)  # peak 2/w at 0


def test_swish_sign_gradient_matches_autograd_of_smooth_function():
    beta = 5.0
    x = torch.linspace(-2, 2, 101, dtype=torch.float64, requires_grad=True)
    s = torch.sigmoid(beta * x)
    (2 * s * (1 + beta * x * (1 - s)) - 1).sum().backward()
    g = grad_of(SwishSign(beta), x.detach())
    torch.testing.assert_close(g, x.grad)
    assert g[50].item() == pytest.approx(beta)


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_swish_sign_negative_lobe_as_documented(beta):
    # zero crossing at |x| = 2.3994/beta (beta x tanh(beta x / 2) = 2), minimum
    # -0.0738 beta at |x| = 3.4358/beta (the SwishSign docstring)
    x = torch.linspace(0, 10 / beta, 200_001, dtype=torch.float64)
    g = grad_of(SwishSign(beta), x)
    first_negative = x[(g < 0).nonzero()[0, 0]].item()
    assert first_negative * beta == pytest.approx(2.3994, abs=1e-3)
    assert x[g.argmin()].item() * beta == pytest.approx(3.4358, abs=1e-3)
    assert g.min().item() / beta == pytest.approx(-0.0738, abs=1e-4)
    assert torch.equal(grad_of(SwishSign(beta), -x), g)  # symmetric lobes


def test_unknown_quantizer_suggests_name():
    with pytest.raises(UnknownNameError, match="did you mean 'ste_sign'"):
        get_quantizer("ste_sgn")


@pytest.mark.parametrize(
    "cls,kw", [(SteSign, "clip_value"), (TriangleSign, "width"), (SwishSign, "beta")]
)
def test_invalid_parameters_rejected(cls, kw):
    with pytest.raises(ValueError, match=kw):
        cls(**{kw: 0.0})


# -------------------------------------------- one fused pass, same numbers as plain ops

FUSED_CASES = [
    SteSign(),
    SteSign(clip_value=1.5),
    SteSign(clip_value=None),
    TriangleSign(),
    TriangleSign(width=0.7),
    TriangleSign(width=3.0),
    SwishSign(),
    SwishSign(beta=2.5),
]


def _forward_backward(q, x, g):
    x = x.clone().requires_grad_(True)
    y = q(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q", FUSED_CASES, ids=repr)
def test_fused_kernels_equal_plain_ops_bit_for_bit(q, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 8, 6, 5, generator=gen) * 1.5).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1.0])  # sign(+-0) = +1; the clip edge
    g = torch.randn(x.shape, generator=gen).to(dtype)
    fused = _forward_backward(q, x, g)
    backward = type(q)._backward
    if q.fuse_backward:
        assert backward.compiled is not None and not backward.failed  # the kernel did run
    monkeypatch.setenv("BINSENSE_FUSED_STE", "0")
    plain = _forward_backward(q, x, g)
    assert fused[0].dtype == dtype and fused[1].dtype == dtype
    assert torch.equal(fused[0], plain[0])
    # the plain backward is the documented formula times the incoming gradient
    assert torch.equal(plain[1], g * q.surrogate_grad(x))
    if dtype == torch.float32 or not q.fuse_backward:
        assert torch.equal(fused[1], plain[1])
    else:  # bf16: the fused pass computes in fp32 and rounds once (eager rounds each step)
        once = (g.float() * q.surrogate_grad(x.float())).to(dtype)
        assert torch.equal(fused[1], once)


def test_failed_fusion_warns_once_and_falls_back(monkeypatch):
    from binsense.quant import sign

    def broken(*args, **kwargs):
        def fn(*a):
            raise RuntimeError("no C++ compiler\nsecond line")

        return fn

    fused = sign._Fused(sign.sign_pm1)
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="could not be compiled \\(no C\\+\\+ compiler\\)"):
        y = fused(X)
    assert torch.equal(y, get_quantizer("ste_sign")(X)) and fused.failed
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fused(X), y)  # no second warning
