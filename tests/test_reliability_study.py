"""Reliability of studies (issue 15), on a tiny generated image folder and a tiny model.

One test class per class of failure: results on mixed data, settings that change the
weights but not the run id, names that would escape the study folder, code in exports,
read-only stores and full disks, grid points that diverge, file modes and temporary
files left by a kill, a disk that fills while a training writes its checkpoint (the
study stops), and (marked slow) a soak of random ``kill -9``.

Two test-only condition kinds are registered here: ``rel_probe`` (seeded input noise,
with a string and a signed parameter, optionally failing or turning the input to NaN on
one draw) — the soak's subprocesses import this module to get it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import fill_disk_on, make_imagefolder
from PIL import Image
from torch import Tensor, nn

from binsense.cli import main
from binsense.errors import BinsenseError
from binsense.evaluate.conditions import Condition, condition_kinds, register_condition
from binsense.study import load_study, run_study, study_rows
from binsense.study.export import csv_safe, format_rows
from binsense.study.report import write_report
from binsense.study.runner import SettingsMismatchError
from binsense.study.store import DataMismatchError, ResultStore, StoreError

REPO = Path(__file__).resolve().parents[1]


class RelProbe(Condition):
    """Test-only: seeded Gaussian input noise; draw ``fail_draw`` raises OverflowError,
    draw ``nan_draw`` sets the last parameter to NaN (a model whose outputs are NaN)."""

    kind: ClassVar[str] = "rel_probe"
    level: float = 0.0
    draws: int = 2
    note: str = "plain"
    offset: float = 0.0
    fail_draw: int = -1
    nan_draw: int = -1
    delay: float = 0.0

    def draw_count(self) -> int:
        return self.draws

    @contextmanager
    def applied(self, model: nn.Module, draw: int) -> Iterator:
        time.sleep(self.delay)
        if draw == self.fail_draw:
            raise OverflowError("cannot convert float infinity to integer")
        gen = torch.Generator().manual_seed(draw)

        def transform(x: Tensor) -> Tensor:
            return (x + self.level * torch.randn(x.shape, generator=gen)).clamp(0, 1)

        last = list(model.parameters())[-1]
        saved = last.detach().clone()
        if draw == self.nan_draw:  # a diverged model: its outputs are NaN
            with torch.no_grad():
                last.fill_(float("nan"))
        try:
            yield transform
        finally:
            with torch.no_grad():
                last.copy_(saved)


if RelProbe.kind not in condition_kinds():
    register_condition(RelProbe)


STUDY = """\
[study]
name = {name}
description = {description}

[train]
dataset = "imagefolder:{data}"
model = "mnist_bnn"
model_options = {{ width = 0.125 }}
epochs = {epochs}
batch_size = 4
{train}
[train.grid]
{grid}

[[condition]]
kind = "clean"

[[condition]]
kind = "rel_probe"
level = [0.2, 0.5]
draws = {draws}
delay = {delay}
{probe}
[evaluation]
batch_size = 16
{presets}"""


def write_study(
    path: Path,
    data: Path,
    *,
    name: str = "rel",
    description: str = "reliability test study",
    epochs: int = 1,
    train: str = "",
    grid: str = "seed = [0]",
    draws: int = 2,
    delay: float = 0.0,
    probe: str = "",
    presets: str = "",
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        STUDY.format(
            name=json.dumps(name),
            description=json.dumps(description),
            data=data,
            epochs=epochs,
            train=train,
            grid=grid,
            draws=draws,
            delay=delay,
            probe=probe,
            presets=presets,
        )  # fmt: skip
    )
    return path


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BINSENSE_CACHE", str(tmp_path_factory.mktemp("rel_cache")))
        yield


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A fresh tiny image folder per test (tests change its images)."""
    return make_imagefolder(tmp_path / "imgs", classes=2, train=6, test=3)


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("rel_imgs"), classes=2, train=6, test=3)


def store_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, condition_id, draw, accuracy, loss, n, data_fingerprint "
            "FROM results ORDER BY run_id, condition_id, draw"
        ).fetchall()


