"""Tests of binsense.data: registry, on-disk formats, tensor cache, DeviceLoader, Augment.

Uses the real data in ``../shared/data`` when it exists (skipped otherwise) and small files
generated in the standard on-disk formats for everything else. No network access.
"""

from __future__ import annotations

import dataclasses
import pickle
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from binsense.data import (
    Augment,
    AugmentParams,
    DatasetInfo,
    DeviceLoader,
    ImageTensors,
    dataset_info,
    list_datasets,
    load_dataset,
    registry,
    resolve_cache_dir,
    resolve_data_dir,
)
from binsense.data.tensors import fingerprint_tensors
from binsense.errors import BinsenseError, DataNotFoundError, UnknownNameError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}"
)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the user's data or cache folders."""
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BINSENSE_DATA", str(tmp_path / "no-data"))


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(registry, "decode_images", fail)


# --- generated ImageFolder -----------------------------------------------------------


def _write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_folder(root: Path, counts: dict[str, dict[str, int]], shape=(6, 8, 3), seed=0):
    """``root/<split>/<class>/<i>.png`` with random pixels; returns {split: [(array, label)]}."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[np.ndarray, int]]] = {}
    classes = sorted({c for per_split in counts.values() for c in per_split})
    for split, per_class in counts.items():
        written[split] = []
        for cls, n in sorted(per_class.items()):
            for i in range(n):
                array = rng.integers(0, 256, shape, dtype=np.uint8).squeeze()
                _write_image(root / split / cls / f"{i:03d}.png", array)
                written[split].append((array, classes.index(cls)))
    return written


def _as_chw(array: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(array)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def test_imagefolder_shapes_labels_and_class_order(tmp_path: Path) -> None:
    root = tmp_path / "set"
    written = _make_folder(
        root, {"train": {"dog": 2, "cat": 3}, "test": {"cat": 1, "dog": 1}}, shape=(6, 8, 3)
    )
    train = load_dataset(f"imagefolder:{root}", "train")
    test = load_dataset(f"imagefolder:{root}", "test")
    assert train.images.shape == (5, 3, 6, 8) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 0, 1, 1]  # cat < dog, files in name order
    assert test.labels.tolist() == [0, 1]
    expected = torch.stack([_as_chw(a) for a, _ in written["train"]])
    assert torch.equal(train.images, expected)  # PNG is lossless
    info = train.info
    assert info.classes == ("cat", "dog") and info.num_classes == 2
    assert info.in_channels == 3 and info.image_size == (6, 8)
    assert test.info == info  # statistics of the training split
    pixels = expected.double() / 255
    assert info.mean == pytest.approx(pixels.mean((0, 2, 3)).tolist())
    assert info.std == pytest.approx(pixels.std((0, 2, 3), correction=0).tolist())
    assert dataset_info(f"imagefolder:{root}") == info
    assert train.split == "train" and len(train) == 5


def test_imagefolder_grayscale_jpeg_and_mixed_channels(tmp_path: Path) -> None:
    gray = tmp_path / "gray"
    _make_folder(gray, {"train": {"a": 2, "b": 1}, "test": {"a": 1}}, shape=(5, 5))
    data = load_dataset(f"imagefolder:{gray}")
    assert data.images.shape == (3, 1, 5, 5) and data.info.in_channels == 1

    mixed = tmp_path / "mixed"  # one gray image among RGB ones: all become RGB
    _make_folder(mixed, {"train": {"a": 1, "b": 1}, "test": {"a": 1}}, shape=(4, 4, 3))
    value = np.full((4, 4), 77, dtype=np.uint8)
    _write_image(mixed / "train" / "b" / "zz.png", value)
    data = load_dataset(f"imagefolder:{mixed}")
    assert data.images.shape == (3, 3, 4, 4)
    assert (data.images[2] == 77).all()

    jpeg = tmp_path / "jpeg"  # lossy, but a flat colour survives almost exactly
    for split in ("train", "test"):
        _write_image(jpeg / split / "x" / "0.jpg", np.full((16, 16, 3), (200, 30, 90), np.uint8))
    data = load_dataset(f"imagefolder:{jpeg}", "test")
    assert data.images.shape == (1, 3, 16, 16)
    colour = data.images[0].double().mean((1, 2))
    assert torch.allclose(colour, torch.tensor([200.0, 30.0, 90.0], dtype=torch.float64), atol=3)


def test_imagefolder_errors(tmp_path: Path) -> None:
    sizes = tmp_path / "sizes"
    _make_folder(sizes, {"train": {"a": 2}, "test": {"a": 1}}, shape=(4, 4, 3))
    _write_image(sizes / "train" / "a" / "big.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(BinsenseError, match="same size"):
        load_dataset(f"imagefolder:{sizes}")

    extra = tmp_path / "extra"
    _make_folder(extra, {"train": {"a": 1}, "test": {"a": 1, "zebra": 1}}, shape=(4, 4, 3))
    with pytest.raises(BinsenseError, match="zebra"):
        load_dataset(f"imagefolder:{extra}", "test")

    no_test = tmp_path / "no_test"
    _make_folder(no_test, {"train": {"a": 1}}, shape=(4, 4, 3))
    with pytest.raises(DataNotFoundError, match="test"):
        load_dataset(f"imagefolder:{no_test}", "test")

    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")


# --- generated torchvision formats -----------------------------------------------------


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST IDX files, big-endian headers as in the original release."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    header = struct.pack(">IIII", 2051, n, h, w)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    header = struct.pack(">II", 2049, n)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")],
)
def test_mnist_family_from_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    rng = np.random.default_rng(1)
    raw = tmp_path / "data" / folder / "raw"
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 7)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw, prefix, images, labels)
        arrays[prefix] = (images, labels)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_dataset(name, split, data_dir=tmp_path / "data", download=False)
        images, labels = arrays[prefix]
        assert data.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(data.images[:, 0], torch.from_numpy(images))
        assert data.labels.dtype == torch.int64
        assert data.labels.tolist() == labels.tolist()
        assert data.info == dataset_info(name)


@pytest.fixture
def _no_integrity_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the md5 of the official files; generated files cannot match."""
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10

    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)


