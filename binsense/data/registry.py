"""Data sets by name: static info, local-first loading with optional download, caching.

Built-in names are read through their torchvision loaders from ``data_dir`` (see
:func:`~binsense.data.resolve_data_dir`); ``cifar10`` is read from the ImageFolder of JPEGs
``<data_dir>/cifar10-jpeg/{train,test}`` when that folder exists; ``stl10`` from
torchvision's binary files ``<data_dir>/stl10_binary/`` (:mod:`binsense.data.stl10`,
downloaded through torchvision when missing); ``vww`` (Visual Wake Words) from COCO
images and pyvww's annotation JSON or a ``person``/``no_person`` image folder
(:mod:`binsense.data.vww`, never downloaded). ``imagefolder:PATH`` reads any folder with
``train/`` and ``test/`` sub-folders of class folders. Whatever the source, the decoded
uint8 tensors are cached (:mod:`binsense.data.cache`).

**Image size suffix** ``NAME@SIZE`` (``stl10@32``, ``vww@64``, ``cifar10@16``,
``imagefolder:PATH@64``): the data set with every image fitted to ``SIZE x SIZE``
(:func:`~binsense.data.imagefolder.fit_square`: shorter side resized with antialiasing,
then the centre square cropped; square images are only resized).
:func:`dataset_info` reports that size. The resizing is done once, when the cache entry
is built, and each size has its own entry: a built-in set is resized from its decoded
native-size tensors, an image folder and VWW are fitted to the size as they are decoded
(so their images may differ in size). The suffix equal to a built-in set's own size is
dropped (``stl10@96`` is ``stl10``). Mean and std stay the native set's for built-in
sets; an image folder's are measured on the resized training images.

**Image folders are checked where they are read.** Each split is listed by
:func:`~binsense.data.imagefolder.scan_image_tree` (an unreadable folder, a symbolic-link
loop or an empty image file is one line), and the test split of ``imagefolder:PATH`` must
have the size and channels of its training split (:func:`check_split_shape`).
:func:`check_image_folder` runs the scan over both splits without decoding anything and
:func:`check_test_split` loads the test split, so that a command (or a study's
pre-flight check) refuses such a folder before it trains.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision.datasets as tvd
from torch import Tensor

from binsense.data.cache import CachedSplit, cached_split, scan_files
from binsense.data.imagefolder import (
    class_folders,
    decode_images,
    fit_square,
    labelled_images,
    scan_image_tree,
)
from binsense.data.paths import DATA_ENV, resolve_cache_dir, resolve_data_dir
from binsense.data.stl10 import STL10_FOLDER, read_stl10, stl10_files
from binsense.data.tensors import DatasetInfo, ImageTensors, check_split_shape
from binsense.data.vww import VWW_INFO, load_vww
from binsense.errors import BinsenseError, DataNotFoundError, unknown_name
from binsense.registry import Registry

SPLITS = ("train", "test")
IMAGEFOLDER_PREFIX = "imagefolder:"

#: Seconds a download may wait on the network before it is given up.
DOWNLOAD_TIMEOUT_S = 20.0

#: ``NAME@SIZE`` asks for the data set at ``SIZE x SIZE`` pixels; SIZE is 1..MAX_IMAGE_SIZE.
SIZE_SEPARATOR = "@"
MAX_IMAGE_SIZE = 1024
_SIZE_SUFFIX = re.compile(r"@(\d+)$")
_RESIZE_CHUNK = 1024  # images resized per call (bounds the float copy resize makes)

PathLike = str | os.PathLike

_DIGITS = tuple(str(i) for i in range(10))
# fmt: off
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar",
    "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile",
    "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster",
    "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)
_STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)
# fmt: on


@dataclass(frozen=True)
class _Builtin:
    """A data set read through torchvision.

    ``open(root, split, download)`` builds the torchvision data set and ``extract`` turns it
    into ``(images, labels)`` tensors. ``sources(root, split)`` lists the raw files the split
    is read from: their presence means "available locally", and their sizes and mtimes key
    the cache. ``layout`` describes those files for error messages.
    """

    info: DatasetInfo
    open: Callable[[Path, str, bool], Any]
    extract: Callable[[Any], tuple[Tensor, Tensor]]
    sources: Callable[[Path, str], list[Path]]
    layout: str
    requires: str | None = None


def _with_train_flag(cls: type[tvd.VisionDataset]) -> Callable[[Path, str, bool], Any]:
    return lambda root, split, download: cls(str(root), train=split == "train", download=download)


def _with_split_arg(cls: type[tvd.VisionDataset]) -> Callable[[Path, str, bool], Any]:
    return lambda root, split, download: cls(str(root), split=split, download=download)


def _extract_mnist(ds: tvd.MNIST) -> tuple[Tensor, Tensor]:
    return ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)


def _extract_cifar(ds: tvd.CIFAR10) -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)


def _extract_nchw(ds: tvd.SVHN) -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(ds.data))
    return images, torch.from_numpy(ds.labels.astype(np.int64))


def _open_stl10(root: Path, split: str, download: bool) -> Any:
    """Download through torchvision (``download=True``); else read the binary files with
    numpy (:func:`~binsense.data.stl10.read_stl10`: no md5 check, no unlabeled file)."""
    if download:
        return tvd.STL10(str(root), split=split, download=True)
    return read_stl10(root, split)


def _mnist_family(
    name: str, cls: type[tvd.MNIST], classes: tuple[str, ...], mean: float, std: float
) -> _Builtin:
    raw = f"{cls.__name__}/raw"

    def sources(root: Path, split: str) -> list[Path]:
        prefix = "train" if split == "train" else "t10k"
        return [root / raw / f"{prefix}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]

    return _Builtin(
        info=DatasetInfo(name, 10, 1, (28, 28), (mean,), (std,), classes),
        open=_with_train_flag(cls),
        extract=_extract_mnist,
        sources=sources,
        layout=f"{raw}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte",
    )


def _cifar(
    name: str,
    cls: type[tvd.CIFAR10],
    classes: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> _Builtin:
    return _Builtin(
        info=DatasetInfo(name, len(classes), 3, (32, 32), mean, std, classes),
        open=_with_train_flag(cls),
        extract=_extract_cifar,
        sources=lambda root, split: [root / cls.base_folder],
        layout=f"{cls.base_folder}/ (the torchvision layout)",
    )


_BUILTINS: dict[str, _Builtin] = {
    "mnist": _mnist_family("mnist", tvd.MNIST, _DIGITS, 0.1307, 0.3081),
    "fashion_mnist": _mnist_family(
        "fashion_mnist", tvd.FashionMNIST, tuple(tvd.FashionMNIST.classes), 0.2860, 0.3530
    ),
    "kmnist": _mnist_family("kmnist", tvd.KMNIST, tuple(tvd.KMNIST.classes), 0.1918, 0.3483),
    "cifar10": _cifar(
        "cifar10", tvd.CIFAR10, _CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": _cifar(
        "cifar100",
        tvd.CIFAR100,
        _CIFAR100_CLASSES,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
    "svhn": _Builtin(
        info=DatasetInfo(
            "svhn", 10, 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _DIGITS
        ),
        open=_with_split_arg(tvd.SVHN),
        extract=_extract_nchw,
        sources=lambda root, split: [root / f"{split}_32x32.mat"],
        layout="{train,test}_32x32.mat",
        requires="scipy",
    ),
    "stl10": _Builtin(
        info=DatasetInfo(
            "stl10",
            10,
            3,
            (96, 96),
            (0.4467, 0.4398, 0.4066),
            (0.2603, 0.2566, 0.2713),
            _STL10_CLASSES,
        ),
        open=_open_stl10,
        extract=lambda arrays: arrays,
        sources=stl10_files,
        layout=f"{STL10_FOLDER}/{{train,test}}_{{X,y}}.bin (torchvision's STL10 layout)",
    ),
}


@dataclass(frozen=True)
class _Reader:
    """A data set read by binsense's own reader and never downloaded:
    ``load(name, root, split, size, cache_dir)`` returns the cached split at ``size``."""

    info: DatasetInfo
    load: Callable[[str, Path, str, int, Path], CachedSplit]


_READERS: dict[str, _Reader] = {"vww": _Reader(VWW_INFO, load_vww)}


def _squash(name: str) -> str:
    """Spelling-insensitive form of a name: 'CIFAR-100', 'cifar_100' -> 'cifar100'."""
    return name.strip().lower().replace("-", "").replace("_", "")


_ALIASES = {_squash(key): key for key in [*_BUILTINS, *_READERS]}

#: The built-in data sets by name; any spelling that squashes to a name resolves
#: (``CIFAR-10``, ``FashionMNIST``). ``NAME@SIZE`` gives any of them at another size.
DATASETS: Registry = Registry(
    "data set",
    normalize=lambda name: _ALIASES.get(_squash(name), name),
    also_valid=(f"{IMAGEFOLDER_PREFIX}PATH", f"NAME{SIZE_SEPARATOR}SIZE"),
)
for _key, _spec in [*_BUILTINS.items(), *_READERS.items()]:
    DATASETS.add(_key, _spec)


def _builtin_info(key: str) -> DatasetInfo:
    return _BUILTINS[key].info if key in _BUILTINS else _READERS[key].info


def split_size_suffix(name: str) -> tuple[str, int | None]:
    """``("stl10", 32)`` for ``"stl10@32"``, ``(name, None)`` without a size suffix.

    Only a trailing ``@`` and digits is a size (``imagefolder:/a@b/c@64`` is the folder
    ``/a@b/c`` at 64x64). An out-of-range size is an error.
    """
    match = _SIZE_SUFFIX.search(name.strip()) if isinstance(name, str) else None
    if match is None:
        return name, None
    size = int(match.group(1))
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise BinsenseError(
            f"data set {name!r}: the image size after {SIZE_SEPARATOR!r} must be 1 to "
            f"{MAX_IMAGE_SIZE} pixels, got {size}."
        )
    return name.strip()[: match.start()], size


class _Parsed(NamedTuple):
    """A data set name taken apart: a built-in key or an image folder, and the size
    (``None``: the set's own size)."""

    key: str
    folder: Path | None
    size: int | None

    def canonical(self) -> str:
        base = f"{IMAGEFOLDER_PREFIX}{self.folder}" if self.folder is not None else self.key
        return base if self.size is None else f"{base}{SIZE_SEPARATOR}{self.size}"


def resolve_dataset_name(name: str) -> str:
    """The canonical name of data set ``name`` (``"CIFAR-10"`` -> ``"cifar10"``,
    ``"STL-10@32"`` -> ``"stl10@32"``, ``"stl10@96"`` -> ``"stl10"``;
    ``imagefolder:PATH`` is returned as given); a clear error for an unknown name."""
    if is_image_folder(name):
        split_size_suffix(name)  # checks the size
        return name
    return _parse_name(name).canonical()


#: ``cifar10`` is read from this ImageFolder of JPEGs under the data folder when it exists.
CIFAR10_JPEG_FOLDER = "cifar10-jpeg"


def is_image_folder(name: str) -> bool:
    """Whether ``name`` is an ``imagefolder:PATH`` data set (its shape is on disk)."""
    return isinstance(name, str) and name.lower().startswith(IMAGEFOLDER_PREFIX)


def check_image_folder(name: str) -> None:
    """Scan the ``train/`` and ``test/`` trees of an ``imagefolder:PATH`` data set as the
    reader will (:func:`~binsense.data.imagefolder.scan_image_tree`: unreadable folders,
    symbolic-link loops, empty image files), decoding nothing; nothing for built-in
    names. A split folder that is missing is left to the reader to report."""
    if not is_image_folder(name):
        return
    folder = _parse_name(name).folder
    assert folder is not None
    for split in SPLITS:
        if (folder / split).is_dir():
            scan_image_tree(folder / split)


def check_test_split(name: str, data_dir: PathLike | None = None) -> None:
    """Load (or fetch from the cache) the test split of an ``imagefolder:PATH`` data set,
    whose images must have the training images' size and channels
    (:func:`check_split_shape`, which :func:`load_dataset` applies); nothing for built-in
    data sets, whose shapes are fixed."""
    if is_image_folder(name):
        load_dataset(name, "test", data_dir=data_dir)


def list_datasets() -> list[str]:
    """Names of the built-in data sets (``imagefolder:PATH`` reads any other folder)."""
    return DATASETS.names()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)