def invert_images(folder: Path) -> None:
    for png in folder.rglob("*.png"):
        with Image.open(png) as img:
            pixels = np.asarray(img)
        Image.fromarray(255 - pixels, "L").save(png)


# ---------------------------------------------------------------- 2. data never mixes


class TestDataMixing:
    def test_rerun_on_other_test_images_is_refused_naming_both_fingerprints(self, tmp_path, data):
        path = write_study(tmp_path / "s.toml", data)
        run_study(path, progress=False)
        db = tmp_path / "s" / "results.sqlite"
        before = store_rows(db)
        (old,) = {r[6] for r in before}

        invert_images(data / "test")  # the inverted test images
        path.write_text(path.read_text().replace("draws = 2", "draws = 3"))
        with pytest.raises(DataMismatchError) as err:
            run_study(path, progress=False)
        text = str(err.value)
        assert old[:16] in text and "\n" not in text and "never mixed" in text
        new = text.split("now has ")[1][:16]
        assert new != old[:16] and len(new) == 16
        assert store_rows(db) == before  # no row on the new images joined the old ones

    def test_the_store_refuses_a_row_on_other_data(self, tmp_path):
        row = {
            "run_id": "r", "condition_id": "c", "draw": 0, "kind": "clean", "params": {},
            "label": "clean", "accuracy": 0.9, "loss": 0.1, "n": 10, "data_fingerprint": "a" * 64,
            "versions": {}, "device": "cpu", "started": "t", "finished": "t", "seconds": 0.1,
        }  # fmt: skip
        with ResultStore(tmp_path / "r.sqlite") as store:
            store.start_run("r", {"seed": 0, "dataset": "d", "model": "m"}, "h")
            assert store.add_result(row)
            other = {**row, "draw": 1, "data_fingerprint": "b" * 64, "accuracy": 0.09}
            with pytest.raises(DataMismatchError, match=f"{'a' * 16}.*{'b' * 16}"):
                store.add_result(other)
            assert store.add_result({**row, "draw": 1})  # same data: fine
            assert len(store.results()) == 2

    def test_the_report_refuses_a_store_that_already_mixes(self, tmp_path, shared_data):
        path = write_study(tmp_path / "s.toml", shared_data)
        run_study(path, progress=False)
        db = tmp_path / "s" / "results.sqlite"
        with sqlite3.connect(db) as conn:  # as an older binsense could have stored it
            conn.execute("UPDATE results SET data_fingerprint = ? WHERE draw = 1", ("f" * 64,))
        with pytest.raises(DataMismatchError, match="f" * 16 + ".*will not pool"):
            write_report(load_study(path))

    def test_resume_on_changed_training_images_is_refused(self, tmp_path, data):
        from binsense.train import train

        path = write_study(tmp_path / "s.toml", data, epochs=2)
        study = load_study(path)
        (t,) = study.trainings
        train(t.config, study.run_dir(t.run_id), stop_after=1, log=lambda s: None)
        invert_images(data / "train")
        with pytest.raises(DataMismatchError, match="1 epoch.*train data with fingerprint"):
            run_study(path, progress=False)


# ---------------------------------------------------------------- 2. settings not in the id


class TestResumeSettings:
    def test_resume_with_another_thread_count_is_refused(self, tmp_path, shared_data):
        from binsense.train import train

        path = write_study(tmp_path / "s.toml", shared_data, epochs=2, train="threads = 1")
        study = load_study(path)
        (t,) = study.trainings
        folder = study.run_dir(t.run_id)
        threads = torch.get_num_threads()
        try:
            train(t.config, folder, stop_after=1, log=lambda s: None)
        finally:
            torch.set_num_threads(threads)
        recorded = json.loads((folder / "config.json").read_text())["environment"]
        assert recorded["threads"] == 1

        other = write_study(tmp_path / "s2.toml", shared_data, epochs=2, train="threads = 2")
        assert load_study(other).trainings[0].run_id == t.run_id  # same run id
        with pytest.raises(SettingsMismatchError) as err:
            run_study(other, out=tmp_path / "s", progress=False)
        text = str(err.value)
        assert "threads = 1" in text and "threads = 2" in text and "\n" not in text
        assert torch.get_num_threads() == threads  # the runner restores the count

        summary = run_study(path, progress=False)  # the recorded count: resumes
        assert summary.trained == 1 and not summary.failures
        with ResultStore(tmp_path / "s" / "results.sqlite", readonly=True) as store:
            assert store.runs()[0]["versions"]["threads"] == 1  # recorded in the store


