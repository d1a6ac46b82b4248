"""Where data sets and decoded-tensor caches live.

Raw data (the files a data set is read from) and the decoded-tensor cache are separate
folders: raw data may sit on a shared, read-only disk, while the cache must be writable.

- raw data: ``data_dir`` argument, else ``$BINSENSE_DATA``, else ``<user cache>/data``;
- tensor cache: ``cache_dir`` argument, else ``$BINSENSE_CACHE``, else
  ``<user cache>/tensors``;

where ``<user cache>`` is ``$XDG_CACHE_HOME/binsense`` (default ``~/.cache/binsense``).
:func:`check_data_dir` refuses, in one line, a data folder that exists but cannot be
read, before a command spends time on anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

from binsense.errors import BinsenseError
from binsense.io import user_cache_root

DATA_ENV = "BINSENSE_DATA"
CACHE_ENV = "BINSENSE_CACHE"


def _resolve(explicit: str | os.PathLike | None, env: str, default_leaf: str) -> Path:
    if explicit is not None:
        path = Path(explicit)
    elif os.environ.get(env):
        path = Path(os.environ[env])
    else:
        path = user_cache_root() / default_leaf
    return path.expanduser().resolve()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder raw data sets are read from (and downloaded to), as an absolute path.

    ``data_dir`` if given, else ``$BINSENSE_DATA``, else ``~/.cache/binsense/data``
    (``$XDG_CACHE_HOME`` honoured). The folder need not exist.
    """
    return _resolve(data_dir, DATA_ENV, "data")


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder decoded uint8 tensors are cached in, as an absolute path.

    ``cache_dir`` if given, else ``$BINSENSE_CACHE``, else ``~/.cache/binsense/tensors``
    (``$XDG_CACHE_HOME`` honoured). The folder need not exist.
    """
    return _resolve(cache_dir, CACHE_ENV, "tensors")


def check_data_dir(data_dir: str | os.PathLike | None = None) -> None:
    """An existing data folder (``data_dir``, else ``$BINSENSE_DATA``) must be readable:
    one :class:`~binsense.errors.BinsenseError` line if it is not (a folder that does not
    exist is not refused here: the data sets say what they miss)."""
    folder = os.fspath(data_dir) if data_dir else os.environ.get(DATA_ENV)
    if folder and os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
        raise BinsenseError(
            f"data folder {folder!r} is not readable for you (permission denied); fix its "
            "permissions or point --data-dir (BINSENSE_DATA) at a readable copy."
        )