def _parse_name(name: str) -> _Parsed:
    """A built-in key (size ``None`` when it is the set's own) or an image folder."""
    if is_image_folder(name):
        folder, size = split_size_suffix(name[len(IMAGEFOLDER_PREFIX) :])
        if not folder:
            raise BinsenseError(
                "'imagefolder:' needs a folder, as in 'imagefolder:/data/myset' (a folder "
                "with train/ and test/ sub-folders of class folders), optionally with an "
                "image size: 'imagefolder:/data/myset@64'."
            )
        return _Parsed("imagefolder", Path(folder).expanduser().resolve(), size)
    base, size = split_size_suffix(name)
    if isinstance(base, str) and SIZE_SEPARATOR in base:
        base_name = base.split(SIZE_SEPARATOR)[0]
        DATASETS.resolve(base_name)  # an unknown name first
        raise BinsenseError(
            f"data set {name!r}: {SIZE_SEPARATOR!r} must be followed by the image size in "
            f"pixels, as in '{base_name}{SIZE_SEPARATOR}32'."
        )
    key = DATASETS.resolve(base)
    if size is not None and _builtin_info(key).image_size == (size, size):
        size = None
    return _Parsed(key, None, size)


def _sized(info: DatasetInfo, size: int | None) -> DatasetInfo:
    if size is None:
        return info
    name = f"{info.name}{SIZE_SEPARATOR}{size}"
    return dataclasses.replace(info, name=name, image_size=(size, size))


