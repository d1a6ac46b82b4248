"""`binsense train` reliability: its run folder is locked, a resume with other settings or
other data is refused, a diverged training stops with one line, and kill leftovers go; a
checkpoint carries a checksum (a flipped bit is "corrupt", never other weights) and a full
disk while it is written is one line that says so."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fill_disk_on

from binsense.cli import main
from binsense.errors import BinsenseError, CheckpointError, SettingsMismatchError
from binsense.io import ReadError, WriteError, folder_lock
from binsense.train import TrainConfig, load_checkpoint, load_model, train
from binsense.train.checkpoint import UncheckedCheckpointWarning


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
    import time

    old = time.time() - 60
    os.utime(stale, (old, old))
    train(_config(tiny_data, epochs=1), out)
    assert not stale.exists() and (out / "checkpoint.pt").is_file()


# ---------------------------------------------------------------- checksums (issue 24)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """The checkpoint of a finished one-epoch training."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(_config(tiny_data, epochs=1), out)
    return out / "checkpoint.pt"


def _same(a, b) -> bool:
    """Whether two loaded checkpoints hold the same content (tensors bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_a_flipped_byte_is_a_corrupt_checkpoint(trained, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    raw = bytearray(trained.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is corrupt") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "another copy" in str(err.value)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err_text = capsys.readouterr().err
    lines = [line for line in err_text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is corrupt" in lines[0]
    assert "Traceback" not in err_text


def test_single_bit_flips_never_load_silently(trained, tmp_path):
    """Bits flipped all over a checkpoint: each load either fails (corrupt) or gives the
    same content — never other weights (the review found 2 of 829 that did)."""
    good = load_checkpoint(trained)
    raw = trained.read_bytes()
    path = tmp_path / "checkpoint.pt"
    positions = np.linspace(0, len(raw) - 1, 240).astype(int)
    silent = []
    for i, at in enumerate(positions):
        flipped = bytearray(raw)
        flipped[at] ^= 1 << (i % 8)
        path.write_bytes(bytes(flipped))
        try:
            loaded = load_checkpoint(path)
        except (CheckpointError, ReadError):
            continue
        if not _same(loaded, good):
            silent.append(int(at))
    assert not silent, f"flips at bytes {silent[:10]} loaded with other content"


def test_a_checkpoint_from_before_checksums_loads_with_a_note(trained, tmp_path, capsys):
    old = tmp_path / "checkpoint.pt"
    content = load_checkpoint(trained)
    torch.save(content, old)  # the plain dict, as binsense wrote it before checksums
    assert _same(load_checkpoint(old), content)
    with pytest.warns(UncheckedCheckpointWarning, match="predates checksums"):
        model, _ = load_model(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sealed checkpoint loads without a note
        fresh, _ = load_model(trained)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert main(["eval", "--checkpoint", str(old)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "predates checksums" in err


# ---------------------------------------------------------------- full disk (issue 24)


def test_a_full_disk_while_a_checkpoint_is_written_says_so(tiny_data, tmp_path, monkeypatch):
    """torch.save straight into the file raised RuntimeError("unexpected pos"); the
    checkpoint is now written with plain writes: a WriteError that says the disk is full,
    and the last checkpoint stays as it was."""

    out = tmp_path / "run"
    train(_config(tiny_data), out, stop_after=1)
    before = (out / "checkpoint.pt").read_bytes()
    fill_disk_on(monkeypatch, ".checkpoint.pt.")
    with pytest.raises(WriteError, match="the disk is full") as err:
        train(_config(tiny_data), out, resume=True)
    assert "\n" not in str(err.value) and "checkpoint.pt" in str(err.value)
    monkeypatch.undo()
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing already stored is lost
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert len(train(_config(tiny_data), out, resume=True).metrics) == 2
