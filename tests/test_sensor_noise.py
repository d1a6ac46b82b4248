"""Sensor fixed-pattern noise: pattern structure, statistics, seeding, ADC, augmentation."""

import pytest
import torch

from binsense.errors import BinsenseError, UnknownNameError
from binsense.evaluate.conditions import make_condition
from binsense.evaluate.noise_conditions import SensorNoiseCondition
from binsense.noise import NoiseAugment, SensorNoise, fpn_components, noise_type_names

FLAT = torch.full((1, 3, 32, 48), 0.5)  # flat field, non-square to catch H/W mix-ups


def analog(type_, level, **kw):
    """Noise without clip and ADC, to look at the raw pattern."""
    return SensorNoise(type_, level, clip=False, adc_bits=None, **kw)


def test_registry_has_six_types_and_unknown_names_suggest():
    assert noise_type_names() == [
        "column_gain", "column_offset", "pixel_gain", "pixel_offset", "row_gain", "row_offset",
    ]  # fmt: skip
    with pytest.raises(UnknownNameError, match="column_offset"):
        SensorNoise("colum_offset", 0.05)
    with pytest.raises(BinsenseError):
        SensorNoise("pixel_gain", -0.1)
    with pytest.raises(BinsenseError, match="twice"):
        SensorNoise.combined([("row_gain", 0.01), ("row_gain", 0.02)])


@pytest.mark.parametrize("kind", ["offset", "gain"])
def test_column_and_row_patterns_are_constant_along_their_axis(kind):
    col = analog(f"column_{kind}", 0.05).apply(FLAT, seed=1)[0, 0]
    assert torch.equal(col, col[:1].expand_as(col))  # each column constant down it
    assert col[0].unique().numel() == 48  # ... and columns differ
    row = analog(f"row_{kind}", 0.05).apply(FLAT, seed=1)[0, 0]
    assert torch.equal(row, row[:, :1].expand_as(row))
    assert row[:, 0].unique().numel() == 32
    pix = analog(f"pixel_{kind}", 0.05).apply(FLAT, seed=1)[0, 0]
    assert pix.unique().numel() == 32 * 48


def test_shared_vs_per_channel_patterns():
    shared = analog("pixel_offset", 0.05).apply(FLAT, seed=2)[0]
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[0], shared[2])
    per = analog("pixel_offset", 0.05, per_channel=True).apply(FLAT, seed=2)[0]
    assert not torch.equal(per[0], per[1])
    assert torch.equal(per[0], shared[0])  # channel 0 is the shared draw


@pytest.mark.parametrize("type_", ["pixel_offset", "pixel_gain"])
def test_measured_spread_of_the_map_equals_level(type_):
    gain, offset = SensorNoise(type_, 0.05, per_channel=True).pattern(7, (3, 128, 128))
    fpn = offset if type_.endswith("offset") else gain - 1
    assert abs(fpn.std().item() - 0.05) < 0.05 * 0.02  # 49k samples: ~0.3 % std error
    assert abs(fpn.mean().item()) < 0.001
    other = gain - 1 if type_.endswith("offset") else offset
    assert torch.all(other == 0)


def test_seed_is_a_sensor_and_level_only_scales_it():
    noise = SensorNoise("column_offset", 0.05)
    g1, o1 = noise.pattern(3, (3, 16, 16))
    g2, o2 = noise.pattern(3, (3, 16, 16))
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    assert not torch.equal(o1, noise.pattern(4, (3, 16, 16))[1])
    torch.testing.assert_close(
        SensorNoise("column_offset", 0.10).pattern(3, (3, 16, 16))[1], 2 * o1
    )
    # a component's map does not depend on the other components present
    both = SensorNoise.combined({"column_offset": 0.05, "pixel_offset": 0.02})
    pix = SensorNoise("pixel_offset", 0.02).pattern(3, (3, 16, 16))[1]
    torch.testing.assert_close(both.pattern(3, (3, 16, 16))[1], o1 + pix)
    # ... and the types of one sensor are independent draws
    gain, offset = SensorNoise.combined({"column_offset": 0.05, "column_gain": 0.05}).pattern(
        3, (3, 16, 16)
    )
    assert not torch.allclose(gain - 1, offset)


