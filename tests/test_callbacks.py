"""Trainer callbacks: they own their state, which travels in the checkpoint; the config's
distillation and pruning are callbacks; binsense.compress never imports binsense.train.

On the ``tiny_data`` image folder with ``mnist_bnn`` at width 0.25 (blocks 1 and 3 split
into units of 8 channels), as in ``test_s3_study.py``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from binsense.errors import BinsenseError
from binsense.io import atomic_torch_save
from binsense.train import (
    Callback,
    Hooks,
    PruneCallback,
    TrainConfig,
    load_checkpoint,
    load_model,
    train,
)
from binsense.train.checkpoint import callback_states

REPO = Path(__file__).resolve().parents[1]
PRUNE = {"target": 0.5, "block_size": 8, "begin": 0.0, "end": 0.5, "every": 2}
QUIET: dict[str, Any] = {"progress": False, "log": lambda s: None}


def config(data: str, **fields: Any) -> TrainConfig:
    values = dict(dataset=data, model="mnist_bnn", model_options={"width": 0.25}, epochs=2,
                  batch_size=16, lr=0.01, threads=1)  # fmt: skip
    return TrainConfig(**{**values, **fields})


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def untimed(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics rows without their timings (``*_s``, ``*_per_s``)."""
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in metrics]


# ---------------------------------------------------------------- no import circle


