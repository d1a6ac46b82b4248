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
- **Checked where read**: an image folder's unreadable folders, symbolic-link loops,
  empty image files and test images of another size than its training images are one
  line each, from the reader itself (:func:`scan_image_tree`, :func:`check_split_shape`);
  :func:`check_image_folder`, :func:`check_test_split` and :func:`check_data_dir` let a
  command refuse them before it starts.
- **Deterministic per (seed, epoch)**: the order and augmentation of epoch ``e`` come
  from a generator seeded by ``(seed, e)`` only, never the global RNG, so a resumed run
  replays its epochs exactly.
"""

from binsense.data.imagefolder import scan_image_tree
from binsense.data.loader import Augment, AugmentParams, DeviceLoader
from binsense.data.paths import check_data_dir, resolve_cache_dir, resolve_data_dir
from binsense.data.registry import (
    DATASETS,
    check_image_folder,
    check_test_split,
    dataset_info,
    is_image_folder,
    list_datasets,
    load_dataset,
    resolve_dataset_name,
    split_size_suffix,
)
from binsense.data.tensors import DatasetInfo, ImageTensors, check_split_shape

__all__ = [
    "Augment",
    "AugmentParams",
    "DatasetInfo",
    "DeviceLoader",
    "ImageTensors",
    "DATASETS",
    "check_data_dir",
    "check_image_folder",
    "check_split_shape",
    "check_test_split",
    "dataset_info",
    "is_image_folder",
    "list_datasets",
    "load_dataset",
    "resolve_dataset_name",
    "resolve_cache_dir",
    "resolve_data_dir",
    "scan_image_tree",
    "split_size_suffix",
]
