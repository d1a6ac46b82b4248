"""Read STL-10 from its binary files with numpy (no torchvision integrity check).

The layout is the one ``torchvision.datasets.STL10`` downloads and reads,
``<data_dir>/stl10_binary/``:

- ``{train,test}_X.bin``: the images, uint8, ``N x 3 x 96 x 96`` bytes. Each colour
  plane is stored column-major (the file comes from MATLAB): byte ``x * 96 + y`` of a
  plane is the pixel at row ``y``, column ``x``. Read as torchvision does:
  ``reshape(-1, 3, 96, 96)`` then swap the last two axes.
- ``{train,test}_y.bin``: the labels, one uint8 per image, ``1..10`` on disk (0-based
  in memory, as torchvision).
- ``class_names.txt`` (not needed: the class names are fixed), ``unlabeled_X.bin`` and
  ``fold_indices.txt`` (not read: binsense uses the 5,000 labelled training images and
  the 8,000 test images).

torchvision's own reader refuses to load unless every file, the 2.7 GB ``unlabeled_X.bin``
included, has its official md5, which it hashes at every load; this reader needs only the
two files of the split and checks their sizes and label range instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from binsense.errors import BinsenseError

#: The folder torchvision extracts the archive to (``torchvision.datasets.STL10.base_folder``).
STL10_FOLDER = "stl10_binary"
STL10_SIZE = 96
STL10_CLASSES = 10
_IMAGE_BYTES = 3 * STL10_SIZE * STL10_SIZE


def stl10_files(root: Path, split: str) -> list[Path]:
    """The two files split ``split`` is read from: ``[images, labels]``."""
    folder = root / STL10_FOLDER
    return [folder / f"{split}_X.bin", folder / f"{split}_y.bin"]


def read_stl10(root: Path, split: str) -> tuple[Tensor, Tensor]:
    """Split ``split`` of the STL-10 binary files under ``root`` as uint8 images
    ``[N, 3, 96, 96]`` and int64 labels ``[N]`` in ``0..9``."""
    x_path, y_path = stl10_files(root, split)
    raw = np.fromfile(x_path, dtype=np.uint8)
    labels = np.fromfile(y_path, dtype=np.uint8)
    if raw.size % _IMAGE_BYTES:
        raise BinsenseError(
            f"STL-10 file {str(x_path)!r} has {raw.size} bytes, not a multiple of "
            f"{_IMAGE_BYTES} (3x96x96 per image); it is truncated or not an STL-10 file."
        )
    count = raw.size // _IMAGE_BYTES
    if labels.size != count:
        raise BinsenseError(
            f"STL-10 files disagree: {str(x_path)!r} holds {count} images, {str(y_path)!r} "
            f"{labels.size} labels."
        )
    if labels.size and (labels.min() < 1 or labels.max() > STL10_CLASSES):
        raise BinsenseError(
            f"STL-10 labels in {str(y_path)!r} must be 1..{STL10_CLASSES} (as on disk), found "
            f"{int(labels.min())}..{int(labels.max())}."
        )
    # Column-major planes: (N, C, X, Y) in file order -> (N, C, Y, X), as torchvision.
    images = raw.reshape(-1, 3, STL10_SIZE, STL10_SIZE).transpose(0, 1, 3, 2)
    return (
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels.astype(np.int64) - 1),
    )
