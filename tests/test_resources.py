"""Bounded resources (issue 15 item 9): the memory estimate, the refusal before allocating,
the deliberate override, devices that must exist, and widths that must be positive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from binsense import resources
from binsense.cli import main
from binsense.data import dataset_info
from binsense.errors import BinsenseError
from binsense.models import check_model
from binsense.resources import (
    ResourceError,
    check_fits,
    estimate_model_bytes,
    format_bytes,
    resolve_device,
)
from binsense.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
GB = 10**9
TINY = ["--train-subset", "1", "--test-subset", "1", "--epochs", "1"]


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend every device has 10 GB free (the refusals must not depend on the host)."""
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device="cpu": 10 * GB)
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------- the estimate


def test_estimate_is_weights_gradients_and_adam_moments() -> None:
    info = dataset_info("mnist")
    model = check_model("mnist_bnn", info, width=0.5)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    opts = {"width": 0.5}
    assert estimate_model_bytes("mnist_bnn", info, opts) == 4 * (4 * params + buffers)
    assert estimate_model_bytes("mnist_bnn", info, opts, training=False) == 4 * (params + buffers)
    sgd = estimate_model_bytes("mnist_bnn", info, opts, optimizer="sgd", momentum=0.9)
    plain = estimate_model_bytes("mnist_bnn", info, opts, optimizer="sgd", momentum=0.0)
    assert (sgd, plain) == (4 * (3 * params + buffers), 4 * (2 * params + buffers))


def test_a_huge_model_is_estimated_without_allocating() -> None:
    """width 1000 is hundreds of billions of parameters: counted on the meta device."""
    needed = estimate_model_bytes("mnist_bnn", dataset_info("mnist"), {"width": 1000})
    assert needed > 10**12
    assert format_bytes(73.7e9) == "73.7 GB" and format_bytes(512) == "512 B"


def test_check_fits_refuses_unless_allowed(monkeypatch) -> None:
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)
    check_fits(5 * GB, available=10 * GB)
    with pytest.raises(ResourceError) as info:
        check_fits(64 * GB, available=10 * GB, what="training 'x' (width 200)")
    msg = str(info.value)
    assert "training 'x' (width 200) needs at least 64.0 GB" in msg and "10.0 GB" in msg
    assert "--allow-large" in msg and "BINSENSE_ALLOW_LARGE=1" in msg
    check_fits(64 * GB, available=10 * GB, allow=True)
    monkeypatch.setenv("BINSENSE_ALLOW_LARGE", "1")
    check_fits(64 * GB, available=10 * GB)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device="cpu": None)
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE")
    check_fits(10**15)  # unknown available memory never refuses


