"""Fused CPU kernels (``kernels.c``), compiled on first use with the system's C compiler, called through ctypes.

Some layers need several passes over their input when written with ATen ops, where one fused loop would
read it once (Positional Norm: statistics over channels, which no fused ATen kernel takes). On the CPU
such a layer calls the C kernel when :func:`kernels` finds it usable; otherwise (a CUDA or non-float
tensor, no C compiler, or ``ROBUSTBENCH_NORM_NATIVE=0`` in the environment) the layer's ATen path runs,
which computes the same function. Both paths are tested against the same references.

Build: ``cc`` (or ``$CC``) with :data:`FLAGS`, for the CPU it runs on (``-march=native``: the SIMD width
decides the speed of these loops), once per source, compiler, flags and CPU model, into
``<cache>/native/<hash>/kernels.so`` (``<cache>`` is ``$XDG_CACHE_HOME/robustbench-norm`` or
``~/.cache/robustbench-norm``). The library is written under a temporary name and renamed, so parallel
processes never load half a file. A failed build warns once and falls back to the ATen path.
``-ffp-contract=fast`` lets the compiler fuse multiply-adds, ``-fno-math-errno`` lets it vectorise sqrt and
rounding (no errno to set) and ``-fno-trapping-math`` lets it turn comparisons of floats into selects, so that
loops with a clamp vectorise (no floating-point exception is ever trapped); no other reassociation (no
``-ffast-math``): sums run in SIMD lanes only where a loop says so (``omp simd reduction``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-funroll-loops",
         "-fopenmp-simd", "-std=c11", "-shared", "-fPIC")
DISABLE_VARIABLE = "ROBUSTBENCH_NORM_NATIVE"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustbench-norm" / "native"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_model() -> str:
    """The CPU's model and feature flags (``-march=native`` code runs only on a CPU with the same flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _build(compiler: str) -> Path:
    """The compiled library for this source, compiler, flags and CPU (built if missing)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, _cpu_model(), *FLAGS]).encode()).hexdigest()[:16]
    target = _cache_root() / key / "kernels.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / "kernels.so"
            subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE), "-lm"], check=True,
                           capture_output=True, text=True)
            os.replace(built, target)
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        return None
    try:
        return ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        warnings.warn(f"robustbench_norm: the fused CPU kernels could not be built ({detail}); the layers use "
                      f"their ATen path", RuntimeWarning, stacklevel=2)
        return None


def enabled() -> bool:
    """Whether the C kernels may be used (``ROBUSTBENCH_NORM_NATIVE=0`` turns them off, read at every call)."""
    return os.environ.get(DISABLE_VARIABLE, "1") != "0"


def kernels(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The loaded kernel library when every tensor is a contiguous float32 / float64 CPU tensor of one dtype
    and the library is available; None otherwise (the caller then runs its ATen path)."""
    dtype = tensors[0].dtype
    if not enabled() or dtype not in _SUFFIX or any(
        not t.is_cpu or t.dtype != dtype or not t.is_contiguous() for t in tensors
    ):
        return None
    return _library()


def call(library: ctypes.CDLL, name: str, dtype: torch.dtype, *args: torch.Tensor | int | float) -> int:
    """Calls ``<name>_<f32|f64>`` with tensors passed as pointers, ints as ``long`` and floats as ``double``."""
    kinds = tuple(map(_KINDS.get, map(type, args)))  # by exact type: the common case, without a Python loop
    if None in kinds:
        kinds = tuple(_c_type(a) for a in args)
    function = _function(library, f"{name}_{_SUFFIX[dtype]}", kinds)
    return function(*(a.data_ptr() if kind is ctypes.c_void_p else a for a, kind in zip(args, kinds)))


_C_TYPES = {int: ctypes.c_long, float: ctypes.c_double}
_KINDS = {torch.Tensor: ctypes.c_void_p, torch.nn.Parameter: ctypes.c_void_p, **_C_TYPES}


def _c_type(argument: torch.Tensor | int | float) -> type:
    if isinstance(argument, torch.Tensor):
        return ctypes.c_void_p
    if type(argument) not in _C_TYPES:
        raise TypeError(f"a kernel argument must be a tensor, an int or a float, got {type(argument).__name__}")
    return _C_TYPES[type(argument)]


@functools.cache
def _function(library: ctypes.CDLL, name: str, kinds: tuple[type, ...]) -> ctypes._CFuncPtr:
    """The kernel ``name`` with its argument and return types declared (ctypes then converts the arguments
    itself); one function object per signature (``library[name]`` makes a new one), made at its first call."""
    function = library[name]
    function.argtypes, function.restype = kinds, ctypes.c_int
    return function
