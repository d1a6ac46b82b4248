r"""Bounded resources: devices that exist, and models that fit, checked before allocating.

**Devices.** :func:`resolve_device` parses a device string (``cpu``, ``cuda``, ``cuda:1``,
``mps``) and, with ``check_available``, checks that PyTorch can use it: ``cuda`` needs a
visible GPU, ``cuda:N`` needs more than *N* of them. :class:`~binsense.train.TrainConfig`
checks the syntax always and the availability where a command is about to train.

**Memory.** A model that cannot fit is refused with one line, before any weight is
allocated. The estimate (:func:`estimate_model_bytes`) counts the parameters and buffers
of the model built on the meta device (:func:`binsense.models.check_model`: no memory
is used) and takes

.. math:: \text{bytes} = 4\,(P \cdot f + B), \qquad
          f = \begin{cases} 1 & \text{evaluation (the weights)}\\
          4 & \text{training with Adam: weights, gradients, two moments}\\
          3 & \text{training with SGD and momentum}\\
          2 & \text{training with plain SGD} \end{cases}

with :math:`P` parameters, :math:`B` buffer elements (batch-norm statistics) and 4 bytes
per float32 value. It is a *lower bound*: activations (which grow with the batch size),
the data set on the device and PyTorch's own overhead come on top, so a refusal is
certain to be right, and a model that passes can still run out of memory.

:func:`check_fits` compares an estimate with the memory available on the device: on the
CPU ``MemAvailable`` of ``/proc/meminfo``, lowered to the free part of a cgroup memory
limit (containers) when there is one; on a CUDA device the free memory reported by
``torch.cuda.mem_get_info``. Where neither can be read (not Linux), nothing is refused.
A user who wants to try anyway sets ``BINSENSE_ALLOW_LARGE=1`` or passes
``--allow-large`` (``allow=True``). :func:`check_config_fits` is the one check of a
training config that the command line, the study runner's pre-flight check, the trainer
and the checkpoint loader all call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binsense.errors import BinsenseError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from binsense.data import DatasetInfo

#: Environment variable that, set to 1 (true, yes), skips the memory check.
ALLOW_LARGE_ENV = "BINSENSE_ALLOW_LARGE"
#: Bytes per stored value (float32 weights, gradients and optimizer moments).
BYTES_PER_VALUE = 4
#: Device types binsense trains and evaluates on.
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: Largest ``threads`` setting accepted: a fixed bound, so that a config valid on one
#: machine is valid on every machine (a study is often read elsewhere than it was run).
MAX_THREADS = 1024

_DEVICE_HINT = "use cpu, cuda, cuda:N (N = 0, 1, ...) or mps"


class ResourceError(BinsenseError):
    """A run would need more memory than the machine has, or a device it does not have."""


# ---------------------------------------------------------------- devices


def resolve_device(spec: Any, *, check_available: bool = True) -> torch.device:
    """The :class:`torch.device` named by ``spec``; a clear error if it is not one.

    Without ``check_available`` only the syntax is checked (``tpu`` or ``cuda:x`` are
    errors, ``cuda:7`` is not); with it, the device must also exist on this machine.
    """
    import torch

    if not isinstance(spec, str):
        raise ResourceError(f"device must be a string ({_DEVICE_HINT}), got {spec!r}.")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ResourceError(f"unknown device {spec!r}; {_DEVICE_HINT}.") from None
    if device.type not in DEVICE_TYPES:
        raise ResourceError(f"binsense does not run on device {spec!r}; {_DEVICE_HINT}.")
    if check_available:
        _check_available(spec, device)
    return device


def _check_available(spec: str, device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = torch.version.cuda
            why = f"built with CUDA {built}, but no GPU is visible" if built else "a CPU build"
            raise ResourceError(
                f"device {spec!r} is not available: this PyTorch ({torch.__version__}) is "
                f'{why}; use --device cpu (or device = "cpu").'
            )
        if device.index is not None and device.index >= count:
            listing = "cuda:0" if count == 1 else f"cuda:0 .. cuda:{count - 1}"
            raise ResourceError(
                f"device {spec!r} does not exist: this machine has {count} CUDA GPU(s) "
                f"({listing}); use one of them."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ResourceError(
            f"device {spec!r} is not available (Apple MPS needs a Mac with Metal); "
            "use --device cpu."
        )


# ---------------------------------------------------------------- memory


def large_allowed(allow: bool | None = None) -> bool:
    """Whether the memory check is switched off: ``allow``, else ``$BINSENSE_ALLOW_LARGE``."""
    if allow is not None:
        return bool(allow)
    return os.environ.get(ALLOW_LARGE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def training_factor(optimizer: str = "adam", momentum: float = 0.9) -> int:
    """Stored values per parameter while training (see the module docstring)."""
    if optimizer == "adam":
        return 4
    return 3 if momentum else 2


def model_bytes(
    model: Any, *, training: bool = True, optimizer: str = "adam", momentum: float = 0.9
) -> int:
    """The module-docstring estimate for a built model (on any device, meta included)."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    factor = training_factor(optimizer, momentum) if training else 1
    return BYTES_PER_VALUE * (params * factor + buffers)


