"""Tests of the S3 data sets (issue 11 item 7): STL-10 from torchvision's binary files,
Visual Wake Words in pyvww's COCO layout or as a person/no_person image folder, and the
``NAME@SIZE`` resize option. Small files are generated in those exact formats; no
network access, no real data needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image
from torchvision.transforms import functional as TF

from binsense.data import (
    dataset_info,
    list_datasets,
    load_dataset,
    registry,
    resolve_dataset_name,
)
from binsense.data.imagefolder import fit_square
from binsense.data.vww import read_annotations
from binsense.errors import BinsenseError, DataNotFoundError, UnknownNameError


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the user's data or cache folders."""
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BINSENSE_DATA", str(tmp_path / "no-data"))


def _assert_one_line_unchained(error: BaseException) -> None:
    assert "\n" not in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# --- STL-10 -------------------------------------------------------------------------


def _write_stl10(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny ``stl10_binary/`` folder in the exact byte layout (4 train, 4 test images):
    uint8 planes stored column-major, labels 1..10. Returns {split: (NCHW images, labels
    on disk)}; the unlabeled file is left out, as binsense does not need it."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    written = {}
    for split, labels in (("train", [1, 10, 3, 3]), ("test", [2, 7, 10, 1])):
        images = rng.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
        on_disk = np.array(labels, dtype=np.uint8)
        # Byte x * 96 + y of a plane is the pixel at row y, column x.
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(on_disk.tobytes())
        written[split] = (images, on_disk)
    names = dataset_info("stl10").classes
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return written


def test_stl10_binary_pixels_and_labels_match_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _write_stl10(tmp_path)
    raw = (tmp_path / "stl10_binary" / "train_X.bin").read_bytes()
    ours = {s: load_dataset("stl10", s, data_dir=tmp_path, download=False) for s in written}
    # torchvision refuses files without the official md5 (and without unlabeled_X.bin).
    monkeypatch.setattr(tvd.STL10, "_check_integrity", lambda self: True)
    for split, (images, on_disk) in written.items():
        data = ours[split]
        reference = tvd.STL10(str(tmp_path), split=split)
        assert data.images.shape == (4, 3, 96, 96) and data.images.dtype == torch.uint8
        assert torch.equal(data.images, torch.from_numpy(reference.data))
        assert data.labels.tolist() == reference.labels.tolist() == (on_disk - 1).tolist()
        assert torch.equal(data.images, torch.from_numpy(images))
        assert data.info == dataset_info("stl10") and data.info.image_size == (96, 96)
    # the column-major layout, by hand: image 0, plane 1, row 5, column 17
    assert ours["train"].images[0, 1, 5, 17].item() == raw[96 * 96 + 17 * 96 + 5]
    assert [reference.classes[i] for i in ours["test"].labels] == [
        dataset_info("stl10").classes[i] for i in ours["test"].labels
    ]


def test_stl10_damaged_files_are_clear_errors(tmp_path: Path) -> None:
    _write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    (folder / "test_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(BinsenseError, match="not a multiple of 27648"):
        load_dataset("stl10", "test", data_dir=tmp_path, download=False)
    (folder / "train_y.bin").write_bytes(bytes([1, 2, 11, 3]))
    with pytest.raises(BinsenseError, match=r"1\.\.10"):
        load_dataset("stl10", "train", data_dir=tmp_path, download=False)


def test_stl10_missing_offline_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("stl10", "train", data_dir=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path) in message and "stl10_binary/{train,test}_{X,y}.bin" in message
    assert "BINSENSE_DATA" in message and "--data-dir" in message
    _assert_one_line_unchained(caught.value)


# --- NAME@SIZE ----------------------------------------------------------------------


def test_size_suffix_names_and_info() -> None:
    info = dataset_info("stl10@32")
    assert info.image_size == (32, 32) and info.name == "stl10@32"
    assert info.classes == dataset_info("stl10").classes
    assert info.mean == dataset_info("stl10").mean
    assert dataset_info("vww@64").image_size == (64, 64)
    assert dataset_info("cifar10@16").image_size == (16, 16)
    assert dataset_info("mnist@14").in_channels == 1
    assert resolve_dataset_name("STL-10@32") == "stl10@32"
    assert resolve_dataset_name("stl10@96") == "stl10"  # its own size: no suffix
    assert resolve_dataset_name("VWW@96") == "vww"
    assert resolve_dataset_name("cifar10@016") == "cifar10@16"
    assert resolve_dataset_name("cifar10@32") == "cifar10"
    assert resolve_dataset_name("imagefolder:/x@64") == "imagefolder:/x@64"
    assert dataset_info("stl10@96") == dataset_info("stl10")


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("stl10@0", BinsenseError, "1 to 1024"),
        ("stl10@5000", BinsenseError, "1 to 1024"),
        ("stl10@abc", BinsenseError, "'stl10@32'"),
        ("stl10@32@64", BinsenseError, "image size"),
        ("stl1O@32", UnknownNameError, "'stl10'"),
        ("imagefolder:@32", BinsenseError, "needs a folder"),
    ],
)
def test_size_suffix_errors(name: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        dataset_info(name)


def test_resized_builtin_is_cached_apart_and_reuses_the_native_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _write_stl10(tmp_path)
    native = load_dataset("stl10", "test", data_dir=tmp_path)
    small = load_dataset("stl10@32", "test", data_dir=tmp_path)
    assert small.images.shape == (4, 3, 32, 32) and small.images.dtype == torch.uint8
    assert small.info == dataset_info("stl10@32")
    assert torch.equal(small.labels, native.labels)
    assert torch.equal(small.images, TF.resize(native.images, [32], antialias=True))
    assert small.fingerprint != native.fingerprint
    assert len(list((tmp_path / "cache").glob("stl10*-test-*.pt"))) == 2

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(registry, "read_stl10", fail)
    again = load_dataset("stl10@32", "test", data_dir=tmp_path)
    assert again.fingerprint == small.fingerprint
    mid = load_dataset("stl10@64", "test", data_dir=tmp_path)  # from the native entry
    assert mid.images.shape == (4, 3, 64, 64)
    assert written["test"][0].shape == (4, 3, 96, 96)


def test_resize_applies_to_every_builtin(tmp_path: Path) -> None:
    """mnist@14 from generated idx files: the suffix is general, one channel kept."""
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):  # torchvision wants the files of both splits
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, 3, 28, 28) + images.tobytes()
        )
        labels = struct.pack(">II", 2049, 3) + bytes([4, 0, 9])
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)
    data = load_dataset("mnist@14", "test", data_dir=tmp_path, download=False)
    assert data.images.shape == (3, 1, 14, 14) and data.labels.tolist() == [4, 0, 9]
    expected = TF.resize(torch.from_numpy(images).unsqueeze(1), [14], antialias=True)
    assert torch.equal(data.images, expected)
    assert data.info.name == "mnist@14" and data.info.image_size == (14, 14)