def test_gain_is_multiplicative_and_offset_additive():
    black = torch.zeros(2, 3, 16, 16)
    assert torch.equal(SensorNoise("pixel_gain", 0.2).apply(black, seed=0), black)
    assert torch.equal(SensorNoise("column_gain", 0.2).apply(black, seed=0), black)
    noise = analog("pixel_gain", 0.05)
    gain, _ = noise.pattern(0, FLAT.shape)
    torch.testing.assert_close(noise.apply(FLAT, 0), FLAT * gain)
    x = torch.rand(2, 3, 32, 48)
    offset = analog("row_offset", 0.05).pattern(0, x.shape)[1]
    torch.testing.assert_close(analog("row_offset", 0.05).apply(x, 0), x + offset)


def test_clip_and_adc_give_8_bit_grid():
    x = torch.rand(4, 3, 16, 16)
    y = SensorNoise("pixel_offset", 0.3).apply(x, seed=0)
    assert y.min() >= 0 and y.max() <= 1
    assert (y == 0).any() and (y == 1).any()  # 30 % noise clips
    codes = y * 255
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    raw = analog("pixel_offset", 0.3).apply(x, seed=0)
    assert raw.min() < 0 and raw.max() > 1
    assert torch.equal(
        SensorNoise("pixel_offset", 0.3).apply(x, 0), torch.round(raw.clamp(0, 1) * 255) / 255
    )
    four = SensorNoise("pixel_offset", 0.0, adc_bits=4).apply(x, 0)
    assert four.unique().numel() <= 16


def test_clipping_near_black_and_white_shrinks_the_spread_and_shifts_the_mean():
    # documented in binsense.noise.sensor: a 30 % offset at s = 0 has, after clip to
    # [0, 1], mean sigma/sqrt(2 pi) = 0.1196 and std sigma sqrt(1/2 - 1/(2 pi)) = 0.1749
    noise = SensorNoise("pixel_offset", 0.3)  # clip + 8-bit ADC, the defaults
    black = noise.apply(torch.zeros(1, 256, 256), seed=0)
    white = noise.apply(torch.ones(1, 256, 256), seed=0)
    assert black.mean().item() == pytest.approx(0.1196, abs=0.004)  # not 0
    assert black.std().item() == pytest.approx(0.1749, abs=0.004)  # not 0.3
    assert white.mean().item() - 1 == pytest.approx(-0.1196, abs=0.004)
    assert white.std().item() == pytest.approx(0.1749, abs=0.004)


def test_emva_decomposition_recovers_injected_components():
    noise = SensorNoise.combined(
        [("column_offset", 0.03), ("row_offset", 0.02), ("pixel_offset", 0.01)]
    )
    frame = noise.apply(torch.full((1, 1, 256, 256), 0.5), seed=11)[0, 0]
    parts = fpn_components(frame)
    for name, sigma in (("column", 0.03), ("row", 0.02), ("pixel", 0.01)):
        assert abs(parts[name] - sigma) < 0.15 * sigma, (name, parts[name])
    assert abs(parts["mean"] - 0.5) < 0.01
    # a single component is recovered alone, the others read ~0
    col_only = fpn_components(
        analog("column_offset", 0.03).apply(torch.full((1, 1, 256, 256), 0.5), 1)[0, 0]
    )
    assert abs(col_only["column"] - 0.03) < 0.15 * 0.03
    assert col_only["row"] < 1e-6 and col_only["pixel"] < 1e-6


def test_apply_instances_is_vectorised_apply():
    noise = SensorNoise.combined({"column_offset": 0.05, "pixel_gain": 0.03})
    x = torch.rand(5, 3, 8, 12)
    ys = noise.apply_instances(x, [0, 4, 9])
    assert ys.shape == (3, 5, 3, 8, 12)
    for i, seed in enumerate([0, 4, 9]):
        assert torch.equal(ys[i], noise.apply(x, seed))


