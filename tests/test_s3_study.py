"""Study S3's training features: distillation and block pruning as TrainConfig fields,
teacher -> student order and resume in the study runner, model sizes in the report.

On the ``tiny_data`` image folder (28x28 grayscale, 3 classes) with ``mnist_bnn`` at
width 0.25 (8-16-32 channels: blocks 1 and 3 split into units of 8 channels) and its
float twin as the teacher.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from binsense.cli import main
from binsense.errors import BinsenseError
from binsense.study import load_study, run_study
from binsense.study.report import write_report
from binsense.study.schema import StudyFileError
from binsense.study.store import ResultStore
from binsense.train import TrainConfig, load_checkpoint, load_model, train

REPO = Path(__file__).resolve().parents[1]

TEACHER = '{ model = "mnist_bnn_float", seed = 0 }'
PRUNE = "{ target = 0.5, block_size = 8, begin = 0.0, end = 0.5, every = 2 }"

STUDY = """\
[study]
name = "s3_tiny"

[train]
dataset = "imagefolder:{data}"
model = "mnist_bnn"
model_options = {{ width = 0.25 }}
epochs = 2
batch_size = 16
lr = 0.01
threads = 1

[train.grid]
seed = [0, 1]
variant = [
    {{ name = "plain" }},
    {{ name = "kd", distill = {{ teacher = {teacher}, alpha = 0.5 }} }},
    {{ name = "kd pruned", distill = {{ teacher = {teacher}, alpha = 0.5 }}, prune = {prune} }},
    {{ name = "pruned", prune = {prune} }},
{extra}]

[[condition]]
kind = "clean"