def test_imagefolder_with_size_accepts_mixed_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for split, shapes in (("train", [(40, 60), (50, 50)]), ("test", [(30, 20)])):
        for i, (h, w) in enumerate(shapes):
            path = tmp_path / "set" / split / ("a" if i % 2 == 0 else "b") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    with pytest.raises(BinsenseError, match="same size.*@SIZE"):
        load_dataset(f"imagefolder:{tmp_path / 'set'}")
    name = f"imagefolder:{tmp_path / 'set'}@24"
    train = load_dataset(name, "train")
    test = load_dataset(name, "test")
    assert train.images.shape == (2, 3, 24, 24) and test.images.shape == (1, 3, 24, 24)
    assert train.info.image_size == (24, 24) and train.info.name == name
    assert dataset_info(name) == train.info == test.info


def test_fit_square_resizes_the_shorter_side_and_crops_the_centre() -> None:
    wide = torch.zeros(3, 20, 60, dtype=torch.uint8)
    wide[:, :, 20:40] = 200  # only the middle third survives a centre crop
    out = fit_square(wide, 10)
    assert out.shape == (3, 10, 10)
    assert torch.equal(out[:, :, 2:8], torch.full((3, 10, 6), 200, dtype=torch.uint8))
    square = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert fit_square(square, 8) is square
    assert torch.equal(fit_square(square, 4), TF.resize(square, [4], antialias=True))


