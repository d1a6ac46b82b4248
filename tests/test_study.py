"""Studies: schema errors, grid expansion, content-derived run ids, skip-on-rerun, kill -9
resume, results export and reports — on a generated image folder and a tiny model.

Two test-only condition kinds are registered here (``study_probe``: seeded Gaussian input
noise with ``level`` and ``draws`` draws, optionally slow; ``study_bits``: input
quantised to ``bits`` bits). The kill test's subprocess imports this module to get them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import make_imagefolder
from pydantic import Field, field_validator
from torch import Tensor, nn

from binsense.cli import main
from binsense.errors import BinsenseError, unknown_name
from binsense.evaluate.conditions import Condition, condition_kinds, register_condition
from binsense.study import load_study, run_study, study_rows
from binsense.study.runner import study_lock
from binsense.study.schema import StudyFileError, run_id_for
from binsense.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


class Probe(Condition):
    """Test-only: Gaussian noise on the input, one fixed seed per draw; sleeps ``delay``."""

    kind: ClassVar[str] = "study_probe"
    level: float = Field(0.0, ge=0, description="noise σ (fraction of full scale)")
    draws: int = Field(2, ge=1)
    delay: float = 0.0
    pattern: str = "gauss"

    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        if value != "gauss":
            raise unknown_name("noise pattern", value, ["gauss"])
        return value

    def draw_count(self) -> int:
        return self.draws

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator:
        time.sleep(self.delay)
        gen = torch.Generator().manual_seed(draw)

        def transform(x: Tensor) -> Tensor:
            return (x + self.level * torch.randn(x.shape, generator=gen)).clamp(0, 1)

        yield transform


class Bits(Condition):
    """Test-only: input quantised to ``bits`` bits."""

    kind: ClassVar[str] = "study_bits"
    bits: int = Field(8, ge=1)

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator:
        steps = 2**self.bits - 1
        yield lambda x: torch.round(x * steps) / steps


for _cls in (Probe, Bits):
    if _cls.kind not in condition_kinds():
        register_condition(_cls)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_imagefolder(tmp_path_factory.mktemp("imgs"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BINSENSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield root


STUDY = """\
[study]
name = "tiny"
description = {description}

[train]
dataset = "imagefolder:{data}"
model = "mnist_bnn"
model_options = {{ width = 0.125 }}
epochs = 1
batch_size = 8
{train}
[train.grid]
{grid}

[[condition]]
kind = "clean"

[[condition]]
kind = "study_probe"
level = [0.2, 0.5]
draws = {draws}
delay = {delay}
{evaluate}
[evaluation]
batch_size = 16

[presets.smoke]
train = {{ epochs = 1 }}
evaluation = {{ max_draws = 1 }}
"""


def write_study(
    path: Path,
    data: Path,
    *,
    description: str = "tiny test study",
    train: str = "",
    grid: str = "seed = [0, 1]",
    draws: int = 2,
    delay: float = 0.0,
    evaluate: str = "",
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        STUDY.format(
            description=json.dumps(description),
            data=data,
            train=train,
            grid=grid,
            draws=draws,
            delay=delay,
            evaluate=evaluate,
        )  # fmt: skip
    )
    return path


@pytest.fixture(scope="module")
def finished(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished study whose training grid varies lr and seed, with level and bits sweeps."""
    path = write_study(
        tmp_path_factory.mktemp("finished") / "tiny.toml",
        data_root,
        description="<script>alert('x')</script> & more",
        grid="seed = [0, 1]\nlr = [0.003, 0.03]",
        evaluate='\n[[condition]]\nkind = "study_bits"\nbits = [2, 4, 8]\n',
    )
    run_study(path, progress=False)
    return path