[evaluation]
batch_size = 64
"""

#: The teacher as a grid point too (seed 0 of this variant is the students' teacher),
#: listed last so that grid order alone would train the students first.
FLOAT_VARIANT = '    { name = "float", model = "mnist_bnn_float" },\n'


def write(path: Path, data: str, *, teacher: str = TEACHER, extra: str = FLOAT_VARIANT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = data.removeprefix("imagefolder:")
    path.write_text(STUDY.format(data=folder, teacher=teacher, prune=PRUNE, extra=extra))
    return path


def base_config(data: str, **fields) -> TrainConfig:
    values = dict(dataset=data, model="mnist_bnn", model_options={"width": 0.25}, epochs=2,
                  batch_size=16, lr=0.01, threads=1)  # fmt: skip
    return TrainConfig(**{**values, **fields})


def runs(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["run_id"]: dict(r) for r in conn.execute("SELECT * FROM runs")}


def results(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, condition_id, draw, accuracy, loss, n FROM results "
            "ORDER BY run_id, condition_id, draw"
        ).fetchall()


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"distill": {"teacher": {"modle": "mnist_bnn_float"}}}, "did you mean 'model'"),
        ({"distill": {"teacher": {"epochs": 0}}}, "teacher: 'epochs' must be greater"),
        ({"distill": {"teacher": {}, "alfa": 0.5}}, "alfa"),
        ({"distill": {"alpha": 0.5}}, "exactly one of"),
        ({"distill": {"teacher": {}, "teacher_checkpoint": "x.pt"}}, "exactly one of"),
        ({"distill": {"teacher": {}, "alpha": 1.5}}, "alpha"),
        ({"distill": {"teacher": {}, "alpha": "0.5"}}, "alpha"),
        ({"distill": {"teacher": {}, "temperature": 0}}, "temperature"),
        ({"prune": {"targt": 0.5}}, "targt"),
        ({"prune": {"target": 1.0}}, "target"),
        ({"prune": {"target": 0.5, "block_size": 12}}, "multiple of 8"),
        ({"prune": {"target": 0.5, "score": "l1"}}, "score"),
        ({"prune": {"target": 0.5, "begin": 0.9, "end": 0.1}}, "begin"),
        ({"prune": {"target": 0.5, "every": True}}, "every"),
    ],
)
def test_distill_and_prune_options_are_strict(fields, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**fields)


def test_teacher_config_and_run_ids():
    student = TrainConfig(
        model="mnist_bnn", model_options={"width": 0.25}, epochs=4, seed=3,
        distill={"teacher": {"model": "mnist_bnn_float", "epochs": 2}},
        prune={"target": 0.5},
    )  # fmt: skip
    teacher = student.teacher_config()
    # the student's fields, minus distill and prune, under the teacher's table
    assert teacher == TrainConfig(
        model="mnist_bnn_float", model_options={"width": 0.25}, epochs=2, seed=3
    )
    # off: the run id of a config from before these fields is unchanged
    assert TrainConfig(distill="none", prune="none").config_hash() == TrainConfig().config_hash()
    # the teacher is part of the student's id: another teacher, another student
    other = student.model_copy(
        update={"distill": student.distill.model_copy(update={"teacher": {"epochs": 3}})}
    )
    assert other.config_hash() != student.config_hash()
    # a checkpoint's config (JSON) reads back to the same config and id
    again = TrainConfig(**json.loads(json.dumps(student.to_dict())))
    assert again == student and again.config_hash() == student.config_hash()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("target = 0.5", "targt = 0.5",
         "[train] unknown key 'prune.targt' — did you mean 'target'?"),
        ("block_size = 8", "block_size = 12", "[train] 'prune.block_size' must be a multiple of 8"),
        ('teacher = { model = "mnist_bnn_float"', 'teacher = { modle = "mnist_bnn_float"',
         "[train] 'distill.teacher': unknown key 'modle' — did you mean 'model'?"),
        ("alpha = 0.5", "alfa = 0.5", "[train] unknown key 'distill.alfa' — did you mean 'alpha'?"),
        ('"mnist_bnn_float", seed', '"mnist_bnn_flaot", seed',
         "[train] distill.teacher (of seed=0, variant=kd): unknown model 'mnist_bnn_flaot' — "
         "did you mean 'mnist_bnn_float'?"),
        ('"mnist_bnn_float", seed', '"mnist_bnn_float", model_options = { widht = 1 }, seed',
         "[train] distill.teacher (of seed=0, variant=kd): model 'mnist_bnn_float' has no "
         "option 'widht' — did you mean 'width'?"),
    ],
)  # fmt: skip
def test_study_file_typos_in_distill_and_prune_are_one_line(tmp_path, tiny_data, old, new, message):
    path = write(tmp_path / "s.toml", tiny_data)
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(StudyFileError) as e:
        load_study(path)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the plan


def test_plan_orders_teachers_first_and_adds_hidden_ones(tmp_path, tiny_data):
    study = load_study(write(tmp_path / "s.toml", tiny_data))
    assert len(study.trainings) == 10 and study.hidden == ()  # teacher = float, seed 0
    order = [t.run_id for t in study.training_order()]
    assert sorted(order) == sorted(t.run_id for t in study.trainings)
    teacher = next(t for t in study.trainings if t.grid == {"seed": 0, "variant": "float"})
    students = [t for t in study.trainings if t.teacher_id is not None]
    assert len(students) == 4 and {t.teacher_id for t in students} == {teacher.run_id}
    assert all(order.index(teacher.run_id) < order.index(s.run_id) for s in students)

    hidden = load_study(write(tmp_path / "h.toml", tiny_data, extra=""))
    assert len(hidden.trainings) == 8 and len(hidden.hidden) == 1
    (t,) = hidden.hidden
    assert t.config.model == "mnist_bnn_float" and t.label().startswith("teacher of ")
    order = hidden.training_order()
    first_student = min(i for i, s in enumerate(order) if s.teacher_id == t.run_id)
    assert order.index(t) == first_student - 1  # just before its first student


# ---------------------------------------------------------------- running


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_data: str) -> Path:
    """The study run once, uninterrupted (its out folder)."""
    folder = tmp_path_factory.mktemp("s3_reference")
    path = write(folder / "s.toml", tiny_data)
    summary = run_study(path, out=folder / "out", progress=False, log=lambda s: None)
    assert summary.failed == 0 and summary.trained == 10
    return folder / "out"


def _recording_train(monkeypatch, calls: list[str], stop: str | None = None):
    """Replace the runner's ``train``: record each call's run id; for the run ``stop``,
    train one epoch, then raise KeyboardInterrupt (an interrupted process)."""
    import binsense.study.execute as runner

    real = train  # binsense.train.train, whatever the runner holds now

    def fake(config, folder, **kwargs):
        calls.append(config.config_hash())
        if config.config_hash() == stop:
            real(config, folder, **{**kwargs, "stop_after": 1})
            raise KeyboardInterrupt
        return real(config, folder, **kwargs)

    monkeypatch.setattr(runner, "train", fake)


def test_teacher_is_trained_before_its_students(reference, tmp_path, tiny_data, monkeypatch):
    path = write(tmp_path / "s.toml", tiny_data)
    study = load_study(path, out=reference)
    teacher = next(t for t in study.trainings if t.grid == {"seed": 0, "variant": "float"})
    students = [t.run_id for t in study.trainings if t.teacher_id == teacher.run_id]
    rows = runs(reference / "results.sqlite")
    for s in students:  # the teacher's run row finished before each student's started
        assert rows[teacher.run_id]["finished"] <= rows[s]["started"]
        recorded = json.loads((reference / "runs" / s / "config.json").read_text())
        assert recorded["teacher"]["config_hash"] == teacher.run_id

    calls: list[str] = []
    _recording_train(monkeypatch, calls)
    run_study(path, out=tmp_path / "out", progress=False, log=lambda s: None)
    assert all(calls.index(teacher.run_id) < calls.index(s) for s in students)
    assert results(tmp_path / "out" / "results.sqlite") == results(reference / "results.sqlite")


@pytest.mark.parametrize("interrupt", ["teacher", "student"])
def test_resume_after_an_interruption(reference, tmp_path, tiny_data, monkeypatch, interrupt):
    """Interrupted (KeyboardInterrupt after one epoch) in the teacher's or in a student's
    training, then run again: the teacher is not retrained once finished, each training
    resumes from its own checkpoint, and the results equal an uninterrupted run's."""
    path = write(tmp_path / "s.toml", tiny_data)
    out = tmp_path / "out"
    study = load_study(path, out=out)
    teacher = next(t for t in study.trainings if t.grid == {"seed": 0, "variant": "float"})
    student = next(t for t in study.trainings if t.grid == {"seed": 0, "variant": "kd pruned"})
    stop = teacher if interrupt == "teacher" else student

    calls: list[str] = []
    _recording_train(monkeypatch, calls, stop=stop.run_id)
    with pytest.raises(KeyboardInterrupt):
        run_study(path, out=out, progress=False, log=lambda s: None)
    status = {k: r["status"] for k, r in runs(out / "results.sqlite").items()}
    assert status[stop.run_id] == "training"
    if interrupt == "student":
        assert status[teacher.run_id] == "trained"
    assert len((out / "runs" / stop.run_id / "metrics.jsonl").read_text().splitlines()) == 1

    calls.clear()
    log: list[str] = []
    _recording_train(monkeypatch, calls)
    summary = run_study(path, out=out, progress=False, log=log.append)
    assert summary.failed == 0
    assert any(line.startswith(f"resuming {out / 'runs' / stop.run_id} after epoch 1")
               for line in log)  # fmt: skip
    if interrupt == "student":
        assert teacher.run_id not in calls  # finished: loaded from its checkpoint
    else:
        assert calls.index(teacher.run_id) < calls.index(student.run_id)
    assert results(out / "results.sqlite") == results(reference / "results.sqlite")
    for t in (teacher, student):
        mine = load_checkpoint(out / "runs" / t.run_id / "checkpoint.pt")
        ref = load_checkpoint(reference / "runs" / t.run_id / "checkpoint.pt")
        assert mine["model"].keys() == ref["model"].keys()
        assert all(torch.equal(mine["model"][k], ref["model"][k]) for k in ref["model"])
        # the pruning callback's state (plan of the removed model, no masks) too
        assert mine["callbacks"].get("prune") == ref["callbacks"].get("prune")
        assert ("prune" in ref["callbacks"]) == (t is student)


