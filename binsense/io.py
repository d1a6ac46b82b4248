"""Atomic file writes, safe loading, safe output names and clean-up after a crash.

A crash (or ``kill -9``) in the middle of a write must never leave a half-written
checkpoint or result: every write goes to a temporary file ``.NAME.<random>.tmp`` in the
same directory, is flushed and fsync'ed, then renamed over the destination
(``os.replace`` is atomic on POSIX and Windows). The finished file gets the mode the
user's umask gives a new file (``0o666 & ~umask``, e.g. ``0644``), not the ``0600`` of a
temporary file, so outputs can be shared like any other file. A temporary file left by a
killed process is removed by :func:`clean_stale_temps`; a writer holds an advisory lock
on its temporary file while it writes, so a live writer's file is never removed.

Destinations that are not regular files are written the way ``cp`` writes them: a device,
FIFO or socket (``-o /dev/stdout``, ``--onnx /dev/null``, a named pipe) is opened and
written directly — it has no atomicity to keep, and renaming a temporary file over it
would replace it with a regular file (as root, ``/dev/null`` itself); a symbolic link is
followed, and the file it points to is written atomically while the link stays a link.

``torch.save`` output is serialized in memory and written with ordinary file writes: a
full disk then is an ``OSError`` (``ENOSPC``, one :class:`WriteError` line), never the
``RuntimeError`` ("unexpected pos") that torch raises when it writes into the file itself.
A writer that turns a failed write into another exception still reports the failed
write (:func:`atomic_write` records it).

**Checksums.** A training checkpoint is *sealed*: the file is the ``torch.save`` archive
``{"binsense_sealed": 1, "sha256": <hex>, "payload": <uint8 tensor>}``, whose payload
is the ``torch.save`` bytes of the checkpoint itself and whose ``sha256`` covers them.
The digest is verified before the payload is parsed, so a changed byte is reported as
corruption instead of loading with other weights (a ``torch.save`` archive alone does
not catch every flipped bit). Files without a seal (written before checksums, and
data-cache entries, which carry their own sha256 fingerprint) load as they are.

Loading never executes code from a file: checkpoints are read with
``torch.load(..., weights_only=True)`` (the sealed payload too). A file that cannot be
parsed is reported as corrupt (:class:`~binsense.errors.CheckpointError`); running out of
memory or an I/O error while reading is reported as what it is (:class:`ReadError`), never
as "corrupt".
Errors while writing (disk full, permission denied, read-only file system) become one
:class:`WriteError` line that says what happened.

Names that become parts of paths (preset names, run ids, figure names) go through
:func:`safe_child`, so an output always stays inside the folder the user chose.
Before a command writes anything, :func:`check_out_dir` and :func:`check_output_file`
say in one line when an output folder or file cannot be created there (a file where a
folder is meant or the reverse, a read-only file system, no permission).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import stat
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from binsense.errors import BinsenseError, CheckpointError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Temporary files of :func:`atomic_write` are named ``.<name>.<random>.tmp``.
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")

#: A temporary file younger than this (seconds since its last write) is never removed:
#: it may belong to a writer that has created it and not yet locked it.
MIN_TEMP_AGE_S = 1.0
#: Without advisory locks (Windows) only temporary files this old are removed.
UNLOCKED_TEMP_AGE_S = 600.0


class ReadError(BinsenseError):
    """A file could not be read for a reason other than its content (I/O, memory).

    ``out_of_memory`` says which: ``True`` when memory ran out, ``False`` for an I/O error.
    """

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


class WriteError(BinsenseError, OSError):
    """A file could not be written (disk full, permission denied, read-only folder).

    Also an :class:`OSError` (with the original ``errno``), so code that handles write
    failures as ``OSError`` keeps working.
    """

    def __str__(self) -> str:  # OSError would prefix "[Errno N]" and append the file name
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------- errors in words


def user_cache_root() -> Path:
    """binsense's folder in the user's cache: ``$XDG_CACHE_HOME/binsense``, else
    ``~/.cache/binsense`` (data sets and tensor caches live below it by default)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "binsense"


def user_cache(leaf: str) -> Path:
    """``$BINSENSE_CACHE/leaf`` when that is set, else :func:`user_cache_root` ``/ leaf``:
    where the built kernels (``kernels``) and the last error's log (``last-error.log``)
    are kept."""
    cache = os.environ.get("BINSENSE_CACHE")
    return (Path(cache).expanduser() if cache else user_cache_root()) / leaf