def _write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.usefixtures("_no_integrity_checks")
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_python_pickles(tmp_path: Path, name: str) -> None:
    """The torchvision layout (cifar10 when there is no cifar10-jpeg folder, cifar100)."""
    rng = np.random.default_rng(2)
    info = dataset_info(name)
    cls = {"cifar10": registry.tvd.CIFAR10, "cifar100": registry.tvd.CIFAR100}[name]
    folder = tmp_path / cls.base_folder
    label_key = "labels" if name == "cifar10" else "fine_labels"
    written = {}
    for split, files in (("train", cls.train_list), ("test", cls.test_list)):
        chunks = []
        for filename, _ in files:
            hwc = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, info.num_classes, 3).tolist()
            flat = hwc.transpose(0, 3, 1, 2).reshape(3, -1)  # rows of R, G, B planes
            _write_pickle(folder / filename, {"data": flat, label_key: labels})
            chunks.append((hwc, labels))
        written[split] = chunks
    _write_pickle(folder / cls.meta["filename"], {cls.meta["key"]: list(info.classes)})
    for split, chunks in written.items():
        data = load_dataset(name, split, data_dir=tmp_path, download=False)
        hwc = np.concatenate([c[0] for c in chunks])
        assert torch.equal(data.images, torch.from_numpy(hwc).permute(0, 3, 1, 2))
        assert data.labels.tolist() == [label for c in chunks for label in c[1]]


@pytest.mark.usefixtures("_no_integrity_checks")
def test_stl10_from_binary_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = rng.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
    labels = np.array([1, 10, 3, 3], dtype=np.uint8)  # 1-based on disk
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
    data = load_dataset("stl10", "test", data_dir=tmp_path, download=False)
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels.tolist() == [0, 9, 2, 2]
    assert data.info.image_size == (96, 96)


def test_svhn_from_mat_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(4).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    try:
        import scipy.io
    except ImportError:
        with pytest.raises(BinsenseError, match="pip install scipy"):
            load_dataset("svhn", "test", data_dir=tmp_path, download=False)
        return
    x = images.transpose(2, 3, 1, 0)  # the .mat layout: H, W, C, N
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [5]])})
    import torchvision.datasets.svhn  # generated files cannot match the official md5

    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", lambda *a, **k: True)
    data = load_dataset("svhn", "test", data_dir=tmp_path, download=False)
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels.tolist() == [0, 1, 5]


