"""Run a deployed program over a data set: accuracy, speed and the predictions.

:func:`infer` is the loop behind ``binsense infer``: it refuses, before any op runs,
images of another shape than the program was built for, a batch whose activations
cannot fit in memory (:meth:`~binsense.deploy.DeployedModel.check_memory`) and a data set
with another number of classes than the program predicts (its accuracy would mean
nothing); then it predicts every batch with the packed engine and times it.
:class:`InferResult` holds the predictions, the labels and the timing, and writes the
predictions as CSV (``index,label,prediction``)::

    from binsense.data import DeviceLoader, load_dataset
    from binsense.deploy import file_input_shape, infer
    from binsense.deploy.fileformat import read_deployed

    loaded = read_deployed("model.bsd")
    data = load_dataset(loaded.meta["dataset"], "test")
    loader = DeviceLoader(data, 250, shuffle=False)
    result = infer(loaded.model, loader, input_shape=file_input_shape(loaded.meta))
    print(f"{result.accuracy:.2%}, {result.images_per_s:,.0f} images/s")
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from binsense.errors import BinsenseError

if TYPE_CHECKING:  # pragma: no cover
    from binsense.data import DeviceLoader
    from binsense.deploy.program import DeployedModel


@dataclass(frozen=True)
class InferResult:
    """What :func:`infer` measured: one prediction and label per image (int64, in the
    loader's order), the wall time of the loop, and the kernel path and thread count."""

    predictions: Tensor
    labels: Tensor
    wall_s: float
    kernel_path: str
    threads: int

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> int:
        return int((self.predictions == self.labels).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else float("inf")

    def predictions_csv(self) -> str:
        """``index,label,prediction`` and one row per image."""
        rows = ["index,label,prediction"]
        pairs = zip(self.labels.tolist(), self.predictions.tolist(), strict=True)
        rows += [f"{i},{label},{pred}" for i, (label, pred) in enumerate(pairs)]
        return "\n".join(rows) + "\n"

    def write_predictions(self, path: str | os.PathLike) -> Path:
        """Write :meth:`predictions_csv` to ``path`` atomically (:mod:`binsense.io`)."""
        from binsense.io import atomic_write_text

        return atomic_write_text(path, self.predictions_csv())


def file_input_shape(meta: Mapping) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` a deployed file was built for: its manifest's ``input_shape``,
    else its built-in data set's; ``None`` when it names neither (an image folder's shape
    is known only on disk)."""
    from binsense.data import dataset_info, is_image_folder

    shape = meta.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape):
        return (shape[0], shape[1], shape[2])
    name = meta.get("dataset")
    if isinstance(name, str) and not is_image_folder(name):
        with contextlib.suppress(BinsenseError):
            info = dataset_info(name)
            return (info.in_channels, *info.image_size)
    return None


def check_loader_memory(
    model: DeployedModel,
    loader: DeviceLoader,
    *,
    what: str = "the deployed program",
    allow: bool | None = None,
    fix: str = "give a smaller batch size",
) -> int:
    """Walk ``model`` over the loader's image shape (one line if an op does not fit it)
    and refuse a batch of the loader's size (or all its images, if fewer) whose
    activations cannot fit in memory (:meth:`~binsense.deploy.DeployedModel.check_memory`;
    ``allow`` or ``$BINSENSE_ALLOW_LARGE`` skip that), before any op runs. ``what``
    names the program in the refusal; returns the estimate in bytes."""
    shape = tuple(loader.images.shape[1:])
    batch = max(1, min(loader.batch_size, len(loader.labels)))
    text = f"running {what} on a batch of {batch} images of shape {'x'.join(map(str, shape))}"
    return model.check_memory(shape, batch, what=text, allow=allow, fix=fix)


def infer(
    model: DeployedModel,
    loader: DeviceLoader,
    *,
    what: str = "the deployed program",
    data_name: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    allow_large: bool | None = None,
    fix: str = "give a smaller batch size",
    progress: bool | None = None,
) -> InferResult:
    """Predict every image of ``loader`` (a :class:`~binsense.data.DeviceLoader` on the
    CPU, without shuffling) with ``model``, timed.

    First, before any op runs: the loader's images must have ``input_shape`` (``C, H,
    W``: what the program was built for, e.g. :func:`file_input_shape` of its file's meta;
    ``None`` skips that), a batch must fit in memory (:func:`check_loader_memory`; ``fix``
    is its advice, ``allow_large`` skips it). Then one image is run to count the classes
    the program predicts, which must be the data set's (``loader.info``). ``what`` names
    the program in every refusal (a file name), ``data_name`` the data set (default
    ``loader.info.name``). ``progress``: a progress bar (``None``: on a terminal).

    Raises:
        BinsenseError: one line for each refusal above, and for a batch the program
            cannot run on.
    """
    from tqdm.auto import tqdm

    from binsense.deploy import kernels

    name = data_name or loader.info.name
    got = tuple(loader.images.shape[1:])
    if input_shape is not None and got != tuple(input_shape):
        want = input_shape
        raise BinsenseError(
            f"the images of {name!r} are {got[2]}x{got[1]} pixels with {got[0]} channel(s); "
            f"{what} was built for {want[2]}x{want[1]} with {want[0]}: give its data set."
        )
    check_loader_memory(model, loader, what=what, allow=allow_large, fix=fix)
    classes = model(loader.images[:1]).shape[1]  # uint8 codes: what the program reads
    if classes != loader.info.num_classes:
        raise BinsenseError(
            f"{what} predicts {classes} classes, but {name!r} has {loader.info.num_classes}: "
            "its accuracy would mean nothing; give the data set it was trained on (--data)."
        )
    predictions: list[Tensor] = []
    labels: list[Tensor] = []
    disable = None if progress is None else not progress
    t0 = time.perf_counter()
    for x, y in tqdm(loader, desc="infer", unit="batch", disable=disable):
        try:
            pred = model.predict(x)
        except RuntimeError as e:  # a shape the program was not built for
            raise BinsenseError(
                f"{what} cannot run on images of shape {tuple(x.shape[1:])}: "
                f"{str(e).splitlines()[0]}"
            ) from None
        predictions.append(pred)
        labels.append(y)
    wall = time.perf_counter() - t0
    path = kernels.backend()
    threads = kernels.get_threads() if path != "torch" else torch.get_num_threads()
    empty = torch.zeros(0, dtype=torch.int64)
    return InferResult(
        predictions=torch.cat(predictions) if predictions else empty,
        labels=torch.cat(labels).to(torch.int64) if labels else empty,
        wall_s=wall,
        kernel_path=path,
        threads=threads,
    )


__all__ = ["InferResult", "check_loader_memory", "file_input_shape", "infer"]