def os_error_text(e: OSError) -> str:
    """What an :class:`OSError` means, in words: ``'No space left on device (disk full)'``."""
    text = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        return f"{text} (the disk is full)"
    if e.errno == errno.EDQUOT:
        return f"{text} (your disk quota is used up)"
    if e.errno == errno.EROFS:
        return f"{text} (the file system is mounted read-only)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{text} (no permission)"
    return text


def write_error(e: OSError, path: str | os.PathLike, what: str = "write") -> WriteError:
    """A :class:`WriteError` for an ``OSError`` raised while writing ``path``."""
    hint = {
        errno.ENOSPC: "free some space and run again; files written so far are intact",
        errno.EDQUOT: "free some space and run again; files written so far are intact",
        errno.EROFS: "choose a writable folder",
        errno.EACCES: "choose a folder you can write to (or fix its permissions)",
        errno.EPERM: "choose a folder you can write to (or fix its permissions)",
        errno.EISDIR: "name a file, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.ELOOP: "a symbolic link loop (a link that points back to itself); remove the link",
        errno.ENXIO: "it is a socket or a device that cannot be opened for writing; name a file",
    }.get(e.errno or 0, "check the path and the disk")
    out = WriteError(f"cannot {what} {str(path)!r}: {os_error_text(e)}; {hint}.")
    out.errno, out.strerror, out.filename = e.errno, e.strerror, str(path)
    return out


# ---------------------------------------------------------------- umask and atomic writes

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc``) where possible.

    Elsewhere it is read by setting and restoring it, under a lock (other threads that
    create files at that instant could see ``0o022`` for a moment).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _lock_temp(fd: int) -> None:
    """Hold an advisory lock on a temporary file while it is written (POSIX)."""
    if fcntl is not None:  # (file systems without flock: the age rule still protects it)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class _TrackedFile:
    """The file handed to a writer: it remembers the first ``OSError`` a write raised.

    Some writers turn a failed write into another exception (``torch.save`` into a file
    raises ``RuntimeError: ... unexpected pos`` when the disk is full) or swallow it;
    :func:`_run_writer` then reports the write that failed (a :class:`WriteError` that
    says "the disk is full"), not what the writer made of it.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def _track(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise

    def write(self, data: Any) -> int:
        return self._track(self._f.write, data)

    def writelines(self, lines: Any) -> None:
        self._track(self._f.writelines, lines)

    def flush(self) -> None:
        self._track(self._f.flush)

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno, name, ...
        return getattr(self._f, name)


def _run_writer(writer: Callable[[IO[bytes]], None], f: IO[bytes]) -> None:
    """``writer(f)``; a write that failed is raised as itself (an ``OSError``)."""
    tracked = _TrackedFile(f)
    try:
        writer(tracked)  # type: ignore[arg-type]
    except OSError:
        raise
    except Exception:
        if tracked.error is not None:
            raise tracked.error from None
        raise
    if tracked.error is not None:  # the writer swallowed it: the file is incomplete
        raise tracked.error


def _is_special(path: Path) -> bool:
    """Whether ``path`` (links followed) exists and is neither a regular file nor a
    folder: a character or block device, a FIFO or a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


#: Symbolic links followed before a chain counts as a loop (Linux's limit).
_MAX_LINKS = 40


def _link_target(path: Path) -> Path | None:
    """The path a chain of symbolic links at ``path`` ends in (``path`` itself when it
    is not a link), followed as ``cp`` follows a destination link; the target may not
    exist (a dangling link). ``None`` for a link kept by ``/proc`` (``/dev/stdout`` ->
    ``/proc/self/fd/1``): it names an open file of a process, which is written through,
    not replaced."""
    current = path
    for _ in range(_MAX_LINKS):
        if not current.is_symlink():
            return current
        if os.path.realpath(current.parent).startswith("/proc/"):
            return None
        link = Path(os.readlink(current))
        current = link if link.is_absolute() else current.parent / link
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))


