"""The checks live with what they check (issue 23, item 2): a Python caller gets the same
refusal as the shell.

Each case runs the library (``run_study``, ``load_dataset``, ``ResultStore``, ``infer``)
and the command line on the same input and asserts that the library raises the
:class:`~binsense.errors.BinsenseError` whose text is the CLI's ``error:`` line, before
anything is written.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, make_imagefolder

from binsense.cli import main
from binsense.data import check_image_folder, load_dataset, scan_image_tree
from binsense.data.cache import scan_files
from binsense.errors import BinsenseError
from binsense.io import check_out_dir, check_output_file
from binsense.study.runner import run_study
from binsense.study.store import ResultStore, StoreError, is_store_tables

needs_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST").is_dir(), reason="needs the shared MNIST files"
)

STUDY = '[train]\ndataset = "mnist"\ntrain_subset = 1\ntest_subset = 1\nepochs = 1\n'


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path`` with the shared data and a private cache and error log."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BINSENSE_DATA", str(SHARED_DATA))
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BINSENSE_DEBUG", raising=False)
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)
    return tmp_path


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The CLI's one ``error:`` line for ``argv`` (exit status 2), without ``error: ``."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0].removeprefix("error: ")


def library_error(call, *args, **kwargs) -> str:
    """The text of the :class:`BinsenseError` that ``call(*args, **kwargs)`` raises."""
    with pytest.raises(BinsenseError) as err:
        call(*args, **kwargs)
    return str(err.value)


def same_refusal(capsys, argv: list[str], call, *args, **kwargs) -> str:
    """The library and the CLI refuse with the same line; returned."""
    line = library_error(call, *args, **kwargs)
    assert cli_error(capsys, *argv) == line
    return line


def study_file(path: Path, text: str = STUDY) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the results store


def test_run_study_refuses_a_foreign_sqlite_store_as_the_cli_does(env, capsys) -> None:
    path = study_file(env / "s.toml")
    (env / "s").mkdir()
    store = env / "s" / "results.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    before = store.read_bytes()
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert "not a binsense results store" in line and "customers" in line
    assert store.read_bytes() == before  # left alone by both


def test_run_study_refuses_a_store_path_that_is_a_folder_or_not_a_database(env, capsys) -> None:
    path = study_file(env / "s.toml")
    store = env / "s" / "results.sqlite"
    store.mkdir(parents=True)
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert "is a folder where the study's results store" in line
    store.rmdir()
    store.write_text("not a database, just text\n" * 100)
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert "not an SQLite database" in line
    assert store.read_text().startswith("not a database")


def test_one_criterion_for_a_binsense_store(tmp_path) -> None:
    """The CLI accepted any database whose ``meta`` table had the columns key and value;
    the store wanted its three tables. Now checking and opening agree."""
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    before = db.read_bytes()
    lines = {library_error(ResultStore.check_file, db)}
    lines.add(library_error(ResultStore, db))
    lines.add(library_error(ResultStore, db, readonly=True))
    assert len(lines) == 1, lines  # the same refusal, word for word
    assert "not a binsense results store (tables: meta)" in lines.pop()
    assert db.read_bytes() == before
    assert not is_store_tables({"meta"}) and is_store_tables({"meta", "runs", "results", "x"})

    real = tmp_path / "real.sqlite"
    with ResultStore(real):
        pass
    ResultStore.check_file(real)  # a store passes the check ...
    ResultStore(real, readonly=True).close()  # ... and opens
    ResultStore.check_file(tmp_path / "missing.sqlite")  # nothing there: created later
    (tmp_path / "empty.sqlite").write_bytes(b"")
    ResultStore.check_file(tmp_path / "empty.sqlite")
    with sqlite3.connect(real) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(StoreError, match="has format 99"):
        ResultStore.check_file(real)
    with pytest.raises(StoreError, match="has format 99"):
        ResultStore(real, readonly=True)


# ---------------------------------------------------------------- the study folder


def test_run_study_refuses_a_read_only_study_folder_as_the_cli_does(
    env, capsys, monkeypatch
) -> None:
    """As root chmod does not block, so the checks' view of the folder is simulated."""
    path = study_file(env / "s.toml")
    ro = env / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and Path(p) != ro)
    out = ro / "study"
    argv = ["study", "run", str(path), "--out", str(out), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, out=out, progress=False)
    assert line.startswith(f"cannot write study folder {str(out)!r}") and "not writable" in line
    assert not out.exists()


