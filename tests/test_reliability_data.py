"""Reliability of the data layer and of file I/O (issue 15).

One test class per class of failure: damaged tensor-cache entries, load errors that are
not corruption, output file modes (umask), temporary files left by a kill, write errors
(disk full, permissions) and names that would escape their folder. Everything runs on a
small generated image folder in a temp dir.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import FullDisk, make_imagefolder

import binsense.io as bio
from binsense.data import load_dataset
from binsense.data.cache import DataCacheWarning
from binsense.data.tensors import fingerprint_tensors
from binsense.errors import BinsenseError, CheckpointError
from binsense.io import (
    ReadError,
    WriteError,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    clean_stale_temps,
    safe_child,
    safe_torch_load,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("rel_imgs"), classes=2, train=6, test=4)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("BINSENSE_CACHE", str(path))
    return path


def _entry(cache: Path, split: str) -> Path:
    (entry,) = cache.glob(f"*-{split}-*.pt")
    return entry


def _load_quietly(name: str, split: str):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataCacheWarning)  # a healthy load warns nothing
        return load_dataset(name, split)


# ---------------------------------------------------------------- 1. cache integrity


class TestCacheIntegrity:
    def test_zeroed_image_bytes_are_detected_and_the_entry_rebuilt(self, folder, cache):
        name = f"imagefolder:{folder}"
        fresh = _load_quietly(name, "test")
        entry = _entry(cache, "test")
        raw = bytearray(entry.read_bytes())
        images = fresh.images.numpy().tobytes()
        at = raw.find(images[:256])
        assert at > 0  # torch.save stores tensor bytes uncompressed
        raw[at + 100 : at + 1100] = bytes(1000)  # zero 1000 image bytes, file stays loadable
        entry.write_bytes(bytes(raw))
        assert safe_torch_load(entry)["fingerprint"] == fresh.fingerprint  # still claims it

        with pytest.warns(DataCacheWarning) as caught:
            again = load_dataset(name, "test")
        # one cache warning (other warnings, e.g. from a library's background thread, may
        # be recorded in the same block: the suite once saw one)
        (warning,) = [w for w in caught if issubclass(w.category, DataCacheWarning)]
        text = str(warning.message)
        assert "is damaged" in text and "rebuilding it" in text and "\n" not in text
        assert fresh.fingerprint[:16] in text
        assert torch.equal(again.images, fresh.images)  # rebuilt from the image files
        assert again.fingerprint == fresh.fingerprint
        assert fingerprint_tensors(again.images, again.labels) == again.fingerprint
        _load_quietly(name, "test")  # the rebuilt entry is healthy

    def test_damaged_labels_are_detected_too(self, folder, cache):
        name = f"imagefolder:{folder}"
        fresh = _load_quietly(name, "test")
        entry = _entry(cache, "test")
        obj = safe_torch_load(entry)
        obj["labels"] = obj["labels"].flip(0)  # a consistent file, wrong content
        torch.save(obj, entry)
        with pytest.warns(DataCacheWarning, match="is damaged"):
            again = load_dataset(name, "test")
        assert torch.equal(again.labels, fresh.labels)

    def test_truncated_entry_is_rebuilt_with_one_line(self, folder, cache):
        name = f"imagefolder:{folder}"
        fresh = _load_quietly(name, "train")
        entry = _entry(cache, "train")
        entry.write_bytes(entry.read_bytes()[:1000])
        with pytest.warns(DataCacheWarning, match=r"is unusable \(it is corrupt\); rebuilding"):
            again = load_dataset(name, "train")
        assert again.fingerprint == fresh.fingerprint

    def test_out_of_memory_while_loading_is_not_called_corrupt(self, folder, cache, monkeypatch):
        name = f"imagefolder:{folder}"
        _load_quietly(name, "test")

        def no_memory(*args, **kwargs):
            raise MemoryError

        monkeypatch.setattr(torch, "load", no_memory)
        with pytest.raises(ReadError, match="not enough memory") as err:
            load_dataset(name, "test")
        assert "corrupt" not in str(err.value)


# ---------------------------------------------------------------- 1. load errors


class TestLoadErrors:
    @pytest.fixture
    def ckpt(self, tmp_path: Path) -> Path:
        return atomic_torch_save(tmp_path / "c.pt", {"w": torch.ones(3)})

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (MemoryError(), "not enough memory"),
            (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"),
             "not enough memory"),
            (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
            (OSError(errno.EIO, "Input/output error"), "Input/output error"),
        ],
    )  # fmt: skip
    def test_memory_and_io_errors_say_what_they_are(self, ckpt, monkeypatch, error, expected):
        def failing(*args, **kwargs):
            raise error

        monkeypatch.setattr(torch, "load", failing)
        with pytest.raises(ReadError, match=expected) as err:
            safe_torch_load(ckpt)
        assert not isinstance(err.value, CheckpointError)
        assert "corrupt" not in str(err.value)

    @pytest.mark.parametrize(
        "damage",
        [
            lambda b: b"",
            lambda b: b[: len(b) // 2],
            lambda b: b[:40],
            lambda b: b"not a checkpoint at all\n" * 10,
            lambda b: bytes(len(b)),
            lambda b: b[:30] + bytes(200) + b[230:],
        ],
    )
    def test_damaged_files_are_still_called_corrupt(self, ckpt, damage):
        ckpt.write_bytes(damage(ckpt.read_bytes()))
        with pytest.raises(CheckpointError, match="is corrupt"):
            safe_torch_load(ckpt)

    def test_a_parser_oserror_without_errno_is_corrupt(self, ckpt, monkeypatch):
        def failing(*args, **kwargs):
            raise OSError("bad header")

        monkeypatch.setattr(torch, "load", failing)
        with pytest.raises(CheckpointError, match="is corrupt"):
            safe_torch_load(ckpt)

    def test_code_is_never_run(self, tmp_path):
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        path = tmp_path / "evil.pt"
        path.write_bytes(pickle.dumps(Evil(), protocol=2))
        with pytest.raises(CheckpointError):
            safe_torch_load(path)
        assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- 7. umask


@pytest.fixture
def umask():
    """Set the process umask for a test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