# ---------------------------------------------------------------- 3. no path escapes


class TestPathEscapes:
    @pytest.mark.parametrize("preset", ["/../../escaped", "../escaped", "x/../../../escaped"])
    def test_a_preset_name_cannot_write_outside_the_study_folder(
        self, tmp_path, shared_data, preset, capsys
    ):
        presets = f"\n[presets.{json.dumps(preset)}]\nevaluation = {{ batch_size = 8 }}\n"
        path = write_study(tmp_path / "s.toml", shared_data, presets=presets)
        for argv in (["study", "run", str(path), "--preset", preset, "--no-progress"],
                     ["study", "report", str(path), "--preset", preset]):  # fmt: skip
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and "\n" not in err
            assert preset in err or "preset" in err
        assert not (tmp_path / "escaped").exists()
        assert not (tmp_path / "s" / "runs").exists()  # refused before any training

    def test_run_ids_are_checked_as_names(self, tmp_path, shared_data):
        study = load_study(write_study(tmp_path / "s.toml", shared_data))
        with pytest.raises(BinsenseError, match="run id"):
            study.run_dir("../../x")


# ---------------------------------------------------------------- 4. exports carry no code


EVIL_NAME = '=HYPERLINK("http://evil.example","x")'
EVIL_TEXT = "[click](javascript:alert(1)) <img src=x onerror=alert(1)>\n# Owned\n- item"


