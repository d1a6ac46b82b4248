"""``benchmarks/device_data.py``: an image folder packed for a device call, byte for byte."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_data.py"


@pytest.fixture(scope="module")
def device_data():
    spec = importlib.util.spec_from_file_location("device_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder(root: Path) -> Path:
    """A CIFAR-like JPEG ImageFolder: 2 splits x 2 classes x 5 images of 32x32."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(5):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg", quality=90)
    return root


def test_a_pack_unpacks_to_the_same_bytes_and_is_smaller(device_data, tmp_path):
    root = _folder(tmp_path / "data")
    counts = device_data.pack(root, tmp_path / "d.pack")
    assert counts["files"] == 20 and counts["packed"] < counts["bytes"]  # one shared header
    assert device_data.unpack(tmp_path / "d.pack", tmp_path / "out") == 20
    for f in root.rglob("*.jpg"):
        assert (tmp_path / "out" / f.relative_to(root)).read_bytes() == f.read_bytes()


def test_damaged_or_escaping_packs_are_refused(device_data, tmp_path):
    root = _folder(tmp_path / "data")
    device_data.pack(root, tmp_path / "d.pack")
    blob = bytearray((tmp_path / "d.pack").read_bytes())
    blob[-1] ^= 0xFF  # the last file's last byte
    (tmp_path / "bad.pack").write_bytes(bytes(blob))
    with pytest.raises(SystemExit, match="is damaged at 'train/dog/4.jpg'"):
        device_data.unpack(tmp_path / "bad.pack", tmp_path / "out")
    index = json.dumps({"prefix": 0, "files": [["../evil.jpg", 1, "0" * 64]]}).encode()
    escaping = device_data.MAGIC + struct.pack("<Q", len(index)) + index + b"x"
    (tmp_path / "esc.pack").write_bytes(escaping)
    with pytest.raises(SystemExit, match="leaves"):
        device_data.unpack(tmp_path / "esc.pack", tmp_path / "out")
    assert not (tmp_path / "evil.jpg").exists()
    (tmp_path / "text.pack").write_text("hello")
    with pytest.raises(SystemExit, match="is not a pack"):
        device_data.unpack(tmp_path / "text.pack", tmp_path / "out")
