"""Shared test fixtures: small real-format data sets and the shared data folder."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_imagefolder(root: Path, classes: int = 3, train: int = 20, test: int = 10) -> Path:
    """Real 28x28 grayscale PNGs in ``root/{train,test}/class<c>/``.

    Class ``c`` has a bright horizontal bar at rows ``6 + 7c``, so it is learnable.
    """
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                img = torch.rand(28, 28, generator=gen) * 80
                img[6 + 7 * c : 9 + 7 * c, 4:24] += 160
                Image.fromarray(img.clamp(0, 255).to(torch.uint8).numpy(), "L").save(
                    folder / f"{i:03d}.png"
                )
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``imagefolder:`` name of a tiny learnable data set (tensor cache in a temp dir)."""
    root = make_imagefolder(tmp_path_factory.mktemp("tiny_images"), train=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BINSENSE_CACHE", str(tmp_path_factory.mktemp("tiny_cache")))
        yield f"imagefolder:{root}"


class FullDisk:
    """A temporary file on a disk that fills up: the first ``room`` bytes are written,
    then writes fail with ``ENOSPC`` (torch.save then raised ``unexpected pos``)."""

    room = 1000

    def __init__(self, f) -> None:
        self.f, self.used = f, 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if self.used + size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used += size
        return self.f.write(data)

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def fill_disk_on(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """Make every temporary file of :func:`binsense.io.atomic_write` whose name contains
    ``marker`` a :class:`FullDisk` (the disk fills while that file is written)."""
    import tempfile

    import binsense.io as bio

    temps: dict[int, str] = {}
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        temps[fd] = name
        return fd, name

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f) if marker in temps.pop(fd, "") else f

    monkeypatch.setattr(bio.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(bio.os, "fdopen", fdopen)
