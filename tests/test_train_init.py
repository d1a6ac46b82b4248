"""Fine-tuning (``init``): a training that starts from another training's final weights.

On the ``tiny_data`` image folder with ``mnist_bnn`` at width 0.25, as in
``test_callbacks.py``: the weights at the first step are the start's, bit for bit; the
start is part of the run id; a resumed fine-tuning ends where an uninterrupted one
does; every wrong start is one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from test_callbacks import QUIET, config, same_weights, untimed

from binsense.errors import BinsenseError
from binsense.train import Callback, Hooks, TrainConfig, load_checkpoint, train
from binsense.train.callbacks import InitCallback


class _Snapshot(Callback):
    """The model's weights when training begins (after the config's callbacks)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self.state = {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture
def start(tiny_data, tmp_path) -> tuple[TrainConfig, Path]:
    """A finished 1-epoch training to start from."""
    cfg = config(tiny_data, epochs=1)
    train(cfg, tmp_path / "start", **QUIET)
    return cfg, tmp_path / "start" / "checkpoint.pt"


def test_fine_tuning_starts_from_the_checkpoints_weights(tiny_data, tmp_path, start):
    start_cfg, ckpt = start
    tuned = config(tiny_data, epochs=2, lr=0.001, init={"checkpoint": str(ckpt)})
    snap = _Snapshot()
    result = train(tuned, tmp_path / "tuned", hooks=Hooks(callbacks=[snap]), **QUIET)
    assert same_weights(snap.state, load_checkpoint(ckpt)["model"])
    fresh = _Snapshot()
    train(config(tiny_data, epochs=1, lr=0.001), None, hooks=Hooks(callbacks=[fresh]), **QUIET)
    assert not same_weights(fresh.state, snap.state)  # without init: the seed's weights
    record = result.provenance["start"]
    assert record["checkpoint"] == str(ckpt) and record["config_hash"] == start_cfg.config_hash()
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["start"] == record
    # the start is part of the run id
    assert tuned.config_hash() != config(tiny_data, epochs=2, lr=0.001).config_hash()


def test_a_start_described_by_its_training(tiny_data, tmp_path, start):
    """``init.training`` describes the start by the fields it differs in; the checkpoint
    passed must be of exactly that config."""
    start_cfg, ckpt = start
    tuned = config(tiny_data, epochs=2, lr=0.001, init={"training": {"epochs": 1, "lr": 0.01}})
    assert tuned.init_config().config_hash() == start_cfg.config_hash()
    snap = _Snapshot()
    train(tuned, tmp_path / "tuned", init=ckpt, hooks=Hooks(callbacks=[snap]), **QUIET)
    assert same_weights(snap.state, load_checkpoint(ckpt)["model"])
    other = config(tiny_data, epochs=2, init={"training": {"epochs": 1, "lr": 0.02}})
    with pytest.raises(BinsenseError, match="but init.training describes") as e:
        train(other, tmp_path / "other", init=ckpt, **QUIET)
    assert "\n" not in str(e.value)
    with pytest.raises(BinsenseError, match="no checkpoint was given"):
        train(other, tmp_path / "other2", **QUIET)


def test_two_step_training_binarises_the_weights_of_a_real_weight_start(tiny_data, tmp_path):
    """Two-step training: binary activations with real weights first
    (``weight_quantizer = "none"``), then the BNN fine-tuned from it."""
    real = {"width": 0.25, "weight_quantizer": "none"}
    train(config(tiny_data, epochs=1, model_options=real), tmp_path / "step1", **QUIET)
    ckpt = tmp_path / "step1" / "checkpoint.pt"
    start = {"model_options": real, "lr": 0.01}
    step2 = config(tiny_data, epochs=1, lr=0.001, init={"training": start})
    snap = _Snapshot()
    result = train(step2, tmp_path / "step2", init=ckpt, hooks=Hooks(callbacks=[snap]), **QUIET)
    assert same_weights(snap.state, load_checkpoint(ckpt)["model"])
    assert result.provenance["start"]["config_hash"] == step2.init_config().config_hash()
    model = result.model
    layers = [m for m in model.modules() if hasattr(m, "binary_weight")]
    assert all(m.binary_weight().abs().eq(1).all() for m in layers)  # step 2 is binary


def test_a_resumed_fine_tuning_ends_as_an_uninterrupted_one(tiny_data, tmp_path, start):
    _, ckpt = start
    tuned = config(tiny_data, epochs=2, lr=0.001, init={"checkpoint": str(ckpt)})
    whole = train(tuned, tmp_path / "whole", **QUIET)
    train(tuned, tmp_path / "parts", stop_after=1, **QUIET)
    parts = train(tuned, tmp_path / "parts", resume=True, **QUIET)
    assert same_weights(whole.model.state_dict(), parts.model.state_dict())
    assert untimed(whole.metrics) == untimed(parts.metrics)
    # the start's path now holds another training: the resume is refused
    train(config(tiny_data, epochs=1, seed=7), tmp_path / "other", **QUIET)
    train(tuned, tmp_path / "again", stop_after=1, **QUIET)
    shutil.copy(tmp_path / "other" / "checkpoint.pt", ckpt)
    with pytest.raises(BinsenseError, match="started from a training with config"):
        train(tuned, tmp_path / "again", resume=True, **QUIET)


def test_wrong_starts_are_one_line(tiny_data, tmp_path, start):
    _, ckpt = start
    cases = [
        ({"checkpoint": str(tmp_path / "none.pt")}, "does not exist; train the start first"),
        ({"checkpoint": str(ckpt)}, "does not match the model"),  # another width
    ]
    for init, message in cases:
        cfg = config(tiny_data, model_options={"width": 0.5}, init=init)
        with pytest.raises(BinsenseError, match=message) as e:
            train(cfg, tmp_path / "x", **QUIET)
        assert "\n" not in str(e.value)
        shutil.rmtree(tmp_path / "x", ignore_errors=True)
    half = config(tiny_data, epochs=2)
    train(half, tmp_path / "half", stop_after=1, **QUIET)
    cfg = config(tiny_data, init={"checkpoint": str(tmp_path / "half" / "checkpoint.pt")})
    with pytest.raises(BinsenseError, match="holds 1 of its 2 epochs; finish the start"):
        train(cfg, tmp_path / "y", **QUIET)


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ({}, "give exactly one of training"),
        ({"checkpoint": "a.pt", "training": {"epochs": 1}}, "give exactly one of training"),
        ({"training": {"epoch": 1}}, "unknown key 'epoch' — did you mean 'epochs'"),
        ({"training": {"prune": {"target": 0.5}}}, "'prune' cannot be set for the starting"),
        ({"training": {"dataset": "mnist"}}, "a start must be trained on the same data set"),
        ({"training": {"epochs": 0}}, "init: 'epochs' must be greater than or equal to 1"),
    ],
)
def test_init_tables_are_validated(tiny_data, init, message):
    with pytest.raises(ValidationError, match=message):
        config(tiny_data, init=init)


