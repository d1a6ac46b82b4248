"""The architecture's seams: the registry helper, model recipes and their components, the
encoder slot, the trainer's hooks and provenance, the folding rules of ``deploy/``, old
checkpoints, and study validation by value at load time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from binsense.data import dataset_info, resolve_dataset_name
from binsense.deploy import fold_pair, threshold_sign
from binsense.encoders import ENCODERS, FloatEncoder, InputEncoder
from binsense.errors import BinsenseError, UnknownNameError
from binsense.layers import BinaryBlock, ChannelAffine, DeSign, blocks_of, is_binary_layer
from binsense.models import RecipeModel, build_model, model_names
from binsense.quant import SteSign, get_quantizer
from binsense.registry import Registry
from binsense.study import load_study
from binsense.study.schema import StudyFileError
from binsense.train import TrainConfig, load_model, train
from binsense.train.trainer import Hooks, latent_clipping

# ---------------------------------------------------------------- registry


def test_registry_one_wording_everywhere():
    reg: Registry[int] = Registry("widget", also_valid=("custom:PATH",))
    reg.add("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("alpah")
    assert str(err.value) == (
        "unknown widget 'alpah' — did you mean 'alpha'? (valid: alpha, custom:PATH)."
    )
    lookups = [
        lambda: build_model("vgg_smal", dataset_info("cifar10")),
        lambda: get_quantizer("ste_sgn"),
        lambda: dataset_info("cifar1O"),
        lambda: ENCODERS.get("flaot"),
        lambda: DeSign("2x3"),
    ]
    for lookup in lookups:
        with pytest.raises(UnknownNameError, match=r"^unknown .+ — did you mean '.+'\? \(valid: "):
            lookup()


def test_data_set_spellings_resolve_through_the_registry():
    assert resolve_dataset_name("CIFAR-10") == "cifar10"
    assert resolve_dataset_name("FashionMNIST") == "fashion_mnist"
    assert resolve_dataset_name("imagefolder:/x") == "imagefolder:/x"


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", model_names())
def test_every_model_is_encoder_blocks_head(name):
    info = dataset_info("mnist" if name.startswith("mnist") else "cifar10")
    model = build_model(name, info, width=0.25).eval()
    assert isinstance(model, RecipeModel) and isinstance(model.encoder, InputEncoder)
    x = torch.rand(2, info.in_channels, *info.image_size)
    assert torch.equal(model.forward_head(model.forward_features(x)), model(x))
    # binarisation has one home: block activations; no binary conv binarises its own input
    assert not any(is_binary_layer(m) and m.input_quantizer is not None for m in model.modules())


def test_components_by_name_with_typed_options():
    info = dataset_info("cifar10")
    model = build_model(
        "vgg_small", info, width=0.25, groups=4,
        weight_quantizer={"name": "ste_sign", "clip_value": 1.5},
        activation_quantizer={"name": "swish_sign", "beta": 3.0},
        norm="channel_affine", head="float",
    )  # fmt: skip
    blocks = blocks_of(model)
    convs = [b.conv for b in blocks if isinstance(b.conv, nn.Conv2d)]
    assert convs[0].groups == 1 and all(c.groups == 4 for c in convs[1:])
    assert convs[1].weight_quantizer.clip_value == 1.5
    assert all(b.act.beta == 3.0 for b in blocks)
    assert all(isinstance(b.norm, ChannelAffine) for b in blocks)
    assert isinstance(model.head, nn.Linear) and not is_binary_layer(model.head)
    bad = [
        ({"activation_quantizer": "none"}, "activations are binary"),
        ({"width": float("nan")}, "finite"),
        ({"width": 0}, "greater than 0"),
        ({"width": "wide"}, "'width'"),
        ({"groups": 3}, "groups=3 must divide"),
        ({"design": "2x3"}, "unknown DeSign kernel '2x3'"),
        ({"norm": "layer_norm"}, "unknown norm 'layer_norm'"),
        ({"weight_quantizer": {"name": "ste_sign", "clip": 1}}, "has no option 'clip'"),
        ({"activation_quantizer": {"name": "swish_sign", "beta": "5"}}, "beta"),
        ({"head": "ternary"}, "'head'"),
        ({"batch_norm": False}, "now norm = "),
        ({"encoder": {"name": "float", "info": None}}, "set by binsense"),
    ]
    for options, message in bad:
        with pytest.raises(BinsenseError, match=message):
            build_model("vgg_small", info, **{"width": 0.25, **options})


def test_float_encoder_is_the_default_slot():
    info = dataset_info("cifar10")
    enc = ENCODERS.build("float", info=info)
    assert isinstance(enc, FloatEncoder) and enc.out_channels == 3 and not enc.binary
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    assert torch.equal(enc(x), (x - mean) / std)
    custom = build_model(
        "mnist_bnn", dataset_info("mnist"), encoder={"name": "float", "mean": [0.5], "std": [0.25]}
    )
    assert torch.equal(custom.encoder(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))


# ---------------------------------------------------------------- deploy: folding rules


def _integer_inputs(c: int) -> torch.Tensor:
    return torch.randint(-40, 41, (64, c, 4, 4), generator=torch.Generator().manual_seed(0)).float()


@pytest.mark.parametrize("norm_kind", ["batch_norm", "channel_affine", "none"])
def test_fold_pair_equals_the_block_on_integer_inputs(norm_kind):
    c = 8
    g = torch.Generator().manual_seed(3)
    if norm_kind == "batch_norm":
        norm = nn.BatchNorm2d(c)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(c, generator=g))
            norm.weight[0] = 0.0  # constant channel
            norm.bias.copy_(torch.randn(c, generator=g))
            norm.running_mean.copy_(torch.randn(c, generator=g) * 5)
            norm.running_var.copy_(torch.rand(c, generator=g) * 30 + 1)
    elif norm_kind == "channel_affine":
        norm = ChannelAffine(c)
        with torch.no_grad():
            norm.scale.copy_(torch.randn(c, generator=g))  # negative scales too
            norm.scale[1] = 0.0
            norm.shift.copy_(torch.randn(c, generator=g) * 3)
    else:
        norm = nn.Identity()
    block = BinaryBlock(nn.Identity(), norm, SteSign()).eval()
    x = _integer_inputs(c)
    folded = fold_pair(block.norm, block.act, integer_input=True, channels=c)
    assert torch.equal(folded.tau, torch.round(folded.tau)) or torch.isinf(folded.tau).any()
    assert torch.equal(folded.apply(x), block(x))
    assert torch.equal(threshold_sign(x, folded.tau, folded.flip), block(x))


def test_fold_pair_design_and_refusals():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-3, 3)
        bn.weight.uniform_(-1, 1)
    block = BinaryBlock(nn.Identity(), bn, DeSign("2x2x4_shift")).eval()
    x = _integer_inputs(4)
    folded = fold_pair(block.norm, block.act, integer_input=True)
    assert folded.per_position and torch.equal(folded.apply(x), block(x))
    with pytest.raises(BinsenseError, match="only shifts"):
        fold_pair(bn, DeSign("2x2", quantizer=None))
    with pytest.raises(BinsenseError, match="no folding rule"):
        fold_pair(bn, nn.ReLU())


def test_quantize_bn_finds_sign_fed_norms_by_the_explicit_pair():
    from binsense.layers import quantize_bn

    model = build_model("resnet18_bnn", dataset_info("cifar10"), width=0.125).eval()
    quantize_bn(model, 4, "threshold")
    units = [m for m in model.modules() if hasattr(m, "block1")]
    # block 1's norm feeds a sign (threshold form: gamma = flip); block 2's feeds the add
    assert all(set(u.block1.norm.weight.abs().tolist()) == {1.0} for u in units)
    assert all(u.block2.norm.running_var.eq(1).all() for u in units)


# ---------------------------------------------------------------- trainer seams


def test_trainer_hooks_and_provenance(tiny_data):
    calls = {"loss": 0, "after": []}

    def loss(logits, targets, inputs):
        calls["loss"] += 1
        assert inputs.shape[0] == targets.shape[0]
        return nn.functional.cross_entropy(logits, targets)

    def after(model, step):
        calls["after"].append(step)

    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    result = train(config, hooks=Hooks(loss=loss, after_step=[latent_clipping, after]))
    assert calls["loss"] == 3 and calls["after"] == [1, 2, 3]
    assert set(result.provenance["data"]) == {"train", "test"}
    assert result.provenance["config_hash"] == config.config_hash()
    for m in result.model.modules():  # latent clipping ran
        if is_binary_layer(m):
            assert m.weight.abs().max() <= 1.0


def test_default_hooks_give_the_same_model_as_explicit_defaults(tiny_data):
    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    a = train(config).model.state_dict()
    b = train(config, hooks=Hooks(after_step=[latent_clipping])).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- old checkpoints


def test_format_1_checkpoint_loads_into_the_recipe_model(tmp_path):
    """A checkpoint of the hand-wired models (keys ``0.mean``, ``1.weight``...; option
    ``batch_norm``) loads, renamed in order, and computes the same function."""
    info = dataset_info("mnist")
    torch.manual_seed(0)
    model = build_model("mnist_bnn", info, width=0.25, norm="channel_affine").eval()
    old_state = {  # the Sequential layout: index.leaf
        f"{i}.{key.rsplit('.', 1)[-1]}": value
        for i, (key, value) in enumerate(model.state_dict().items())
    }
    config = TrainConfig(model="mnist_bnn", dataset="mnist").to_dict()
    config["model_options"] = {"width": 0.25, "batch_norm": False}
    ckpt = {"format": 1, "config": config, "epoch": 1, "metrics": [], "model": old_state}
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, cfg = load_model(tmp_path / "old.pt")
    assert cfg.model_options == {"width": 0.25, "norm": "channel_affine"}
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    ckpt["model"] = {k: v for k, v in list(old_state.items())[:-1]}  # one tensor short
    torch.save(ckpt, tmp_path / "short.pt")
    with pytest.raises(BinsenseError, match="retrain"):
        load_model(tmp_path / "short.pt")


# ---------------------------------------------------------------- study validation


STUDY = """
[train]
dataset = "{dataset}"
model = "mnist_bnn"
epochs = 1
model_options = {options}

