"""Builds and loads the resizer's fused CPU kernels (``csrc/``): its input-resolution stem
(``stem.cpp``) and its output-resolution BatchNorms with the LeakyReLU or residual addition that
follows them (``batchnorm.cpp``).

The extension is compiled on first use with the C++ compiler PyTorch's extensions use (``torch.utils.
cpp_extension``, needs ``g++`` and ``ninja``) and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). It is compiled for the vector instructions this CPU has, under a name
that says which, so a cache shared by machines with different CPUs never loads a build the CPU can't run.
"""

from __future__ import annotations

import functools
import os
import platform

import torch

__all__ = ["KernelUnavailable", "load"]

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = [os.path.join(_CSRC, name) for name in ("stem.cpp", "batchnorm.cpp")]


class KernelUnavailable(RuntimeError):
    """The CPU kernels could not be built or loaded here (the message says why)."""


def _arch_flags() -> tuple[str, list[str]]:
    """(name suffix, compiler flags) for the vector instructions of this CPU."""
    capability = torch.backends.cpu.get_cpu_capability()  # what ATen's own kernels dispatched to
    if platform.machine() in ("x86_64", "AMD64"):
        if capability.startswith("AVX512"):
            return "avx512", ["-march=x86-64-v4", "-mprefer-vector-width=512"]
        if capability.startswith("AVX2"):
            return "avx2", ["-march=x86-64-v3"]
    return "generic", []


def load():
    """The compiled extension module; raises :class:`KernelUnavailable` when it can't be built (the
    failure is remembered: a process tries once)."""
    result = _build()
    if isinstance(result, BaseException):
        raise KernelUnavailable(str(result)) from result
    return result


@functools.cache
def _build():
    from torch.utils import cpp_extension

    suffix, flags = _arch_flags()
    try:
        return cpp_extension.load(
            name=f"dali_resizer_kernels_{suffix}",
            sources=_SOURCES,
            extra_cflags=["-O3", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # a missing compiler or ninja, a failed build: say which
        return KernelUnavailable(f"could not build the CPU kernels ({_CSRC}): {e}")