def test_available_memory_reads_meminfo_and_cgroup_limits(tmp_path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2048 kB\nMemFree: 100 kB\nMemAvailable: 1024 kB\n")
    assert resources._meminfo_available(str(meminfo)) == 1024 * 1024
    assert resources._meminfo_available(str(tmp_path / "missing")) is None
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("100\n")
    assert resources._cgroup_free(tmp_path) is None  # no limit
    (tmp_path / "memory.max").write_text("1000\n")
    assert resources._cgroup_free(tmp_path) == 900
    if Path("/proc/meminfo").exists():
        assert resources.available_memory_bytes("cpu") > 0


# ---------------------------------------------------------------- through the CLI


def test_width_1000_is_refused_by_the_real_cli(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BINSENSE_CACHE": str(tmp_path / "cache")}
    env.pop("BINSENSE_ALLOW_LARGE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "binsense", "train", *TINY, "--width", "1000"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "(width 1000) needs at least" in line
    assert "TB of memory" in line and not (tmp_path / "runs").exists()


def test_train_study_and_eval_refuse_and_allow_on_purpose(
    small_machine, capsys, tmp_path, monkeypatch
) -> None:
    import binsense.train as train_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    calls = []

    class Result:
        metrics: list = []

    monkeypatch.setattr(train_module, "train", lambda *a, **k: calls.append(a) or Result())
    assert main(["train", *TINY, "--width", "200", "--out", "r"]) == 2
    assert "(width 200) needs at least 268.7 GB" in one_line(capsys.readouterr().err)
    assert not calls
    for argv in (["train", "--allow-large"], ["--allow-large", "train"]):
        assert main([*argv, *TINY, "--width", "200", "--out", "r"]) == 0 and calls
    monkeypatch.setenv("BINSENSE_ALLOW_LARGE", "1")
    assert main(["train", *TINY, "--width", "200", "--out", "r"]) == 0
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE")
    capsys.readouterr()

    Path("s.toml").write_text("[train]\nepochs = 1\n[train.model_options]\nwidth = 1000\n")
    assert main(["study", "run", "s.toml", "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: s.toml: training") and "(width 1000) needs at least" in line
    assert not Path("s/results.sqlite").exists()  # refused before the store was created

    # a checkpoint whose config says width 200: refused before the model is built
    from binsense.train.checkpoint import CHECKPOINT_FORMAT

    config = TrainConfig(model_options={"width": 200}).to_dict()
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": {}}, "w200.pt")
    assert main(["eval", "--checkpoint", "w200.pt"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "evaluating 'mnist_bnn' (width 200) needs at least 67.2 GB" in line


@pytest.mark.parametrize("width", ["nan", "0", "-0.5", "inf"])
def test_non_positive_or_nan_widths_are_rejected(capsys, tmp_path, monkeypatch, width) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    assert main(["train", *TINY, "--width", width, "--out", "r"]) == 2
    assert "width" in one_line(capsys.readouterr().err)
    assert not Path("r").exists()


# ---------------------------------------------------------------- devices


def test_devices_are_parsed_and_must_exist() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad, words in [
        ("tpu", "unknown device 'tpu'"),
        ("cuda:x", "unknown device"),
        ("meta", "does not run on device 'meta'"),
        (7, "must be a string"),
    ]:
        with pytest.raises(ResourceError, match=words):
            resolve_device(bad)
    assert resolve_device("cuda:7", check_available=False).index == 7
    if torch.cuda.device_count() <= 7:
        with pytest.raises(ResourceError, match="cuda:7"):
            resolve_device("cuda:7")
    if not torch.cuda.is_available():
        with pytest.raises(ResourceError, match="--device cpu"):
            resolve_device("cuda")


# ---------------------------------------------------------------- --allow-large (issue 24)


@pytest.fixture
def tiny_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend every device has 1 kB free: every model is refused unless allowed."""
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device="cpu": 1000)
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)


def _past_the_check(*args, **kwargs):
    raise BinsenseError("past the memory check")  # exit 2, one line


@pytest.mark.parametrize("where", ["before", "after"])
def test_allow_large_reaches_every_check_of_eval_summary_and_study_run(
    tiny_machine, capsys, tmp_path, monkeypatch, where
) -> None:
    """The flag was read by the CLI's own check only; load_model (eval, summary) and the
    study runner's trainings checked again without it and refused."""
    import binsense.study.runner as runner
    import binsense.train.checkpoint as checkpoint
    from binsense.train.checkpoint import CHECKPOINT_FORMAT

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(model_options={"width": 0.25})
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model": {}}, "c.pt")
    Path("s.toml").write_text("[train]\nepochs = 1\n[train.model_options]\nwidth = 0.25\n")

    def study_runner(path, preset=None, **kwargs):
        """The runner's trainings check memory without an ``allow`` argument."""
        from binsense.study.schema import load_study

        for t in load_study(path, preset).trainings:
            resources.check_config_fits(t.config, training=True)
        raise BinsenseError("past the memory check")

    monkeypatch.setattr(checkpoint, "build_model", _past_the_check)  # after load_model's check
    monkeypatch.setattr(runner, "run_study", study_runner)
    commands = [
        (["eval", "--checkpoint", "c.pt"], "evaluating 'mnist_bnn' (width 0.25) needs"),
        (["summary", "--checkpoint", "c.pt"], "evaluating 'mnist_bnn' (width 0.25) needs"),
        (["study", "run", "s.toml", "--no-progress"], "(width 0.25) needs at least"),
    ]
    for argv, refusal in commands:
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert refusal in line and "--allow-large" in line, line
        flagged = ["--allow-large", *argv] if where == "before" else [*argv, "--allow-large"]
        assert main(flagged) == 2
        assert "past the memory check" in one_line(capsys.readouterr().err), argv
        assert "BINSENSE_ALLOW_LARGE" not in os.environ  # set for the command only


@pytest.mark.parametrize("flag", [[], ["--allow-large", "summary"], ["summary", "--allow-large"]])
def test_summary_checks_memory_before_building_the_model(tiny_machine, capsys, flag) -> None:
    argv = [*(flag or ["summary"]), "--model", "mnist_bnn", "--width", "0.25"]
    if not flag:
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert "summarising 'mnist_bnn' (width 0.25) needs at least" in line
        assert "--allow-large" in line
    else:
        assert main(argv) == 0
        assert "Mbit" in capsys.readouterr().out


def test_summary_of_a_million_wide_model_is_one_memory_line(small_machine, capsys) -> None:
    """It tried to allocate 13.8 GB and ended in "unexpected RuntimeError"."""
    assert main(["summary", "--model", "mnist_bnn", "--width", "1e6"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "summarising 'mnist_bnn' (width 1e+06) needs at least" in line and "PB" in line


def test_every_memory_checked_command_takes_the_flag_in_either_position() -> None:
    """A command's own --allow-large (default False) overwrote the flag given before it."""
    from binsense.cli import MEMORY_CHECKED_COMMANDS, build_parser

    parser = build_parser()
    required = {("eval",): ["--checkpoint", "c.pt"], ("study", "run"): ["s.toml"],
                ("tone-curves",): ["c.pt", "-o", "x.png"]}  # fmt: skip
    for path in MEMORY_CHECKED_COMMANDS:
        rest = required.get(path, [])
        assert not parser.parse_args([*path, *rest]).allow_large
        assert parser.parse_args(["--allow-large", *path, *rest]).allow_large, path
        assert parser.parse_args([*path, "--allow-large", *rest]).allow_large, path
