"""No traceback for a user mistake: every case of issue 15 item 8 is one ``error: ...`` line
and a non-zero exit.

One class per section: devices, permissions and disk, training, image folders, bad
values, bad paths, and the safety net for what is left. A few cases of each class run
the real command line in a subprocess (``python -m binsense``, about 2 s each for the
torch import); the others call :func:`binsense.cli.main` in this process, which is the
same code without the start-up cost.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, make_imagefolder
from PIL import Image

from binsense import cli
from binsense.cli import main
from binsense.data import DeviceLoader
from binsense.data.tensors import ImageTensors

REPO = Path(__file__).resolve().parents[1]
HAS_MNIST = (SHARED_DATA / "MNIST").is_dir()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="needs the shared MNIST files")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

TINY = ["--train-subset", "1", "--test-subset", "1", "--epochs", "1"]
STUDY = '[train]\ndataset = "mnist"\ntrain_subset = 1\ntest_subset = 1\nepochs = 1\n'


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Run in ``tmp_path`` with the shared data, a private cache and error log."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BINSENSE_DATA", str(SHARED_DATA))
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BINSENSE_DEBUG", raising=False)
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)
    return {**os.environ, "PYTHONPATH": str(REPO)}


def one_line(err: str) -> str:
    """The single ``error: ...`` line of ``err`` (fails on a traceback or more lines)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``main(argv)`` in this process: exit status and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def fails(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 2) -> str:
    """Run ``argv``; it must fail with status ``code`` and one error line, returned."""
    got, err = run_cli(capsys, *argv)
    line = one_line(err)
    assert got == code, (got, err)
    return line


def subprocess_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "binsense", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------- devices


def test_devices_through_the_real_cli(env: dict[str, str]) -> None:
    proc = subprocess_cli(env, "train", "--device", "tpu", *TINY)
    assert proc.returncode == 2 and "unknown device 'tpu'" in one_line(proc.stderr)


@needs_mnist
def test_devices_in_flags_config_files_eval_and_studies(env, capsys, tmp_path) -> None:
    if not torch.cuda.is_available():
        assert "'cuda' is not available" in fails(capsys, "train", "--device", "cuda", *TINY)
    if torch.cuda.device_count() <= 7:
        (tmp_path / "dev.toml").write_text('device = "cuda:7"\n')
        line = fails(capsys, "train", "--config", "dev.toml", *TINY)
        assert "'cuda:7'" in line and "device" in line
        (tmp_path / "study.toml").write_text(STUDY + 'device = "cuda:7"\n')
        line = fails(capsys, "study", "run", "study.toml", "--no-progress")
        assert line.startswith("error: study.toml") and "'cuda:7'" in line
        assert not (tmp_path / "study" / "results.sqlite").exists()  # refused before
    line = fails(capsys, "eval", "--checkpoint", "missing.pt", "--device", "tpu")
    assert "unknown device 'tpu'" in line
    assert "unknown device" in fails(capsys, "train", "--device", "cuda:x", *TINY)


# ---------------------------------------------------------------- permissions and disk


def _without_root_privileges() -> list[str] | None:
    """A command prefix under which permissions apply (root: drop the DAC capabilities)."""
    if not IS_ROOT:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


_DRIVER = """
import sys
from binsense.cli import main
cases = [a.split("|") for a in sys.argv[1:]]
print(" ".join(str(main(argv)) for argv in cases))
"""


@needs_mnist
def test_unreadable_data_and_read_only_folders_through_the_real_cli(env, tmp_path) -> None:
    """Real permissions (as root with the capabilities that bypass them dropped); one
    process runs several command lines through :func:`binsense.cli.main`."""
    prefix = _without_root_privileges()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    images = make_imagefolder(tmp_path / "imgs", classes=2, train=3, test=2)
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED_DATA / "MNIST" / "raw").iterdir():
        (raw / f.name).symlink_to(f)
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    locked = [images / "train" / "class1", raw / "train-images-idx3-ubyte", tmp_path / "nodata"]
    (tmp_path / "nodata").mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "s.toml").write_text(STUDY)
    cases = [
        f"train|--dataset|imagefolder:{images}|--epochs|1|--out|{tmp_path / 'r1'}",
        f"data|check|mnist|--data-dir|{tmp_path / 'data'}",
        f"data|check|mnist|--data-dir|{tmp_path / 'nodata'}",
        f"train|--train-subset|1|--epochs|1|--out|{ro / 'run'}",
        f"study|run|{tmp_path / 's.toml'}|--out|{ro / 'study'}",
    ]
    for path in locked:
        path.chmod(0)
    ro.chmod(0o555)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", _DRIVER, *cases],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        for path in locked:
            path.chmod(0o755)
        ro.chmod(0o755)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.stdout.split() == ["2", "1", "2", "2", "2"] and len(lines) == 5, proc.stderr
    assert all(line.startswith("error: ") for line in lines)
    assert "class1" in lines[0] and "permission denied" in lines[0]
    assert "train-images-idx3-ubyte" in lines[1] and "permission denied" in lines[1]
    assert "nodata" in lines[2] and "not readable" in lines[2]
    assert "cannot write --out" in lines[3] and "not writable" in lines[3]
    assert "study folder" in lines[4] and "not writable" in lines[4]


