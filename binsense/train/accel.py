r"""How a training step runs fast: precision, memory format, compilation.

Three config fields (:class:`~binsense.train.TrainConfig`), each a measured speed-up on
a 2-core CPU (``benchmarks/bench_train.py``, ``benchmarks/RESULTS.md``):

- ``precision = "auto" | "bf16" | "fp32"``: the forward and backward pass of the
  training step run under :func:`torch.autocast` in bfloat16. ``"auto"`` picks bf16
  where the hardware computes it natively — a CPU with AMX-BF16 or AVX512-BF16, a CUDA
  GPU of compute capability 8 or higher — and fp32 elsewhere (:func:`resolve_precision`
  says which in one line). Latent weights, optimizer state and batch-norm statistics
  stay fp32: autocast only lowers the inputs of convolutions and matrix products.
- ``channels_last = true``: the model's 4-D tensors and each batch are laid out NHWC,
  the layout oneDNN's (and cuDNN's) fast convolution kernels use; without it bf16 gains
  little in the backward pass.
- ``compile = true``: the model is compiled (:func:`torch.compile`, Inductor), which
  fuses the element-wise work (signs, STEs, norms) into the convolutions' neighbours.
  The first step pays the compilation (reported); where no compiler works the step
  falls back to eager with one warning line (:class:`CompiledForward`).

**What stays exact.** bf16 is for the training step alone. Under autocast a ±1
convolution's fp32 sum is returned rounded to bf16, which holds integers exactly only
up to 256: sums of 2,304 or more terms come back off by 2-8 and flip some BN-folded
sign decisions. Every number binsense records — the epoch's test accuracy, the final
metrics, study rows, ``deploy --check`` — is computed by the uncompiled model in fp32
(or by the packed engine), never under autocast.

**Determinism.** The same seed, precision, memory format, compile setting and thread
count give the same weights, bit for bit, on the same machine and software (tested for
eager bf16; a compiled step is deterministic as long as Inductor generates the same
kernels, i.e. the same torch version and CPU ISA).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

Precision = Literal["auto", "bf16", "fp32"]

_CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@cache
def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    import platform

    try:
        for line in Path(cpuinfo).read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: torch.device) -> str | None:
    """What computes bf16 natively on ``device`` (``"AMX-BF16"``, ``"AVX512-BF16"``,
    ``"CUDA compute capability 9.0"``), or ``None`` when bf16 would be emulated."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA compute capability {major}.{minor}" if major >= 8 else None
    if device.type != "cpu":
        return None
    flags = _cpu_flags()
    for flag, name in _CPU_FLAGS.items():
        if flag in flags:
            return name
    if not flags:  # no /proc/cpuinfo (macOS, Windows): ask PyTorch's own probes
        cpu = torch.cpu
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            return "AMX-BF16"
        if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            return "AVX512-BF16"
    return None


def resolve_precision(precision: Precision, device: torch.device) -> tuple[str, str]:
    """``(dtype, why)``: ``"bf16"`` or ``"fp32"`` for ``precision`` on ``device``, and
    one line saying what was chosen (``auto``) or asked for."""
    if precision == "fp32":
        return "fp32", "precision fp32"
    native = native_bf16(device)
    if precision == "bf16":
        why = f"natively ({native})" if native else "emulated (no native bf16: slower than fp32)"
        return "bf16", f"precision bf16, {why}"
    if native:
        return "bf16", f"precision auto -> bf16 ({native} on {device.type})"
    return "fp32", f"precision auto -> fp32 (no native bf16 on {device.type})"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 on ``device`` for ``dtype == "bf16"``, else nothing."""
    if dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def has_conv2d(model: nn.Module) -> bool:
    """Whether channels-last applies: the model holds a 2-D convolution."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(x: Tensor) -> Tensor:
    """A 4-D batch laid out NHWC (other ranks unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


#: Compiled graphs kept per code object (one per model trained in a process, and one
#: more per new batch size).
_RECOMPILE_LIMIT = 256


class CompiledForward:
    """``model`` compiled, with a one-line fallback to eager.

    Compilation happens during the first training step (forward and backward graphs),
    so that is where it can fail: a missing C++ compiler, an op Inductor does not
    lower. :meth:`first_step` runs that step with the model's state and the random
    state kept aside; if it raises, they are restored, one warning names the reason,
    and the model runs eagerly from then on — so the step taken is the one eager
    training would have taken. ``compile_s`` is the first step's wall time
    (compilation included); ``compiled`` says whether the compiled model runs.
    """

    def __init__(self, model: nn.Module, compiler: Callable = torch.compile) -> None:
        self.model = model
        self.compiled = False
        self.compile_s: float | None = None
        self.error: str | None = None
        self.pending = True
        self._run: Callable[[Tensor], Tensor] = compiler(model)

    def __call__(self, x: Tensor) -> Tensor:
        # Every model's forward shares its classes' code objects (RecipeModel.forward,
        # BinaryBlock.forward...), and dynamo keeps 8 graphs per code object by default:
        # the ninth model trained in one process (a study) would silently run eagerly.
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return self._run(x)

    def first_step(self, step: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Run the first forward-backward ``step`` compiled, or eagerly if that fails."""
        self.pending = False
        state = copy.deepcopy(self.model.state_dict())
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        t0 = time.perf_counter()
        try:
            out = step()
        except Exception as e:  # any compiler failure: eager from here on
            self.model.load_state_dict(state)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self.error = f"{type(e).__name__}: {first}"
            warnings.warn(
                f"compile = true, but the model could not be compiled ({self.error}); "
                "training eagerly (same math, slower). Set compile = false to skip the try.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._run = self.model
            return step()
        self.compiled = True
        self.compile_s = time.perf_counter() - t0
        return out


__all__ = [
    "CompiledForward",
    "Precision",
    "autocast",
    "cpu_name",
    "has_conv2d",
    "native_bf16",
    "resolve_precision",
    "to_channels_last",
]