def store_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, condition_id, draw, accuracy, loss, n FROM results "
            "ORDER BY run_id, condition_id, draw"
        ).fetchall()


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("epochs = 1\nbatch", "epoch = 1\nbatch",
         "[train] unknown key 'epoch' — did you mean 'epochs'?"),
        ("epochs = 1\nbatch", 'epochs = "two"\nbatch',
         "[train] 'epochs' must be an integer, got 'two'"),
        ('"imagefolder:', '"mnsit" #', "[train] unknown data set 'mnsit' — did you mean 'mnist'?"),
        ('model = "mnist_bnn"', 'model = "mnist_bn"',
         "[train] unknown model 'mnist_bn' — did you mean 'mnist_bnn'?"),
        ("width = 0.125", "widht = 0.125",
         "[train] model 'mnist_bnn' has no option 'widht' — did you mean 'width'?"),
        ('kind = "clean"', 'kind = "claen"',
         "[[condition]] #1 unknown condition kind 'claen' — did you mean 'clean'?"),
        ("level = [0.2, 0.5]", 'level = [0.2, "high"]',
         "[[condition]] #2 (kind \"study_probe\") 'level' must be a number, got 'high'"),
        ("draws = 2", "draw = 2",
         "[[condition]] #2 (kind \"study_probe\") unknown parameter 'draw' — did you mean "
         "'draws'?"),
        ("delay = 0.0", 'delay = 0.0\npattern = "gaus"',
         "[[condition]] #2 (kind \"study_probe\") unknown noise pattern 'gaus' — did you mean "
         "'gauss'? (valid: gauss)."),
        ("seed = [0, 1]", "sed = [0, 1]", "[train.grid] unknown key 'sed' — did you mean 'seed'?"),
        ("seed = [0, 1]", "seed = 3", "[train.grid] 'seed' must be a non-empty list of values"),
        ("max_draws = 1", "max_draw = 1",
         "[presets.smoke.evaluation] unknown key 'max_draw' — did you mean 'max_draws'?"),
        ("[evaluation]", "[evals]", "unknown section [evals] — did you mean [evaluation]?"),
        ("seed = [0, 1]", 'variant = [{ name = "a", lrr = 0.1 }]',
         "[train.grid] variant 'a': unknown key 'lrr' — did you mean 'lr'?"),
        ("seed = [0, 1]", 'seed = [0]\nvariant = [{ name = "a", seed = 1 }]',
         "[train.grid] variant 'a' sets 'seed', which the grid also varies"),
        ("seed = [0, 1]", "variant = [{ lr = 0.1 }]",
         "[train.grid] variant 1 must be a table with a 'name' string"),
        ("[evaluation]", '[report]\nfacet = { sensor_noise = "type" }\n[evaluation]',
         "[report] no [[condition]] block of kind 'sensor_noise'"),
        ("[evaluation]", "[report]\nheatmp = {}\n[evaluation]",
         "[report] unknown key 'heatmp' — did you mean 'heatmap'?"),
    ],
)  # fmt: skip
def test_schema_errors_are_one_clear_line(tmp_path, data_root, old, new, message):
    path = write_study(tmp_path / "s.toml", data_root)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(StudyFileError) as err:
        load_study(path)
    text = str(err.value)
    assert text == f"{path}: {message}" or (text.startswith(f"{path}: {message}"))
    assert "\n" not in text


def test_unknown_sensor_noise_type(tmp_path, data_root):
    pytest.importorskip("binsense.evaluate.noise_conditions")  # registers sensor_noise
    path = write_study(
        tmp_path / "s.toml", data_root,
        evaluate='\n[[condition]]\nkind = "sensor_noise"\ntype = ["column_offset", "pixl_gain"]\n'
        "level = 0.1\n",
    )  # fmt: skip
    with pytest.raises(StudyFileError) as err:
        load_study(path)
    assert str(err.value).startswith(
        f"{path}: [[condition]] #3 (kind \"sensor_noise\") unknown noise type 'pixl_gain' — "
        "did you mean 'pixel_gain'?"
    )