@pytest.fixture(scope="module")
def evil(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_study(
        tmp_path_factory.mktemp("evil") / "evil.toml",
        shared_data,
        name=EVIL_NAME,
        description=EVIL_TEXT,
        grid='variant = [{ name = "@SUM(A1)", lr = 0.003 }, { name = "-2+3", lr = 0.002 }]',
        draws=1,
        probe="note = \"+cmd|' /C calc'!A0\"\noffset = -0.25",
    )
    run_study(path, progress=False)
    return path


class TestExportInjection:
    def test_csv_cells_that_start_like_formulas_are_neutralised(self, evil, capsys):
        assert main(["study", "results", str(evil), "--format", "csv"]) == 0
        table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert table
        for row in table:
            for key, value in row.items():
                assert not value.startswith(("=", "+", "@", "\t", "\r")), (key, value)
                if value.startswith("-"):  # only numbers may start with a minus
                    float(value)
        assert {r["study"] for r in table} == {"'" + EVIL_NAME}
        assert {r["train.variant"] for r in table} == {"'@SUM(A1)", "'-2+3"}
        probe = [r for r in table if r["kind"] == "rel_probe"]
        assert {r["param.note"] for r in probe} == {"'+cmd|' /C calc'!A0"}
        assert {r["param.offset"] for r in probe} == {"-0.25"}  # a number stays a number
        assert all(0 <= float(r["accuracy"]) <= 1 for r in table)

    def test_csv_safe_only_touches_text(self):
        assert csv_safe(-1.5) == -1.5 and csv_safe(-3) == -3
        assert [csv_safe(s) for s in ("=1", "+1", "-1", "@a", "\t1", "\r1", "a=1")] == [
            "'=1", "'+1", "'-1", "'@a", "'\t1", "'\r1", "a=1",
        ]  # fmt: skip
        text = format_rows([{"a": "=cmd", "b": -2.0, "c": None}], "csv")
        assert text == "a,b,c\n'=cmd,-2.0,\n"

    def test_markdown_report_has_no_live_link_html_or_heading(self, evil, tmp_path):
        files = write_report(load_study(evil), tmp_path / "report")
        md = files.markdown.read_text()
        headings = [line for line in md.splitlines() if line.startswith("#")]
        assert all(not line.startswith("# ") or line.startswith("# Study ") for line in headings)
        assert "# Owned" not in [h.lstrip("#").strip() for h in headings]
        assert not re.search(r"(?<!\\)\]\(javascript:", md) and "[click]" not in md
        assert "<img" not in md and "<script" not in md
        assert "\n- item" not in md
        assert r"\[click\](javascript:alert(1))" in md  # shown as text
        page = files.html.read_text()
        assert "<img src=x" not in page and "&lt;img src=x" in page

    def test_markdown_export_escapes_cells(self, evil, capsys):
        assert main(["study", "results", str(evil), "--format", "markdown"]) == 0
        out = capsys.readouterr().out
        assert not re.search(r"(?<!\\)\]\(javascript:", out) and "<img" not in out


# ---------------------------------------------------------------- 5. read-only, disk full


@pytest.fixture(scope="module")
def finished(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_study(tmp_path_factory.mktemp("finished") / "f.toml", shared_data)
    run_study(path, progress=False)
    return path


def _readonly_runner() -> list[str] | None:
    """A command prefix that runs with the study folder read-only, or None."""
    if os.geteuid() != 0:
        return []  # chmod is enough
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30, check=False)
    return ["unshare", "-m"] if probe.returncode == 0 else None


class TestReadOnlyStore:
    def test_readers_never_write(self, finished, tmp_path):
        folder = finished.with_suffix("")
        db = folder / "results.sqlite"

        def listing() -> dict[str, int]:  # (SQLite may add its -wal/-shm companions)
            return {
                p.name: p.stat().st_mtime_ns
                for p in folder.iterdir()
                if not p.name.endswith(("-wal", "-shm"))
            }

        before = listing()
        digest = db.read_bytes()
        study = load_study(finished)
        assert study_rows(study)
        with ResultStore(db, readonly=True) as store:
            assert store.runs()
            with pytest.raises(StoreError, match="read-only"):
                store.start_run("x", {"seed": 0, "dataset": "d", "model": "m"}, "h")
        write_report(study, tmp_path / "elsewhere")
        assert listing() == before
        assert db.read_bytes() == digest

    def test_results_show_report_work_in_a_read_only_folder(self, finished, tmp_path):
        prefix = _readonly_runner()
        if prefix is None:
            pytest.skip("cannot make a read-only folder here (root without unshare)")
        folder = tmp_path / "ro"
        shutil.copytree(finished.with_suffix(""), folder)
        out = tmp_path / "out"
        out.mkdir()
        commands = {
            "results": ["study", "results", str(finished), "--out", str(folder), "-o",
                        str(out / "r.csv")],
            "show": ["study", "show", str(finished), "--out", str(folder)],
            "report": ["study", "report", str(finished), "--out", str(folder),
                       "--report-dir", str(out / "report")],
            "report_here": ["study", "report", str(finished), "--out", str(folder)],
            "run": ["study", "run", str(finished), "--out", str(folder), "--no-progress"],
        }  # fmt: skip
        (out / "commands.json").write_text(json.dumps(commands))
        # every command in one interpreter (one import of torch), through the real CLI
        code = (
            "import contextlib, io, json, sys; sys.path.insert(0, sys.argv[1]); "
            "import test_reliability_study; from binsense.cli import main; "
            "out = {}\n"
            "for name, argv in json.load(open(sys.argv[2])).items():\n"
            "    o, e = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):\n"
            "        try: rc = main(argv)\n"
            "        except SystemExit as x: rc = x.code\n"
            "        except BaseException as x: rc, _ = 99, e.write(repr(x))\n"
            "    out[name] = [rc, o.getvalue(), e.getvalue()]\n"
            "json.dump(out, open(sys.argv[3], 'w'))"
        )
        argv = [sys.executable, "-c", code, str(Path(__file__).parent),
                str(out / "commands.json"), str(out / "results.json")]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if prefix:  # root: a read-only bind mount in a private mount namespace
            script = f'mount --bind -o ro {folder} {folder} && exec "$@"'
            cmd = [*prefix, "sh", "-c", script, "sh", *argv]
        else:
            cmd = argv
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        try:
            subprocess.run(cmd, env=env, timeout=300, check=True)
        finally:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
        result = json.loads((out / "results.json").read_text())

        rc, _, err = result["results"]
        assert rc == 0, err
        assert len((out / "r.csv").read_text().splitlines()) == 1 + 5
        rc, text, err = result["show"]
        assert rc == 0 and "done 6/6" in text, err
        rc, text, err = result["report"]
        assert rc == 0 and (out / "report" / "report.md").is_file(), err
        for name in ("report_here", "run"):
            rc, text, err = result[name]
            lines = err.strip().splitlines()
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
            assert "Traceback" not in err and "move it away" not in err
            assert "read-only" in err or "permission" in err.lower()
        assert "--report-dir" in result["report_here"][2]

    def test_a_full_disk_says_so_and_keeps_the_store(self, tmp_path):
        db = tmp_path / "r.sqlite"
        row = {
            "run_id": "r", "condition_id": "c", "draw": 0, "kind": "clean", "params": {},
            "label": "clean", "accuracy": 0.9, "loss": 0.1, "n": 10, "data_fingerprint": "a",
            "versions": {"pad": "x" * 3000}, "device": "cpu", "started": "t", "finished": "t",
            "seconds": 0.1,
        }  # fmt: skip
        with ResultStore(db) as store:
            store.start_run("r", {"seed": 0, "dataset": "d", "model": "m"}, "h")
            pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
            store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
            with pytest.raises(StoreError) as err:
                for draw in range(50):
                    store.add_result({**row, "draw": draw})
            text = str(err.value)
            assert "the disk is full" in text and "intact" in text and "\n" not in text
            assert "move it away" not in text and "run the study again" not in text
            stored = len(store.results())
        with ResultStore(db, readonly=True) as store:  # still readable, nothing lost
            assert len(store.results()) == stored > 0

    def test_a_foreign_sqlite_file_is_not_touched(self, tmp_path):
        db = tmp_path / "results.sqlite"
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE accounts(name TEXT)")
        before = db.read_bytes()
        for readonly in (False, True):
            with pytest.raises(StoreError, match="not a binsense results store"):
                ResultStore(db, readonly=readonly)
        assert db.read_bytes() == before

    def test_a_file_that_is_not_a_database(self, tmp_path):
        db = tmp_path / "results.sqlite"
        db.write_text("hello\n" * 1000)
        with pytest.raises(StoreError, match="not an SQLite database") as err:
            ResultStore(db)
        assert "run the study again" not in str(err.value)

    def test_a_lock_folder_is_a_clear_error(self, tmp_path, shared_data):
        path = write_study(tmp_path / "s.toml", shared_data)
        (tmp_path / "s" / ".lock").mkdir(parents=True)
        with pytest.raises(BinsenseError, match=r"\.lock' is a folder"):
            run_study(path, progress=False)


class TestFullDiskWhileTraining:
    def test_a_full_disk_in_a_training_stops_the_study_and_keeps_what_is_stored(
        self, tmp_path, shared_data, capsys, monkeypatch
    ):
        """The disk fills while the second training writes its checkpoint (issue 24): the
        study stops with one "the disk is full" line — not a failed grid point followed by
        the rest of the grid — and the first training's rows stay; a rerun finishes."""

        path = write_study(tmp_path / "s.toml", shared_data, grid="seed = [0, 1]")
        study = load_study(path)
        first, second = (t.run_id for t in study.training_order())
        fill_disk_on(monkeypatch, f"{os.sep}{second}{os.sep}.checkpoint.pt.")
        code = main(["study", "run", str(path), "--no-progress"])
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 1, captured.err  # an environment error, not a mistake
        assert lines[-1].startswith("error: ") and "the disk is full" in lines[-1], lines
        assert "grid point(s) failed" not in captured.err and "Traceback" not in captured.err
        assert "report:" not in captured.out  # stopped: no report of a half-run study
        with ResultStore(study.store_path, readonly=True) as store:
            assert store.run_status(first) == "trained"
            assert len(store.done_draws(first)) == study.draws_per_run  # nothing lost
            assert store.run_status(second) != "failed" and not store.failures()
            assert not store.done_draws(second)
        assert not list((tmp_path / "s").rglob("*.tmp"))

        monkeypatch.undo()  # space freed: the rerun trains the second run only
        summary = run_study(path, progress=False)
        assert summary.trained == 1 and not summary.failures
        with ResultStore(study.store_path, readonly=True) as store:
            assert store.run_status(second) == "trained"
            assert len(store.done_draws(second)) == study.draws_per_run

    def test_a_disk_error_under_another_exception_stops_the_study_too(
        self, tmp_path, shared_data, monkeypatch
    ):
        """A library that wraps the OSError, or keeps only its text (torch's C++ errors):
        still the environment, so the study stops instead of failing each grid point."""
        from binsense.io import WriteError
        from binsense.study import execute as runner

        def wrapped(*args, **kwargs):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "inductor-cache/x")
            except OSError as e:
                raise RuntimeError("compilation failed") from e

        def text_only(*args, **kwargs):
            raise RuntimeError("PytorchStreamWriter failed writing file: No space left on device")

        path = write_study(tmp_path / "s.toml", shared_data, grid="seed = [0, 1]")
        for fake in (wrapped, text_only):
            monkeypatch.setattr(runner, "train", fake)
            with pytest.raises(WriteError, match="the disk is full") as err:
                run_study(path, progress=False)
            assert "\n" not in str(err.value)
            with ResultStore(load_study(path).store_path, readonly=True) as store:
                assert not store.failures()


