"""The build of the XNOR-popcount C library (``xnor.c``) and its loading: the install-time
build when it matches the source, else a first-use build into the user's cache, keyed by
the hash of the source and flags, written atomically; one warning and ``None`` where no
compiler builds it (the package docstring of :mod:`binsense.deploy.kernels` has the
whole story). The typed calls into the library live in the package itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from binsense.io import user_cache

SOURCE = Path(__file__).with_name("xnor.c")
#: Compilers tried in order (``$CC`` first when set).
COMPILERS: tuple[str, ...] = ("cc", "gcc", "clang")
BASE_FLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11")
OPENMP_FLAGS = ("-fopenmp",)


_lib: ctypes.CDLL | None = None
_tried = False
_warned = False
_why = ""
_where = ""

_I64 = ctypes.c_int64
_P = ctypes.c_void_p
_INT = ctypes.c_int


def reset() -> None:
    """Forget the loaded library and the warning (tests)."""
    global _lib, _tried, _warned, _why, _where
    _lib, _tried, _warned, _why, _where = None, False, False, "", ""


def tried() -> bool:
    """Whether :func:`library` has been called since the last :func:`reset`."""
    return _tried


def cache_dir() -> Path:
    """``$BINSENSE_CACHE/kernels``, else ``$XDG_CACHE_HOME`` or ``~/.cache`` /binsense/kernels."""
    return user_cache("kernels")


def compilers() -> list[str]:
    """The C compilers to try, in order: ``$CC`` when set, then :data:`COMPILERS`."""
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    return [*names, *(c for c in COMPILERS if c not in names)]


def _key(flags: tuple[str, ...]) -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(flags).encode())
    h.update(f"{sys.platform}-{platform.machine()}".encode())
    return h.hexdigest()[:16]


def _prune(folder: Path, keep: Path) -> None:
    """Remove the builds of earlier sources (a process that has one loaded keeps it)."""
    for old in folder.glob("xnor-*.so"):
        if old != keep:
            with contextlib.suppress(OSError):
                old.unlink()


def _compile(folder: Path) -> Path | None:
    """The library in ``folder`` (built now if missing); ``None`` if no compiler builds it."""
    errors = []
    for flags in (BASE_FLAGS + OPENMP_FLAGS, BASE_FLAGS):
        target = folder / f"xnor-{_key(flags)}.so"
        if target.exists():
            return target
    folder.mkdir(parents=True, exist_ok=True)
    for cc in compilers():
        if shutil.which(cc) is None:
            errors.append(f"{cc}: not found")
            continue
        for flags in (BASE_FLAGS + OPENMP_FLAGS, BASE_FLAGS):  # OpenMP where it links
            target = folder / f"xnor-{_key(flags)}.so"
            fd, tmp = tempfile.mkstemp(prefix=".xnor-", suffix=".so", dir=folder)
            os.close(fd)
            try:
                run = subprocess.run(
                    [cc, *flags, str(SOURCE), "-o", tmp, "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if run.returncode == 0:
                    os.replace(tmp, target)  # atomic: a reader sees no half-written file
                    _prune(folder, keep=target)
                    return target
                last = (run.stderr.strip().splitlines() or ["failed"])[-1]
                errors.append(f"{cc} {' '.join(flags)}: {last}")
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{cc}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    global _why
    _why = "; ".join(errors[-2:]) or "no C compiler"
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    sig = {
        "xnor_version": ([], _INT),
        "xnor_openmp": ([], _INT),
        "xnor_features": ([], _INT),
        "xnor_isa": ([_INT], _INT),
        "xnor_packed_b_words": ([_I64, _I64], _I64),
        "xnor_pack_b": ([_P, _I64, _I64, _P], None),
        "xnor_gemm": ([_P, _P, _P, _I64, _I64, _I64, _I64, _INT], _INT),
        "xnor_gemm_packed": ([_P, _P, _P, _I64, _I64, _I64, _I64, _INT], _INT),
        "xnor_pack_nchw": ([_P, _INT, _I64, _I64, _I64, _I64, _P], _INT),
        "xnor_im2col": ([_P, _P, _I64, _P], None),
        "xnor_conv2d": ([_P, _P, _P, _P, _INT, _P, _P, _P, _P, _I64, _INT, _P], _INT),
        "xnor_fused_split": ([_INT], _INT),
        "xnor_split_panels": ([_P, _I64, _P], None),
        "xnor_pool_bits": ([_P, _I64, _I64, _I64, _I64, _I64, _P, _P], None),
        "xnor_float_conv": ([_P, _P, _P, _P, _P, _INT], _INT),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def source_key() -> str:
    """The first 16 hex digits of ``xnor.c``'s SHA-256 (what setup.py compiles in)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def _installed() -> ctypes.CDLL | None:
    """The library built at install time (setup.py: ``_xnor*.so`` beside this file), if it
    was built from this very source; None otherwise (not built, or a stale build)."""
    global _where
    key = source_key()
    for path in sorted(SOURCE.parent.glob("_xnor*.so")):
        try:
            lib = ctypes.CDLL(str(path))
            fn = lib.xnor_source_key
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [], ctypes.c_char_p
        if fn() == key.encode():
            _where = str(path)
            return lib
    return None


def where() -> str:
    """The file of the loaded library (install-time build or the first-use cache)."""
    library()
    return _where or "not loaded"


def library() -> ctypes.CDLL | None:
    """The loaded C library, built on first use; ``None`` (after one warning) without it."""
    global _lib, _tried, _why, _where
    if _tried:
        return _lib
    _tried = True
    if not SOURCE.is_file():
        _why = f"{SOURCE.name} is missing from the installed package"
        _warn_fallback()
        return None
    try:
        lib = _installed()
        if lib is not None:
            _lib = _declare(lib)
            return _lib
        try:
            path = _compile(cache_dir())
        except OSError:  # the cache is not writable: build in a private temporary folder
            path = _compile(Path(tempfile.mkdtemp(prefix="binsense-kernels-")))
        if path is not None:
            _lib = _declare(ctypes.CDLL(str(path)))
            _where = str(path)
    except (OSError, AttributeError) as e:
        _lib, _why = None, f"{type(e).__name__}: {e}"
    if _lib is None:
        _warn_fallback()
    return _lib


def _warn_fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"binsense: the XNOR C kernel could not be built ({_why}); the deploy engine "
            "uses its slower PyTorch path (same results).",
            RuntimeWarning,
            stacklevel=3,
        )


__all__ = [
    "BASE_FLAGS",
    "COMPILERS",
    "OPENMP_FLAGS",
    "SOURCE",
    "cache_dir",
    "compilers",
    "library",
    "reset",
    "source_key",
    "tried",
    "where",
]
