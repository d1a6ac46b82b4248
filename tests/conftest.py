"""Shared test fixtures: small real-format data sets and the shared data folder."""

from __future__ import annotations

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