def dataset_info(name: str, *, cache_dir: PathLike | None = None) -> DatasetInfo:
    """Static information about the data set ``name``, without loading it.

    ``NAME@SIZE`` reports ``image_size == (SIZE, SIZE)``. For ``imagefolder:PATH`` the
    classes, image size and per-channel statistics come from the folder's training split,
    which is decoded (or read from the cache) for that.
    """
    parsed = _parse_name(name)
    if parsed.folder is None:
        return _sized(_builtin_info(parsed.key), parsed.size)
    return _folder_info(parsed, resolve_cache_dir(cache_dir))


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: PathLike | None = None,
    download: bool | None = None,
    *,
    cache_dir: PathLike | None = None,
) -> ImageTensors:
    """Load one split of a data set as uint8 tensors (decoded once, then cached).

    Args:
        name: a name from :func:`list_datasets` (case, ``-`` and ``_`` are ignored), or
            ``imagefolder:PATH`` for a folder with ``train/`` and ``test/`` sub-folders that
            hold one folder of same-size images per class (classes sorted by name); either
            with an optional ``@SIZE`` suffix for the images fitted to ``SIZE x SIZE``
            (``stl10@32``; then an image folder's images may differ in size).
        split: ``"train"`` or ``"test"``.
        data_dir: folder holding the raw data; default ``$BINSENSE_DATA`` or
            ``~/.cache/binsense/data`` (ignored for ``imagefolder:``).
        download: ``None`` (default) or ``True``: use local files, and download with
            torchvision when they are missing; ``False``: local files only.
        cache_dir: folder for the decoded-tensor cache; default ``$BINSENSE_CACHE`` or
            ``~/.cache/binsense/tensors``.

    Raises:
        UnknownNameError: unknown data set or split.
        DataNotFoundError: the data is not on disk and could not be downloaded.
        BinsenseError: an image folder with an unreadable folder, a symbolic-link loop, an
            empty image file, or test images of another size than its training images.
    """
    parsed = _parse_name(name)
    _check_split(split)
    cache = resolve_cache_dir(cache_dir)
    key, folder, size = parsed
    if folder is not None:
        given, name = name, parsed.canonical()
        entry = _load_folder(name, folder / split, cache, size=size)
        train = (
            entry if split == "train" else _load_folder(name, folder / "train", cache, size=size)
        )
        info = _info_from_entry(name, train)
        data = ImageTensors(entry.images, entry.labels, info, split, entry.fingerprint)
        check_split_shape(data, given)  # the test split: the training images' shape
        return data
    info = _sized(_builtin_info(key), size)
    root = resolve_data_dir(data_dir)
    jpeg_dir = root / CIFAR10_JPEG_FOLDER
    if key in _READERS:
        entry = _READERS[key].load(info.name, root, split, info.image_size[0], cache)
    elif key == "cifar10" and jpeg_dir.is_dir():
        classes = list(info.classes)
        entry = _load_folder(info.name, jpeg_dir / split, cache, classes=classes, size=size)
    else:
        entry = _load_builtin(_BUILTINS[key], split, root, download, cache, size)
    return ImageTensors(entry.images, entry.labels, info, split, entry.fingerprint)