[[condition]]
kind = "clean"
"""


def _study(tmp_path: Path, dataset: str = "mnist", options: str = "{ width = 0.25 }") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(dataset=dataset, options=options))
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{ design = "2x3" }', "unknown DeSign kernel '2x3' — did you mean"),
        ('{ width = "wide" }', "option 'width' = 'wide' is invalid"),
        ("{ width = -1.0 }", "greater than 0"),
        ("{ groups = 0 }", "'groups'"),
        ('{ weight_quantizer = { name = "ste_sign", clip = 1 } }', "no option 'clip'"),
        ("{ batch_norm = false }", "now norm = "),
    ],
)
def test_model_options_are_checked_by_value_when_the_study_loads(tmp_path, options, message):
    with pytest.raises(StudyFileError, match=message) as err:
        load_study(_study(tmp_path, options=options))
    assert str(err.value).startswith(f"{tmp_path / 's.toml'}: [train] ")


@pytest.mark.parametrize("spelling", ["cifar-10", "CIFAR10", "FashionMNIST", "fashion-mnist"])
def test_study_accepts_every_data_set_spelling(tmp_path, spelling):
    model = "vgg_small" if "cifar" in spelling.lower() else "mnist_bnn"
    path = _study(tmp_path, dataset=spelling)
    path.write_text(path.read_text().replace('"mnist_bnn"', f'"{model}"'))
    assert load_study(path).trainings[0].config.dataset == spelling


def test_renamed_study_vocabulary_gets_a_pointed_error(tmp_path):
    path = _study(tmp_path)
    path.write_text(path.read_text() + "\n[eval]\nbatch_size = 10\n")
    with pytest.raises(StudyFileError, match=r"\[eval\] table is now \[evaluation\]"):
        load_study(path)
    path = _study(tmp_path)
    path.write_text(path.read_text().replace("[[condition]]", "[[evaluate]]"))
    with pytest.raises(StudyFileError, match=r"now \[\[condition\]\] blocks"):
        load_study(path)
    path = _study(tmp_path)
    text = '\n[[condition]]\nkind = "sensor_noise"\ntype = "pixel_gain"\nlevel = 0.1\n'
    path.write_text(path.read_text() + text + "instances = 3\n")
    with pytest.raises(StudyFileError, match="'instances' is now 'draws'"):
        load_study(path)


def test_a_preset_name_that_would_escape_the_study_folder_is_refused_at_load(tmp_path):
    path = _study(tmp_path)
    path.write_text(path.read_text() + '\n[presets."/../../elsewhere"]\ntrain = { epochs = 1 }\n')
    with pytest.raises(StudyFileError, match="path separator"):
        load_study(path)


def test_the_study_schema_does_not_import_the_comparisons(tmp_path):
    """Loading a study with ``[[report.compare]]`` blocks checks their selectors through
    ``binsense.study.selector``; ``binsense.study.compare`` (statistics, figures) is not
    imported, so schema -> compare -> export -> schema is no circle. A fresh interpreter,
    so that no other test has imported it already."""
    import subprocess
    import sys

    path = _study(tmp_path)
    path.write_text(
        path.read_text().replace("epochs = 1\n", "")
        + "\n[train.grid]\nseed = [0, 1]\n"
        + 'variant = [{ name = "a", epochs = 1 }, { name = "b", epochs = 2 }]\n'
        + '\n[[report.compare]]\na = { variant = "a" }\nb = { variant = "b" }\n'
    )
    script = (
        "import sys\n"
        "from binsense.study.schema import load_study\n"
        "assert len(load_study(sys.argv[1]).report.compare) == 1\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('binsense.study.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "binsense.study.compare" not in loaded
    assert {"binsense.study.schema", "binsense.study.selector"} <= loaded


def test_real_weights_with_binary_activations_for_two_step_training():
    """``weight_quantizer = "none"``: the binary layers use their latent weights as they
    are, the activations stay ±1 (the first step of two-step training); the tensors are
    those of the BNN, so its checkpoint starts the second step."""
    info = dataset_info("cifar10")
    step1 = build_model("cnv", info, width=0.25, head="float", weight_quantizer="none").eval()
    step2 = build_model("cnv", info, width=0.25, head="float").eval()
    binary = [m for m in step1.modules() if is_binary_layer(m)]
    assert binary and all(m.weight_quantizer is None for m in binary)
    assert all(m.weight_quantizer is not None for m in step2.modules() if is_binary_layer(m))
    step2.load_state_dict(step1.state_dict())
    w = binary[0]
    assert torch.equal(w.binary_weight(), w.weight)  # real weights in the forward pass
    x = torch.rand(2, 3, 32, 32)
    assert not torch.equal(step1(x), step2(x))
    features = {}
    step1.blocks[1].act.register_forward_hook(lambda m, i, o: features.setdefault("a", o))
    step1(x)
    assert set(features["a"].unique().tolist()) <= {-1.0, 1.0}  # activations still binary