@needs_mnist
def test_read_only_output_folder_is_refused_before_training(
    env, capsys, tmp_path, monkeypatch
) -> None:
    """As root chmod does not block, so the checks' view of the folder is simulated."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: real_access(p, mode) and Path(p) != ro)
    line = fails(capsys, "train", *TINY, "--out", str(ro / "run"))
    assert "cannot write --out" in line and "not writable for you" in line
    flags = os.ST_RDONLY

    class ReadOnly:
        f_flag = flags

    monkeypatch.setattr(cli.os, "statvfs", lambda p: ReadOnly())
    assert "read-only file system" in fails(capsys, "train", *TINY, "--out", str(ro / "run"))
    (tmp_path / "s.toml").write_text(STUDY)
    line = fails(capsys, "study", "run", "s.toml", "--out", str(ro / "study"))
    assert "study folder" in line and "read-only" in line


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_disk_and_permission_errors_are_one_line(env, capsys, monkeypatch, code, words) -> None:
    import binsense.train as train_module

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "runs/x/checkpoint.pt")

    monkeypatch.setattr(train_module, "train", fail)
    line = fails(capsys, "train", *TINY, "--out", "runs/x", code=1)
    assert words in line and "'runs/x/checkpoint.pt'" in line


def test_full_disk_in_the_results_store_is_one_line(env, capsys, monkeypatch) -> None:
    import binsense.study.cli as study_cli

    def full(args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(study_cli, "cmd_show", full)  # bound when main builds the parser
    Path("s.toml").write_text(STUDY)
    line = fails(capsys, "study", "show", "s.toml", code=1)
    assert "results store" in line and "disk is full" in line


# ---------------------------------------------------------------- training


def _tensors(n: int) -> ImageTensors:
    from binsense.data import dataset_info

    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return ImageTensors(images, labels, dataset_info("mnist"), "train", "f" * 64)


def test_a_last_training_batch_of_one_image_is_dropped() -> None:
    data = _tensors(10)
    train = DeviceLoader(data, 9, shuffle=True)
    assert len(train) == 1 and [len(y) for _, y in train] == [9]
    test = DeviceLoader(data, 9, shuffle=False)  # evaluation serves every image
    assert len(test) == 2 and [len(y) for _, y in test] == [9, 1]
    assert [len(y) for _, y in DeviceLoader(data, 4)] == [4, 4, 2]  # 2 is kept
    assert [len(y) for _, y in DeviceLoader(_tensors(1), 4)] == [1]  # never empty


@needs_mnist
def test_train_with_a_last_batch_of_one_through_the_real_cli(env, tmp_path) -> None:
    """10 classes x 1 image, batch 9: the last batch (one image) used to crash batch norm."""
    proc = subprocess_cli(
        env, "train", "--dataset", "mnist", "--train-subset", "1", "--batch-size", "9",
        "--test-subset", "1", "--epochs", "1", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "run" / "checkpoint.pt").is_file()


# ---------------------------------------------------------------- image folders


def test_empty_image_file_through_the_real_cli(env, tmp_path) -> None:
    root = make_imagefolder(tmp_path / "imgs", classes=2, train=3, test=2)
    (root / "train" / "class0" / "empty.png").write_bytes(b"")
    proc = subprocess_cli(env, "train", "--dataset", f"imagefolder:{root}", "--epochs", "1")
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "empty.png" in line and "0 bytes" in line


def test_symlink_loops_and_mixed_image_sizes(env, capsys, tmp_path) -> None:
    self_link = make_imagefolder(tmp_path / "a", classes=2, train=3, test=2)
    os.symlink("self.png", self_link / "train" / "class0" / "self.png")
    line = fails(capsys, "train", "--dataset", f"imagefolder:{self_link}", "--epochs", "1")
    assert "self.png" in line and "leads back to itself" in line

    parent_link = make_imagefolder(tmp_path / "b", classes=2, train=3, test=2)
    os.symlink("..", parent_link / "test" / "class1" / "up")
    line = fails(capsys, "data", "check", f"imagefolder:{parent_link}")
    assert "link loop" in line and "up" in line

    sizes = make_imagefolder(tmp_path / "c", classes=2, train=3, test=2)
    for png in (sizes / "test").rglob("*.png"):
        Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(png)
    out = tmp_path / "run"
    line = fails(capsys, "train", "--dataset", f"imagefolder:{sizes}", "--epochs", "1",
                 "--out", str(out))  # fmt: skip
    assert "32x32" in line and "28x28" in line and "resize" in line
    assert not (out / "checkpoint.pt").exists()  # refused before training


# ---------------------------------------------------------------- bad values


def test_non_utf8_config_through_the_real_cli(env, tmp_path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"epochs = 1\n\xff\xfe = 2\n")
    proc = subprocess_cli(env, "train", "--config", str(tmp_path / "bad.toml"))
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "not UTF-8" in line and "0xff" in line


@needs_mnist
def test_bad_values(env, capsys, tmp_path) -> None:
    for width in ("nan", "0", "-1"):
        line = fails(capsys, "train", *TINY, "--width", width)
        assert "width" in line
    line = fails(capsys, "train", *TINY, "--seed", "12345678901234567890")
    assert "seed must be <= 9223372036854775807" in line
    assert "seed must be >= 0" in fails(capsys, "train", *TINY, "--seed", "-1")
    (tmp_path / "threads.toml").write_text("threads = 100000\n")
    line = fails(capsys, "train", "--config", "threads.toml", *TINY)
    assert "threads must be <= 1024" in line
    (tmp_path / "dir.toml").mkdir()
    assert "cannot read config file" in fails(capsys, "train", "--config", "dir.toml")
    assert "--test-subset must be at least 1" in fails(
        capsys, "eval", "--checkpoint", "missing.pt", "--test-subset", "0"
    )
    assert "--batch-size" in fails(capsys, "eval", "--checkpoint", "x.pt", "--batch-size", "0")


# ---------------------------------------------------------------- bad paths


def test_foreign_sqlite_store_through_the_real_cli(env, tmp_path) -> None:
    (tmp_path / "s.toml").write_text(STUDY)
    (tmp_path / "s").mkdir()
    store = tmp_path / "s" / "results.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    before = store.read_bytes()
    proc = subprocess_cli(env, "study", "run", str(tmp_path / "s.toml"), "--no-progress")
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "not a binsense results store" in line
    assert "customers" in line and store.read_bytes() == before  # left alone


@needs_mnist
def test_bad_paths(env, capsys, tmp_path) -> None:
    Path("afile").write_text("x")
    assert "is a file, not a folder" in fails(capsys, "train", *TINY, "--out", "afile")
    Path("somedir").mkdir()
    Path("s.toml").write_text(STUDY)
    line = fails(capsys, "study", "results", "s.toml", "-o", "somedir")
    assert "-o/--output 'somedir' is a folder" in line
    line = fails(capsys, "design-kernel", "--dataset", "mnist", "--images", "5",
                 "--plot", "somedir")  # fmt: skip
    assert "--plot 'somedir' is a folder" in line
    line = fails(capsys, "design-kernel", "--dataset", "mnist", "--images", "5", "--size", "0")
    assert "kernel size must be an integer >= 1" in line
    Path("s").mkdir()
    Path("s/.lock").mkdir()
    assert "'s/.lock' is a folder" in fails(capsys, "study", "run", "s.toml")
    Path("s/.lock").rmdir()
    Path("s/results.sqlite").mkdir()
    assert "is a folder where the study's results store" in fails(capsys, "study", "show", "s.toml")
    Path("s/results.sqlite").rmdir()
    Path("s/results.sqlite").write_text("not a database, just text\n" * 100)
    line = fails(capsys, "study", "results", "s.toml")
    assert "not an SQLite database" in line
    Path("t.toml").write_text(STUDY)
    Path("t").write_text("x")
    assert "is a file, not a folder" in fails(capsys, "study", "show", "t.toml")


# ---------------------------------------------------------------- the safety net


def test_unexpected_errors_are_one_line_with_the_traceback_logged(
    env, capsys, monkeypatch, tmp_path
) -> None:
    import binsense.train as train_module

    def bug(*args, **kwargs):
        raise RuntimeError("something internal\nsecond line")

    monkeypatch.setattr(train_module, "train", bug)
    line = fails(capsys, "train", *TINY, "--out", "r", code=1)
    assert "unexpected RuntimeError: something internal" in line and "--debug" in line
    log = tmp_path / "cache" / "last-error.log"
    assert str(log) in line and "Traceback" in log.read_text() and "bug" in log.read_text()

    for argv in (["--debug", "train"], ["train", "--debug"]):
        code, err = run_cli(capsys, *argv, *TINY, "--out", "r")
        assert (
            code == 1
            and "Traceback" in err
            and err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError")
        )
    monkeypatch.setattr(train_module, "train", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    assert "out of memory" in fails(capsys, "train", *TINY, "--out", "r", code=1)