# --- image folders -------------------------------------------------------------------


def _channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``images / 255`` (uint8 ``[N, C, H, W]``)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def _load_folder(
    name: str,
    split_dir: Path,
    cache: Path,
    classes: list[str] | None = None,
    size: int | None = None,
) -> CachedSplit:
    """Read (or fetch from the cache) the ImageFolder split ``split_dir``.

    ``classes`` fixes the label order; by default it is the sorted class folders of the
    sibling ``train/`` folder. With ``size`` every image is fitted to ``size x size`` as
    it is decoded. The cache entry's ``meta`` holds the class names and the per-channel
    mean/std of the split.
    """
    if not split_dir.is_dir():
        raise DataNotFoundError(
            f"image folder {str(split_dir)!r} does not exist; {split_dir.parent} must have "
            "train/ and test/ sub-folders, each with one folder of images per class."
        )
    if classes is None:
        classes = class_folders(split_dir.parent / "train")
    files = scan_image_tree(split_dir)

    def build() -> tuple[Tensor, Tensor, dict[str, Any]]:
        paths, labels = labelled_images(split_dir, files, classes)
        desc = f"decoding {name} {split_dir.name}"
        images = decode_images(paths, desc=desc, size=size)
        mean, std = _channel_stats(images)
        return images, labels, {"classes": classes, "mean": mean, "std": std}

    return cached_split(name, split_dir.name, split_dir, files, build, cache)