# --- real data -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10_test(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageTensors, Path]:
    """The real CIFAR-10 test split decoded once (10k JPEGs), with its cache folder."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    cache = tmp_path_factory.mktemp("cifar-cache")
    return load_dataset("cifar10", "test", data_dir=SHARED_DATA, cache_dir=cache), cache


@needs_shared
def test_real_mnist_test_split() -> None:
    data = load_dataset("mnist", "test", data_dir=SHARED_DATA, download=False)
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.min() == 0 and data.labels.max() == 9
    assert torch.bincount(data.labels).min() > 800
    mean = data.images.double().mean() / 255
    assert float(mean) == pytest.approx(data.info.mean[0], abs=0.01)


@needs_shared
def test_real_cifar10_test_split_from_jpeg(cifar10_test: tuple[ImageTensors, Path]) -> None:
    data, _ = cifar10_test
    assert data.images.shape == (10000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert data.info.classes[0] == "airplane" and data.info.classes[9] == "truck"
    mean = data.images.double().mean((0, 2, 3)) / 255
    assert mean.tolist() == pytest.approx(data.info.mean, abs=0.01)
    assert data.fingerprint == fingerprint_tensors(data.images, data.labels)


@needs_shared
def test_real_cifar10_second_load_uses_cache(
    cifar10_test: tuple[ImageTensors, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, cache = cifar10_test
    _no_decoding(monkeypatch)
    again = load_dataset("cifar10", "test", data_dir=SHARED_DATA, cache_dir=cache)
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
    assert again.fingerprint == data.fingerprint


# --- cache -----------------------------------------------------------------------------


def test_cache_round_trip_corruption_and_source_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "set"
    _make_folder(root, {"train": {"a": 3, "b": 2}, "test": {"a": 1}}, shape=(4, 6, 3))
    name = f"imagefolder:{root}"
    first = load_dataset(name)
    assert first.fingerprint == fingerprint_tensors(first.images, first.labels)
    cache_files = list((tmp_path / "cache").glob("*train*.pt"))
    assert len(cache_files) == 1

    with monkeypatch.context() as m:
        _no_decoding(m)
        second = load_dataset(name)
    assert torch.equal(second.images, first.images)
    assert torch.equal(second.labels, first.labels)
    assert second.fingerprint == first.fingerprint

    cache_files[0].write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_dataset(name)
    assert torch.equal(rebuilt.images, first.images) and rebuilt.fingerprint == first.fingerprint
    with monkeypatch.context() as m:
        _no_decoding(m)
        load_dataset(name)  # the rebuilt entry is valid again

    _write_image(root / "train" / "b" / "new.png", np.zeros((4, 6, 3), np.uint8))
    changed = load_dataset(name)
    assert len(changed) == 6 and changed.fingerprint != first.fingerprint
    assert len(list((tmp_path / "cache").glob("*train*.pt"))) == 1  # stale entry removed


def test_cache_of_torchvision_dataset_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    for prefix in ("train", "t10k"):
        _write_idx(
            tmp_path / "MNIST" / "raw",
            prefix,
            rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 5, dtype=np.uint8),
        )
    first = load_dataset("mnist", "test", data_dir=tmp_path)

    def fail(root: Path, split: str, download: bool) -> None:
        raise AssertionError("read the raw files although the cache should have been used")

    spec = dataclasses.replace(registry._BUILTINS["mnist"], open=fail)
    monkeypatch.setitem(registry._BUILTINS, "mnist", spec)
    second = load_dataset("mnist", "test", data_dir=tmp_path)
    assert torch.equal(first.images, second.images)
    assert first.fingerprint == second.fingerprint


# --- names, folders and missing data --------------------------------------------------


def test_registry_names_and_info() -> None:
    names = list_datasets()
    assert {"mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10"} <= set(
        names
    )
    for name in names:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo) and info.name == name
        assert len(info.classes) == info.num_classes
        assert len(info.mean) == len(info.std) == info.in_channels
    assert dataset_info("CIFAR-100").num_classes == 100
    assert dataset_info("stl10").image_size == (96, 96)


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="'cifar10'"):
        load_dataset("cifar1O")
    with pytest.raises(UnknownNameError, match="'test'"):
        load_dataset("mnist", split="tset")
    with pytest.raises(BinsenseError, match="imagefolder"):
        dataset_info("imagefolder:")


def _assert_unchained(error: BaseException) -> None:
    """One error, no "During handling of the above exception..." traceback noise."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_missing_data_offline_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("cifar100", data_dir=tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path) in message and "BINSENSE_DATA" in message and "cifar100" in message
    _assert_unchained(caught.value)