def _write_through(path: Path, writer: Callable[[IO[bytes]], None]) -> Path:
    """Open ``path`` (a device, FIFO, socket or ``/proc`` link) and write it directly.

    No temporary file, no rename, no fsync: a device or a pipe has no atomicity to
    keep. It is opened for appending: a device or pipe ignores that, and a file reached
    through ``/proc`` (``-o /dev/stdout > out.txt``) keeps what the process wrote to it
    before. A FIFO blocks here until a reader opens it, as a shell redirection does. A
    reader that goes away (``BrokenPipeError``, e.g. ``-o /dev/stdout | head``) is
    raised as it is, so the command ends quietly like any other write to a closed pipe.
    """
    try:
        with open(path, "ab") as f:
            _run_writer(writer, f)
            f.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(e, path) from None
    return path


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``writer(fileobj)`` fills a temp file that is renamed.

    The file ends up with mode ``0o666 & ~umask``. An ``OSError`` while creating,
    writing or renaming becomes a :class:`WriteError` that says what happened (also when
    the writer turned it into another exception, see :class:`_TrackedFile`).

    Destinations that are not regular files, as ``cp`` treats them:

    - a device, FIFO or socket (``/dev/null``, ``/dev/stdout``, a named pipe) is
      written directly (:func:`_write_through`): replacing it would turn it into a
      regular file;
    - a symbolic link is followed (:func:`_link_target`): the file it points to is
      written atomically and the link stays; a dangling link creates the file it names,
      in its folder, which must exist (otherwise one :class:`WriteError` line).

    Returns ``path`` as given.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if _is_special(path):
            return _write_through(path, writer)
        target = _link_target(path)
        if target is None:
            return _write_through(path, writer)
        if target != path and not target.parent.is_dir():
            out = WriteError(
                f"cannot write {str(path)!r}: it is a symbolic link to {str(target)!r}, "
                "whose folder does not exist; create that folder, or remove the link."
            )
            out.errno, out.strerror, out.filename = errno.ENOENT, "dangling link", str(path)
            raise out
        # what a killed writer of this same file left behind goes first (never a live one's)
        clean_stale_temps(target.parent, name=target.name)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        _lock_temp(fd)
        with os.fdopen(fd, "wb") as f:
            _run_writer(writer, f)
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            if os.name != "nt":  # rename while the lock is held: no cleaner can take it
                os.replace(tmp, target)
        if os.name == "nt":  # pragma: no cover - Windows cannot rename an open file
            os.replace(tmp, target)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, (WriteError, BrokenPipeError)):
            raise write_error(e, path) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


#: The key that marks a sealed file (module docstring) and its version.
SEAL_KEY = "binsense_sealed"
SEAL_VERSION = 1


def torch_bytes(obj: Any) -> memoryview:
    """``torch.save(obj)`` into memory: the bytes of the archive (no file touched)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def seal(data: memoryview | bytes) -> dict[str, Any]:
    """The sealed form of ``torch.save`` bytes: ``{SEAL_KEY: 1, "sha256": hex,
    "payload": uint8 tensor}`` (module docstring); the tensor shares ``data``'s memory."""
    view = memoryview(data)
    payload = torch.frombuffer(view if not view.readonly else bytearray(view), dtype=torch.uint8)
    return {SEAL_KEY: SEAL_VERSION, "sha256": hashlib.sha256(view).hexdigest(), "payload": payload}


