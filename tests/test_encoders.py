"""Binary input encoders (study S3): NBC, uniform, quantile and learned thermometers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from binsense.data import DatasetInfo, ImageTensors, dataset_info, load_dataset
from binsense.encoders import (
    ENCODERS,
    LearnedThermometer,
    NBCEncoder,
    PlaneEncoder,
    QuantileThermometer,
    UniformThermometer,
    adc_code,
    build_encoder,
    quantile_thresholds,
    uniform_thresholds,
)
from binsense.encoders import thermometer as thermo
from binsense.encoders.plot import plot_tone_curves
from binsense.errors import BinsenseError
from binsense.layers import BinaryConv2d
from binsense.models import build_model
from binsense.train import TrainConfig, train

RGB = DatasetInfo("rgb", 10, 3, (4, 4), (0.5,) * 3, (0.25,) * 3, tuple("abcdefghij"))
GRAY = replace(RGB, name="gray", in_channels=1, mean=(0.5,), std=(0.25,))
ALL_CODES = torch.arange(256, dtype=torch.float32)


def signal(codes, channels: int = 1) -> torch.Tensor:
    """Sensor signal ``code / 255`` as ``(N, channels, 1, 1)``, every channel equal."""
    c = torch.as_tensor(codes, dtype=torch.float32).view(-1, 1, 1, 1)
    return (c / 255).expand(-1, channels, 1, 1).contiguous()


def planes(encoder, codes, channels: int = 1) -> torch.Tensor:
    """Planes ``(N, C*K)`` of ``codes`` (1x1 images)."""
    return encoder(signal(codes, channels))[:, :, 0, 0]


def tensors(images: torch.Tensor) -> ImageTensors:
    info = replace(RGB, in_channels=images.shape[1], image_size=tuple(images.shape[2:]))
    labels = torch.zeros(len(images), dtype=torch.long)
    return ImageTensors(images, labels, info, "train", "x")


# ------------------------------------------------------------------ the ADC


def test_adc_code_recovers_pixels_rounds_and_clips():
    assert torch.equal(adc_code(ALL_CODES / 255), ALL_CODES)
    x = torch.tensor([-0.3, 0.0, 0.5 / 255, 1.5 / 255, 10.4 / 255, 10.6 / 255, 1.0, 1.7])
    assert adc_code(x).tolist() == [0, 0, 0, 2, 10, 11, 255, 255]  # round half to even


# ------------------------------------------------------------------ NBC


def test_nbc_planes_are_the_bits_msb_first_channel_major():
    enc = NBCEncoder(RGB)
    assert enc.binary and enc.out_channels == 24 and enc.planes == 8
    p = planes(enc, [0, 127, 128, 255, 5], 3)
    assert p.dtype == torch.float32 and p.shape == (5, 24)
    assert p[0, :8].tolist() == [-1] * 8
    assert p[1, :8].tolist() == [-1] + [1] * 7
    assert p[2, :8].tolist() == [1] + [-1] * 7
    assert p[3, :8].tolist() == [1] * 8
    assert p[4, :8].tolist() == [-1, -1, -1, -1, -1, 1, -1, 1]
    # channel-major: planes 8..15 are channel 1's
    x = torch.stack([torch.full((2, 2), v / 255) for v in (1, 128, 255)]).unsqueeze(0)
    out = enc(x)[0, :, 0, 0]
    assert out[:8].tolist() == [-1] * 7 + [1]
    assert out[8:16].tolist() == [1] + [-1] * 7
    assert out[16:].tolist() == [1] * 8
    assert enc.thresholds_codes().shape == (3, 0)
    # the code table decodes back to the code
    table = enc.code_table().long()
    weights = 2 ** torch.arange(7, -1, -1)
    assert torch.equal((table * weights).sum(-1), torch.arange(256).expand(3, -1))


def test_encoders_refuse_wrong_channel_count():
    with pytest.raises(BinsenseError, match=r"\[B, 3, H, W\]"):
        NBCEncoder(RGB)(torch.rand(1, 1, 4, 4))


# ------------------------------------------------------------------ uniform


def test_uniform_thresholds_formula_and_design_rule():
    assert uniform_thresholds(8) == [29, 57, 86, 114, 142, 171, 199, 227]
    assert uniform_thresholds(1) == [128]
    assert uniform_thresholds(255) == list(range(1, 256))
    for k_max in (1, 2, 7, 8, 16, 32, 100, 254, 255):
        t = uniform_thresholds(k_max)
        assert all(b > a for a, b in zip(t, t[1:], strict=False)) and t[0] >= 1 and t[-1] <= 255
        sizes = [b - a for a, b in zip([0, *t], [*t, 256], strict=True)]
        assert max(sizes) - min(sizes) <= 1  # K+1 bins of equal size, within one code
        # exactly DESIGN's b_k = [s > k/(K+1)] on the ADC value s = c/255 (exact ints)
        for k, tk in enumerate(t, start=1):
            rule = [255 * k < c * (k_max + 1) for c in range(256)]
            assert [c >= tk for c in range(256)] == rule


def test_uniform_planes_for_known_codes():
    enc = UniformThermometer(GRAY)
    assert enc.binary and enc.out_channels == 8 and not enc.needs_fit
    p = planes(enc, [0, 28, 29, 57, 128, 226, 227, 255])
    counts = ((p + 1) / 2).sum(1).tolist()
    assert counts == [0, 0, 1, 2, 4, 7, 8, 8]
    assert p[4].tolist() == [1, 1, 1, 1, -1, -1, -1, -1]  # a thermometer: a prefix is set
    assert torch.equal(enc.thresholds_codes(), torch.tensor([uniform_thresholds(8)]))
    rgb = UniformThermometer(RGB, levels=16)
    assert rgb.out_channels == 48 and rgb.thresholds_codes().shape == (3, 16)
    assert torch.equal(rgb.tone_curve()[0], (ALL_CODES.view(-1, 1) >= torch.tensor(
        uniform_thresholds(16))).sum(1))  # fmt: skip


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "uniform", "levels": 0}, "greater than or equal to 1"),
        ({"name": "uniform", "levels": 256}, "less than or equal to 255"),
        ({"name": "uniform", "levels": "8"}, "valid integer"),
        ({"name": "quantile", "per_chanel": False}, "did you mean 'per_channel'"),
        ({"name": "glt", "init": "median"}, "option 'init'"),
        ({"name": "glt", "temperature": 0}, "greater than 0"),
        ({"name": "nbc", "levels": 8}, "has no option 'levels'"),
    ],
)
def test_bad_options_are_clear_errors(spec, match):
    with pytest.raises(BinsenseError, match=match):
        build_encoder(spec, RGB)


def test_direct_construction_checks_too():
    with pytest.raises(BinsenseError, match="levels must be an integer from 1 to 255"):
        UniformThermometer(RGB, levels=0)
    with pytest.raises(BinsenseError, match="temperature must be a finite number > 0"):
        LearnedThermometer(RGB, temperature=float("nan"))


# ------------------------------------------------------------------ quantile


def test_quantile_thresholds_on_known_distributions():
    k8 = torch.arange(1, 9)
    even = torch.arange(256).repeat(25)  # every code equally often
    middle = torch.arange(100, 200).repeat(64)  # codes 100..199 only, as many values
    t = quantile_thresholds(torch.stack([even, middle]), 8)
    assert t[0].tolist() == (-(-256 * k8 // 9)).tolist()  # ceil(256 k / 9)
    assert t[0].tolist() == [29, 57, 86, 114, 143, 171, 200, 228]
    assert t[1].tolist() == (100 + -(-100 * k8 // 9)).tolist()
    # ties: a spike is split by nudging up; one at the top is pushed back under 256
    assert quantile_thresholds(torch.full((1, 50), 50), 8).tolist() == [list(range(51, 59))]
    assert quantile_thresholds(torch.full((1, 50), 255), 8).tolist() == [list(range(248, 256))]
    assert quantile_thresholds(torch.full((1, 50), 0), 8).tolist() == [list(range(1, 9))]
    half = torch.cat([torch.zeros(60), torch.full((40,), 200)]).long().view(1, -1)
    assert quantile_thresholds(half, 4).tolist() == [[1, 2, 3, 201]]  # 60 % at 0: 1, 1, 1, 201
    assert quantile_thresholds(torch.arange(256).view(1, -1), 255).tolist() == [list(range(1, 256))]


def test_quantile_encoder_fits_per_channel_and_shared():
    gen = torch.Generator().manual_seed(0)
    images = torch.empty(40, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = torch.randint(0, 256, (40, 8, 8), generator=gen)
    images[:, 1] = torch.randint(0, 64, (40, 8, 8), generator=gen)  # dark
    images[:, 2] = torch.randint(192, 256, (40, 8, 8), generator=gen)  # bright
    data = tensors(images)
    enc = QuantileThermometer(RGB, levels=8)
    assert enc.needs_fit and enc.thresholds.shape == (3, 8)
    assert torch.equal(enc.thresholds_codes()[0], torch.tensor(uniform_thresholds(8)))  # pre-fit
    enc.fit(data)
    t = enc.thresholds_codes()
    for c in range(3):
        assert torch.equal(t[c], quantile_thresholds(images[:, c].reshape(1, -1), 8)[0])
        assert (t[c].diff() > 0).all()
        # equalised: each of the 9 levels holds about 1/9 of the pixels
        levels = (images[:, c].reshape(-1, 1).long() >= t[c]).sum(1)
        share = torch.bincount(levels, minlength=9) / levels.numel()
        assert (share - 1 / 9).abs().max() < 0.04
    assert t[1, -1] < 64 and t[2, 0] >= 192
    shared = QuantileThermometer(RGB, levels=8, per_channel=False)
    shared.fit(data)
    assert shared.thresholds.shape == (1, 8)
    assert torch.equal(shared.thresholds[0], quantile_thresholds(
        images.transpose(0, 1).reshape(1, -1), 8)[0])  # fmt: skip
    with pytest.raises(BinsenseError, match="3-channel"):
        enc.fit(tensors(images[:, :1]))


def test_quantile_fit_subsamples_whole_images_deterministically(monkeypatch):
    images = torch.arange(10).view(10, 1, 1, 1).expand(10, 1, 2, 2).to(torch.uint8).contiguous()
    monkeypatch.setattr(thermo, "MAX_FIT_VALUES", 20)  # 5 images of 4 pixels
    codes = thermo.fit_codes(tensors(images), per_channel=True)
    assert codes.shape == (1, 20) and codes[0, ::4].tolist() == [0, 2, 4, 6, 8]
    monkeypatch.setattr(thermo, "MAX_FIT_VALUES", 2)  # one image, pixels strided
    assert thermo.fit_codes(tensors(images), per_channel=True).tolist() == [[0, 0]]


# ------------------------------------------------------------------ GLT


def test_glt_starts_as_the_uniform_thermometer_and_fits_quantiles():
    glt = LearnedThermometer(RGB, levels=8)
    assert not glt.needs_fit and glt.out_channels == 24
    assert torch.equal(glt.frozen_thresholds(), torch.tensor([uniform_thresholds(8)] * 3))
    x = signal(ALL_CODES, 3)
    uniform = UniformThermometer(RGB)(x)
    assert torch.equal(glt.train()(x), uniform) and torch.equal(glt.eval()(x), uniform)
    images = torch.randint(0, 120, (20, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    data = tensors(images.to(torch.uint8))
    q_glt = LearnedThermometer(RGB, levels=8, init="quantile", per_channel=False)
    assert q_glt.needs_fit and q_glt.frozen_thresholds().shape == (1, 8)
    q_glt.fit(data)
    q = QuantileThermometer(RGB, levels=8, per_channel=False)
    q.fit(data)
    assert torch.equal(q_glt.frozen_thresholds(), q.thresholds)
    assert torch.equal(q_glt.train()(x), q(x))
    glt.fit(data)  # uniform init: fit changes nothing
    assert torch.equal(glt.frozen_thresholds()[0], torch.tensor(uniform_thresholds(8)))


def test_glt_surrogate_gradient_is_the_logistic_slope():
    glt = LearnedThermometer(GRAY, levels=1, temperature=4.0, code_scale=16.0)
    glt.set_thresholds(torch.tensor([[100]]))  # t = 99.5
    codes = torch.tensor([90.0, 99.0, 100.0, 130.0])
    out = glt.train()(signal(codes))
    assert out[:, 0, 0, 0].tolist() == [-1, -1, 1, 1]
    out.sum().backward()
    u = (codes - 99.5) / 4.0
    slope = -(2 / 4.0) * torch.sigmoid(u) * (1 - torch.sigmoid(u))
    assert torch.allclose(glt.t0.grad, slope.sum().view(1, 1) * 16.0)
    assert glt.delta.grad.shape == (1, 0)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 50.0), ("adam", 1.0)])
def test_glt_thresholds_stay_monotone_and_get_gradients_under_a_large_lr(optimizer, lr):
    torch.manual_seed(0)
    glt = LearnedThermometer(RGB, levels=8).train()
    head = torch.nn.Conv2d(24, 2, 1)
    params = [*glt.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr)
    x, y = torch.rand(16, 3, 6, 6), torch.randint(0, 2, (16, 6, 6))
    before = glt.continuous_thresholds().detach().clone()
    codes = signal(ALL_CODES, 3)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(glt(x)), y).backward()
        assert glt.t0.grad.abs().sum() > 0 and glt.delta.grad.abs().sum() > 0
        assert torch.isfinite(glt.t0.grad).all() and torch.isfinite(glt.delta.grad).all()
        opt.step()
        t = glt.continuous_thresholds()
        # monotone (a softplus step can round to 0 in float32 next to a large t: >= 0)
        assert (t.diff(dim=1) >= 0).all(), t
        f = glt.frozen_thresholds()
        assert (f.diff(dim=1) >= 0).all() and f.min() >= 0 and f.max() <= 256
        # so the planes stay a thermometer code: the set planes are a prefix
        p = glt(codes).view(256, 3, 8)
        assert (p.diff(dim=2) <= 0).all()
    assert not torch.allclose(glt.continuous_thresholds(), before)
    shared = LearnedThermometer(RGB, levels=4, per_channel=False).train()
    shared(x).sum().backward()
    assert shared.t0.grad.shape == (1, 1) and shared.delta.grad.shape == (1, 3)


def _assert_exact_integer_compares(glt: LearnedThermometer) -> None:
    frozen = glt.frozen_thresholds()
    assert frozen.dtype == torch.long and frozen.shape == (3, 8)
    assert torch.equal(glt.thresholds_codes(), frozen)
    manual = (ALL_CODES.view(256, 1, 1) >= frozen.view(1, 3, 8)).float() * 2 - 1
    x = signal(ALL_CODES, 3)
    assert torch.equal(glt.eval()(x)[:, :, 0, 0], manual.reshape(256, 24))
    assert torch.equal(glt.train()(x)[:, :, 0, 0], manual.reshape(256, 24))
    assert torch.equal(glt.code_table(), manual.permute(1, 0, 2) > 0)


def test_frozen_glt_is_exact_integer_compares_on_every_code():
    torch.manual_seed(1)
    glt = LearnedThermometer(RGB, levels=8)
    with torch.no_grad():  # thresholds anywhere, off the code grid
        glt.t0.copy_(torch.tensor([[0.3], [2.0625], [5.7]]))
        glt.delta.copy_(torch.randn(3, 7))
    _assert_exact_integer_compares(glt)
    # on an integer code and a hair either side of it
    with torch.no_grad():
        glt.set_thresholds(torch.tensor([[10, 20, 30, 40, 50, 60, 70, 80]] * 3))  # u - 0.5
        glt.t0.add_(torch.tensor([[0.5], [0.5 - 1e-4], [0.5 + 1e-4]]) / glt.code_scale)
    assert glt.frozen_thresholds()[:, 0].tolist() == [10, 10, 11]
    _assert_exact_integer_compares(glt)
    # past the ends: clamped to 0 (always +1) and 256 (always -1), still exact
    with torch.no_grad():
        glt.t0.fill_(-5.0)
        glt.delta.fill_(3.0)
    frozen = glt.frozen_thresholds()
    assert frozen[0, 0] == 0 and frozen[0, -1] == 256
    _assert_exact_integer_compares(glt)


def test_glt_state_round_trips_through_a_state_dict():
    a = LearnedThermometer(RGB, levels=4)
    with torch.no_grad():
        a.delta.add_(0.3)
    b = LearnedThermometer(RGB, levels=4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.frozen_thresholds(), b.frozen_thresholds())
    assert set(a.state_dict()) == {"t0", "delta"}


# ------------------------------------------------------------------ models, figure, trainer


@pytest.mark.parametrize(
    "spec, per_channel",
    [("nbc", 8), ("uniform", 8), ("quantile", 8), ("glt", 8),
     ({"name": "uniform", "levels": 16}, 16), ({"name": "glt", "levels": 32}, 32)],
)  # fmt: skip
def test_fully_binary_model_with_each_encoder(spec, per_channel):
    torch.manual_seed(0)
    model = build_model("vgg_small", dataset_info("cifar10"), width=0.125, encoder=spec)
    assert isinstance(model.encoder, PlaneEncoder) and model.encoder.binary
    first = model.blocks[0].conv
    assert isinstance(first, BinaryConv2d) and first.in_channels == 3 * per_channel
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_all_encoders_are_registered():
    assert {"float", "nbc", "uniform", "quantile", "glt"} <= set(ENCODERS.names())
    options = ENCODERS.options("glt")
    options.pop("info")
    assert options == {
        "levels": 8, "per_channel": True, "init": "uniform", "temperature": 4.0,
        "code_scale": 16.0,
    }  # fmt: skip


def test_tone_curve_figure_is_a_png(tmp_path):
    glt = LearnedThermometer(RGB, levels=8)
    with torch.no_grad():
        glt.delta.add_(torch.linspace(-1, 1, 7))
    encs = {"glt": glt, "uniform": UniformThermometer(RGB), "quantile": QuantileThermometer(RGB)}
    path = plot_tone_curves(encs, tmp_path / "fig" / "tone.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))
    with pytest.raises(BinsenseError, match="only binary plane encoders"):
        plot_tone_curves({"float": build_encoder("float", RGB)}, tmp_path / "x.png")


def test_training_fits_the_quantile_encoder(tiny_data):
    cfg = TrainConfig(
        dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=32, seed=0,
        model_options={"width": 0.25, "encoder": "quantile"},
    )  # fmt: skip
    result = train(cfg, progress=False)
    enc = result.model.encoder
    assert isinstance(enc, QuantileThermometer) and isinstance(result.model.blocks[0].conv,
                                                               BinaryConv2d)  # fmt: skip
    train_set = load_dataset(tiny_data, "train")
    expected = quantile_thresholds(thermo.fit_codes(train_set, True), 8)
    assert torch.equal(enc.thresholds.cpu(), expected)
    assert not torch.equal(expected[0], torch.tensor(uniform_thresholds(8)))


def test_cli_tone_curves_of_a_trained_glt(tiny_data, tmp_path, capsys):
    from binsense.cli import main
    from binsense.train import TrainConfig, train

    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25, "encoder": "glt"})  # fmt: skip
    train(config, tmp_path / "run", progress=False, log=lambda s: None)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    out = tmp_path / "tone.png"
    assert main(["tone-curves", ckpt, "--uniform", "8", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "glt-8" in text and "uniform-8" in text
    float_run = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                            model_options={"width": 0.25})  # fmt: skip
    train(float_run, tmp_path / "float", progress=False, log=lambda s: None)
    for argv in (
        ["tone-curves", str(tmp_path / "float" / "checkpoint.pt"), "-o", str(out)],
        ["tone-curves", ckpt, "-o", str(tmp_path)],
        ["tone-curves", ckpt, "--uniform", "0", "-o", str(out)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