# ---------------------------------------------------------------- 6. divergence


class TestDivergence:
    def test_a_diverging_grid_point_is_recorded_and_the_study_goes_on(
        self, tmp_path, shared_data, capsys
    ):
        path = write_study(tmp_path / "s.toml", shared_data, grid="lr = [0.003, 1e30]")
        assert main(["study", "run", str(path), "--no-progress"]) == 1
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert err[-1].startswith("error: 1 grid point(s) failed") and "diverged" in err[-1]
        assert "report:" in captured.out  # the report is written all the same
        study = load_study(path)
        good, bad = study.trainings
        with ResultStore(study.store_path, readonly=True) as store:
            assert store.run_status(good.run_id) == "trained"
            assert store.run_status(bad.run_id) == "failed"
            (failure,) = store.failures()
            assert failure["run_id"] == bad.run_id and "diverged" in failure["reason"]
            assert len(store.done_draws(good.run_id)) == study.draws_per_run
            assert not store.done_draws(bad.run_id)
        md = (tmp_path / "s" / "report" / "report.md").read_text()
        assert "## Failures" in md and bad.run_id in md.split("## Failures")[1]
        assert main(["study", "show", str(path)]) == 0
        assert "failed:" in capsys.readouterr().out

    def test_a_loss_that_becomes_nan_fails_the_training(self, tmp_path, shared_data, monkeypatch):
        from binsense.study import execute as runner

        def nan_loss(*args, **kwargs):  # what the trainer raises when the loss is not finite
            raise BinsenseError(
                "the training loss became nan in epoch 1 (step 0); lower the learning rate "
                "(--lr). Finished epochs are kept in the checkpoint."
            )

        monkeypatch.setattr(runner, "train", nan_loss)
        path = write_study(tmp_path / "s.toml", shared_data, grid="seed = [0, 1]")
        summary = run_study(path, progress=False)
        assert [f.draw for f in summary.failures] == [-1, -1]
        assert all("training loss became nan" in f.reason for f in summary.failures)
        assert summary.trained == summary.evaluated == 0

    def test_inf_batch_norm_statistics_fail_the_training(self, tmp_path, shared_data, monkeypatch):
        from binsense.study import execute as runner

        real = runner.train

        def diverging(*args, **kwargs):
            result = real(*args, **kwargs)
            for m in result.model.modules():
                if hasattr(m, "running_var") and m.running_var is not None:
                    m.running_var.fill_(float("inf"))
                    break
            return result

        monkeypatch.setattr(runner, "train", diverging)
        path = write_study(tmp_path / "s.toml", shared_data)
        summary = run_study(path, progress=False)
        (failure,) = summary.failures
        assert failure.draw == -1 and "running_var" in failure.reason
        assert "inf or NaN" in failure.reason and "FAILED 1" in summary.line()

    def test_failing_and_non_finite_draws_are_recorded_others_stored(self, tmp_path, shared_data):
        path = write_study(
            tmp_path / "s.toml", shared_data, draws=3, probe="fail_draw = 1\nnan_draw = 2"
        )
        summary = run_study(path, progress=False)  # never an OverflowError or IntegrityError
        reasons = sorted((f.draw, f.reason) for f in summary.failures)
        assert [d for d, _ in reasons] == [1, 1, 2, 2]  # two levels x draws 1 and 2
        assert "OverflowError" in reasons[0][1] and "not finite" in reasons[2][1]
        rows = store_rows(tmp_path / "s" / "results.sqlite")
        assert len(rows) == 1 + 2  # clean + draw 0 of each level
        again = run_study(path, progress=False)  # failed draws are tried again
        assert len(again.failures) == 4 and again.evaluated == 0