def test_unknown_preset_lists_presets(tmp_path, data_root):
    path = write_study(tmp_path / "s.toml", data_root)
    with pytest.raises(StudyFileError, match=r"unknown preset 'smok' \(presets: smoke\) — did you"):
        load_study(path, "smok")
    path.write_text(
        path.read_text().replace('name = "tiny"', 'name = "tiny"\ndefault_preset = "x"')
    )
    with pytest.raises(StudyFileError, match=r"unknown preset 'x' \(its study.default_preset\)"):
        load_study(path)


def test_toml_syntax_error_names_line_and_column(tmp_path, data_root):
    path = write_study(tmp_path / "s.toml", data_root)
    path.write_text(path.read_text().replace("epochs = 1\n", "epochs = \n", 1))
    with pytest.raises(StudyFileError, match=rf"^{path}:9:10: invalid TOML: "):
        load_study(path)


def test_cli_prints_schema_error_as_one_line(tmp_path, data_root, capsys):
    path = write_study(tmp_path / "s.toml", data_root, grid="sed = [0]")
    assert main(["study", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: [train.grid] unknown key 'sed' — did you mean 'seed'?"


def test_grid_expansion_and_presets(tmp_path, data_root):
    path = write_study(
        tmp_path / "s.toml", data_root, grid="seed = [0, 1, 2]\nlr = [0.001, 0.01]", draws=4,
        evaluate='\n[[condition]]\nkind = "study_bits"\nbits = [2, 4, 8]\n',
    )  # fmt: skip
    study = load_study(path)
    assert len(study.trainings) == 6
    assert study.varied == ("seed", "lr")
    assert [e.kind for e in study.evaluations] == [
        "clean",
        *["study_probe"] * 2,
        *["study_bits"] * 3,
    ]
    assert study.draws_per_run == 1 + 2 * 4 + 3
    assert study.out_dir == tmp_path / "s" and study.preset is None
    smoke = load_study(path, "smoke")
    assert smoke.draws_per_run == 6 and smoke.report_dir == tmp_path / "s" / "report-smoke"
    # a condition listed twice is evaluated once
    dup = path.read_text() + '\n[[condition]]\nkind = "clean"\n'
    path.write_text(dup)
    assert len(load_study(path).evaluations) == 6


def test_variants_link_settings_and_merge_model_options(tmp_path, data_root):
    grid = (
        "seed = [0, 1]\nvariant = [\n"
        '  { name = "wide", model_options = { width = 0.25 } },\n'
        '  { name = "slow", lr = 0.005 },\n]'
    )
    study = load_study(write_study(tmp_path / "s.toml", data_root, grid=grid))
    assert len(study.trainings) == 4 and study.varied == ("seed", "variant")
    by_label = {t.label(): t.config for t in study.trainings}
    wide, slow = by_label["seed=0, variant=wide"], by_label["seed=1, variant=slow"]
    assert wide.model_options == {"width": 0.25} and wide.lr == TrainConfig().lr
    assert slow.model_options == {"width": 0.125} and slow.lr == 0.005


def test_report_options_filter_heatmap_and_facet(finished, tmp_path):
    from binsense.study.report import write_report

    text = finished.read_text().replace(
        "[evaluation]", '[report]\nheatmap = { kind = ["clean", "study_bits"], bits = [2, 8] }\n'
        'facet = { study_bits = "bits" }\nsweep = { study_probe = [] }\n[evaluation]', 1,
    )  # fmt: skip
    path = finished.with_name("tiny_report.toml")
    path.write_text(text)
    study = load_study(path, out=finished.with_suffix(""))
    shown = [ev.label() for ev in study.evaluations
             if study.report.in_heatmap(ev.kind, ev.condition.params())]  # fmt: skip
    assert shown == ["clean", "study_bits(bits=2)", "study_bits(bits=8)"]
    files = write_report(study, tmp_path / "report")
    names = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    assert names == [
        "clean_accuracy_per_training.png",
        "heatmap_training_x_condition.png",
        "study_bits_vs_bits.png",
    ]
    md = files.markdown.read_text()
    assert "## Averages over each noise grid" in md
    assert "| lr=0.003 | study_bits |  | bits | 3/3 |" in md


def test_run_ids_are_stable_and_content_derived(tmp_path, data_root):
    a = load_study(write_study(tmp_path / "a.toml", data_root))
    b = load_study(write_study(tmp_path / "other" / "b.toml", data_root, train="threads = 1"))
    ids = [t.run_id for t in a.trainings]
    assert ids == [t.run_id for t in load_study(a.path).trainings]
    assert ids == [t.run_id for t in b.trainings]  # threads does not change the model
    assert ids == [TrainConfig(**t.config.to_dict()).config_hash() for t in a.trainings]
    assert len(set(ids)) == 2
    c = load_study(write_study(tmp_path / "c.toml", data_root, train="lr = 0.01"))
    assert not set(ids) & {t.run_id for t in c.trainings}
    # the test images are part of a condition's identity
    d = write_study(tmp_path / "d.toml", data_root)
    d.write_text(d.read_text().replace("batch_size = 16", "batch_size = 16\ntest_subset = 5"))
    assert {e.condition_id for e in a.evaluations}.isdisjoint(
        e.condition_id for e in load_study(d).evaluations
    )


# ---------------------------------------------------------------- runner


def test_rerun_skips_everything(finished, monkeypatch):
    study = load_study(finished)
    db = study.store_path
    before = store_rows(db)
    assert len(before) == len(study.trainings) * study.draws_per_run == 4 * 8
    stamps = [
        (r["run_id"], r["condition_id"], r["draw"], r["evaluated_at"]) for r in study_rows(study)
    ]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished study must not train again")

    monkeypatch.setattr("binsense.study.execute.train", no_training)
    summary = run_study(finished, progress=False)
    assert (summary.trained, summary.evaluated) == (0, 0)
    assert summary.skipped == len(study.trainings) * (1 + study.draws_per_run)
    assert store_rows(db) == before
    assert stamps == [
        (r["run_id"], r["condition_id"], r["draw"], r["evaluated_at"]) for r in study_rows(study)
    ]


def test_trained_runs_are_loaded_not_retrained_for_new_conditions(finished, monkeypatch, tmp_path):
    monkeypatch.setattr("binsense.study.execute.train", None)  # calling it would fail
    path = tmp_path / "more.toml"
    path.write_text(finished.read_text().replace("level = [0.2, 0.5]", "level = [0.2, 0.5, 0.8]"))
    summary = run_study(path, out=finished.with_suffix(""), progress=False)
    assert (summary.trained, summary.evaluated) == (0, 4 * 2)


def test_second_runner_on_the_same_folder_is_refused(tmp_path, data_root):
    path = write_study(tmp_path / "s.toml", data_root)
    with study_lock(tmp_path / "s"), pytest.raises(BinsenseError, match="another `binsense"):
        run_study(path, progress=False)


def _start(path: Path, out: Path) -> subprocess.Popen:
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import test_study; "
        "from binsense.study import run_study; "
        "run_study(sys.argv[1], out=sys.argv[2], progress=False, log=lambda s: None)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(out), str(Path(__file__).parent)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 90.0) -> bool:
    """Poll until ``ready()``; ``False`` if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.05)
    raise AssertionError("the study subprocess made no progress")


def _count(db: Path) -> int:
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def test_kill_9_and_restart_gives_the_rows_of_an_uninterrupted_run(tmp_path, data_root):
    """SIGKILL during training (best effort: training is short), then during evaluation;
    the resumed study must store exactly the rows of an uninterrupted run."""
    path = write_study(tmp_path / "kill.toml", data_root, draws=3, delay=0.15)
    study = load_study(path)
    total = len(study.trainings) * study.draws_per_run
    reference = _start(path, tmp_path / "reference")  # runs alongside, uninterrupted
    killed, db = tmp_path / "killed", tmp_path / "killed" / "results.sqlite"

    kills = 0
    for ready in (
        lambda: any((killed / "runs").glob("*/config.json")),  # training has started
        lambda: _count(db) >= 3,  # some draws are stored
    ):
        proc = _start(path, killed)
        if _wait_for(proc, ready):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()
    stored = _count(db)
    assert kills == 2 and stored < total
    summary = run_study(path, out=killed, progress=False)  # the restart, to completion
    assert summary.evaluated == total - stored
    assert reference.wait(120) == 0, reference.stderr.read().decode()

    rows = store_rows(db)
    assert len(rows) == total == len({r[:3] for r in rows})  # complete, no duplicates
    assert rows == store_rows(tmp_path / "reference" / "results.sqlite")


# ---------------------------------------------------------------- export and report


def test_results_export_formats(finished, capsys):
    study = load_study(finished)
    n = len(study.trainings) * study.draws_per_run

    assert main(["study", "results", str(finished), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == n
    first = table[0]
    expected = {"run_id", "seed", "config_hash", "train.lr", "kind", "param.level", "param.bits",
                "draw", "accuracy", "data_fingerprint", "torch", "evaluated_at"}  # fmt: skip
    assert expected <= set(first)
    assert 0 <= float(first["accuracy"]) <= 1

    assert main(["study", "results", str(finished), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == n and rows[0]["run_id"] == first["run_id"]
    assert {r["kind"] for r in rows} == {"clean", "study_probe", "study_bits"}

    assert main(["study", "results", str(finished), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| study | run_id |") and len(lines) == n + 2


def test_show_prints_the_plan(finished, capsys):
    assert main(["study", "show", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "4 training(s) x 6 condition(s) (8 draws per model) = 36 steps; done 36/36" in out
    assert out.count("trained, 8/8 draws") == 4


def test_report_writes_markdown_html_and_figures(finished, capsys):
    assert main(["study", "report", str(finished)]) == 0
    assert "report:" in capsys.readouterr().out
    folder = finished.with_suffix("") / "report"
    names = sorted(p.name for p in (folder / "figures").glob("*.png"))
    assert names == [
        "clean_accuracy_per_training.png",
        "heatmap_training_x_condition.png",
        "study_bits_vs_bits.png",
        "study_probe_vs_level.png",
    ]
    for name in names:
        assert (folder / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert page.count("data:image/png;base64,") == 4 and 'src="figures/' not in page
    md = (folder / "report.md").read_text()
    assert "<script>" not in md and "![study_probe: accuracy vs level]" in md
    assert "| lr=0.003 | study_probe level=0.2 |" in md
    assert "normalised (% of clean)" in md


def test_report_before_running_is_a_clear_error(tmp_path, data_root, capsys):
    path = write_study(tmp_path / "s.toml", data_root)
    assert main(["study", "report", str(path)]) == 2
    assert "run `binsense study run" in capsys.readouterr().err


# ---------------------------------------------------------------- the shipped quickstart


QUICKSTART = REPO / "studies" / "quickstart.toml"


def test_quickstart_file_is_valid_in_every_preset():
    study = load_study(QUICKSTART)
    assert study.preset == "cpu" and set(study.presets) == {"smoke", "cpu", "paper"}
    assert study.evaluations[0].kind == "clean"
    assert len(study.trainings) == 2 and study.draws_per_run == 55
    assert len(load_study(QUICKSTART, "paper").trainings) == 3
    assert len(load_study(QUICKSTART, "smoke").trainings) == 1


def test_quickstart_smoke_runs_on_real_mnist(tmp_path):
    data = Path(os.environ.get("BINSENSE_DATA", REPO.parent / "shared" / "data"))
    if not (data / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST under {data}")
    summary = run_study(QUICKSTART, "smoke", data_dir=data, out=tmp_path, progress=False)
    study = summary.study
    assert (summary.trained, summary.evaluated) == (1, study.draws_per_run)
    rows = study_rows(study)
    clean = next(r["accuracy"] for r in rows if r["kind"] == "clean")
    assert clean > 0.25  # 300 training images, 1 epoch, tiny model: above chance (0.1)


@pytest.mark.parametrize(
    ("name", "trainings"), [("s0_fpn_bn", {"smoke": 2, "cpu": 6, "paper": 6, "full": 10}),
                            ("s1_bn_analog", {"smoke": 3, "cpu": 6, "full": 14, "paper": 14}),
                            ("x_design_fpn", {"smoke": 6, "cpu": 18, "paper": 18, "q5_cpu": 18,
                                              "q5_paper": 18}),
                            ("x_encoder_fpn", {"smoke": 5, "cpu": 15, "paper": 15}),
                            ("x_bn_depth", {"smoke": 4, "cpu": 60, "paper": 60}),
                            ("x_cnv_ablation", {"smoke": 16, "full": 16})],
)  # fmt: skip
def test_shipped_study_files_are_valid_in_every_preset(name, trainings):
    for preset, count in trainings.items():
        study = load_study(REPO / "studies" / f"{name}.toml", preset)
        assert len(study.trainings) == count
        assert study.evaluations[0].kind == "clean"


def test_train_recipe_gives_the_recipes_fields_under_the_files(tmp_path, data_root):
    from binsense.train import TrainConfig
    from binsense.train.recipes import get_recipe

    # the file's dataset, model, options, epochs and batch size override the recipe's
    path = write_study(tmp_path / "s.toml", data_root, train='recipe = "cifar10-cnv-30min"')
    study = load_study(path)
    recipe = get_recipe("cifar10-cnv-30min").fields
    for training in study.trainings:
        c = training.config
        assert c.lr == recipe["lr"] and c.label_smoothing == 0.1 and c.flip
        assert c.precision == "auto" and c.compile and c.channels_last
        assert c.epochs == 1 and c.model == "mnist_bnn" and c.model_options == {"width": 0.125}
    # the same config as the CLI's --recipe with the same overrides: the same run id
    fields = {**get_recipe("cifar10-cnv-30min").config_fields(), **{
        "dataset": f"imagefolder:{data_root}", "model": "mnist_bnn",
        "model_options": {"width": 0.125}, "epochs": 1, "batch_size": 8, "seed": 0}}  # fmt: skip
    assert study.trainings[0].run_id == run_id_for(TrainConfig(**fields))
    path.write_text(path.read_text().replace("cifar10-cnv-30min", "cifar10-cnv-3min"))
    with pytest.raises(StudyFileError, match="unknown recipe 'cifar10-cnv-3min' — did you mean"):
        load_study(path)


def test_a_preset_naming_a_recipe_trains_the_recipe_over_the_files_table():
    from binsense.train.recipes import get_recipe

    # s2's [train] is a width-0.25 VGG-small with frozen BN; its full preset names the
    # cnv-30min recipe, which must win over the file's model, epochs and model options
    study = load_study(REPO / "studies" / "s2_design.toml", "full")
    recipe = get_recipe("cifar10-cnv-30min")
    assert len(study.trainings) == 12
    for training in study.trainings:
        c = training.config
        assert c.model == "cnv" and c.epochs == 40 and c.train_subset is None
        assert "bn_affine" not in c.model_options and c.model_options["head"] == "float"
    sign = [t for t in study.trainings if t.config.model_options.get("design") is None]
    # "sign" is the recipe itself: the run id of `binsense train --recipe ... --seed S`
    for t in sign:
        fields = {**recipe.config_fields(), "seed": t.config.seed}
        assert t.run_id == run_id_for(TrainConfig(**fields))
    # the other presets keep the file's table
    cpu = load_study(REPO / "studies" / "s2_design.toml", "cpu")
    assert cpu.trainings[0].config.model == "vgg_small"
    assert cpu.trainings[0].config.model_options["bn_affine"] is False
