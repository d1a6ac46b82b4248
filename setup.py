"""Install-time build of the deploy engine's XNOR-popcount kernels (metadata: pyproject).

``pip install .`` (or ``-e .``) compiles ``binsense/deploy/kernels/xnor.c`` into the
package as ``binsense/deploy/kernels/_xnor*.so``, a plain shared library that
:mod:`binsense.deploy.kernels` loads with :mod:`ctypes` (it defines no Python module). The
SIMD paths are chosen at run time by ``cpuid`` inside the library, never by ``-march``, so
one build runs on every x86-64 CPU. OpenMP is used where the compiler links it. The
build is optional: without a C compiler the install still succeeds, and binsense then
builds the library on first use where a compiler appears, else runs its PyTorch path
(same results, slower) after a one-line warning. The source's SHA-256 is compiled in, so
an edited ``xnor.c`` is never served by a stale build.

Why C and not numba: measured on the development CPU (benchmarks/RESULTS.md), the
blocked C GEMM with VPOPCNTDQ reaches 46.8x torch fp32 on the peer shape; numba has no
vector popcount intrinsic (its ``popcnt`` is scalar), and adds a 60 MB LLVM dependency
and a compile at first call.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = Path("binsense/deploy/kernels/xnor.c")
FLAGS = ["-O3", "-std=gnu11", "-fPIC"]


class OptionalBuild(build_ext):
    """Build the kernel with OpenMP, else without, else warn and go on."""

    def build_extension(self, ext: Extension) -> None:
        base_compile, base_link = list(ext.extra_compile_args), list(ext.extra_link_args)
        for openmp in (["-fopenmp"], []):
            ext.extra_compile_args = base_compile + openmp
            ext.extra_link_args = base_link + openmp
            try:
                super().build_extension(ext)
                return
            except Exception as e:  # noqa: BLE001 - any compiler failure: try the next way
                why = str(e).splitlines()[-1] if str(e) else type(e).__name__
        print(
            f"warning: the binsense XNOR kernel was not built at install ({why}); it will be "
            "built on first use where a C compiler exists, else the slower PyTorch path runs."
        )

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a plain shared library: no PyInit_ symbol


digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
setup(
    ext_modules=[
        Extension(
            "binsense.deploy.kernels._xnor",
            sources=[str(SOURCE)],
            extra_compile_args=FLAGS,
            define_macros=[("XNOR_SOURCE_KEY", f'"{digest}"')],
            libraries=["m"],  # fmaf, in the float convolution's portable path
        )
    ],
    cmdclass={"build_ext": OptionalBuild},
)