# --- Visual Wake Words --------------------------------------------------------------

# (image id, file name, height, width, colour, gray) - ids deliberately out of order
_COCO_IMAGES = {
    "train": [
        (42, "COCO_train2014_000000000042.jpg", 60, 120, (200, 30, 30), False),
        (7, "COCO_train2014_000000000007.jpg", 100, 80, (30, 200, 30), False),
        (19, "COCO_val2014_000000000019.jpg", 96, 96, (30, 30, 200), False),
        (3, "COCO_train2014_000000000003.jpg", 70, 50, (128, 128, 128), True),
    ],
    "test": [
        (11, "COCO_val2014_000000000011.jpg", 48, 64, (220, 220, 40), False),
        (5, "COCO_val2014_000000000005.jpg", 64, 48, (40, 40, 40), False),
    ],
}
# (image id, category id): what pyvww's create_visualwakewords_annotations.py writes
# (person boxes, category 1) plus a category-0 first annotation to pin pyvww's rule.
_COCO_ANNOTATIONS = {
    "train": [(42, 1), (42, 1), (19, 0), (19, 1)],
    "test": [(5, 1)],
}
# pyvww's label: the first annotation's category_id, 0 without one; order by image id
_EXPECTED = {"train": [0, 0, 0, 1], "test": [1, 0]}  # ids 3, 7, 19, 42 / 5, 11


def _write_coco_vww(root: Path) -> Path:
    """``root/vww/{all/*.jpg, annotations/instances_{train,val}.json}`` (pyvww layout)."""
    folder = root / "vww"
    (folder / "all").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for split, images in _COCO_IMAGES.items():
        entries = []
        for image_id, name, h, w, colour, gray in images:
            array = np.empty((h, w, 3), dtype=np.uint8)
            array[:] = colour
            picture = Image.fromarray(array)
            (picture.convert("L") if gray else picture).save(folder / "all" / name, quality=95)
            entries.append({"id": image_id, "file_name": name, "height": h, "width": w,
                            "license": 1, "coco_url": "", "flickr_url": ""})  # fmt: skip
        annotations = [
            {"id": i, "image_id": image_id, "category_id": category, "area": 100.0,
             "bbox": [0, 0, 10, 10], "iscrowd": 0, "segmentation": []}
            for i, (image_id, category) in enumerate(_COCO_ANNOTATIONS[split])
        ]  # fmt: skip
        document = {
            "info": {"description": "Visual Wake Words Dataset", "year": 2019},
            "licenses": [{"id": 1, "name": "", "url": ""}],
            "images": entries,
            "annotations": annotations,
            "categories": [
                {"supercategory": "background", "id": 0, "name": "not-person"},
                {"supercategory": "person", "id": 1, "name": "person"},
            ],
        }
        ann_name = "instances_train.json" if split == "train" else "instances_val.json"
        (folder / "annotations" / ann_name).write_text(json.dumps(document))
    return folder


def test_vww_from_pyvww_layout_labels_size_and_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_coco_vww(tmp_path / "data")
    monkeypatch.setenv("BINSENSE_DATA", str(tmp_path / "data"))  # the data-folder resolution
    for split in ("train", "test"):
        data = load_dataset("vww", split)
        assert data.labels.tolist() == _EXPECTED[split]
        assert data.images.shape == (len(_EXPECTED[split]), 3, 96, 96)
        assert data.info == dataset_info("vww") and data.info.num_classes == 2
        assert data.info.classes == ("no_person", "person")
        for image, (*_, colour, gray) in zip(data.images, sorted(_COCO_IMAGES[split]), strict=True):
            expected = torch.tensor(colour, dtype=torch.float32)
            if gray:  # decoded as RGB: three equal planes
                expected = expected.mean().expand(3)
                assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
            centre = image[:, 40:56, 40:56].float().mean((1, 2))
            assert torch.allclose(centre, expected, atol=4)
    small = load_dataset("vww@32", "test")
    assert small.images.shape == (2, 3, 32, 32) and small.info.image_size == (32, 32)
    assert small.labels.tolist() == _EXPECTED["test"]


