"""Block pruning: units, scores, masks, schedules, exact removal, pruned checkpoints."""

import dataclasses

import pytest
import torch
from torch import nn

from binsense.compress.prune import (
    PruningSchedule,
    apply_masks,
    build_pruned,
    channel_scores,
    find_sites,
    masks_from_state,
    masks_of,
    masks_to_state,
    prune,
    pruned_fraction,
    remove_pruned,
    select_masks,
)
from binsense.data import dataset_info
from binsense.errors import BinsenseError
from binsense.io import atomic_torch_save, safe_torch_load
from binsense.layers import blocks_of, is_binary_layer
from binsense.models import build_model, count_parameters

CIFAR = dataset_info("cifar10")


def at(side: int):
    return dataclasses.replace(CIFAR, image_size=(side, side))


def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Trained-looking batch norms: varied statistics, gamma and beta (so signs vary and
    scores differ)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 3)
            m.running_var.copy_(torch.rand(n, generator=g) * 20 + 1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def binary_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if is_binary_layer(m))


def compact(side: int = 32, **options) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(build_model("compact_bnn", at(side), width=0.5, **options)).eval()


def test_units_are_balanced_over_both_convs_groups():
    model = compact()
    sites = find_sites(model, block_size=16)
    site = sites["blocks.3"]  # 4-group conv -> shuffle -> 4-group conv: 16 cells
    assert site.prunable and len(site.units) == 2
    c = site.channels
    for unit in site.units:
        assert unit.numel() == 16
        own = unit // (c // 4)
        reader = site.perm[unit] // (c // 4)
        assert torch.bincount(own * 4 + reader, minlength=16).tolist() == [1] * 16
    stem = sites["blocks.0"]  # dense stem -> 4-group conv: 8 channels per next group
    assert all(torch.bincount(stem.perm[u] // 8, minlength=4).tolist() == [4] * 4
               for u in stem.units)  # fmt: skip
    assert not find_sites(model, block_size=32)["blocks.1"].prunable  # 32 channels: 1 unit
    with pytest.raises(BinsenseError, match="multiple of 8"):
        find_sites(model, block_size=12)


@pytest.mark.parametrize(
    "side, options",
    [(32, {}), (64, {"shuffle": False, "downsample": "stride", "design": "2x2"})],
)
def test_removed_model_is_smaller_and_equals_the_masked_model(side, options):
    model = compact(side, **options)
    masks = prune(model, 0.5, block_size=16)
    assert all(pruned_fraction(model, 16)[n] == 0.5 for n in masks)
    x = torch.rand(3, 3, side, side)
    with torch.no_grad():
        masked = model(x)
        small = remove_pruned(model).eval()
        assert torch.equal(small(x), masked)  # bit for bit, before any fine-tuning
    assert count_parameters(small) < 0.5 * count_parameters(model)
    assert binary_weights(small) < 0.5 * binary_weights(model)
    convs = [b.conv for b in blocks_of(small) if isinstance(b.conv, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64, 10]
    assert all(c.groups == 4 for c in convs[1:-1])
    assert not masks_of(small) and masks_of(model)  # the copy carries no masks


def test_masked_channels_output_zero_and_get_no_gradient():
    model = compact().train()
    masks = prune(model, 0.5, block_size=16)
    block = dict(model.named_modules())["blocks.5"]
    out = []
    block.register_forward_hook(lambda m, i, o: out.append(o))
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    gone = ~masks["blocks.5"]
    assert (out[0][:, gone] == 0).all() and (out[0][:, ~gone].abs() == 1).all()
    assert (block.conv.weight.grad[gone] == 0).all()
    assert not any("prune_mask" in k for k in model.state_dict())


def test_float_head_and_plain_vgg_removal():
    model = compact(head="float")
    prune(model, 0.5, block_size=16)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # a float layer sums fewer terms: equal up to rounding
        torch.testing.assert_close(remove_pruned(model).eval()(x), model(x), rtol=0, atol=1e-5)
    torch.manual_seed(0)
    vgg = randomize_norms(build_model("vgg_small", CIFAR, width=0.25, groups=2)).eval()
    prune(vgg, 0.5, block_size=16)  # through the flatten into the FC layers
    with torch.no_grad():
        small = remove_pruned(vgg).eval()
        assert torch.equal(small(x), vgg(x))
    assert count_parameters(small) < 0.3 * count_parameters(vgg)


def test_scores_rank_constant_channels_and_small_weights_first():
    model = compact()
    block = dict(model.named_modules())["blocks.9"]
    units = find_sites(model, 16)["blocks.9"].units  # 8 units of 16 channels
    with torch.no_grad():
        block.norm.bias.zero_()
        block.norm.bias[units[5]] = 10.0  # |beta| >> |gamma|: sign(BN) is almost constant
    s = channel_scores(block, "bn")
    assert s[units[5]].max() < 1e-6 and s[units[4]].min() > 0
    masks = select_masks(model, 1 / 8, block_size=16, sites=["blocks.9"])
    assert torch.nonzero(~masks["blocks.9"]).flatten().tolist() == units[5].tolist()
    with torch.no_grad():
        block.conv.weight[units[3]] *= 0.01
    masks = select_masks(model, 1 / 8, block_size=16, score="weight", sites=["blocks.9"])
    assert torch.nonzero(~masks["blocks.9"]).flatten().tolist() == units[3].tolist()
    affine = build_model("compact_bnn", CIFAR, width=0.5, norm="channel_affine")
    with pytest.raises(BinsenseError, match="score = 'weight'"):
        prune(affine, 0.5, block_size=16)
    frozen = build_model("compact_bnn", CIFAR, width=0.5, bn_affine=False)
    with pytest.raises(BinsenseError, match="without affine"):
        prune(frozen, 0.5, block_size=16)
    prune(affine, 0.5, block_size=16, score="weight")
    assert masks_of(affine)


def test_design_3d_and_residual_models_are_refused_clearly():
    model = compact(design="2x2x4_shift")
    sites = find_sites(model, block_size=16)
    assert "4 slices" in sites["blocks.3"].reason and not sites["blocks.3"].prunable
    with pytest.raises(BinsenseError, match="cannot be pruned: its DeSign kernel"):
        prune(model, 0.5, block_size=16, sites=["blocks.3"])
    bad = torch.ones(32, dtype=torch.bool)
    bad[[0, 8, 16, 24]] = False  # balanced over the groups, but moves DeSign slices
    with pytest.raises(BinsenseError, match="slice"):
        remove_pruned(model, {"blocks.3": bad})
    prune(model, 0.5, block_size=16)  # the prunable blocks (stem, last block) still go
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(remove_pruned(model).eval()(x), model(x))
    resnet = build_model("resnet18_bnn", CIFAR, width=0.25)
    with pytest.raises(BinsenseError, match="ResidualUnit"):
        prune(resnet, 0.5)


def test_unbalanced_masks_and_bad_settings_are_errors():
    model = compact()
    uneven = torch.ones(32, dtype=torch.bool)
    uneven[:8] = False  # one whole group of a 4-group conv
    with pytest.raises(BinsenseError, match="same count in every group"):
        remove_pruned(model, {"blocks.3": uneven})
    with pytest.raises(BinsenseError, match=r"\[0, 1\)"):
        prune(model, 1.0)
    with pytest.raises(BinsenseError, match="initial <= target"):
        PruningSchedule(0.5, initial=0.7)
    with pytest.raises(BinsenseError, match="no block 'blocks.99'"):
        remove_pruned(model, {"blocks.99": uneven})


def test_gradual_schedule_follows_the_cubic_ramp_and_reaches_its_target():
    schedule = PruningSchedule(0.75, begin_step=2, end_step=8, every=2, block_size=16)
    assert schedule.sparsity_at(1) == 0 and schedule.sparsity_at(8) == 0.75
    assert schedule.sparsity_at(5) == pytest.approx(0.75 * (1 - 0.5**3))
    torch.manual_seed(0)
    model = randomize_norms(build_model("compact_bnn", at(8), width=0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    history = []
    for step in range(1, 11):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule(model, step)
        history.append(masks_of(model))
    final = pruned_fraction(model, 16)
    units = {n: len(s.units) for n, s in find_sites(model, 16).items() if s.prunable}
    assert final == {n: min(k - 1, int(0.75 * k + 0.5)) / k for n, k in units.items()}
    for before, after in zip(history, history[1:], strict=False):  # masks only grow
        for n in before:
            assert not (after[n] & ~before[n]).any()
    # resume: masks travel as plain lists and re-attach
    state = masks_to_state(masks_of(model))
    fresh = build_model("compact_bnn", at(8), width=0.5)
    apply_masks(fresh, masks_from_state(state))
    assert all(torch.equal(masks_of(fresh)[n], m) for n, m in masks_of(model).items())


def test_one_shot_schedule_prunes_at_once_and_holds():
    model = compact()
    schedule = PruningSchedule(0.5, begin_step=3, end_step=3, block_size=16)
    schedule(model, 2)
    assert not masks_of(model)
    schedule(model, 3)
    first = masks_of(model)
    assert all(v == 0.5 for v in pruned_fraction(model, 16).values())
    schedule(model, 50)
    assert all(torch.equal(first[n], m) for n, m in masks_of(model).items())


def test_pruned_checkpoint_reloads_at_the_new_shape(tmp_path):
    model = compact()
    prune(model, 0.5, block_size=16)
    small = remove_pruned(model).eval()
    path = atomic_torch_save(
        tmp_path / "checkpoint.pt",
        {"model": small.state_dict(), "prune_plan": small.prune_plan},
    )
    ckpt = safe_torch_load(path)  # weights_only: the plan is plain lists of ints
    options = {"width": 0.5}
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_model("compact_bnn", CIFAR, **options).load_state_dict(ckpt["model"])
    rebuilt = build_pruned("compact_bnn", CIFAR, options, ckpt["prune_plan"])
    rebuilt.load_state_dict(ckpt["model"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), small(x))
    # pruning the pruned model again composes the plans (channels of the original)
    prune(small, 0.5, block_size=16, sites=["blocks.9"])
    smaller = remove_pruned(small).eval()
    plan = smaller.prune_plan
    assert len(plan["blocks.9"]) == 32 and set(plan["blocks.9"]) < set(small.prune_plan["blocks.9"])
    again = build_pruned("compact_bnn", CIFAR, options, plan)
    again.load_state_dict(smaller.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), smaller(x))