def test_importing_compress_does_not_import_train():
    """In a fresh interpreter: ``import binsense.compress`` loads no ``binsense.train``
    module (train imports compress; the other way would be a circle)."""
    code = (
        "import sys, binsense.compress\n"
        "bad = sorted(m for m in sys.modules if m.startswith('binsense.train'))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"binsense.compress imported {proc.stdout.strip()}"


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_no_compress_module_imports_train_even_lazily():
    """Not even inside a function: a lazy import is the same circle, only later."""
    files = sorted((REPO / "binsense" / "compress").glob("*.py"))
    assert files
    offenders = {
        f.name: n
        for f in files
        for n in _imports(f)
        if n == "binsense.train" or n.startswith("binsense.train.")
    }
    assert not offenders, offenders
    # the check can fail: it sees a lazy import where there is one
    assert "binsense.train" in _imports(REPO / "binsense" / "cli.py")


# ---------------------------------------------------------------- the protocol


class Counter(Callback):
    """Counts optimizer steps and epochs; its state must survive an interruption."""

    name = "counter"

    def __init__(self) -> None:
        self.steps = 0
        self.epochs: list[int] = []
        self.events: list[str] = []
        self.loaded: dict[str, Any] | None = None

    def on_resume(self, trainer) -> None:
        self.events.append("resume")

    def on_train_begin(self, trainer) -> None:
        self.events.append("begin")

    def on_step_end(self, trainer, step: int) -> None:
        self.steps += 1
        assert step == trainer.step

    def on_train_end(self, trainer) -> None:
        self.events.append("train_end")

    def on_epoch_end(self, trainer, epoch: int) -> None:
        self.epochs.append(epoch)
        self.events.append(f"epoch_end {epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": list(self.epochs)}

    def load_state_dict(self, state) -> None:
        self.loaded = dict(state)
        self.steps, self.epochs = state["steps"], list(state["epochs"])


def test_a_callbacks_state_round_trips_through_the_checkpoint(tiny_data, tmp_path):
    cfg = config(tiny_data)
    whole = Counter()
    train(cfg, tmp_path / "whole", hooks=Hooks(callbacks=[whole]), **QUIET)
    steps_per_epoch = whole.steps // 2
    assert whole.epochs == [0, 1] and steps_per_epoch > 0
    assert whole.events == ["begin", "epoch_end 0", "train_end", "epoch_end 1"]

    first = Counter()
    train(cfg, tmp_path / "run", stop_after=1, hooks=Hooks(callbacks=[first]), **QUIET)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["callbacks"]
    assert saved == {"counter": {"steps": steps_per_epoch, "epochs": [0]}}

    second = Counter()  # a fresh process: the state comes from the checkpoint
    train(cfg, tmp_path / "run", resume=True, hooks=Hooks(callbacks=[second]), **QUIET)
    assert second.loaded == {"steps": steps_per_epoch, "epochs": [0]}
    assert second.events == ["resume", "begin", "train_end", "epoch_end 1"]
    assert second.state_dict() == whole.state_dict()
    final = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["callbacks"]["counter"]
    assert final == whole.state_dict()


def test_resuming_without_a_callback_that_has_state_is_refused(tiny_data, tmp_path):
    cfg = config(tiny_data)
    train(cfg, tmp_path / "run", stop_after=1, hooks=Hooks(callbacks=[Counter()]), **QUIET)
    with pytest.raises(BinsenseError, match="trainer callback 'counter'") as e:
        train(cfg, tmp_path / "run", resume=True, **QUIET)
    assert "\n" not in str(e.value)
    with pytest.raises(BinsenseError, match="two trainer callbacks are named 'counter'"):
        train(cfg, None, hooks=Hooks(callbacks=[Counter(), Counter()]), **QUIET)


def test_a_callback_loss_and_a_hooks_loss_are_refused_together(tiny_data):
    class Loss(Callback):
        def training_loss(self):
            return lambda logits, targets, inputs: logits.sum()

    def mine(logits, targets, inputs):
        return logits.sum()

    with pytest.raises(BinsenseError, match="both give a training loss"):
        train(config(tiny_data), None, hooks=Hooks(loss=mine, callbacks=[Loss()]), **QUIET)


# ---------------------------------------------------------------- pruning


def test_pruning_state_round_trips_and_resumes_bit_for_bit(tiny_data, tmp_path):
    cfg = config(tiny_data, prune=PRUNE)
    whole = train(cfg, tmp_path / "whole", **QUIET)
    train(cfg, tmp_path / "run", stop_after=1, **QUIET)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    state = ckpt["callbacks"]["prune"]
    assert state["prune_plan"] is None and state["prune_masks"]  # pruning in progress
    assert any(not all(m) for m in state["prune_masks"].values())
    again = PruneCallback(cfg.prune)
    again.load_state_dict(state)
    assert again.state_dict() == state

    resumed = train(cfg, tmp_path / "run", resume=True, **QUIET)
    assert same_weights(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.model.prune_plan == whole.model.prune_plan
    assert untimed(resumed.metrics) == untimed(whole.metrics)
    final = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["callbacks"]["prune"]
    assert final == {"prune_plan": whole.model.prune_plan, "prune_masks": {}}


def test_a_checkpoint_from_before_callbacks_resumes_exactly(tiny_data, tmp_path):
    """Old layout: the pruning state at the top level (``prune_plan``, ``prune_masks``),
    no ``callbacks``. It still resumes bit for bit and still loads."""
    cfg = config(tiny_data, prune=PRUNE)
    whole = train(cfg, tmp_path / "whole", **QUIET)
    train(cfg, tmp_path / "run", stop_after=1, **QUIET)
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    state = ckpt.pop("callbacks")["prune"]
    old = {**ckpt, "prune_plan": state["prune_plan"], "prune_masks": state["prune_masks"]}
    atomic_torch_save(path, old, checksum=True)
    assert callback_states(load_checkpoint(path)) == {"prune": state}

    half, _ = load_model(path)  # masks removed for real, as before
    assert half.prune_plan
    resumed = train(cfg, tmp_path / "run", resume=True, **QUIET)
    assert same_weights(resumed.model.state_dict(), whole.model.state_dict())

    # an old finished checkpoint (the plan at the top level) loads and resumes to itself
    done = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    final = done.pop("callbacks")["prune"]
    atomic_torch_save(tmp_path / "whole" / "checkpoint.pt",
                      {**done, **final}, checksum=True)  # fmt: skip
    loaded, _ = load_model(tmp_path / "whole" / "checkpoint.pt")
    assert same_weights(loaded.state_dict(), whole.model.state_dict())
    again = train(cfg, tmp_path / "whole", resume=True, **QUIET)
    assert same_weights(again.model.state_dict(), whole.model.state_dict())


def test_old_checkpoints_of_runs_without_pruning_hold_no_callback_state():
    """Every old checkpoint had ``prune_plan = None, prune_masks = {}``: no state."""
    assert callback_states({"prune_plan": None, "prune_masks": {}}) == {}
    assert callback_states({"callbacks": {"x": {"a": 1}}}) == {"x": {"a": 1}}


# ---------------------------------------------------------------- distillation


def test_distillation_state_records_the_teacher_and_guards_the_resume(tiny_data, tmp_path):
    teacher = config(tiny_data, model="mnist_bnn_float", epochs=1)
    train(teacher, tmp_path / "teacher", **QUIET)
    ckpt = tmp_path / "teacher" / "checkpoint.pt"
    student = config(tiny_data, distill={"teacher_checkpoint": str(ckpt), "alpha": 0.5})
    result = train(student, tmp_path / "student", stop_after=1, **QUIET)
    state = load_checkpoint(tmp_path / "student" / "checkpoint.pt")["callbacks"]["distill"]
    assert state == {"teacher": {"checkpoint": str(ckpt), "config_hash": teacher.config_hash()}}
    assert result.provenance["teacher"] == state["teacher"]

    # the checkpoint at the teacher's path now holds another training: refused
    other = config(tiny_data, model="mnist_bnn_float", epochs=1, seed=5)
    train(other, tmp_path / "other", **QUIET)
    shutil.copy(tmp_path / "other" / "checkpoint.pt", ckpt)
    with pytest.raises(BinsenseError, match="were distilled from a teacher trained with") as e:
        train(student, tmp_path / "student", resume=True, **QUIET)
    assert other.config_hash() in str(e.value) and "\n" not in str(e.value)
