"""Study grids of any size (issue 24): counted before they are expanded, refused above
:data:`~binsense.study.schema.MAX_GRID_POINTS` with the count, and expanded in time
linear in the number of points (one meta-device model build per distinct model, a run-id
index for teacher look-ups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from binsense.study import load_study
from binsense.study.schema import MAX_GRID_POINTS, StudyFileError

BASE = '[train]\ndataset = "mnist"\nmodel = "mnist_bnn"\n'


def _ints(start: int, stop: int) -> str:
    return "[" + ", ".join(str(i) for i in range(start, stop)) + "]"


def _values(n: int, scale: float = 1e-6) -> str:
    return "[" + ", ".join(repr(round(0.001 + i * scale, 9)) for i in range(n)) + "]"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _refused(path: Path) -> str:
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message and f"{MAX_GRID_POINTS:,}" in message
    return message


def test_a_billion_point_grid_is_refused_with_its_count(tmp_path):
    """1,000 x 1,000 x 1,000 (a 22 kB file): counted, not expanded."""
    grid = f"seed = {_ints(0, 1000)}\nlr = {_values(1000)}\nepochs = {_ints(1, 1001)}\n"
    path = _write(tmp_path, f"{BASE}[train.grid]\n{grid}")
    message = _refused(path)
    assert "[train.grid] asks for 1,000,000,000 trainings" in message


def test_grid_blocks_are_summed_and_condition_grids_counted(tmp_path):
    block = f"[[train.grid]]\nseed = {_ints(0, 300)}\nlr = {_values(200)}\n"
    message = _refused(_write(tmp_path, BASE + block + block.replace("0.001", "0.002")))
    assert "asks for 120,000 trainings" in message and "summed over its 2 blocks" in message

    conditions = (
        '[[condition]]\nkind = "sensor_noise"\ntype = "column_offset"\n'
        f"level = {_values(400, 1e-4)}\ndraws = {_ints(1, 401)}\n"
    )
    message = _refused(_write(tmp_path, BASE + conditions))
    assert "[[condition]] asks for 160,000 conditions" in message


def test_a_ten_thousand_point_grid_expands_fully(tmp_path):
    """100 seeds x 100 learning rates: every point once, with its own run id (this took
    56 s, a meta-device model build per point; now one build per distinct model)."""
    path = _write(tmp_path, f"{BASE}[train.grid]\nseed = {_ints(0, 100)}\nlr = {_values(100)}\n")
    study = load_study(path)
    assert len(study.trainings) == 10_000
    assert len({t.run_id for t in study.trainings}) == 10_000
    pairs = {(t.config.seed, t.config.lr) for t in study.trainings}
    assert len(pairs) == 10_000 and {s for s, _ in pairs} == set(range(100))
    assert study.varied == ("seed", "lr")


def test_teachers_come_first_and_every_distinct_model_is_still_checked(tmp_path):
    seeds = _ints(0, 50)
    teacher = 'distill = { teacher = { model = "mnist_bnn_float", seed = 0 } }\n'
    path = _write(tmp_path, f"{BASE}{teacher}[train.grid]\nseed = {seeds}\nlr = {_values(20)}\n")
    study = load_study(path)
    assert len(study.trainings) == 1000 and len(study.hidden) == 20
    order = study.training_order()
    position = {t.run_id: i for i, t in enumerate(order)}
    assert len(order) == 1020
    assert all(position[t.teacher_id] < position[t.run_id] for t in study.trainings)
    assert study.training(study.hidden[0].run_id) is study.hidden[0]

    options = 'model_options = [{ width = 0.5 }, { width = 0.5, design = "2x3" }]'
    with pytest.raises(StudyFileError, match="unknown DeSign kernel .2x3."):  # not skipped
        load_study(_write(tmp_path, f"{BASE}[train.grid]\nseed = {seeds}\n{options}\n"))
