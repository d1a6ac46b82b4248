"""Pre-flight checks of a study: what would fail late or obscurely, refused in one line
before anything is written.

:func:`~binsense.study.runner.run_study` calls :func:`check_study_run` itself, before it
takes the study lock or creates the store, so a study started from Python (a notebook, a
Ray driver) is checked as ``binsense study run`` checks it. The commands that only read a
study (``results``, ``report``, ``show``, ``compare``) call :func:`check_study_folder`.

Every check belongs to the module of what it checks and is called from here:

- the study folder is a folder and can be written (:func:`binsense.io.check_out_dir`),
  its ``.lock`` is not a folder, its ``results.sqlite`` is binsense's
  (:meth:`binsense.study.store.ResultStore.check_file`);
- the data folder can be read (:func:`binsense.data.check_data_dir`), an image folder has
  no unreadable folder, link loop or empty image (:func:`binsense.data.check_image_folder`)
  and test images of its training images' size (:func:`binsense.data.check_test_split`);
- every device exists on this machine (:func:`binsense.resources.resolve_device`) and
  every model fits in memory (:func:`binsense.resources.check_config_fits`;
  ``$BINSENSE_ALLOW_LARGE``, which ``--allow-large`` sets, skips that comparison).

A device, memory or test-image problem is prefixed with the study file (and preset), and
with the training when the grid has several.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from binsense.errors import BinsenseError
from binsense.study.schema import Study


def check_study_folder(study: Study) -> None:
    """The study folder, if it exists, is a folder, and the results store in it (if any)
    is a binsense store (:meth:`~binsense.study.store.ResultStore.check_file`). Reads only."""
    from binsense.study.store import ResultStore

    out = study.out_dir
    if out.exists() and not out.is_dir():
        raise BinsenseError(
            f"study folder {str(out)!r} is a file, not a folder; pass another --out folder."
        )
    ResultStore.check_file(study.store_path)


@contextmanager
def _prefixed(prefix: str) -> Iterator[None]:
    """A :class:`BinsenseError` raised inside, again with ``prefix`` before its line."""
    try:
        yield
    except BinsenseError as e:
        raise BinsenseError(f"{prefix}{e}") from None


def check_study_run(
    study: Study, *, data_dir: str | os.PathLike | None = None, allow_large: bool | None = None
) -> None:
    """Everything ``study run`` checks before it writes anything (module docstring):
    one :class:`BinsenseError` line for the first problem; nothing is created.

    ``allow_large`` (default ``$BINSENSE_ALLOW_LARGE``) skips the memory comparison (the
    models are still built on the meta device, which validates their options).
    """
    from binsense.data import check_data_dir, check_image_folder, check_test_split, dataset_info
    from binsense.io import check_out_dir
    from binsense.resources import check_config_fits, resolve_device

    check_study_folder(study)
    lock = study.out_dir / ".lock"
    if lock.is_dir():
        raise BinsenseError(
            f"{str(lock)!r} is a folder, but binsense keeps the study's lock file there; "
            "remove it (rmdir) and run again."
        )
    check_out_dir(study.out_dir, "study folder")
    check_data_dir(data_dir)
    where = f"{study.path}" + (f" (preset {study.preset})" if study.preset else "")
    trainings = study.training_order()  # the grid's trainings and their hidden ones
    devices = {t.config.device for t in trainings}
    if study.eval.device:
        devices.add(study.eval.device)
    for device in sorted(devices):
        with _prefixed(f"{where}: "):
            resolve_device(device, check_available=True)
    datasets = sorted({t.config.dataset for t in trainings})
    for name in datasets:
        check_image_folder(name)
    checked: set[str] = set()
    for t in trainings:
        c = t.config
        key = json.dumps([c.model, c.dataset, c.model_options, c.optimizer, c.momentum, c.device])
        if key in checked:
            continue
        checked.add(key)
        which = f"training {t.label()}: " if t.grid or t.hidden_for else ""
        with _prefixed(f"{where}: {which}"):
            info = dataset_info(c.dataset)
            check_config_fits(c, info=info, training=True, device=c.device, allow=allow_large)
    for name in datasets:
        with _prefixed(f"{where}: "):
            check_test_split(name, data_dir)


__all__ = ["check_study_folder", "check_study_run"]
