"""Read an ImageFolder split (``<split>/<class>/<image>``) into uint8 tensors.

JPEGs are decoded a few hundred at a time by :func:`torchvision.io.decode_jpeg`
(libjpeg-turbo, about 20k CIFAR-size images per second on one core), other files one by
one by :func:`torchvision.io.decode_image`, with PIL as the fallback for formats
torchvision cannot decode. All images must have the same height and width, unless a
``size`` is given: then each image is fitted to ``size x size`` as it is decoded
(:func:`fit_square`). The split is grayscale (one channel) when every image is
grayscale, RGB otherwise (or always RGB with ``rgb=True``); alpha channels are dropped.

A split's files are listed by :func:`scan_image_tree`, which refuses with one line what
would otherwise fail late or never end: a folder that cannot be read, a symbolic-link
loop, an empty (0-byte) image file.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from binsense.data.cache import SourceFile
from binsense.errors import BinsenseError, DataNotFoundError

#: File extensions read as images (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})
_CHUNK = 512  # files per batched decode call
_CHUNK_RESIZED = 64  # when resizing: large photos (COCO) are decoded at full size first
# torchvision 0.29 deprecates its image codecs in favour of torchcodec (not a dependency);
# they still work, so the warning is silenced while decoding.
_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def scan_image_tree(folder: str | os.PathLike) -> list[SourceFile]:
    """Every file under ``folder`` (recursively, symbolic links followed, hidden entries
    skipped), sorted by path — the list :func:`binsense.data.cache.scan_files` gives —
    after checking, as it walks, what the decoder cannot:

    - a folder that cannot be read (permission denied),
    - a symbolic link that leads back to itself, or a folder link that leads back to a
      folder above it (a loop the walk would never leave),
    - an empty (0-byte) file with an image extension (:data:`IMAGE_EXTENSIONS`).

    Each is one :class:`~binsense.errors.BinsenseError` naming the path. A dangling link
    is skipped. A stat call per entry: cheap next to decoding.
    """
    found: list[SourceFile] = []
    root = os.fspath(folder)
    st = os.stat(root)
    stack: list[tuple[str, tuple[tuple[int, int], ...], tuple[str, ...]]] = [
        (root, ((st.st_dev, st.st_ino),), (root,))
    ]
    while stack:
        path, seen, names = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except PermissionError:
            raise BinsenseError(
                f"image folder {path!r} is not readable for you (permission denied); fix its "
                "permissions (chmod/chown) or remove it."
            ) from None
        for entry in entries:
            if entry.name.startswith("."):  # hidden entries are skipped
                continue
            try:
                is_dir = entry.is_dir()
                st = entry.stat()
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise BinsenseError(
                        f"{entry.path!r} is a symbolic link that leads back to itself (a link "
                        "loop); remove or fix the link."
                    ) from None
                if e.errno == errno.ENOENT:  # a dangling link: nothing to read
                    continue
                raise
            if is_dir:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    target = names[seen.index(key)]
                    raise BinsenseError(
                        f"symbolic link loop in an image folder: {entry.path!r} leads back to "
                        f"{target!r}; remove the link."
                    )
                stack.append((entry.path, (*seen, key), (*names, entry.path)))
                continue
            if st.st_size == 0 and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                raise BinsenseError(
                    f"image {entry.path!r} is empty (0 bytes); remove it or replace it with "
                    "the real image."
                )
            found.append(SourceFile(entry.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders in ``split_dir`` (hidden folders skipped)."""
    if not split_dir.is_dir():
        raise DataNotFoundError(
            f"image folder {str(split_dir)!r} does not exist; it must hold one sub-folder "
            "of images per class."
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name[0] != ".")
    if not classes:
        raise DataNotFoundError(
            f"image folder {str(split_dir)!r} has no class folders; put the images of each "
            f"class in their own sub-folder ({split_dir}/<class>/<image>)."
        )
    return classes


def labelled_images(
    split_dir: Path, files: list[SourceFile], classes: list[str]
) -> tuple[list[str], Tensor]:
    """The image files among ``files`` (found under ``split_dir``) and their class labels.

    A file's class is its top folder under ``split_dir``; files directly in ``split_dir``
    and non-image files are ignored.
    """
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    skip = len(os.fspath(split_dir)) + 1
    for f in files:
        parts = f.path[skip:].split(os.sep)
        if len(parts) < 2 or os.path.splitext(f.path)[1].lower() not in IMAGE_EXTENSIONS:
            continue
        if parts[0] not in index:
            raise BinsenseError(
                f"{split_dir} has a class folder {parts[0]!r} that is not one of the data "
                f"set's classes ({', '.join(classes)}); rename or remove it."
            )
        paths.append(f.path)
        labels.append(index[parts[0]])
    if not paths:
        raise DataNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in the class folders "
            f"of {str(split_dir)!r}."
        )
    return paths, torch.tensor(labels, dtype=torch.int64)


