"""Device-resident batch loader with batched, reproducible augmentation.

:class:`DeviceLoader` moves a split's uint8 tensors to the device once and builds every
batch there: one ``index_select`` picks the images, :class:`Augment` crops and flips the
whole batch with a few tensor ops (no per-sample Python, no worker processes), and the
result is converted to float32 in [0, 1]. All randomness of an epoch -- the order and
every sample's crop offset and flip -- is drawn up front from a dedicated CPU
:class:`torch.Generator` seeded from ``(seed, epoch)`` only, so epoch ``e`` is the same on
any device, in any process and after a resume, whatever the global RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from binsense.data.tensors import ImageTensors
from binsense.errors import BinsenseError, unknown_name

PAD_MODES = ("constant", "reflect")


class AugmentParams(NamedTuple):
    """Per-sample augmentation draws: crop offsets into the padded image and flip mask."""

    top: Tensor  # int64 [N], in [0, 2 * crop_padding]
    left: Tensor  # int64 [N], in [0, 2 * crop_padding]
    flip: Tensor  # bool [N]

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(*(t.to(device) for t in self))

    def slice(self, start: int, stop: int) -> AugmentParams:
        return AugmentParams(*(t[start:stop] for t in self))


def _reflect_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Source index of each position of a reflect-padded axis (edge not repeated)."""
    index = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


@dataclass(frozen=True)
class Augment:
    """Batched random crop with padding and random horizontal flip.

    The crop pads the batch by ``crop_padding`` pixels on each side (zeros, or a mirror
    image with ``pad_mode="reflect"``) and takes, for every sample, the window of the
    original size at its own random offset (the airbench recipe); the flip mirrors the
    samples of a random per-sample mask. Both are done by one gather with per-sample
    indices, whatever the batch size. Works on any dtype (the loader augments uint8).
    """

    crop_padding: int = 0
    flip: bool = False
    pad_mode: str = "constant"

    def __post_init__(self) -> None:
        p = self.crop_padding
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise BinsenseError(f"crop_padding must be an integer >= 0, got {p!r}.")
        if not isinstance(self.flip, bool):
            raise BinsenseError(f"flip must be True or False, got {self.flip!r}.")
        if self.pad_mode not in PAD_MODES:
            raise unknown_name("padding mode", str(self.pad_mode), PAD_MODES)

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the augmentation of ``n`` samples (on the generator's device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        high = 2 * self.crop_padding + 1
        top = torch.randint(high, (n,), generator=generator, device=device)
        left = torch.randint(high, (n,), generator=generator, device=device)
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        return AugmentParams(top, left, flip & self.flip)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Augment the batch ``x`` ``[B, C, H, W]`` with the draws ``params`` (on its device).

        Crop and flip are one gather: sample ``n``'s output pixel ``(i, j)`` is read from
        the padded image at row ``top[n] + i`` and column ``left[n] + j``, or
        ``left[n] + W - 1 - j`` where ``flip[n]`` (chosen with ``torch.where``).
        """
        if not self.crop_padding and not self.flip:
            return x
        b, c, h, w = x.shape
        padded = self._pad(x)
        wp = padded.shape[-1]
        i = torch.arange(h, device=x.device)
        j = torch.arange(w, device=x.device)
        left = params.left.view(b, 1)
        cols = torch.where(params.flip.view(b, 1), left + (w - 1 - j), left + j)  # [B, W]
        rows = params.top.view(b, 1) + i  # [B, H]
        index = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w)
        out = padded.reshape(b, c, -1).gather(2, index.expand(b, c, h * w))
        return out.view(b, c, h, w)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment the batch ``x`` with fresh draws from ``generator``."""
        return self.apply(x, self.sample(len(x), generator).to(x.device))

    def _pad(self, x: Tensor) -> Tensor:
        p = self.crop_padding
        if not p:
            return x
        if self.pad_mode == "constant":
            return F.pad(x, (p, p, p, p))
        h, w = x.shape[-2:]
        if p >= h or p >= w:
            raise BinsenseError(
                f"reflect padding needs crop_padding < the image size, got {p} for "
                f"{h}x{w} images; use a smaller padding or pad_mode='constant'."
            )
        rows, cols = _reflect_index(h, p, x.device), _reflect_index(w, p, x.device)
        return x.index_select(-2, rows).index_select(-1, cols)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, epoch)``."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class DeviceLoader:
    """Serve batches ``(x, y)`` of an :class:`ImageTensors` split from tensors on ``device``.

    ``x`` is float32 ``[B, C, H, W]`` with pixel / 255 in [0, 1] (no mean/std
    normalisation: models normalise, so sensor noise can act on the [0, 1] signal) and
    ``y`` int64 ``[B]``. The uint8 images are moved to ``device`` once, at construction.

    The order (``shuffle``) and augmentation of an epoch depend only on ``(seed, epoch)``.
    Each iteration runs the epoch set by :meth:`set_epoch` and then advances it by one, so
    a plain ``for epoch in ...: for x, y in loader:`` loop sees a fresh order each epoch and
    a resumed run calls ``set_epoch(e)`` to replay epoch ``e`` exactly.

    ``drop_last`` drops an incomplete last batch. A shuffling (training) loader also drops
    a last batch of a *single* image on its own: batch norm cannot normalise one sample in
    training mode (its variance is undefined), so ``n_train % batch_size == 1`` would
    otherwise crash in the last step of every epoch. The dropped image is a different
    one each epoch (the order is reshuffled). A loader without ``shuffle`` (evaluation)
    always serves every image.
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: Augment | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BinsenseError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise BinsenseError(f"seed must be an integer >= 0, got {seed!r}.")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.info = data.info
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration serve epoch ``epoch``."""
        if epoch < 0:
            raise BinsenseError(f"epoch must be >= 0, got {epoch}.")
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        if self.drop_last or (self.shuffle and n > 1 and n % b == 1):
            return n // b  # in training, a last batch of one image is dropped (docstring)
        return -(-n // b)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        gen = _epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        params = self.augment.sample(n, gen).to(self.device) if self.augment else None
        return self._batches(order.to(self.device), params)

    def _batches(
        self, order: Tensor, params: AugmentParams | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(order)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, n)
            index = order[start:stop]
            x = self.images.index_select(0, index)
            if self.augment is not None and params is not None:
                x = self.augment.apply(x, params.slice(start, stop))
            yield x.to(torch.float32).div_(255.0), self.labels.index_select(0, index)
