"""`binsense train` reliability: its run folder is locked, a resume with other settings or
other data is refused, a diverged training stops with one line, and kill leftovers go."""

from __future__ import annotations

import json

import pytest

from binsense.cli import main
from binsense.errors import BinsenseError, SettingsMismatchError
from binsense.io import folder_lock
from binsense.train import TrainConfig, train


def _config(tiny_data: str, **changes) -> TrainConfig:
    fields = dict(dataset=tiny_data, model="mnist_bnn", epochs=2, batch_size=30,
                  model_options={"width": 0.25})  # fmt: skip
    return TrainConfig(**{**fields, **changes})


def test_a_second_training_into_the_same_folder_is_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    with folder_lock(out, "`binsense train`"):
        code = main(["train", "--dataset", tiny_data, "--model", "mnist_bnn", "--epochs", "1",
                     "--width", "0.25", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "another `binsense train` is working in" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "config.json").exists()


def test_resume_with_other_threads_is_refused(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_data, threads=1), out, stop_after=1)
    with pytest.raises(SettingsMismatchError, match="threads = 1"):
        train(_config(tiny_data, threads=2), out, resume=True)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["environment"]["threads"] == 1  # the record is untouched
    assert len(train(_config(tiny_data, threads=1), out, resume=True).metrics) == 2


def test_diverged_training_stops_with_one_line(tiny_data, tmp_path):
    with pytest.raises(BinsenseError, match="lower the learning rate"):
        train(_config(tiny_data, lr=1e30, epochs=1), tmp_path / "run")


def test_left_over_temp_files_are_removed_on_the_next_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pt.abc123xy.tmp"
    stale.write_bytes(b"half a checkpoint")
    import os
    import time

    old = time.time() - 60
    os.utime(stale, (old, old))
    train(_config(tiny_data, epochs=1), out)
    assert not stale.exists() and (out / "checkpoint.pt").is_file()