def test_failed_download_is_one_clear_error_and_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def offline(root: Path, split: str, download: bool) -> None:
        calls.append((download, socket.getdefaulttimeout()))
        raise OSError("[Errno -2] Name or service not known")

    spec = dataclasses.replace(registry._BUILTINS["cifar100"], open=offline)
    monkeypatch.setitem(registry._BUILTINS, "cifar100", spec)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataNotFoundError, match="download failed: .*Name or service") as caught:
        load_dataset("cifar100", data_dir=tmp_path)
    assert calls == [(True, registry.DOWNLOAD_TIMEOUT_S)]
    assert socket.getdefaulttimeout() == before
    assert "connect to the internet" in str(caught.value)
    _assert_unchained(caught.value)


def test_download_from_a_silent_server_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets.utils import download_url

    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-100-python.tar.gz"

        def silent(root: Path, split: str, download: bool) -> None:
            download_url(url, str(root))

        spec = dataclasses.replace(registry._BUILTINS["cifar100"], open=silent)
        monkeypatch.setitem(registry._BUILTINS, "cifar100", spec)
        monkeypatch.setattr(registry, "DOWNLOAD_TIMEOUT_S", 0.5)
        start = time.perf_counter()
        with pytest.raises(DataNotFoundError, match="download failed: .*timed out"):
            load_dataset("cifar100", data_dir=tmp_path)
        assert time.perf_counter() - start < 10


