"""The fast training step: bf16 autocast, channels-last, compile, and what stays exact."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_train import config, strip_timing

from binsense.data import dataset_info
from binsense.errors import SettingsMismatchError
from binsense.evaluate import evaluate
from binsense.models import build_model
from binsense.train import TrainConfig, accel, load_model, train
from binsense.train.accel import CompiledForward, resolve_precision

FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("vgg_small", "cifar10", {"width": 0.125, "design": "2x2"}),
    ("cnv", "cifar10", {"width": 0.125, "norm": "channel_affine"}),
    ("resnet18_bnn", "cifar10", {"width": 0.125}),
    ("compact_bnn", "cifar10", {"encoder": "glt"}),
    ("compact_bnn", "cifar10", {"encoder": "nbc"}),
    ("resnet20", "cifar10", {"width": 0.5}),
    ("vgg11", "cifar10", {"width": 0.125, "norm": "none"}),
]


@pytest.mark.parametrize("name,dataset,options", FAMILIES, ids=lambda v: str(v))
def test_every_family_trains_a_bf16_channels_last_step(name, dataset, options):
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = build_model(name, info, **options).to(memory_format=torch.channels_last).train()
    x = torch.rand(4, info.in_channels, *info.image_size)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), torch.arange(4) % info.num_classes)
    loss.backward()
    assert logits.shape == (4, info.num_classes)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # latent weights, their gradients and the BN statistics stay fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 for g in grads)
    assert all(b.dtype in (torch.float32, torch.long) for b in model.buffers())


def test_bf16_rounds_a_binary_conv_and_fp32_does_not():
    """The reason recorded numbers are fp32: a ±1 conv of fan-in 2,304 under autocast
    comes back rounded to bf16 (integers are exact only up to 256)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (2, 256, 6, 6), generator=gen).float() * 2 - 1
    w = torch.randint(0, 2, (64, 256, 3, 3), generator=gen).float() * 2 - 1
    x[:, :, :, :3] = 1.0  # correlated inputs: large sums, as real activations give
    w[:32] = 1.0
    exact = F.conv2d(x.double(), w.double())
    fp32 = F.conv2d(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = F.conv2d(x, w)
    assert low.dtype == torch.bfloat16
    assert torch.equal(fp32.double(), exact)  # fp32 holds these sums exactly
    off = (low.double() != exact).float().mean().item()
    assert off > 0.1  # bf16: many sums off (by up to 8 at |sum| > 1024)
    assert (low.double() - exact).abs().max() <= 8


def test_bf16_training_changes_weights_but_recorded_accuracy_is_fp32(tiny_data, tmp_path):
    fp32 = train(config(tiny_data, epochs=1), tmp_path / "fp32", progress=False)
    cfg = config(tiny_data, epochs=1, precision="bf16", channels_last=True)
    bf16 = train(cfg, tmp_path / "bf16", progress=False)
    weights = zip(fp32.model.parameters(), bf16.model.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in weights)  # the step was really bf16
    # the recorded test accuracy is the fp32 evaluation of the saved model
    model, _ = load_model(tmp_path / "bf16" / "checkpoint.pt")
    from binsense.train.trainer import load_data

    _, test_set = load_data(cfg, None)
    from binsense.data import DeviceLoader

    again = evaluate(model, DeviceLoader(test_set, 512, shuffle=False))
    assert again.accuracy == bf16.metrics[-1]["test_acc"]
    assert again.loss == pytest.approx(bf16.metrics[-1]["test_loss"], rel=1e-6)
    environment = json.loads((tmp_path / "bf16" / "config.json").read_text())["environment"]
    assert environment["precision"] == "bf16"


def test_bf16_training_is_deterministic_and_resumes_exactly(tiny_data, tmp_path):
    cfg = config(tiny_data, precision="bf16", channels_last=True)
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", stop_after=1, progress=False)
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert strip_timing(resumed.metrics) == strip_timing(full.metrics)
    pairs = zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_step_fields_are_in_the_run_id_only_when_changed():
    base = TrainConfig()
    assert TrainConfig(precision="fp32", channels_last=False, compile=False).config_hash() == (
        base.config_hash()
    )  # runs from before these fields keep their ids
    changed = [
        TrainConfig(precision="bf16"),
        TrainConfig(precision="auto"),
        TrainConfig(channels_last=True),
        TrainConfig(compile=True),
    ]
    hashes = {c.config_hash() for c in changed}
    assert base.config_hash() not in hashes and len(hashes) == 4
    assert TrainConfig(precision="bf16").to_dict()["precision"] == "bf16"  # provenance
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(accel, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert resolve_precision("auto", cpu) == ("bf16", "precision auto -> bf16 (AMX-BF16 on cpu)")
    monkeypatch.setattr(accel, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    dtype, why = resolve_precision("auto", cpu)
    assert dtype == "fp32" and "no native bf16" in why
    assert resolve_precision("bf16", cpu)[1].endswith("emulated (no native bf16: slower than fp32)")
    assert resolve_precision("fp32", cpu)[0] == "fp32"


def test_auto_precision_resumes_only_on_the_precision_it_started(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    cfg = config(tiny_data, precision="auto")
    train(cfg, tmp_path / "run", stop_after=1, progress=False)
    monkeypatch.setattr(accel, "_cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(SettingsMismatchError, match="precision = 'bf16'.*precision = 'fp32'"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


def test_compile_fallback_is_one_warning_and_the_eager_step(tiny_data, tmp_path, monkeypatch):
    def broken_compiler(model):
        def run(x):
            model(x)  # touches BN statistics before failing, as a late failure would
            raise RuntimeError("InductorError: no working C++ compiler\nmore detail")

        return run

    real_init = CompiledForward.__init__

    def init(self, model, compiler=None):
        real_init(self, model, compiler=broken_compiler)

    monkeypatch.setattr(CompiledForward, "__init__", init)
    eager = train(config(tiny_data, epochs=1), tmp_path / "eager", progress=False)
    with pytest.warns(RuntimeWarning, match=r"could not be compiled \(RuntimeError: Inductor"):
        fell_back = train(config(tiny_data, epochs=1, compile=True), None, progress=False)
    states = (eager.model.state_dict(), fell_back.model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(*(s.values() for s in states), strict=True))


def test_compiled_training_runs_and_reports_its_compile_time(tiny_data, tmp_path):
    lines: list[str] = []
    cfg = config(tiny_data, epochs=1, compile=True, batch_size=30)  # 90 images: one shape
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        result = train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert any(line.startswith("compiled the training step: first step") for line in lines)
    assert result.metrics[0]["compile_s"] > 0
    assert result.test_accuracy > 0.3
    again = train(cfg, None, progress=False)  # same seed, same kernels: same weights
    pairs = zip(result.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


# ---------------------------------------------------------------- recipes


def test_every_recipe_is_a_valid_config_on_all_of_cifar10():
    from binsense.models import check_model
    from binsense.train.recipes import RECIPES

    assert {"cifar10-cnv", "cifar10-cnv-30min", "cifar10-resnet20-float"} <= set(RECIPES)
    for name, recipe in RECIPES.items():
        config = TrainConfig(**recipe.config_fields())
        assert config.dataset == "cifar10" and config.train_subset is None, name
        check_model(config.model, dataset_info("cifar10"), **config.model_options)
        if name.endswith("-gpu"):
            assert config.device == "cuda" and config.precision == "auto"
        else:
            assert config.device == "cpu" and config.compile and config.channels_last


def test_cli_recipe_fields_and_overrides(capsys, tmp_path, tiny_data):
    from binsense.cli import main
    from binsense.train.recipes import get_recipe

    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "cifar10-cnv-30min" in listing and "goal: >= 80 %" in listing
    # the recipe's fields, with flags over them: a tiny run of the CNV recipe's step
    out = tmp_path / "run"
    argv = ["train", "--recipe", "cifar10-cnv-30min", "--dataset", tiny_data, "--model",
            "mnist_bnn", "--model-option", "width=0.25", "--epochs", "1", "--no-compile",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    recipe = get_recipe("cifar10-cnv-30min").fields
    assert saved["lr"] == recipe["lr"] and saved["label_smoothing"] == 0.1
    assert saved["precision"] == "auto" and saved["channels_last"] is True
    assert saved["compile"] is False and saved["epochs"] == 1 and saved["threads"] == 1
    assert saved["model_options"] == {"head": "float", "width": 0.25}
    assert main(["train", "--recipe", "cifar10-cnv30", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'cifar10-cnv" in capsys.readouterr().err


# ---------------------------------------------------------------- zoo


@pytest.fixture
def tiny_zoo(tiny_data, tmp_path, monkeypatch):
    from binsense import zoo
    from binsense.deploy import convert
    from binsense.deploy.fileformat import save_deployed

    result = train(config(tiny_data, epochs=1), None, progress=False)
    folder = tmp_path / "zoo"
    folder.mkdir()
    meta = {"model": "mnist_bnn", "dataset": tiny_data, "input_shape": [1, 28, 28]}
    save_deployed(convert(result.model), folder / "tiny.bsd", meta)
    card = {"name": "tiny", "dataset": "bars", "recipe": "none",
            "accuracy": {"engine": 0.5}, "binary_weight_bits": 1234}  # fmt: skip
    (folder / "tiny.json").write_text(json.dumps(card))
    (folder / "orphan.json").write_text("{}")  # a card without its file is not listed
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    return result


def test_zoo_lists_infers_and_exports_by_name(tiny_zoo, tiny_data, tmp_path, capsys):
    from binsense.cli import main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "orphan" not in out and "50.00%" in out
    assert main(["infer", "zoo:tiny", "--data", tiny_data]) == 0
    assert "zoo" in capsys.readouterr().out
    onnx = tmp_path / "tiny.onnx"
    assert main(["export", "--deployed", "zoo:tiny", "--onnx", str(onnx)]) == 0
    assert onnx.stat().st_size > 0
    assert main(["infer", "zoo:tiyn"]) == 2
    assert "the zoo has no model 'tiyn' — did you mean 'tiny'?" in capsys.readouterr().err


def _shipped():
    from binsense.zoo import zoo_entries

    return zoo_entries()


@pytest.mark.parametrize("entry", _shipped(), ids=lambda e: e.name)
def test_shipped_zoo_model_is_small_and_runs_offline(entry, tmp_path):
    """Each shipped model: under 1 MB, loads, reaches its card's accuracy on real test
    images (where ../shared/data has them), and exports to ONNX with the same logits."""
    from conftest import SHARED_DATA

    from binsense.deploy.fileformat import read_deployed
    from binsense.export import export_onnx

    assert entry.path.stat().st_size < 1_000_000
    loaded = read_deployed(f"zoo:{entry.name}")
    assert loaded.meta["dataset"] == entry.card["dataset"]
    shape = tuple(loaded.meta["input_shape"])
    x = torch.rand(3, *shape)
    logits = loaded.model(x)
    onnx = pytest.importorskip("onnxruntime")
    export_onnx(loaded.model, tmp_path / "m.onnx", shape)
    session = onnx.InferenceSession(str(tmp_path / "m.onnx"))
    got, classes = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(classes), logits.argmax(1))
    # bit for bit where the float head's summation order is the engine's (the export
    # tests check that); close everywhere
    torch.testing.assert_close(torch.from_numpy(got), logits, rtol=1e-5, atol=1e-5)
    if not (SHARED_DATA / "cifar10-jpeg").is_dir():
        pytest.skip("no ../shared/data")
    from binsense.data import DeviceLoader, load_dataset

    test = load_dataset(entry.card["dataset"], "test", data_dir=SHARED_DATA).subset(50, seed=0)
    acc = evaluate(loaded.model, DeviceLoader(test, 500, shuffle=False)).accuracy
    assert acc > entry.card["accuracy"]["engine"] - 0.05  # 500 images: within 5 points


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_optimizer_is_fused_where_torch_has_the_kernel(optimizer, monkeypatch):
    """Fused on this CPU (torch >= 2.4), the same update as the looped implementation up
    to rounding; looped, silently, where no fused kernel exists."""
    from binsense.train.trainer import make_optimizer

    cfg = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=1e-4)

    def params(seed: int = 0) -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(seed)
        ps = [torch.nn.Parameter(torch.randn(8, 3, generator=g)) for _ in range(3)]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        return ps

    fused_params, looped_params = params(), params()
    fused = make_optimizer(cfg, [{"params": fused_params}])
    assert fused.defaults["fused"] is True
    looped = type(fused)([{"params": looped_params}], **{**fused.defaults, "fused": None})
    start = [p.detach().clone() for p in fused_params]
    for _ in range(3):
        fused.step()
        looped.step()
    for a, b, a0 in zip(fused_params, looped_params, start, strict=True):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, a0)  # the step moved it

    # a run saved with the looped step resumes with it (the groups carry the choice)
    fused.load_state_dict(looped.state_dict())
    assert not fused.param_groups[0]["fused"]

    cls = type(fused)

    class NoFused(cls):  # a device or torch without the fused kernel
        def __init__(self, groups, fused=None, **kwargs):
            if fused:
                raise RuntimeError("fused is not supported on this device")
            super().__init__(groups, **kwargs)

    monkeypatch.setattr(torch.optim, cls.__name__, NoFused)
    fallback = make_optimizer(cfg, [{"params": params()}])
    assert isinstance(fallback, NoFused) and not fallback.defaults.get("fused")
