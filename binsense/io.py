"""Atomic file writes and safe loading.

A crash (or ``kill -9``) in the middle of a write must never leave a half-written
checkpoint or result: every write goes to a temporary file in the same directory, is
flushed and fsync'ed, then renamed over the destination (``os.replace`` is atomic on
POSIX and Windows). Loading never executes code from a file: checkpoints are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from binsense.errors import CheckpointError


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``writer(fileobj)`` fills a temp file that is renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` a checkpoint (tensors, numbers, strings, dicts, lists)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing code (``weights_only=True``).

    Raises :class:`CheckpointError` with a clear message if the file is missing, truncated
    or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a binsense checkpoint "
            f"({type(e).__name__}); re-create it (train again, or resume from an earlier copy)."
        ) from None