def test_vww_centre_crop_of_a_wide_photo(tmp_path: Path) -> None:
    folder = _write_coco_vww(tmp_path)
    array = np.zeros((96, 288, 3), dtype=np.uint8)
    array[:, :96] = (255, 0, 0)
    array[:, 96:192] = (0, 255, 0)
    array[:, 192:] = (0, 0, 255)
    Image.fromarray(array).save(folder / "all" / "COCO_val2014_000000000011.jpg", quality=95)
    data = load_dataset("vww", "test", data_dir=tmp_path)
    wide = data.images[1].float()  # id 11 sorts after id 5
    assert torch.allclose(wide[:, 8:88, 8:88].mean((1, 2)), torch.tensor([0.0, 255, 0]), atol=6)


def test_vww_annotation_fields_and_errors(tmp_path: Path) -> None:
    folder = _write_coco_vww(tmp_path)
    train_file = folder / "annotations" / "instances_train.json"
    assert read_annotations(train_file) == [
        ("COCO_train2014_000000000003.jpg", 0),
        ("COCO_train2014_000000000007.jpg", 0),
        ("COCO_val2014_000000000019.jpg", 0),
        ("COCO_train2014_000000000042.jpg", 1),
    ]
    raw = json.loads(train_file.read_text())
    raw["annotations"].append({"id": 99, "image_id": 7, "category_id": 18})  # a dog
    bad = tmp_path / "raw_coco.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(BinsenseError, match="raw COCO file"):
        read_annotations(bad)
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(BinsenseError, match="file_name"):
        read_annotations(bad)
    (folder / "all" / "COCO_val2014_000000000005.jpg").unlink()
    with pytest.raises(DataNotFoundError, match="1 of the 2 images") as caught:
        load_dataset("vww", "test", data_dir=tmp_path)
    _assert_one_line_unchained(caught.value)


def test_vww_from_person_no_person_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    shapes = {"train": {"person": [(50, 70), (96, 96)], "no_person": [(120, 90)]},
              "test": {"person": [(40, 40)], "no_person": [(64, 80), (30, 100)]}}  # fmt: skip
    for split, per_class in shapes.items():
        for cls, sizes in per_class.items():
            for i, (h, w) in enumerate(sizes):
                path = tmp_path / "vww" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    train = load_dataset("vww", "train", data_dir=tmp_path)
    test = load_dataset("vww@64", "test", data_dir=tmp_path)
    assert train.images.shape == (3, 3, 96, 96) and train.labels.tolist() == [0, 1, 1]
    assert test.images.shape == (3, 3, 64, 64) and test.labels.tolist() == [0, 0, 1]
    assert test.info.image_size == (64, 64) and test.info.classes == ("no_person", "person")
    # a PNG is lossless: the 96x96 person image is unchanged at 96
    original = np.array(Image.open(tmp_path / "vww" / "train" / "person" / "1.png"))
    assert torch.equal(train.images[2], torch.from_numpy(original).permute(2, 0, 1))
    (tmp_path / "vww" / "test" / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "vww/test/cat/0.png")
    with pytest.raises(BinsenseError, match="'cat'"):
        load_dataset("vww", "test", data_dir=tmp_path)


def test_vww_missing_offline_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    assert "vww" in list_datasets()
    for download in (None, False):
        with pytest.raises(DataNotFoundError) as caught:
            load_dataset("vww", "train", data_dir=tmp_path, download=download)
        message = str(caught.value)
        assert str(tmp_path) in message and "vww/annotations/instances_train.json" in message
        assert "BINSENSE_DATA" in message and "pyvww" in message
        _assert_one_line_unchained(caught.value)
    (tmp_path / "vww" / "annotations").mkdir(parents=True)
    (tmp_path / "vww" / "annotations" / "instances_val.json").write_text("{}")
    with pytest.raises(DataNotFoundError, match="vww/all"):
        load_dataset("vww", "test", data_dir=tmp_path)