class TestOutputModes:
    @pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
    def test_outputs_follow_the_umask(self, tmp_path, umask, mask):
        umask(mask)
        assert bio.current_umask() == mask
        text = atomic_write_text(tmp_path / "report.md", "x")
        ckpt = atomic_torch_save(tmp_path / "checkpoint.pt", {"w": torch.zeros(1)})
        for path in (text, ckpt):
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask

    def test_replacing_a_file_gives_the_umask_mode(self, tmp_path, umask):
        path = tmp_path / "results.csv"
        path.write_text("old")
        path.chmod(0o600)
        umask(0o022)
        atomic_write_text(path, "new")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "new"


# ---------------------------------------------------------------- 7. temporary files


def _temp(folder: Path, name: str, age_s: float = 30.0) -> Path:
    path = folder / name
    path.write_bytes(b"half a checkpoint")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


class TestStaleTemps:
    def test_left_over_temps_are_removed_live_ones_kept(self, tmp_path):
        run = tmp_path / "runs" / "abc"
        run.mkdir(parents=True)
        stale = [
            _temp(run, ".checkpoint.pt.k2j4_x9a.tmp"),
            _temp(run, ".config.json.0abc1234.tmp"),
            _temp(tmp_path, ".results.csv.zz99yy88.tmp"),
        ]
        young = _temp(run, ".metrics.jsonl.abcdefgh.tmp", age_s=0.0)
        locked = _temp(run, ".checkpoint.pt.lockedaa.tmp")
        others = [_temp(run, "checkpoint.pt"), _temp(run, ".notes.tmp"), _temp(run, "a.x.tmp")]
        with open(locked, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # a writer that is still writing
            removed = clean_stale_temps(tmp_path, recursive=True)
        assert sorted(removed) == sorted(stale)
        assert all(not p.exists() for p in stale)
        assert young.exists() and locked.exists() and all(p.exists() for p in others)

    def test_not_recursive_by_default(self, tmp_path):
        (tmp_path / "sub").mkdir()
        inner = _temp(tmp_path / "sub", ".checkpoint.pt.abcdefgh.tmp")
        top = _temp(tmp_path, ".checkpoint.pt.abcdefgh.tmp")
        assert clean_stale_temps(tmp_path) == [top]
        assert inner.exists()

    def test_a_failed_write_leaves_no_temp_file(self, tmp_path):
        def boom(f):
            f.write(b"partial")
            raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            atomic_write(tmp_path / "out.bin", boom)
        assert list(tmp_path.iterdir()) == []

    def test_the_cache_cleans_its_folder_when_it_writes(self, folder, cache):
        cache.mkdir()
        left = _temp(cache, f".{folder.name}-test-12345678-abc.pt.abcdefgh.tmp")
        load_dataset(f"imagefolder:{folder}", "test")
        assert not left.exists()


# ---------------------------------------------------------------- 5. write errors


class TestWriteErrors:
    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            (errno.ENOSPC, "the disk is full"),
            (errno.EACCES, "no permission"),
            (errno.EROFS, "mounted read-only"),
        ],
    )
    def test_disk_full_and_permissions_say_what_happened(self, tmp_path, code, expected):
        def failing(f):
            raise OSError(code, os.strerror(code))

        with pytest.raises(WriteError, match=expected) as err:
            atomic_write(tmp_path / "report.md", failing)
        assert isinstance(err.value, OSError) and err.value.errno == code
        assert "\n" not in str(err.value) and "move it away" not in str(err.value)
        assert list(tmp_path.iterdir()) == []

    def test_a_folder_where_a_file_should_be(self, tmp_path):
        (tmp_path / "out.csv").mkdir()
        with pytest.raises(WriteError, match="name a file, not a folder"):
            atomic_write_text(tmp_path / "out.csv", "x")

    def test_the_cache_keeps_working_when_it_cannot_write(self, folder, cache, monkeypatch):
        def full(path, writer):
            raise bio.write_error(OSError(errno.ENOSPC, "No space left on device"), path)

        monkeypatch.setattr(bio, "atomic_write", full)
        with pytest.warns(DataCacheWarning, match="could not write the data cache"):
            data = load_dataset(f"imagefolder:{folder}", "test")
        assert len(data) == 8