def test_temporal_noise_is_fresh_per_call_and_seedable():
    noise = SensorNoise("column_offset", 0.0, temporal=0.02, adc_bits=None, clip=False)
    a = noise.apply(FLAT, 0, torch.Generator().manual_seed(1))
    b = noise.apply(FLAT, 0, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    c1, c2 = noise.apply(FLAT, 0, gen), noise.apply(FLAT, 0, gen)
    assert torch.equal(a, b) and torch.equal(a, c1) and not torch.equal(c1, c2)
    assert abs((a - FLAT).std().item() - 0.02) < 0.002


def test_noise_augment_per_sample_is_reproducible_from_seed_and_state():
    mix = [("column_offset", (0.05, 0.10), 2.0), ("pixel_gain", 0.05, 1.0)]
    x = torch.rand(8, 3, 16, 16)
    aug = NoiseAugment(mix, per="sample", seed=5)
    first, state, second = aug(x), aug.state_dict(), aug(x)
    assert not torch.equal(first, second)  # a fresh draw each call
    again = NoiseAugment(mix, per="sample", seed=5)
    assert torch.equal(again(x), first)
    resumed = NoiseAugment(mix, per="sample", seed=5)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(x), second)
    assert not torch.equal(NoiseAugment(mix, per="sample", seed=6)(x), first)
    with pytest.raises(BinsenseError, match="seed"):
        NoiseAugment(mix, seed=6).load_state_dict(state)


def test_noise_augment_per_sample_vs_per_batch():
    flat = torch.full((16, 1, 8, 32), 0.5)
    mix = [("column_offset", 0.05, 1.0)]
    per_batch = NoiseAugment(mix, per="batch", seed=0, adc_bits=None)(flat) - flat
    assert torch.equal(per_batch, per_batch[:1].expand_as(per_batch))  # one sensor
    per_sample = NoiseAugment(mix, per="sample", seed=0, adc_bits=None)(flat) - flat
    assert per_sample[:, 0, 0].unique(dim=0).shape[0] == 16  # sixteen sensors
    assert torch.equal(per_sample, per_sample[:, :, :1].expand_as(per_sample))  # all column FPN
    assert abs(per_sample[:, 0, 0].std().item() - 0.05) < 0.01


def test_noise_augment_p_clean_and_level_range():
    x = torch.randint(0, 256, (400, 1, 4, 16)).float() / 255  # 8-bit data: the ADC is exact
    y = NoiseAugment([("column_offset", (0.02, 0.04), 1.0)], per="sample", p_clean=0.5)(x)
    clean = (y == x).flatten(1).all(1)
    assert 0.4 < clean.float().mean().item() < 0.6
    assert torch.equal(NoiseAugment([("pixel_offset", 0.1, 1.0)], p_clean=1.0)(x), x)
    with pytest.raises(BinsenseError, match="lo <= hi"):
        NoiseAugment([("column_offset", (0.1, 0.05), 1.0)])
    with pytest.raises(BinsenseError, match="'sample'"):
        NoiseAugment([("column_offset", 0.1, 1.0)], per="samples")


def test_sensor_noise_condition_uses_instance_per_draw():
    cond = make_condition("sensor_noise", type="column_offset", level=0.05, draws=3)
    assert isinstance(cond, SensorNoiseCondition) and cond.draw_count() == 3
    x = torch.rand(2, 3, 8, 8)
    model = torch.nn.Identity()
    with cond.applied(model, 2) as transform:
        y = transform(x)
    assert torch.equal(y, SensorNoise("column_offset", 0.05).apply(x, seed=2))
    with cond.applied(torch.nn.Linear(1, 1), 2) as transform:
        assert torch.equal(transform(x), y)  # same sensor for every model
    with pytest.raises(UnknownNameError, match="row_gain"):
        make_condition("sensor_noise", type="row_gian", level=0.05)