def estimate_model_bytes(
    model_name: str,
    info: DatasetInfo,
    options: Mapping[str, Any] | None = None,
    *,
    training: bool = True,
    optimizer: str = "adam",
    momentum: float = 0.9,
) -> int:
    """Lower bound of the memory model ``model_name`` needs (module docstring formula).

    The model is built on the meta device, so nothing is allocated whatever its size;
    ``options`` are its model options (``{"width": 0.5}``), validated by the builder.
    """
    from binsense.models import check_model

    model = check_model(model_name, info, **dict(options or {}))
    return model_bytes(model, training=training, optimizer=optimizer, momentum=momentum)


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_free(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Free memory under this process's cgroup limit (v2, else v1), or ``None``."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1: "no limit"
            return max(limit - usage, 0)
    return None


def available_memory_bytes(device: Any = "cpu") -> int | None:
    """Memory available for a new model on ``device`` (bytes), or ``None`` if unknown."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(dev)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    if dev.type != "cpu":
        return None
    sizes = [s for s in (_meminfo_available(), _cgroup_free()) if s is not None]
    return min(sizes) if sizes else None


def format_bytes(n: float) -> str:
    """``73.7 GB`` (decimal units, as disks and ``free -h --si`` count)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_fits(
    needed_bytes: int,
    *,
    device: Any = "cpu",
    what: str = "this model",
    allow: bool | None = None,
    available: int | None = None,
    fix: str = "use a smaller width (or model)",
) -> None:
    """Refuse (:class:`ResourceError`) when ``needed_bytes`` exceed the available memory.

    ``available`` overrides the measured amount (tests); ``allow`` (or
    ``$BINSENSE_ALLOW_LARGE``) skips the check. Unknown available memory never refuses.
    ``fix`` is what the refusal tells the user to do first.
    """
    if large_allowed(allow):
        return
    free = available if available is not None else available_memory_bytes(device)
    if free is None or needed_bytes <= free:
        return
    raise ResourceError(
        f"{what} needs at least {format_bytes(needed_bytes)} of memory, but {device} has "
        f"{format_bytes(free)} available; {fix}, or pass "
        f"--allow-large (or set {ALLOW_LARGE_ENV}=1) to try anyway."
    )


def check_model_fits(
    model_name: str,
    info: DatasetInfo,
    options: Mapping[str, Any] | None = None,
    *,
    training: bool = True,
    optimizer: str = "adam",
    momentum: float = 0.9,
    device: Any = "cpu",
    allow: bool | None = None,
    what: str | None = None,
) -> int:
    """:func:`estimate_model_bytes`, then :func:`check_fits`; returns the estimate.

    The model is built on the meta device even when ``allow`` (or
    ``$BINSENSE_ALLOW_LARGE``) skips the comparison, so its options are validated either
    way (``width = "wide"`` is one line before any data is read); that allocates nothing.
    """
    needed = estimate_model_bytes(
        model_name, info, options, training=training, optimizer=optimizer, momentum=momentum
    )
    if large_allowed(allow):
        return needed
    if what is None:
        width = (options or {}).get("width")
        shown = f" (width {width:g})" if isinstance(width, (int, float)) else ""
        what = f"{'training' if training else 'evaluating'} {model_name!r}{shown}"
    check_fits(needed, device=device, what=what, allow=allow)
    return needed


def check_config_fits(
    config: Any,
    *,
    training: bool = True,
    device: Any = None,
    allow: bool | None = None,
    info: DatasetInfo | None = None,
    what: str | None = None,
) -> int:
    """:func:`check_model_fits` for a :class:`~binsense.train.TrainConfig`: the model of
    ``config`` built on the meta device (its options validated), then refused if it
    cannot fit (``allow`` or ``$BINSENSE_ALLOW_LARGE`` skip only that). The refusal names
    what is checked: ``training 'mnist_bnn' (width 200) needs at least ...``.

    ``device`` defaults to the config's; ``info`` to ``dataset_info(config.dataset)``.
    """
    if info is None:
        from binsense.data import dataset_info

        info = dataset_info(config.dataset)
    return check_model_fits(
        config.model,
        info,
        config.model_options,
        training=training,
        optimizer=config.optimizer,
        momentum=config.momentum,
        device=device if device is not None else config.device,
        allow=allow,
        what=what,
    )


__all__ = [
    "ALLOW_LARGE_ENV",
    "DEVICE_TYPES",
    "MAX_THREADS",
    "ResourceError",
    "available_memory_bytes",
    "check_config_fits",
    "check_fits",
    "check_model_fits",
    "estimate_model_bytes",
    "format_bytes",
    "large_allowed",
    "model_bytes",
    "resolve_device",
    "training_factor",
]
