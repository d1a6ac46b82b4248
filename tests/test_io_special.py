"""Outputs that are not regular files (issue 24, item 5): ``atomic_write`` writes devices,
FIFOs and ``/proc`` links directly and follows symbolic links, as ``cp`` does, instead of
renaming a temporary file over them (which, as root, turned ``/dev/null`` and
``/dev/stdout`` into regular files). A regular file is still replaced atomically.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import binsense.io as bio
from binsense.io import WriteError, atomic_torch_save, atomic_write_text, safe_torch_load

REPO = Path(__file__).resolve().parents[1]
posix = pytest.mark.skipif(os.name != "posix", reason="devices, FIFOs and links are POSIX")


@pytest.fixture
def no_temp_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a temporary file is created or renamed: on a device that would
    replace the device itself (as root), so the test must not get that far."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a temporary file or rename for a special file: {args}")

    monkeypatch.setattr(bio.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(bio.os, "replace", refuse)


@posix
@pytest.mark.parametrize("kind", ["text", "torch"])
def test_dev_null_stays_a_character_device(no_temp_files, kind):
    if kind == "text":
        atomic_write_text("/dev/null", "thrown away\n")
    else:
        atomic_torch_save("/dev/null", {"format": 2, "model": {"w": torch.ones(3)}}, checksum=True)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not Path("/dev/null").is_symlink()


@posix
def test_a_fifo_receives_the_bytes_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = os.urandom(300_000)  # more than a pipe buffer: the reader must run alongside
    received = bytearray()

    def read() -> None:  # a blocking open waits for the writer: no race with its start
        with open(fifo, "rb") as f:
            while chunk := f.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    bio.atomic_write(fifo, lambda f: f.write(data))
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert bytes(received) == data
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file


@posix
def test_a_symlink_stays_a_link_and_its_target_gets_the_content(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "results.csv"
    target.write_text("old\n")
    link = tmp_path / "results.csv"
    link.symlink_to(Path("real") / "results.csv")  # relative, as `ln -s` makes them
    chain = tmp_path / "latest.csv"
    chain.symlink_to("results.csv")  # a link to a link

    atomic_write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "results.csv")
    assert target.read_text() == "new\n"
    atomic_write_text(chain, "newer\n")
    assert chain.is_symlink() and link.is_symlink()
    assert target.read_text() == "newer\n"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["results.csv"]


@posix
def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.txt"
    link.symlink_to("made.txt")
    atomic_write_text(link, "x\n")
    assert link.is_symlink() and (tmp_path / "made.txt").read_text() == "x\n"


@posix
def test_a_dangling_symlink_into_a_missing_folder_is_one_line(tmp_path):
    link = tmp_path / "out.txt"
    link.symlink_to(tmp_path / "nowhere" / "made.txt")
    with pytest.raises(WriteError, match="symbolic link to .*whose folder does not exist") as e:
        atomic_write_text(link, "x\n")
    assert "\n" not in str(e.value)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


@posix
def test_a_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(WriteError, match="symbolic link loop") as e:
        atomic_write_text(loop, "x\n")
    assert "\n" not in str(e.value) and loop.is_symlink()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_stdout_through_proc_is_written_through_not_replaced(tmp_path):
    """``-o /proc/self/fd/1`` (what ``/dev/stdout`` links to) with stdout on a file:
    the process's own output before stays, the file is not replaced."""
    out = tmp_path / "out.txt"
    code = (
        "import sys; from binsense.io import atomic_write_text; print('before', flush=True); "
        "atomic_write_text('/proc/self/fd/1', 'written\\n')"
    )
    with out.open("w") as stdout:
        subprocess.run([sys.executable, "-c", code], stdout=stdout, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)  # fmt: skip
    assert out.read_text() == "before\nwritten\n"


def test_a_regular_file_is_still_replaced_atomically(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    before = path.stat().st_ino
    holder = path.open("rb")  # a reader of the old file keeps seeing the old file
    try:
        atomic_torch_save(path, {"format": 2, "model": {"w": torch.arange(4.0)}}, checksum=True)
        assert holder.read() == b"old"
    finally:
        holder.close()
    assert path.stat().st_ino != before and stat.S_ISREG(path.stat().st_mode)
    assert torch.equal(safe_torch_load(path)["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp left