def test_data_and_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.setenv("BINSENSE_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == (tmp_path / "env").resolve()
    monkeypatch.delenv("BINSENSE_DATA")
    monkeypatch.delenv("BINSENSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == (tmp_path / "xdg" / "binsense" / "data").resolve()
    assert resolve_cache_dir() == (tmp_path / "xdg" / "binsense" / "tensors").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == (tmp_path / "home" / ".cache" / "binsense" / "tensors")


# --- ImageTensors ----------------------------------------------------------------------


def _tensors(n: int = 10, num_classes: int | None = None, shape=(3, 4, 5)) -> ImageTensors:
    """Random images; labels = sample index (so batches show which samples they hold)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    k = num_classes or n
    labels = torch.arange(n) % k
    info = DatasetInfo("toy", k, shape[0], shape[1:], (0.5,) * shape[0], (0.25,) * shape[0],
                       tuple(map(str, range(k))))  # fmt: skip
    return ImageTensors(images, labels, info, "train", fingerprint_tensors(images, labels))


def test_subset_takes_exactly_n_per_class() -> None:
    data = _tensors(60, num_classes=3)
    sub = data.subset(4, seed=1)
    assert torch.bincount(sub.labels).tolist() == [4, 4, 4]
    index = [int(torch.nonzero((data.images == img).flatten(1).all(1))) for img in sub.images]
    assert index == sorted(index)  # original order kept
    assert torch.equal(data.labels[index], sub.labels)
    again = data.subset(4, seed=1)
    assert torch.equal(again.images, sub.images) and again.fingerprint == sub.fingerprint
    other = data.subset(4, seed=2)
    assert not torch.equal(other.images, sub.images) and other.fingerprint != sub.fingerprint
    assert sub.fingerprint != data.fingerprint
    with pytest.raises(BinsenseError, match="per class"):
        data.subset(21)
    with pytest.raises(BinsenseError, match="positive"):
        data.subset(0)


def test_image_tensors_validates_dtypes() -> None:
    data = _tensors()
    with pytest.raises(BinsenseError, match="uint8"):
        ImageTensors(data.images.float(), data.labels, data.info, "train", "x")
    with pytest.raises(BinsenseError, match="int64"):
        ImageTensors(data.images, data.labels.int(), data.info, "train", "x")


# --- DeviceLoader ----------------------------------------------------------------------


def _epoch(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_loader_is_deterministic_per_seed_and_epoch() -> None:
    data = _tensors(23)
    aug = Augment(crop_padding=2, flip=True)
    a = DeviceLoader(data, 5, augment=aug, seed=7)
    b = DeviceLoader(data, 5, augment=aug, seed=7)
    torch.manual_seed(123)  # the global RNG must not matter
    first = _epoch(a, 3)
    torch.manual_seed(456)
    torch.rand(10)
    assert _same(first, _epoch(b, 3))
    assert not _same(first, _epoch(a, 4))
    assert not _same(first, _epoch(DeviceLoader(data, 5, augment=aug, seed=8), 3))
    # iterating advances the epoch; set_epoch replays one
    c = DeviceLoader(data, 5, augment=aug, seed=7)
    c.set_epoch(3)
    assert _same(first, list(c)) and c.epoch == 4
    assert not _same(first, list(c))


def test_loader_covers_every_sample_once_and_batches() -> None:
    data = _tensors(10)
    loader = DeviceLoader(data, 4, seed=0)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(10)) and ys.tolist() != list(range(10))
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, data.images[y].float() / 255)
    dropped = DeviceLoader(data, 4, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    ordered = DeviceLoader(data, 3, shuffle=False)
    assert torch.cat([y for _, y in ordered]).tolist() == list(range(10))
    with pytest.raises(BinsenseError, match="batch_size"):
        DeviceLoader(data, 0)


def test_loader_augmented_batches_are_in_unit_range() -> None:
    data = _tensors(16)
    data.images[0] = 255
    data.images[1] = 0
    loader = DeviceLoader(data, 8, augment=Augment(2, flip=True, pad_mode="reflect"))
    for x, _ in loader:
        assert x.dtype == torch.float32 and x.shape == (8, 3, 4, 5)
        assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_crop_outputs_are_windows_of_the_zero_padded_input() -> None:
    data = _tensors(12, shape=(2, 5, 6))
    p = 2
    loader = DeviceLoader(data, 6, augment=Augment(crop_padding=p), seed=3)
    offsets = set()
    for x, y in loader:
        padded = F.pad(data.images[y].float() / 255, (p, p, p, p))
        for out, src in zip(x, padded, strict=True):
            windows = [
                (i, j)
                for i in range(2 * p + 1)
                for j in range(2 * p + 1)
                if torch.equal(out, src[:, i : i + 5, j : j + 6])
            ]
            assert windows, "output is not a window of the padded input"
            offsets.update(windows)
    assert len(offsets) > 5  # offsets vary from sample to sample


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_with_given_offsets_matches_padding(mode: str) -> None:
    x = torch.randint(0, 256, (4, 3, 6, 7), dtype=torch.uint8)
    aug = Augment(crop_padding=3, pad_mode=mode)
    params = AugmentParams(
        torch.tensor([0, 6, 2, 3]), torch.tensor([6, 0, 5, 3]), torch.zeros(4, dtype=torch.bool)
    )
    out = aug.apply(x, params)
    padded = F.pad(x.float(), (3, 3, 3, 3), mode=mode)
    for n, (top, left) in enumerate(zip(params.top.tolist(), params.left.tolist(), strict=True)):
        assert torch.equal(out[n].float(), padded[n, :, top : top + 6, left : left + 7])
    assert out.dtype == torch.uint8


def test_flip_flips_exactly_the_masked_samples() -> None:
    x = torch.randint(0, 256, (6, 2, 3, 4), dtype=torch.uint8)
    mask = torch.tensor([True, False, False, True, True, False])
    params = AugmentParams(torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), mask)
    out = Augment(flip=True).apply(x, params)
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])
    drawn = Augment(flip=True).sample(1000, torch.Generator().manual_seed(0)).flip
    assert 400 < int(drawn.sum()) < 600
    assert not Augment(flip=False).sample(100, torch.Generator()).flip.any()
    assert torch.equal(Augment()(x, torch.Generator()), x)


def test_augment_validates_its_parameters() -> None:
    with pytest.raises(BinsenseError, match="crop_padding"):
        Augment(crop_padding=-1)
    with pytest.raises(UnknownNameError, match="'reflect'"):
        Augment(pad_mode="reflekt")
    with pytest.raises(BinsenseError, match="smaller padding"):
        Augment(crop_padding=4, pad_mode="reflect")(torch.zeros(1, 1, 4, 4), torch.Generator())


def test_one_user_cache_root_for_data_kernels_and_the_error_log(tmp_path, monkeypatch):
    """The user's cache folder is resolved in one place (``binsense.io``): the kernels and
    the error log follow ``$BINSENSE_CACHE``, the data caches the root below it."""
    from binsense.deploy import kernels
    from binsense.io import user_cache, user_cache_root

    monkeypatch.delenv("BINSENSE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "binsense"
    assert user_cache_root() == root and kernels.cache_dir() == root / "kernels"
    assert user_cache("last-error.log") == root / "last-error.log"
    assert resolve_cache_dir() == (root / "tensors").resolve()
    monkeypatch.setenv("BINSENSE_CACHE", str(tmp_path / "mine"))
    assert kernels.cache_dir() == tmp_path / "mine" / "kernels"
    assert user_cache("last-error.log") == tmp_path / "mine" / "last-error.log"