def atomic_torch_save(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> Path:
    """Atomically ``torch.save`` a checkpoint (tensors, numbers, strings, dicts, lists).

    The archive is built in memory first and written with ordinary writes, so a full
    disk is a :class:`WriteError` ("the disk is full"), not torch's ``RuntimeError``.
    ``checksum``: seal the file with a sha256 of its content (module docstring), which
    :func:`safe_torch_load` verifies before it parses the content; the trainer seals its
    checkpoints (data-cache entries carry their own sha256 fingerprint).
    """
    data = torch_bytes(obj)
    if checksum:
        data = torch_bytes(seal(data))
    return atomic_write(path, lambda f: f.write(data))


def clean_stale_temps(
    folder: str | os.PathLike,
    *,
    recursive: bool = False,
    min_age_s: float | None = None,
    name: str | None = None,
) -> list[Path]:
    """Remove temporary files (``.NAME.*.tmp``) that a killed writer left in ``folder``
    (only those of the destination ``name``, when given).

    A file is removed only when no process holds its advisory lock (a live
    :func:`atomic_write` does) and it was last written more than ``min_age_s`` seconds
    ago (default :data:`MIN_TEMP_AGE_S`; :data:`UNLOCKED_TEMP_AGE_S` where advisory locks
    do not exist). Hidden folders are not entered. Returns the removed paths; files that
    cannot be removed are left alone.
    """
    if min_age_s is None:
        min_age_s = MIN_TEMP_AGE_S if fcntl is not None else UNLOCKED_TEMP_AGE_S
    removed: list[Path] = []
    stack = [os.fspath(folder)]
    now = time.time()
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not entry.name.startswith("."):
                        stack.append(entry.path)
                    continue
                match = TEMP_PATTERN.match(entry.name)
                if not entry.is_file(follow_symlinks=False) or not match:
                    continue
                if name is not None and match["name"] != name:
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                    continue
                if _remove_if_unlocked(entry.path):
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed


def _remove_if_unlocked(path: str) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: the age rule alone
        os.unlink(path)
        return True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        except OSError:
            pass  # no flock on this file system: the age rule alone
        os.unlink(path)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- safe names


_WINDOWS_BAD = set('<>:"|?*')


def safe_child(root: str | os.PathLike, name: str, *, what: str = "name") -> Path:
    """``root / name``, after checking that ``name`` is one plain path component.

    Refused (:class:`~binsense.errors.BinsenseError`, one line naming ``what``): an empty
    name, ``.`` or ``..``, a path separator, a NUL or other control character, a name
    longer than 255 bytes, and (on Windows) a drive or reserved character. So the result
    is always a direct child of ``root``: nothing the user did not choose is written.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is empty"
    elif name in (".", ".."):
        problem = f"{name!r} is not a file name"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        problem = "it contains a path separator ('/' or '\\')"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it contains a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > 255:
        problem = "it is longer than 255 bytes"
    elif os.name == "nt" and (set(name) & _WINDOWS_BAD or name.rstrip(" .") != name):
        problem = "it contains a character Windows does not allow in file names"
    if problem is not None:
        raise BinsenseError(
            f"{what} {name!r} cannot be used as a file or folder name ({problem}); "
            "use letters, digits, spaces, '-', '_' and '.'."
        )
    root = Path(root)
    child = root / name
    if child.parent != root:  # pragma: no cover - guarded by the checks above
        raise BinsenseError(f"{what} {name!r} would leave the folder {str(root)!r}.")
    return child


# ---------------------------------------------------------------- writable paths


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` (made absolute) or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """A clear error (:class:`~binsense.errors.BinsenseError`) when ``folder``, an
    existing folder, cannot be written: read-only file system, or no permission."""
    if os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    why = "is on a read-only file system" if read_only else "is not writable for you"
    raise BinsenseError(
        f"cannot write {what}: {str(folder)!r} {why}; choose a folder you can write to"
        f"{'' if read_only else ' (or fix its permissions)'}."
    )


def check_out_dir(path: str | os.PathLike, what: str) -> None:
    """``path`` is (or can become) a folder this user can write; ``what`` names it in
    the error (``"--out"``, ``"study folder"``). Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BinsenseError(
            f"{what} {str(path)!r} is a file, not a folder; name a folder (it is created "
            "if missing)."
        )
    base = existing_ancestor(path)
    if not base.is_dir():
        raise BinsenseError(
            f"{what} {str(path)!r} cannot be created: {str(base)!r} is a file, not a folder."
        )
    check_writable(base, f"{what} {str(path)!r}")


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """``path`` names a file (not a folder) that this user can create or replace;
    ``what`` names it in the error (``"-o/--output"``). Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise BinsenseError(
            f"{what} {str(path)!r} is a folder; name a file, e.g. {str(path / 'out')!r}."
        )
    base = existing_ancestor(path.parent if path.parent != Path("") else Path("."))
    if not base.is_dir():
        raise BinsenseError(
            f"{what} {str(path)!r} cannot be created: {str(base)!r} is a file, not a folder."
        )
    check_writable(base, f"{what} {str(path)!r}")


# ---------------------------------------------------------------- safe loading

#: What ``torch.load`` raises for a file whose content is not a valid checkpoint.
_CORRUPT = (
    RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError,
    TypeError, AttributeError, ImportError, struct.error, zipfile.BadZipFile,
)  # fmt: skip

_OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory", "bad_alloc")


def _size_text(path: Path) -> str:
    try:
        return f"{path.stat().st_size / 1e9:.2f} GB"
    except OSError:
        return "unknown size"


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing code (``weights_only=True``).

    A sealed file (module docstring) is verified against its sha256 before its payload
    is parsed; :func:`load_torch_file` also says whether the file was sealed.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or its content
            does not match its checksum.
        ReadError: the file could not be read (an I/O error such as permission denied,
            or not enough memory); the file itself may be fine.
    """
    return load_torch_file(path, map_location)[0]


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[Any, bool]:
    """:func:`safe_torch_load`, and whether the file was sealed (carried a checksum)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path.")
    obj = _torch_load(path, path, map_location)
    if not _is_sealed(obj):
        return obj, False
    return _torch_load(path, io.BytesIO(_unseal(path, obj)), map_location), True


def _torch_load(path: Path, source: Path | IO[bytes], map_location: Any) -> Any:
    """``torch.load(source, weights_only=True)``, its errors in words (``path`` named)."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except MemoryError:
        raise _out_of_memory(path) from None
    except OSError as e:
        if e.errno is None:  # raised by a parser, not by the system: bad content
            raise _corrupt(path, e) from None
        raise ReadError(
            f"cannot read {str(path)!r}: {os_error_text(e)}; the file itself may be fine."
        ) from None
    except _CORRUPT as e:
        message = str(e).lower()
        if isinstance(e, RuntimeError) and any(s in message for s in _OUT_OF_MEMORY):
            raise _out_of_memory(path) from None
        raise _corrupt(path, e) from None


def _is_sealed(obj: Any) -> bool:
    """Whether a loaded archive is a seal (also one whose marker a flipped bit changed)."""
    return isinstance(obj, dict) and (SEAL_KEY in obj or {"sha256", "payload"} <= obj.keys())


def _unseal(path: Path, obj: dict) -> bytes:
    """The payload bytes of a seal, after checking them against its sha256."""
    version, digest, payload = obj.get(SEAL_KEY), obj.get("sha256"), obj.get("payload")
    if isinstance(version, int) and not isinstance(version, bool) and version > SEAL_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has checksum format {version}, newer than this "
            f"binsense reads (up to {SEAL_VERSION}); upgrade binsense."
        )
    if (
        version != SEAL_VERSION
        or not isinstance(digest, str)
        or not isinstance(payload, torch.Tensor)
        or payload.dtype != torch.uint8
        or payload.dim() != 1
    ):
        raise _corrupt(path, what="its checksum record is damaged")
    data = payload.contiguous().numpy()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its content does not match the sha256 "
            "recorded when it was written (a damaged disk or copy); retrain it, or resume "
            "from another copy."
        )
    return data.tobytes()