def _info_from_entry(name: str, entry: CachedSplit) -> DatasetInfo:
    _, channels, height, width = entry.images.shape
    classes = tuple(entry.meta["classes"])
    return DatasetInfo(
        name, len(classes), channels, (height, width), tuple(entry.meta["mean"]),
        tuple(entry.meta["std"]), classes,
    )  # fmt: skip


def _folder_info(parsed: _Parsed, cache: Path) -> DatasetInfo:
    assert parsed.folder is not None
    name = parsed.canonical()
    return _info_from_entry(
        name, _load_folder(name, parsed.folder / "train", cache, size=parsed.size)
    )


# --- torchvision data sets -----------------------------------------------------------


def _not_found(spec: _Builtin, split: str, root: Path, why: str) -> DataNotFoundError:
    name = spec.info.name
    layout = spec.layout
    if name == "cifar10":
        layout = f"{CIFAR10_JPEG_FOLDER}/{{train,test}}/<class>/*.jpg or {layout}"
    return DataNotFoundError(
        f"data set {name!r} ({split} split) is not in {str(root)!r} ({why}). Set {DATA_ENV} "
        f"or pass --data-dir to a folder holding {layout}, or connect to the internet so "
        "torchvision can download it."
    )


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Make blocking network calls give up after ``seconds`` instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(spec: _Builtin, split: str, root: Path) -> None:
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            spec.open(root, split, True)
    except Exception as e:  # network errors come as URLError, OSError, RuntimeError, ...
        reason = " ".join(str(getattr(e, "reason", "") or e).split()) or type(e).__name__
        raise _not_found(spec, split, root, f"download failed: {reason}") from None


def _load_builtin(
    spec: _Builtin,
    split: str,
    root: Path,
    download: bool | None,
    cache: Path,
    size: int | None = None,
) -> CachedSplit:
    """The split at its own size (cached), or resized to ``size`` from it (cached apart)."""
    name = spec.info.name
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        raise BinsenseError(
            f"data set {name!r} needs the package {spec.requires!r}: pip install {spec.requires}"
        )
    if not all(p.exists() for p in spec.sources(root, split)):
        if download is False:
            raise _not_found(spec, split, root, "download=False")
        _download(spec, split, root)
        if not all(p.exists() for p in spec.sources(root, split)):
            raise _not_found(spec, split, root, "the download did not produce the files")
    files = scan_files(spec.sources(root, split))

    def build() -> tuple[Tensor, Tensor, dict[str, Any]]:
        try:
            images, labels = spec.extract(spec.open(root, split, False))
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise _not_found(spec, split, root, str(e).split(".")[0]) from None
        return images, labels, {}

    def native() -> CachedSplit:
        return cached_split(name, split, root, files, build, cache)

    if size is None:
        return native()

    def build_resized() -> tuple[Tensor, Tensor, dict[str, Any]]:
        entry = native()
        chunks = entry.images.split(_RESIZE_CHUNK)
        images = torch.cat([fit_square(chunk, size) for chunk in chunks]).contiguous()
        return images, entry.labels, dict(entry.meta)

    return cached_split(f"{name}{SIZE_SEPARATOR}{size}", split, root, files, build_resized, cache)
