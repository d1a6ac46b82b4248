"""Visual Wake Words (Chowdhery et al. 2019, arXiv:1906.05721): is there a person?

Two classes, ``no_person`` (label 0) and ``person`` (label 1), from COCO photos of every
size. Each image is decoded as RGB (COCO's few grayscale photos converted, as pyvww's
``Image.convert("RGB")`` does) and fitted to a square as it is decoded, by
:func:`~binsense.data.imagefolder.fit_square`: the shorter side resized to the size
(bilinear, antialiased), then the centre square cropped; 96x96 by default, ``vww@SIZE``
for another size. That crop is binsense's choice (pyvww leaves the resizing to the
user's transform). The decoded tensors are cached per size like every data set. VWW
cannot be downloaded: it is made from COCO with pyvww's scripts.

Layouts read, under ``<data_dir>/vww/``; for each split the first one present is used:

1. **pyvww / COCO** (``pyvww.pytorch.VisualWakeWordsClassification(root, annFile)``):
   ``annotations/instances_train.json`` (train split) and ``annotations/instances_val.json``
   (test split: the 8k "minival" images), the files pyvww's
   ``scripts/create_visualwakewords_annotations.py`` writes, and the COCO images in
   ``all/`` (train2014 and val2014 together, as pyvww's README asks; symbolic links work).
   Of the COCO-format JSON only these fields are read:

   - ``images[].id`` and ``images[].file_name`` (the path under ``all/``);
   - ``annotations[].image_id`` and ``annotations[].category_id``.

   The label is pyvww's: the ``category_id`` of the image's first annotation in file
   order, 0 when it has none. In pyvww's files every annotation is a person box larger
   than 0.5 % of the image with ``category_id`` 1, so the label is 1 exactly when such a
   box exists. A ``category_id`` other than 0 or 1 means a raw COCO file (80 classes),
   not VWW annotations, and is refused. Images are ordered by ``id`` (as pyvww).
2. **Image folder**: ``{train,test}/{person,no_person}/<image>`` (any image format,
   files in path order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from binsense.data.cache import CachedSplit, cached_split, scan_files
from binsense.data.imagefolder import decode_images, labelled_images
from binsense.data.paths import DATA_ENV
from binsense.data.tensors import DatasetInfo
from binsense.errors import BinsenseError, DataNotFoundError

VWW_FOLDER = "vww"
#: Label order: 0 = no person (pyvww's ``category_id`` 0), 1 = person.
VWW_CLASSES = ("no_person", "person")
#: The default image size (the paper's 96x96).
VWW_SIZE = 96
#: The annotation file of each split, under ``vww/`` (names from pyvww's scripts).
ANNOTATION_FILES = {
    "train": "annotations/instances_train.json",
    "test": "annotations/instances_val.json",
}
#: The folder of COCO images under ``vww/`` that ``file_name`` is relative to.
IMAGES_FOLDER = "all"

#: VWW has no published pixel statistics: ImageNet's stand in for COCO photos (models
#: only use them to normalise their input).
VWW_INFO = DatasetInfo(
    "vww", 2, 3, (VWW_SIZE, VWW_SIZE), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), VWW_CLASSES
)

VWW_LAYOUT = (
    f"{VWW_FOLDER}/annotations/instances_{{train,val}}.json with the COCO images in "
    f"{VWW_FOLDER}/{IMAGES_FOLDER}/ (the pyvww layout), or "
    f"{VWW_FOLDER}/{{train,test}}/{{person,no_person}}/<image>"
)


def _not_vww(path: Path, why: str) -> BinsenseError:
    return BinsenseError(f"{str(path)!r} is not a Visual Wake Words annotation file: {why}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_annotations(path: Path) -> list[tuple[str, int]]:
    """``(file_name, label)`` of every image of a VWW annotation file, by image id."""
    try:
        with open(path, encoding="utf-8") as f:
            data: Any = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_vww(path, f"it cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise _not_vww(path, "it is not a JSON object")
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise _not_vww(path, "it needs the lists 'images' and 'annotations' (COCO format)")
    names: dict[int, str] = {}
    labels: dict[int, int] = {}
    try:
        for image in images:
            image_id, name = image["id"], image["file_name"]
            if not _is_int(image_id) or not isinstance(name, str) or not name:
                raise TypeError
            if image_id in names:
                raise _not_vww(path, f"image id {image_id} appears twice")
            names[image_id] = name
        for ann in annotations:
            image_id, category = ann["image_id"], ann["category_id"]
            if not _is_int(image_id) or not _is_int(category):
                raise TypeError
            if category not in (0, 1):
                raise _not_vww(
                    path,
                    f"an annotation has category_id {category}, VWW has only 0 (no person) "
                    "and 1 (person); this looks like a raw COCO file: make the VWW "
                    "annotations with pyvww's scripts/create_visualwakewords_annotations.py",
                )
            labels.setdefault(image_id, category)  # the image's first annotation counts
    except (KeyError, TypeError):
        raise _not_vww(
            path,
            "each image needs an integer 'id' and a 'file_name', each annotation an "
            "integer 'image_id' and 'category_id'",
        ) from None
    return [(names[i], labels.get(i, 0)) for i in sorted(names)]


def _from_annotations(
    name: str, split: str, folder: Path, ann_file: Path, size: int, cache: Path
) -> CachedSplit:
    images_dir = folder / IMAGES_FOLDER
    if not images_dir.is_dir():
        raise DataNotFoundError(
            f"VWW annotations {str(ann_file)!r} found, but not the COCO images folder "
            f"{str(images_dir)!r}; put the COCO train2014 and val2014 images there "
            "(symbolic links work)."
        )
    files = scan_files([ann_file, images_dir])

    def build() -> tuple[Tensor, Tensor, dict[str, Any]]:
        entries = read_annotations(ann_file)
        if not entries:
            raise BinsenseError(f"VWW annotation file {str(ann_file)!r} lists no images.")
        paths = [os.path.join(images_dir, file_name) for file_name, _ in entries]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataNotFoundError(
                f"{len(missing)} of the {len(paths)} images listed in {str(ann_file)!r} are "
                f"not in {str(images_dir)!r} (e.g. {missing[0]!r}); put the COCO train2014 "
                "and val2014 images there."
            )
        images = decode_images(paths, desc=f"decoding {name} {split}", size=size, rgb=True)
        labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
        return images, labels, {"classes": list(VWW_CLASSES), "source": "annotations"}

    return cached_split(name, split, folder, files, build, cache)


def _from_folder(name: str, split_dir: Path, size: int, cache: Path) -> CachedSplit:
    files = scan_files([split_dir])

    def build() -> tuple[Tensor, Tensor, dict[str, Any]]:
        paths, labels = labelled_images(split_dir, files, list(VWW_CLASSES))
        images = decode_images(paths, desc=f"decoding {name} {split_dir.name}", size=size, rgb=True)
        return images, labels, {"classes": list(VWW_CLASSES), "source": "folder"}

    return cached_split(name, split_dir.name, split_dir, files, build, cache)


def load_vww(name: str, root: Path, split: str, size: int, cache: Path) -> CachedSplit:
    """Split ``split`` of VWW under ``root/vww`` at ``size x size`` (decoded once, then
    cached as ``name``); the layout is the first of the module's two that is present."""
    folder = root / VWW_FOLDER
    ann_file = folder / ANNOTATION_FILES[split]
    if ann_file.is_file():
        return _from_annotations(name, split, folder, ann_file, size, cache)
    if (folder / split).is_dir():
        return _from_folder(name, folder / split, size, cache)
    where = f"{VWW_FOLDER}/{ANNOTATION_FILES[split]} and {VWW_FOLDER}/{split}/"
    raise DataNotFoundError(
        f"data set 'vww' ({split} split) is not in {str(root)!r} (no {where}). Set "
        f"{DATA_ENV} or pass --data-dir to a folder holding {VWW_LAYOUT}. VWW cannot be "
        "downloaded: make it from COCO with pyvww's scripts (github.com/Mxbonn/visualwakewords)."
    )