def _out_of_memory(path: Path) -> ReadError:
    return ReadError(
        f"not enough memory to load {str(path)!r} ({_size_text(path)} on disk); free memory "
        "or use a machine with more — the file itself may be fine.",
        out_of_memory=True,
    )


def _corrupt(path: Path, e: BaseException | None = None, what: str = "") -> CheckpointError:
    why = what or (type(e).__name__ if e is not None else "unreadable")
    return CheckpointError(
        f"checkpoint {str(path)!r} is corrupt or not a binsense checkpoint "
        f"({why}); re-create it (train again, or resume from an earlier copy)."
    )


@contextmanager
def folder_lock(folder: str | os.PathLike, holder: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (``folder/.lock``) while writing it.

    A second writer — another process, ``holder`` names what it is — is refused with one
    line; the OS releases the lock when the process dies, so a ``kill -9`` never leaves
    it stale. POSIX ``flock``; a no-op where it does not exist.
    """
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = folder / ".lock"
    if lock.is_dir():
        raise BinsenseError(
            f"{str(lock)!r} is a folder, but binsense keeps its lock file there; remove that "
            "folder (or use another output folder)."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")  # noqa: SIM115 - held until the block ends
    except OSError as e:
        raise write_error(e, lock, "lock the folder by writing") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BinsenseError(
                f"another {holder} is working in {str(folder)!r}; wait for it to finish (or "
                "stop it) — or use another output folder."
            ) from None
        yield


__all__ = [
    "user_cache",
    "user_cache_root",
    "SEAL_KEY",
    "SEAL_VERSION",
    "ReadError",
    "folder_lock",
    "WriteError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_out_dir",
    "check_output_file",
    "check_writable",
    "clean_stale_temps",
    "current_umask",
    "existing_ancestor",
    "os_error_text",
    "safe_child",
    "load_torch_file",
    "safe_torch_load",
    "seal",
    "torch_bytes",
    "write_error",
]
