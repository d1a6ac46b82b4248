"""A data set split held in memory as uint8 tensors, with its metadata and checksum."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from binsense.errors import BinsenseError


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set: what a model needs to know to be built for it.

    ``mean`` and ``std`` are per-channel statistics of the training pixels scaled to
    [0, 1]; models use them to normalise their input (loaders deliver raw [0, 1] pixels).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]


def fingerprint_tensors(images: Tensor, labels: Tensor) -> str:
    """SHA-256 hex digest of the raw bytes of ``images`` followed by those of ``labels``."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


@dataclass
class ImageTensors:
    """One split of a data set as tensors: what :class:`~binsense.data.DeviceLoader` serves.

    Attributes:
        images: uint8 tensor ``[N, C, H, W]``.
        labels: int64 tensor ``[N]`` with values in ``[0, info.num_classes)``.
        info: the data set's :class:`DatasetInfo`.
        split: ``"train"`` or ``"test"``.
        fingerprint: SHA-256 of the image and label bytes, computed when the data set was
            first decoded (and stored in the cache); runs record it as the data checksum.
    """

    images: Tensor
    labels: Tensor
    info: DatasetInfo
    split: str
    fingerprint: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise BinsenseError(
                f"images must be a uint8 tensor [N, C, H, W], got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}."
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise BinsenseError(
                f"labels must be an int64 tensor [{len(self.images)}], got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, per_class: int, seed: int = 0) -> ImageTensors:
        """The first ``per_class`` images of every class after a shuffle seeded by ``seed``.

        Selected images keep their original order. The fingerprint of the subset is derived
        deterministically from this one and the arguments.
        """
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise BinsenseError(f"per_class must be a positive integer, got {per_class!r}.")
        counts = torch.bincount(self.labels, minlength=self.info.num_classes)
        if int(counts.min()) < per_class:
            short = [self.info.classes[c] for c in range(len(counts)) if counts[c] < per_class]
            raise BinsenseError(
                f"cannot take {per_class} images per class from {self.info.name} "
                f"{self.split}: class(es) {', '.join(short)} have only {int(counts.min())}; "
                "use a smaller per_class."
            )
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=gen)
        shuffled = self.labels[perm]
        chosen = [perm[shuffled == c][:per_class] for c in range(self.info.num_classes)]
        index = torch.cat(chosen).sort().values
        digest = hashlib.sha256(f"{self.fingerprint}:subset:{per_class}:{seed}".encode())
        return ImageTensors(
            images=self.images[index],
            labels=self.labels[index],
            info=self.info,
            split=self.split,
            fingerprint=digest.hexdigest(),
        )


def check_split_shape(data: ImageTensors, name: str) -> None:
    """The images of ``data`` (a test split) must have the size and channels of the data
    set's training images (``data.info``); one :class:`~binsense.errors.BinsenseError`
    line naming both if not — a model works on one image size."""
    info = data.info
    want = (info.in_channels, *info.image_size)
    got = tuple(data.images.shape[1:])
    if got != want:
        raise BinsenseError(
            f"the {data.split} images of {name!r} are {got[2]}x{got[1]} pixels with {got[0]} "
            f"channel(s), the training images {want[2]}x{want[1]} with {want[0]}; a model "
            "works on one image size: resize the test images to the training size."
        )
