"""Data sets as uint8 tensors and a device-resident loader with batched augmentation.

Design:

- **Registry** (:func:`load_dataset`, :func:`dataset_info`, :func:`list_datasets`): data
  sets by name (``mnist``, ``cifar10``, ..., or ``imagefolder:PATH``), read from a local
  data folder first (:func:`resolve_data_dir`: argument, ``$BINSENSE_DATA``, user cache)
  and downloaded through torchvision only when missing; offline, one
  :class:`~binsense.errors.DataNotFoundError` says where to put the files.
- **Tensors, decoded once**: a split is an :class:`ImageTensors` (uint8 ``[N, C, H, W]``
  images, int64 labels, :class:`DatasetInfo`, SHA-256 fingerprint). Decoding is cached
  per (data set, split, source) in :func:`resolve_cache_dir`, keyed by the source files'
  sizes and mtimes, so the second load of CIFAR-10 takes well under a second.
- **Tensors on the device**: :class:`DeviceLoader` moves the uint8 tensors to the device
  once and builds each batch there with a few tensor ops; :class:`Augment` (random crop
  with padding, horizontal flip) works on the whole batch, with no per-sample Python and
  no worker processes. Batches are float32 pixels / 255 in [0, 1]; models normalise.
- **Deterministic per (seed, epoch)**: the order and augmentation of epoch ``e`` come
  from a generator seeded by ``(seed, e)`` only, never the global RNG, so a resumed run
  replays its epochs exactly.
"""

from binsense.data.loader import Augment, AugmentParams, DeviceLoader
from binsense.data.paths import resolve_cache_dir, resolve_data_dir
from binsense.data.registry import (
    DATASETS,
    dataset_info,
    list_datasets,
    load_dataset,
    resolve_dataset_name,
    split_size_suffix,
)
from binsense.data.tensors import DatasetInfo, ImageTensors

__all__ = [
    "Augment",
    "AugmentParams",
    "DatasetInfo",
    "DeviceLoader",
    "ImageTensors",
    "DATASETS",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "resolve_dataset_name",
    "resolve_cache_dir",
    "resolve_data_dir",
    "split_size_suffix",
]