# ---------------------------------------------------------------- 7. modes and temp files


class TestFilesAfterAKill:
    def test_left_over_temps_are_cleaned_and_outputs_follow_the_umask(self, tmp_path, shared_data):
        path = write_study(tmp_path / "s.toml", shared_data)
        study = load_study(path)
        (t,) = study.trainings
        folder = study.run_dir(t.run_id)
        folder.mkdir(parents=True)
        old = time.time() - 60
        left = [
            folder / ".checkpoint.pt.k2j4_x9a.tmp",
            folder / ".config.json.abcd1234.tmp",
            tmp_path / "s" / ".results.csv.zzzzzzzz.tmp",
        ]
        for p in left:
            p.write_bytes(b"half")
            os.utime(p, (old, old))
        mask = os.umask(0o027)
        try:
            run_study(path, progress=False)
            csv_file = tmp_path / "results.csv"
            assert main(["study", "results", str(path), "-o", str(csv_file)]) == 0
        finally:
            os.umask(mask)
        assert not any(p.exists() for p in left)
        for p in (folder / "checkpoint.pt", folder / "config.json", csv_file):
            assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


# ---------------------------------------------------------------- 8. kill -9 soak


def _start(path: Path, out: Path) -> subprocess.Popen:
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import test_reliability_study; "
        "from binsense.study import run_study; "
        "run_study(sys.argv[1], out=sys.argv[2], progress=False, log=lambda s: None)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(out), str(Path(__file__).parent)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _count(db: Path) -> int:
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def _runs(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT run_id, status, epochs_done, test_accuracy, train_fingerprint, "
            "test_fingerprint FROM runs ORDER BY run_id"
        ).fetchall()