def test_hidden_teacher_is_trained_and_stored_not_evaluated(tmp_path, tiny_data):
    path = write(tmp_path / "h.toml", tiny_data, extra="")
    summary = run_study(path, out=tmp_path / "out", progress=False, log=lambda s: None)
    study = summary.study
    (teacher,) = study.hidden
    assert summary.failed == 0 and summary.trained == 9
    rows = runs(tmp_path / "out" / "results.sqlite")
    assert rows[teacher.run_id]["status"] == "trained" and rows[teacher.run_id]["size"]
    assert teacher.run_id not in {r[0] for r in results(tmp_path / "out" / "results.sqlite")}
    again = run_study(path, out=tmp_path / "out", progress=False, log=lambda s: None)
    assert (again.trained, again.evaluated) == (0, 0)


# ---------------------------------------------------------------- pruned checkpoints


def test_pruned_student_checkpoint_is_smaller_and_reloads(reference, tiny_data, capsys):
    study = load_study(reference.parent / "s.toml", out=reference)
    by_variant = {t.grid["variant"]: t for t in study.trainings if t.grid["seed"] == 0}
    plain, pruned = by_variant["plain"], by_variant["kd pruned"]
    plain_ckpt = reference / "runs" / plain.run_id / "checkpoint.pt"
    pruned_ckpt = reference / "runs" / pruned.run_id / "checkpoint.pt"

    small, config = load_model(pruned_ckpt)
    full, _ = load_model(plain_ckpt)
    assert config == pruned.config and small.prune_plan
    n_small = sum(p.numel() for p in small.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert n_small < n_full
    assert pruned_ckpt.stat().st_size < plain_ckpt.stat().st_size
    ckpt = load_checkpoint(pruned_ckpt)
    pruning = ckpt["callbacks"]["prune"]  # removed for real: its plan, no masks
    assert ckpt["complete"] and pruning["prune_masks"] == {} and pruning["prune_plan"]

    rows = runs(reference / "results.sqlite")
    size = {k: json.loads(r["size"]) for k, r in rows.items()}
    assert size[pruned.run_id]["mbit"] < size[plain.run_id]["mbit"]
    # binsense summary --checkpoint counts the smaller model
    assert main(["summary", "--checkpoint", str(pruned_ckpt), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["total_bits"] == size[pruned.run_id]["total_bits"]


def test_train_with_prune_returns_the_removed_model(tiny_data, tmp_path):
    config = base_config(tiny_data, prune={"target": 0.5, "block_size": 8, "begin": 0.0,
                                           "end": 0.5, "every": 2})  # fmt: skip
    result = train(config, tmp_path / "run", progress=False, log=lambda s: None)
    assert result.model.prune_plan
    again, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(result.model(x), again(x))
    # a finished pruned run resumes to itself (no teacher, no training needed)
    resumed = train(config, tmp_path / "run", resume=True, progress=False, log=lambda s: None)
    with torch.no_grad():
        assert torch.equal(resumed.model(x), again(x))


def test_model_without_prunable_blocks_is_refused(tiny_data):
    config = base_config(tiny_data, model_options={"width": 0.125},
                         prune={"target": 0.5, "block_size": 16})  # fmt: skip
    with pytest.raises(BinsenseError, match="no block that splits into units of 16"):
        train(config, None, progress=False, log=lambda s: None)


# ---------------------------------------------------------------- distillation in train()


def test_train_distills_from_a_checkpoint(tiny_data, tmp_path):
    teacher = base_config(tiny_data, model="mnist_bnn_float", epochs=1)
    train(teacher, tmp_path / "teacher", progress=False, log=lambda s: None)
    ckpt = tmp_path / "teacher" / "checkpoint.pt"

    described = base_config(tiny_data, distill={"teacher": {"model": "mnist_bnn_float",
                                                            "epochs": 1}})  # fmt: skip
    assert described.teacher_config() == teacher
    with pytest.raises(BinsenseError, match="train the teacher first and pass its checkpoint"):
        train(described, None, progress=False, log=lambda s: None)
    result = train(described, tmp_path / "s1", teacher=ckpt, progress=False, log=lambda s: None)
    assert result.provenance["teacher"]["config_hash"] == teacher.config_hash()

    # another teacher's checkpoint is refused
    wrong = base_config(tiny_data, distill={"teacher": {"model": "mnist_bnn_float"}})
    with pytest.raises(BinsenseError, match="was trained with config"):
        train(wrong, None, teacher=ckpt, progress=False, log=lambda s: None)

    # the command line: a teacher checkpoint path in the config
    by_path = base_config(tiny_data, distill={"teacher_checkpoint": str(ckpt)})
    other = train(by_path, None, progress=False, log=lambda s: None)
    mine, ref = other.model.state_dict(), result.model.state_dict()
    assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref)
    unfinished = base_config(tiny_data, model="mnist_bnn_float", epochs=2)
    train(unfinished, tmp_path / "half", stop_after=1, progress=False, log=lambda s: None)
    half = base_config(tiny_data, distill={"teacher_checkpoint": str(tmp_path / "half")})
    with pytest.raises(BinsenseError, match="holds 1 of its 2 epochs"):
        train(half, None, progress=False, log=lambda s: None)


# ---------------------------------------------------------------- report


def test_report_shows_each_model_size(reference):
    study = load_study(reference.parent / "s.toml", out=reference)
    files = write_report(study, reference / "report")
    text = files.markdown.read_text()
    assert "| size (Mbit) | fully binary |" in text
    assert "accuracy vs size along the pruning sweep" in text  # the KD / no-KD figure
    assert "accuracy_vs_mbit" in text
    with ResultStore(reference / "results.sqlite", readonly=True) as store:
        for t in study.trainings:
            size = store.run_row(t.run_id)["size"]
            line = next(row for row in text.splitlines() if row.startswith(f"| {t.run_id} |"))
            assert f"| {size['mbit']:.4f} |" in line
            assert ("| no |" in line) == (not size["fully_binary"])


# ---------------------------------------------------------------- several grids


def test_several_grids_are_the_union_of_their_expansions(tmp_path, tiny_data):
    path = write(tmp_path / "s.toml", tiny_data)
    text = path.read_text().replace("[train.grid]\nseed = [0, 1]", "[[train.grid]]\nseed = [0, 1]")
    text = text.replace("\n[[condition]]", '\n[[train.grid]]\nseed = [0]\nlr = [0.01, 0.02]\n\n'
                        "[[condition]]", 1)  # fmt: skip
    path.write_text(text)
    study = load_study(path)
    # 10 of the first grid; of the second, lr = 0.01 is seed 0's "plain" point again
    assert len(study.trainings) == 11
    assert {t.config.lr for t in study.trainings} == {0.01, 0.02}

    path.write_text(text.replace("lr = [0.01, 0.02]", "lrr = [0.01, 0.02]"))
    with pytest.raises(StudyFileError, match=r"\[\[train.grid\]\] #2 unknown key 'lrr'"):
        load_study(path)
    path.write_text(text.replace("[[train.grid]]\nseed = [0]\n", "[[train.grid]]\nseed = 0\n"))
    with pytest.raises(StudyFileError, match=r"\[\[train.grid\]\] #2 'seed' must be a non-empty"):
        load_study(path)


def test_s3_study_file():
    """studies/s3_glt.toml: every preset loads; the cpu preset runs 5 encoders x 3 seeds on
    the same fully binary model, a pruning sweep with and without KD, one hidden teacher."""
    from binsense.compress.summary import summarize_model

    path = REPO / "studies" / "s3_glt.toml"
    for preset in ("smoke", "cpu", "paper"):
        load_study(path, preset)
    study = load_study(path, "cpu")
    assert len(study.trainings) == 22 and len(study.hidden) == 1
    (teacher,) = study.hidden
    assert teacher.config.model == "compact_bnn_float" and teacher.config.epochs == 8
    encoders = [t for t in study.trainings if "w2" not in t.grid["variant"]]
    assert len(encoders) == 15 and {t.config.seed for t in encoders} == {0, 1, 2}
    assert len({json.dumps(t.config.model_options, sort_keys=True) for t in encoders}) == 5
    for t in encoders[:5]:
        size = summarize_model(t.config.model, t.config.dataset, t.config.model_options)
        assert size.fully_binary == (t.grid["variant"] != "float input")
    sweep = [t for t in study.trainings if "w2" in t.grid["variant"]]
    assert sorted(t.config.prune.target for t in sweep if t.config.prune) == [
        0.25,
        0.25,
        0.5,
        0.5,
        0.75,
        0.75,
    ]
    assert sum(t.teacher_id == teacher.run_id for t in sweep) == 3
    w2 = next(t for t in sweep if t.config.prune is None)
    assert summarize_model(w2.config.model, "cifar10", w2.config.model_options).mbit > 1