# ---------------------------------------------------------------- 3. names as paths


class TestSafeChild:
    @pytest.mark.parametrize(
        "name",
        ["/../../../../../../elsewhere", "..", ".", "", "a/b", "a\\b", "x\x00y", "a\nb",
         "report-/../x", "x" * 300],
    )  # fmt: skip
    def test_names_that_would_escape_are_refused(self, tmp_path, name):
        with pytest.raises(BinsenseError, match="preset name") as err:
            safe_child(tmp_path, name, what="preset name")
        assert "\n" not in str(err.value)

    @pytest.mark.parametrize("name", ["report-cpu", "report-my preset", "a.b", "-x", "ü"])
    def test_plain_names_pass(self, tmp_path, name):
        assert safe_child(tmp_path, name) == tmp_path / name


# ---------------------------------------------------------------- 5b. a full disk under a writer


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file that :func:`atomic_write` opens is on a full disk."""
    real = os.fdopen
    monkeypatch.setattr(bio.os, "fdopen", lambda fd, *a, **k: FullDisk(real(fd, *a, **k)))


class TestFullDiskUnderAWriter:
    """torch.save writing into the file turns ENOSPC into ``RuntimeError: unexpected pos``
    (issue 24): the write error must still say the disk is full."""

    def test_atomic_torch_save_says_the_disk_is_full(self, tmp_path, full_disk):
        checkpoint = {"format": 2, "model": {"w": torch.ones(1000)}}
        for obj in (checkpoint, {"w": torch.ones(1000)}):  # sealed and plain
            with pytest.raises(WriteError, match="the disk is full") as err:
                atomic_torch_save(tmp_path / "checkpoint.pt", obj)
            assert err.value.errno == errno.ENOSPC and "\n" not in str(err.value)
        assert list(tmp_path.iterdir()) == []

    def test_a_writer_that_hides_the_error_still_says_so(self, tmp_path, full_disk):
        """Any writer (save_deployed's torch.save into the file, one that swallows the
        OSError): the failed write is what is reported."""
        with pytest.raises(WriteError, match="the disk is full"):
            atomic_write(tmp_path / "model.bsd", lambda f: torch.save({"w": torch.ones(9)}, f))

        def swallowing(f) -> None:
            with contextlib.suppress(OSError):
                f.write(bytes(2000))

        with pytest.raises(WriteError, match="the disk is full"):
            atomic_write(tmp_path / "out.bin", swallowing)
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 1b. checksums


class TestSealedFiles:
    def test_a_training_checkpoint_is_sealed_and_verified(self, tmp_path):
        path = atomic_torch_save(
            tmp_path / "c.pt", {"format": 2, "model": {"w": torch.ones(3)}}, checksum=True
        )
        raw = torch.load(path, weights_only=True)  # plain torch can still open it
        assert raw[bio.SEAL_KEY] == 1 and len(raw["sha256"]) == 64
        assert bio.load_torch_file(path)[1] is True
        assert torch.equal(safe_torch_load(path)["model"]["w"], torch.ones(3))
        # other files (a data-cache entry) stay plain archives
        plain = atomic_torch_save(tmp_path / "p.pt", {"w": torch.ones(3)})
        assert bio.load_torch_file(plain)[1] is False

    def test_a_changed_payload_is_corrupt(self, tmp_path):
        path = atomic_torch_save(
            tmp_path / "c.pt", {"format": 2, "model": {"w": torch.ones(99)}}, checksum=True
        )
        raw = bytearray(path.read_bytes())
        at = raw.find(torch.ones(99).numpy().tobytes()[:64])
        assert at > 0
        raw[at + 10] ^= 0x01  # a weight changes, the archive stays loadable
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match="does not match the sha256") as err:
            safe_torch_load(path)
        assert "\n" not in str(err.value) and "another copy" in str(err.value)

    def test_code_in_a_sealed_payload_is_never_run(self, tmp_path):
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        path = tmp_path / "evil.pt"
        torch.save(bio.seal(pickle.dumps(Evil(), protocol=2)), path)  # a valid checksum
        with pytest.raises(CheckpointError):
            safe_torch_load(path)
        assert not (tmp_path / "pwned").exists()


def test_a_killed_writers_temp_file_goes_at_the_next_write_of_that_file(tmp_path):
    """A ``kill -9`` during ``deploy --out`` (or any output) left ``.NAME.*.tmp``, which
    nothing removed; the next write of NAME removes it (never a live writer's, never
    another file's)."""
    from binsense.io import atomic_write_text

    stale = tmp_path / ".model.bsd.abcd1234.tmp"
    other = tmp_path / ".report.md.abcd1234.tmp"
    young = tmp_path / ".model.bsd.zzzz9999.tmp"
    for p in (stale, other):
        p.write_bytes(b"half")
        os.utime(p, (time.time() - 60, time.time() - 60))
    young.write_bytes(b"being written")  # too young: it may be a live writer's
    atomic_write_text(tmp_path / "model.bsd", "done")
    assert not stale.exists() and other.exists() and young.exists()
    assert (tmp_path / "model.bsd").read_text() == "done"