def _progress(folder: Path) -> tuple[int, int, int]:
    """(stored draws, epochs in the run folders' metrics, checkpoint files)."""
    epochs = 0
    for metrics in folder.glob("runs/*/metrics.jsonl"):
        with contextlib.suppress(OSError):
            epochs += sum(1 for line in metrics.read_text().splitlines() if line.strip())
    return _count(folder / "results.sqlite"), epochs, len(list(folder.glob("runs/*/*.pt")))


def _phase(folder: Path, study) -> str:
    """What a run that made no visible progress was probably doing when it was killed."""
    try:
        statuses = [r[1] for r in _runs(folder / "results.sqlite")]
    except sqlite3.Error:
        return "starting"
    if len(statuses) < len(study.trainings) or "training" in statuses:
        return "training" if statuses else "starting"
    return "evaluating"


#: The soak's study: every training prunes (gradual block pruning, the blocks removed
#: at the end) and distils from a float teacher (a hidden training, trained first), and
#: every condition is evaluated through the deployed integer program (``engine``).
SOAK_TRAIN = """\
prune = { target = 0.5, block_size = 8, every = 5 }
distill = { teacher = { model = "mnist_bnn_float" } }
"""


@pytest.mark.slow
def test_kill_9_soak(tmp_path):
    """At least 20 SIGKILLs at random moments (start-up, teacher and student training,
    pruning, checkpoint writes, evaluation through the packed engine, store writes) on a
    study that prunes, distils and evaluates through the engine (:data:`SOAK_TRAIN`).
    The study is driven to completion through the kills, in as many fresh folders
    (cycles) as it takes; every finished store must equal that of an uninterrupted run,
    with no temporary file left behind.

    ``BINSENSE_SOAK_KILLS`` (default 24) and ``BINSENSE_SOAK_SEED`` (default 15) set the
    number of kills and the random seed; the summary line is printed (``-s``) and written
    to ``$BINSENSE_SOAK_REPORT`` if set (``benchmarks/soak_kill9.py`` runs it).
    """
    seed = int(os.environ.get("BINSENSE_SOAK_SEED", "15"))
    kills_wanted = int(os.environ.get("BINSENSE_SOAK_KILLS", "24"))
    rng = random.Random(seed)
    data = make_imagefolder(tmp_path / "imgs", classes=2, train=120, test=3)
    path = write_study(
        tmp_path / "soak.toml", data, epochs=3, grid="seed = [0, 1, 2]", draws=3, delay=0.1,
        train=SOAK_TRAIN, presets='engine = "binsense"\n',
    )  # fmt: skip
    study = load_study(path)
    total = len(study.trainings) * study.draws_per_run

    t0 = time.monotonic()
    reference = _start(path, tmp_path / "reference")
    while not (tmp_path / "reference" / "results.sqlite").exists() and reference.poll() is None:
        time.sleep(0.02)
    startup_s = time.monotonic() - t0
    assert reference.wait(600) == 0, reference.stderr.read().decode()
    uninterrupted_s = time.monotonic() - t0
    expected = store_rows(tmp_path / "reference" / "results.sqlite")
    expected_runs = _runs(tmp_path / "reference" / "results.sqlite")
    assert len(expected) == total

    kills, cycles, identical, early = 0, 0, [], 0
    phases = {"starting": 0, "training": 0, "evaluating": 0}
    low = 0.5 * startup_s
    high = startup_s + max(1.0, (uninterrupted_s - startup_s) / 3)
    while kills < kills_wanted and cycles < 3 * kills_wanted:
        killed = tmp_path / f"killed{cycles}"
        db = killed / "results.sqlite"
        while kills < kills_wanted:
            proc = _start(path, killed)
            time.sleep(rng.uniform(low, high))
            if proc.poll() is not None:  # it finished before the kill: kill sooner
                assert proc.returncode == 0, proc.stderr.read().decode()
                early += 1
                high = max(low + 0.2, 0.8 * high)
                break
            before = _progress(killed)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            after = _progress(killed)
            if after[0] > before[0]:  # a draw was stored in the last moments
                phases["evaluating"] += 1
            elif after[1:] != before[1:]:
                phases["training"] += 1
            else:  # what was under way is unknown: classify by the state reached
                phases[_phase(killed, study)] += 1
        final = _start(path, killed)  # the restart, to completion
        assert final.wait(600) == 0, final.stderr.read().decode()
        same = store_rows(db) == expected and _runs(db) == expected_runs
        identical.append(same and not list(killed.rglob("*.tmp")))
        cycles += 1
    report = {
        "seed": seed, "kills": kills, "cycles": cycles, "phases": phases,
        "finished_before_the_kill": early,
        "identical_to_uninterrupted": identical, "rows": total,
        "startup_s": round(startup_s, 1), "uninterrupted_s": round(uninterrupted_s, 1),
    }  # fmt: skip
    print("SOAK", json.dumps(report))
    if os.environ.get("BINSENSE_SOAK_REPORT"):
        Path(os.environ["BINSENSE_SOAK_REPORT"]).write_text(json.dumps(report) + "\n")
    assert kills >= 20 and all(identical), report