def _read(path: str) -> Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def _decode_one(data: Tensor, path: str, rgb: bool) -> Tensor:
    """Decode one encoded image to uint8 ``[C, H, W]`` (C in 1..4, or 3 with ``rgb``),
    PIL as the fallback."""
    try:
        img = decode_image(data, mode=ImageReadMode.RGB if rgb else ImageReadMode.UNCHANGED)
        if img.dtype == torch.uint16:  # 16-bit PNG: keep the 8 most significant bits
            img = (img.to(torch.int32) >> 8).to(torch.uint8)
        return img
    except RuntimeError:
        pass
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as pil:
            gray = not rgb and pil.mode in ("1", "L", "LA", "I", "I;16", "F")
            array = np.asarray(pil.convert("L" if gray else "RGB"))
    except (OSError, ValueError) as e:
        raise BinsenseError(f"cannot decode image {path!r} ({e}); remove or fix it.") from None
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1))


def _decode_chunk(paths: list[str], rgb: bool) -> list[Tensor]:
    """Decode a few hundred files: JPEGs in one batched call, others one by one."""
    blobs = [_read(p) for p in paths]
    if all(os.path.splitext(p)[1].lower() in _JPEG_EXTENSIONS for p in paths):
        try:
            return decode_jpeg(blobs, mode=ImageReadMode.RGB if rgb else ImageReadMode.UNCHANGED)
        except RuntimeError:  # a corrupt or misnamed file: find it one by one
            pass
    return [_decode_one(data, path, rgb) for data, path in zip(blobs, paths, strict=True)]


def fit_square(images: Tensor, size: int) -> Tensor:
    """uint8 images ``[..., C, H, W]`` fitted to ``[..., C, size, size]``.

    The shorter side is resized to ``size``, the aspect ratio kept (bilinear with
    antialiasing: :func:`torchvision.transforms.functional.resize` on the uint8 tensor),
    then the centre ``size x size`` square is cropped
    (:func:`torchvision.transforms.functional.center_crop`). A square image is thus only
    resized; one already ``size x size`` is returned as is.
    """
    if min(images.shape[-2:]) != size:
        images = TF.resize(images, [size], antialias=True)
    if tuple(images.shape[-2:]) != (size, size):
        images = TF.center_crop(images, [size, size])
    return images


def _fit_chunk(images: list[Tensor], size: int) -> list[Tensor]:
    """Each image fitted to ``size x size``; same-size images resized in one call."""
    if len({tuple(img.shape) for img in images}) == 1:
        return list(fit_square(torch.stack(images), size))
    return [fit_square(img, size) for img in images]


def _as_channels(x: Tensor, gray: bool) -> Tensor:
    """``x`` ``[..., C, H, W]`` as one channel (``gray``) or three; alpha is dropped."""
    if gray:
        return x.narrow(-3, 0, 1)
    if x.shape[-3] >= 3:
        return x.narrow(-3, 0, 3)
    return x.narrow(-3, 0, 1).expand(*x.shape[:-3], 3, *x.shape[-2:])


def decode_images(
    paths: list[str], desc: str, *, size: int | None = None, rgb: bool = False
) -> Tensor:
    """Decode image files into a uint8 tensor ``[N, C, H, W]``.

    Without ``size`` the files must share one size; with ``size`` each image is fitted
    to ``size x size`` (:func:`fit_square`) as it is decoded, so sizes may differ. With
    ``rgb`` every image is decoded as 3-channel RGB (grayscale and CMYK converted), as
    ``PIL.Image.convert("RGB")`` does.
    """
    blocks: list[Tensor] = []
    step = _CHUNK if size is None else _CHUNK_RESIZED
    with (
        warnings.catch_warnings(),
        tqdm(total=len(paths), desc=desc, unit="img", disable=None) as progress,
    ):
        warnings.filterwarnings("ignore", _TORCHVISION_DEPRECATION, DeprecationWarning)
        for start in range(0, len(paths), step):
            chunk = paths[start : start + step]
            images = _decode_chunk(chunk, rgb)
            if size is None:
                first = blocks[0][0] if blocks else images[0]
                for path, img in zip(chunk, images, strict=True):
                    if img.shape[1:] != first.shape[1:]:
                        raise BinsenseError(
                            f"images in one data set must all have the same size: {path!r} "
                            f"is {img.shape[2]}x{img.shape[1]} (WxH), {paths[0]!r} is "
                            f"{first.shape[2]}x{first.shape[1]}; resize them first, or load the "
                            "set at one size with an @SIZE suffix (imagefolder:PATH@64)."
                        )
            if rgb:
                images = [_as_channels(img, gray=False) for img in images]
            elif len({img.shape[0] for img in images}) > 1:
                gray = all(img.shape[0] <= 2 for img in images)
                images = [_as_channels(img, gray) for img in images]
            if size is not None:
                images = _fit_chunk(images, size)
            blocks.append(torch.stack(images))
            progress.update(len(chunk))
    gray = all(block.shape[1] <= 2 for block in blocks)  # gray, or gray + alpha
    return torch.cat([_as_channels(block, gray) for block in blocks])