def test_init_is_a_config_callback(tiny_data, start):
    _, ckpt = start
    from binsense.train.callbacks import config_callbacks

    cfg = config(tiny_data, init={"checkpoint": str(ckpt)})
    assert [type(c) for c in config_callbacks(cfg)] == [InitCallback]
    assert config(tiny_data, init="none").init is None  # TOML's off switch


# ---------------------------------------------------------------- in a study

STUDY = """\
[study]
name = "finetune"

[train]
dataset = "imagefolder:{data}"
model = "mnist_bnn"
model_options = {{ width = 0.25 }}
epochs = 1
batch_size = 16
lr = 0.01
threads = 1

[train.grid]
seed = [0, 1]
variant = [
    {{ name = "clean" }},
    {{ name = "tuned", train_noise = {noise}, lr = 0.001, init = {{ training = {clean} }} }},
    {{ name = "tuned from hidden", lr = 0.002, init = {{ training = {{ epochs = 2 }} }} }},
]

[[condition]]
kind = "clean"
"""


def _write_study(folder: Path, data: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "finetune.toml"
    noise, clean = '{ type = "column_offset", level = 0.05 }', '{ train_noise = "none", lr = 0.01 }'
    path.write_text(STUDY.format(data=data.removeprefix("imagefolder:"), noise=noise, clean=clean))
    return path


def test_a_study_trains_each_start_first_and_fine_tunes_from_it(tiny_data, tmp_path):
    """``tuned`` starts from the ``clean`` grid point of its seed (same run id); ``tuned
    from hidden`` from a 2-epoch training that is no grid point: a hidden start, trained
    (not evaluated) before it. The fine-tuning's first weights are the start's."""
    from binsense.study.runner import run_study
    from binsense.study.schema import load_study

    path = _write_study(tmp_path, tiny_data)
    study = load_study(path)
    by = {(t.grid["variant"], t.grid["seed"]): t for t in study.trainings}
    for seed in (0, 1):
        assert by["tuned", seed].start_id == by["clean", seed].run_id
    assert len(study.hidden) == 2 and all(t.role == "start" for t in study.hidden)
    assert study.hidden[0].label() == "start of seed=0, variant=tuned from hidden"
    order = [t.run_id for t in study.training_order()]
    for t in study.trainings:
        assert all(order.index(r) < order.index(t.run_id) for r in t.needs)
    summary = run_study(path, progress=False, log=lambda s: None)
    assert summary.failed == 0 and summary.trained == 8  # 6 grid points + 2 hidden starts
    for seed in (0, 1):
        for variant in ("tuned", "tuned from hidden"):
            t = by[variant, seed]
            config = json.loads((study.run_dir(t.run_id) / "config.json").read_text())
            start = study.run_dir(t.start_id) / "checkpoint.pt"
            assert config["start"]["checkpoint"] == str(start)
            assert config["start"]["config_hash"] == t.start_id
    again = run_study(path, progress=False, log=lambda s: None)
    assert again.trained == 0 and again.evaluated == 0


def test_a_failed_start_fails_its_fine_tunings_with_the_reason(tiny_data, tmp_path):
    from binsense.study.runner import run_study
    from binsense.study.schema import load_study
    from binsense.study.store import ResultStore

    path = _write_study(tmp_path, tiny_data)
    path.write_text(path.read_text().replace("{ epochs = 2 }", "{ epochs = 2, lr = 1e30 }"))
    study = load_study(path)
    summary = run_study(path, progress=False, log=lambda s: None)
    assert summary.failed == 4  # the 2 hidden starts diverge, their 2 fine-tunings follow
    tuned = [t for t in study.trainings if t.grid["variant"] == "tuned from hidden"]
    with ResultStore(study.store_path, readonly=True) as store:
        for t in tuned:
            (failure,) = [f for f in store.failures() if f["run_id"] == t.run_id]
            assert failure["reason"].startswith(f"its start (run {t.start_id}) failed: ")


# ---------------------------------------------------------------- eval_engine


def test_epochs_are_evaluated_by_the_engine_where_the_model_deploys(tiny_data):
    """``eval_engine = "binsense"``: each epoch's test numbers come from the deployed
    program (the same accuracy here as PyTorch's), a model that does not deploy falls
    back to PyTorch with one notice; the field is not part of the run id."""
    notes: list[str] = []
    fast = config(tiny_data, eval_engine="binsense", channels_last=True)
    a = train(fast, None, progress=False, log=notes.append)
    b = train(config(tiny_data, channels_last=True), None, **QUIET)
    assert [m["eval_engine"] for m in a.metrics] == ["binsense", "binsense"]
    assert [m["eval_engine"] for m in b.metrics] == ["pytorch", "pytorch"]
    assert [m["test_acc"] for m in a.metrics] == [m["test_acc"] for m in b.metrics]
    assert not any("not the binsense engine" in n for n in notes)
    assert fast.config_hash() == config(tiny_data, channels_last=True).config_hash()
    notes.clear()
    floating = config(tiny_data, model="mnist_bnn_float", eval_engine="binsense")
    c = train(floating, None, progress=False, log=notes.append)
    assert [m["eval_engine"] for m in c.metrics] == ["pytorch", "pytorch"]
    assert sum("not the binsense engine: the model does not deploy" in n for n in notes) == 1


def test_finished_runs_are_reused_from_another_study_folder(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """``--reuse DIR``: a training another study finished under the same run id is copied
    in (and not trained again); unfinished or other trainings are not; a folder that is
    not a study's is one error line."""
    from binsense.cli import main
    from binsense.study.plan import shown_status
    from binsense.study.runner import _Driver, reuse_runs, run_study
    from binsense.study.schema import load_study

    first = _write_study(tmp_path / "a", tiny_data)
    run_study(first, progress=False, log=lambda s: None)
    done = load_study(first)
    clean = {t.run_id for t in done.trainings if t.grid["variant"] == "clean"}
    second = _write_study(tmp_path / "b", tiny_data)
    text = second.read_text().replace('name = "tuned from hidden", lr = 0.002', 'name = "new"')
    second.write_text(text)
    lines: list[str] = []
    # copied but not yet reached by the runner: shown as such, not as "not started"
    before = load_study(second)
    copied = reuse_runs(before, [done.out_dir], log=lambda s: None)
    other = next(t.run_id for t in before.trainings if t.run_id not in copied)
    assert shown_status(before, copied[0], None) == "in its folder, not yet recorded"
    assert shown_status(before, other, None) == "not started"
    submitted: list[tuple[str, str]] = []  # (task kind, run id) in submission order
    submit = _Driver.submit

    def spy(self, task):
        submitted.append((type(task).__name__, task.run_id))
        return submit(self, task)

    monkeypatch.setattr(_Driver, "submit", spy)
    summary = run_study(second, progress=False, log=lines.append, reuse=[done.out_dir])
    # the copied runs are recorded and evaluated before anything is trained
    first_new = next(i for i, (_, r) in enumerate(submitted) if r not in copied)
    assert {r for _, r in submitted[:first_new]} == set(copied)
    study = load_study(second)
    reused = set(copied)
    assert not any(line.startswith("reused run ") for line in lines)  # already in place
    shared = {t.run_id for t in study.trainings if t.grid["variant"] in ("clean", "tuned")}
    assert reused == shared and clean < shared  # clean and tuned of both seeds
    assert summary.failed == 0 and len(study.hidden) == 2  # "new"'s starts: trained here
    for run_id in reused:  # the same file, never written again (its mtime is the copy's)
        a, b = (d.run_dir(run_id) / "checkpoint.pt" for d in (done, study))
        assert a.read_bytes() == b.read_bytes()
        assert a.stat().st_mtime_ns == b.stat().st_mtime_ns
    assert not list((study.out_dir / "runs").glob(".*"))  # no temporary copy left
    # a damaged checkpoint in the source is skipped with a note; the run is trained here
    third = _write_study(tmp_path / "c", tiny_data)
    victim = sorted(clean)[0]
    (done.run_dir(victim) / "checkpoint.pt").write_bytes(b"not a checkpoint")
    lines.clear()
    run_study(third, progress=False, log=lines.append, reuse=[done.out_dir])
    assert any(line.startswith(f"not reused: run {victim} from ") for line in lines)
    assert not any(line.startswith(f"reused run {victim}") for line in lines)
    assert any(line.startswith("reused run ") for line in lines)  # the others: copied
    code = main(["study", "run", str(second), "--reuse", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a study folder (it has no runs/ folder)" in err


START_STUDY = """\
[study]
name = "starts"

[train]
dataset = "mnist"
model = "mnist_bnn"
model_options = {{ width = 0.25 }}
epochs = 1

[train.grid]
seed = [0]
variant = [{{ name = "tuned", init = {{ training = {start} }} }}]

[[condition]]
kind = "clean"
"""


@pytest.mark.parametrize(
    ("start", "error"),
    [
        ('{ model = "mnist_bnn_float" }', None),  # the float twin: the same tensors
        ("{ epochs = 3 }", None),
        ("{ model_options = { width = 0.5 } }", "'mnist_bnn' do not have the same tensors"),
        # the table replaces the model's options: the hint names the one it dropped
        (
            '{ model_options = { head = "float" } }',
            r"repeat the options they share \(width = 0.25\)",
        ),
    ],
)
def test_a_start_must_have_the_models_tensors_when_the_file_loads(tmp_path, start, error):
    """A start of another model or options is refused at load time unless both build the
    same tensor names and shapes (on the meta device; no data is read)."""
    from binsense.study.schema import StudyFileError, load_study

    path = tmp_path / "s.toml"
    path.write_text(START_STUDY.format(start=start))
    if error is None:
        (t,) = load_study(path).trainings
        assert t.start_id is not None
        return
    with pytest.raises(StudyFileError, match=error) as e:
        load_study(path)
    assert "\n" not in str(e.value) and "init of seed=0, variant=tuned" in str(e.value)
    assert ("does not merge" in str(e.value)) == ("head" in start)


# ---------------------------------------------------------------- GLT drift


def test_a_learned_thermometers_drift_is_recorded_and_resumes(tiny_data, tmp_path):
    """A model with a GLT encoder gets ``glt_shift_*`` and ``glt_grad`` in each metrics
    row (measured from the start of training, also after a resume); the shift is the
    distance of the final thresholds from the initial ones."""
    from binsense.encoders.glt import LearnedThermometer
    from binsense.encoders.thermometer import uniform_thresholds
    from binsense.train import load_model

    cfg = config(tiny_data, model_options={"width": 0.25, "encoder": "glt"}, lr=0.05)
    whole = train(cfg, tmp_path / "whole", **QUIET)
    rows = whole.metrics
    assert all({"glt_shift_max", "glt_shift_mean", "glt_grad"} <= row.keys() for row in rows)
    assert rows[-1]["glt_grad"] > 0 and rows[-1]["glt_shift_max"] >= rows[-1]["glt_shift_mean"]
    (glt,) = [m for m in load_model(tmp_path / "whole" / "checkpoint.pt")[0].modules()
              if isinstance(m, LearnedThermometer)]  # fmt: skip
    rows_t = glt.t0.shape[0]
    start = torch.tensor([uniform_thresholds(glt.planes)] * rows_t, dtype=torch.float32) - 0.5
    moved = (glt.continuous_thresholds().detach() - start).abs()
    assert rows[-1]["glt_shift_max"] == pytest.approx(float(moved.max()), abs=1e-3)
    assert rows[-1]["glt_shift_mean"] == pytest.approx(float(moved.mean()), abs=1e-3)
    train(cfg, tmp_path / "parts", stop_after=1, **QUIET)
    parts = train(cfg, tmp_path / "parts", resume=True, **QUIET)
    assert untimed(parts.metrics) == untimed(rows)
    plain = train(config(tiny_data), None, **QUIET)
    assert "glt_shift_max" not in plain.metrics[-1]