def test_run_study_refuses_a_lock_folder_and_a_study_folder_that_is_a_file(env, capsys) -> None:
    path = study_file(env / "s.toml")
    (env / "s" / ".lock").mkdir(parents=True)
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert "'s/.lock' is a folder" in line or ".lock' is a folder" in line
    assert not (env / "s" / "results.sqlite").exists()
    (env / "t").write_text("x")
    argv = ["study", "run", str(path), "--out", "t", "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, out="t", progress=False)
    assert line == "study folder 't' is a file, not a folder; pass another --out folder."


@needs_mnist
def test_run_study_refuses_a_model_that_cannot_fit_as_the_cli_does(env, capsys) -> None:
    path = study_file(env / "s.toml", STUDY + "[train.model_options]\nwidth = 1000\n")
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert line.startswith(f"{path}: training 'mnist_bnn' (width 1000) needs at least")
    assert not (env / "s" / "results.sqlite").exists()  # refused before the store


def test_run_study_refuses_a_missing_device_as_the_cli_does(env, capsys) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    path = study_file(env / "s.toml", STUDY + 'device = "cuda:7"\n')
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert line.startswith(f"{path}: ") and "'cuda:7'" in line
    assert not (env / "s" / "results.sqlite").exists()


# ---------------------------------------------------------------- image folders


def _folder_study(env: Path, root: Path) -> Path:
    return study_file(env / "s.toml", f'[train]\ndataset = "imagefolder:{root}"\nepochs = 1\n')


def test_run_study_refuses_an_empty_image_as_the_cli_does(env, capsys) -> None:
    root = make_imagefolder(env / "imgs", classes=2, train=3, test=2)
    (root / "train" / "class0" / "empty.png").write_bytes(b"")
    path = _folder_study(env, root)
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert "empty.png" in line and "is empty (0 bytes)" in line
    assert not (env / "s").exists()  # nothing written
    # the reader itself refuses it too, and so does the scan without decoding
    name = f"imagefolder:{root}"
    assert library_error(load_dataset, name, "train") == line
    assert library_error(check_image_folder, name) == line
    assert cli_error(capsys, "train", "--dataset", name, "--epochs", "1") == line


def test_run_study_refuses_a_corrupt_image_as_the_cli_does(env, capsys) -> None:
    root = make_imagefolder(env / "imgs", classes=2, train=3, test=2)
    (root / "train" / "class1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    path = _folder_study(env, root)
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    assert "cannot decode image" in line and "bad.png" in line
    assert not (env / "s" / "results.sqlite").exists()
    decoding = library_error(load_dataset, f"imagefolder:{root}", "train")
    assert line == f"{path}: {decoding}"  # the reader's line, naming the study file


def test_run_study_refuses_test_images_of_another_size_before_training(env, capsys) -> None:
    """Only the CLI's ``train`` refused them; a study from Python met them as a shape
    error in the middle of its first training."""
    from PIL import Image

    root = make_imagefolder(env / "imgs", classes=2, train=3, test=2)
    for png in (root / "test").rglob("*.png"):
        Image.new("L", (32, 32)).save(png)
    path = _folder_study(env, root)
    argv = ["study", "run", str(path), "--no-progress"]
    line = same_refusal(capsys, argv, run_study, path, progress=False)
    name = f"imagefolder:{root}"
    shape = (
        f"the test images of {name!r} are 32x32 pixels with 1 channel(s), the training images "
        "28x28 with 1; a model works on one image size: resize the test images to the "
        "training size."
    )
    assert line == f"{path}: {shape}"
    assert not (env / "s" / "results.sqlite").exists() and not (env / "s" / "runs").exists()
    assert library_error(load_dataset, name, "test") == shape  # the reader checks it itself
    assert cli_error(capsys, "train", "--dataset", name, "--epochs", "1", "--out", "r") == shape
    assert not Path("r/checkpoint.pt").exists()


def test_the_reader_refuses_link_loops_that_used_to_crash_or_spin(env, capsys) -> None:
    self_link = make_imagefolder(env / "a", classes=2, train=3, test=2)
    os.symlink("self.png", self_link / "train" / "class0" / "self.png")
    line = library_error(load_dataset, f"imagefolder:{self_link}", "train")
    assert "self.png" in line and "leads back to itself" in line
    assert cli_error(capsys, "data", "check", f"imagefolder:{self_link}") == line

    parent_link = make_imagefolder(env / "b", classes=2, train=3, test=2)
    os.symlink("..", parent_link / "test" / "class1" / "up")
    line = library_error(load_dataset, f"imagefolder:{parent_link}", "test")
    assert "link loop" in line and "up" in line
    assert cli_error(capsys, "data", "check", f"imagefolder:{parent_link}") == line


def test_the_checked_scan_lists_what_the_cache_scan_lists(tmp_path) -> None:
    """The reader's checked scan keys the tensor cache as before (same files, same order):
    no cache entry is rebuilt because the scan moved."""
    root = make_imagefolder(tmp_path / "imgs", classes=2, train=3, test=2)
    (root / "train" / "class0" / "notes.txt").write_text("")  # not an image: empty is fine
    (root / "train" / ".hidden.png").write_bytes(b"")  # hidden: skipped by both
    os.symlink(root / "test" / "class1", root / "train" / "class1" / "linked")
    for split in ("train", "test"):
        assert scan_image_tree(root / split) == scan_files([root / split])
    os.symlink("missing.png", root / "train" / "class0" / "dangling.png")  # skipped
    assert all("dangling" not in f.path for f in scan_image_tree(root / "train"))


# ---------------------------------------------------------------- paths and memory


def test_output_path_checks_are_the_library_s(tmp_path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BinsenseError, match="--out '.*afile' is a file, not a folder"):
        check_out_dir(tmp_path / "afile", "--out")
    with pytest.raises(BinsenseError, match="cannot be created: .*afile' is a file"):
        check_out_dir(tmp_path / "afile" / "sub", "--out")
    with pytest.raises(BinsenseError, match="-o/--output '.*' is a folder; name a file"):
        check_output_file(tmp_path, "-o/--output")
    check_out_dir(tmp_path / "new" / "deeper", "--out")  # creatable: nothing is created
    check_output_file(tmp_path / "new" / "x.csv", "-o")
    assert not (tmp_path / "new").exists()


def test_the_memory_check_validates_the_model_even_when_large_is_allowed() -> None:
    """The CLI built the model on the meta device before skipping the comparison (fail
    fast on a bad option); the library's check now does the same."""
    from binsense.data import dataset_info
    from binsense.resources import check_config_fits
    from binsense.train import TrainConfig

    config = TrainConfig(model_options={"width": 0.25, "no_such_option": 1})
    info = dataset_info("mnist")
    for allow in (None, True):
        with pytest.raises(BinsenseError, match="no_such_option"):
            check_config_fits(config, info=info, allow=allow)
    ok = TrainConfig(model_options={"width": 0.25})
    assert check_config_fits(ok, info=info, allow=True) > 0  # the estimate, not 0


# ---------------------------------------------------------------- inference


@pytest.fixture
def deployed_file(tiny_data: str, tmp_path: Path) -> Path:
    from test_deploy_program import _calibrated

    from binsense.deploy import convert, save_deployed

    model = _calibrated("mnist_bnn", tiny_data, width=0.25)
    meta = {"dataset": tiny_data, "input_shape": [1, 28, 28]}
    return save_deployed(convert(model), tmp_path / "tiny.bsd", meta)


def test_infer_is_the_library_loop_behind_binsense_infer(
    deployed_file, tiny_data, tmp_path, capsys
) -> None:
    from binsense.data import DeviceLoader
    from binsense.deploy import InferResult, file_input_shape, infer
    from binsense.deploy.fileformat import read_deployed

    loaded = read_deployed(deployed_file)
    data = load_dataset(tiny_data, "test")
    shape = file_input_shape(loaded.meta)
    assert shape == (1, 28, 28)
    loader = DeviceLoader(data, 7, shuffle=False)
    result = infer(loaded.model, loader, input_shape=shape, progress=False)
    assert isinstance(result, InferResult) and result.n == len(data) == 30
    assert torch.equal(result.labels, data.labels)
    x, _ = next(iter(DeviceLoader(data, len(data), shuffle=False)))
    assert torch.equal(result.predictions, loaded.model.predict(x))  # in the loader's order
    assert result.correct == int((result.predictions == data.labels).sum())

    csv = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["infer", str(deployed_file), "--batch-size", "7", "--predictions", str(csv)]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {result.accuracy:.2%};" in out and "(30 images)" in out
    assert csv.read_text() == result.predictions_csv()  # the CLI writes the library's rows
    assert result.write_predictions(tmp_path / "again.csv").read_text() == csv.read_text()


def test_infer_refuses_other_shapes_and_class_counts_as_the_cli_does(
    deployed_file, tmp_path, capsys
) -> None:
    from PIL import Image

    from binsense.data import DeviceLoader
    from binsense.deploy import file_input_shape, infer
    from binsense.deploy.fileformat import read_deployed

    loaded = read_deployed(deployed_file)
    rgb = tmp_path / "rgb"  # 3-channel 16x16 images for a 1-channel 28x28 program
    for split in ("train", "test"):
        for c in range(3):
            (rgb / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (16, 16), (90, 40 * c, 0)).save(rgb / split / f"c{c}" / "0.png")
    two = make_imagefolder(tmp_path / "two", classes=2, train=2, test=4)
    for folder, words in ((rgb, "16x16 pixels with 3 channel(s)"), (two, "predicts 3 classes")):
        name = f"imagefolder:{folder}"
        loader = DeviceLoader(load_dataset(name, "test"), 250, shuffle=False)
        line = library_error(
            infer, loaded.model, loader, what=str(deployed_file), data_name=name,
            input_shape=file_input_shape(loaded.meta), progress=False,
        )  # fmt: skip
        assert words in line
        assert cli_error(capsys, "infer", str(deployed_file), "--data", name) == line
