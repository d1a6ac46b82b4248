"""Training: exact resume, run folder contents, clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from binsense.cli import main
from binsense.errors import BinsenseError, CheckpointError
from binsense.train import TrainConfig, load_checkpoint, load_model, train
from binsense.train.checkpoint import load_state_strict

TIMING = {"epoch_time_s", "train_images_per_s", "eval_time_s", "compile_s"}


def config(dataset: str, **kw) -> TrainConfig:
    base = dict(
        dataset=dataset,
        model="mnist_bnn",
        model_options={"width": 0.25},
        epochs=3,
        batch_size=16,
        lr=0.01,
        crop_padding=2,
        flip=True,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def strip_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_data, tmp_path):
    cfg = config(tiny_data)
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "part", stop_after=1, progress=False)
    assert not part.complete and len(part.metrics) == 1
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.complete
    assert strip_timing(resumed.metrics) == strip_timing(full.metrics)
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=False
    ):
        assert torch.equal(a, b), k
    # it learned the bars (chance is 1/3)
    assert full.test_accuracy > 0.8


def test_noise_aware_training_resumes_exactly_and_changes_training(tiny_data, tmp_path):
    noise = {"type": ["column_offset", "row_gain"], "level": [0.05, 0.2], "per": "sample"}
    cfg = config(tiny_data, train_noise=noise)
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", stop_after=2, progress=False)
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert strip_timing(resumed.metrics) == strip_timing(full.metrics)
    clean = train(config(tiny_data), progress=False)
    assert strip_timing(clean.metrics) != strip_timing(full.metrics)
    assert cfg.config_hash() != config(tiny_data).config_hash()
    assert config(tiny_data, train_noise="none").config_hash() == config(tiny_data).config_hash()


def test_unknown_training_noise_type_suggests_the_closest(tiny_data):
    with pytest.raises(BinsenseError, match="did you mean 'column_offset'"):
        config(tiny_data, train_noise={"type": "colum_offset", "level": 0.05})


def test_run_folder_contents_and_reload(tiny_data, tmp_path):
    cfg = config(tiny_data, epochs=1)
    result = train(cfg, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["config"] == cfg.to_dict() and meta["config_hash"] == cfg.config_hash()
    assert len(meta["data"]["train"]) == 64 and meta["environment"]["torch"] == torch.__version__
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    model, loaded_cfg = load_model(tmp_path / "run" / "checkpoint.pt")
    assert loaded_cfg == cfg
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), result.model(x))


def test_existing_checkpoint_needs_resume_and_same_config(tiny_data, tmp_path):
    cfg = config(tiny_data, epochs=1)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(BinsenseError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(BinsenseError, match="different config"):
        train(config(tiny_data, epochs=1, lr=0.5), tmp_path / "run", resume=True, progress=False)


def test_non_finite_loss_is_a_clear_error(tiny_data):
    # (a BNN maps NaN through sign to -1, so use the float twin to get a NaN loss)
    cfg = config(tiny_data, epochs=1, model="mnist_bnn_float")
    with pytest.raises(BinsenseError, match="lower the learning rate"):
        train(cfg, input_transform=lambda x: x * float("nan"), progress=False)


def test_mismatched_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    train(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    from binsense.data import dataset_info
    from binsense.models import build_model

    other = build_model("mnist_bnn", dataset_info("mnist"), width=0.5)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_strict(other, ckpt["model"], "run/checkpoint.pt")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_corrupt_and_missing_checkpoint(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x80\x02 definitely not a zip archive")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(bad))
    assert code == 2 and err.count("\n") == 1 and "corrupt" in err
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "vgg_smal"], "did you mean 'vgg_small'"),
        (["--dataset", "cifar1O"], "did you mean 'cifar10'"),
        (["--set", "epoch=2"], "unknown option 'epoch'"),
        (["--optimizer", "adamw"], "optimizer"),
        (["--model-option", "widht=0.5"], "no option 'widht'"),
    ],
)
def test_cli_bad_training_input_is_one_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_cli_missing_data_offline_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "data", "check", "cifar100", "--data-dir", str(tmp_path / "empty")
    )
    assert code == 2 and err.count("\n") == 1 and "BINSENSE_DATA" in err


def test_cli_train_and_eval_end_to_end(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "train",
        "--dataset",
        tiny_data,
        "--model",
        "mnist_bnn",
        "--width",
        "0.25",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(out),
    )
    assert code == 0 and "1/1 epochs" in stdout
    code, stdout, _ = run_cli(capsys, "eval", "--checkpoint", str(out / "checkpoint.pt"), "--json")
    row = json.loads(stdout)
    assert code == 0 and row["n"] == 30 and 0 <= row["accuracy"] <= 1
