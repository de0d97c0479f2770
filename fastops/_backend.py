"""Which implementation runs an op on CUDA tensors (design.md §2).

CPU tensors always run the C++ CPU kernels. For CUDA tensors the choice is

  "auto"    the implementation recorded below as verified on a real GPU and faster for that op;
            Triton for every op that has no such record
  "cuda"    the hand-written CUDA C++ kernels
  "triton"  the Triton kernels

set with `fastops.set_backend(name)` or the environment variable FASTOPS_BACKEND (read at import).
"""

import contextlib
import functools
import os
import warnings

from . import _extension

BACKENDS = ("auto", "cuda", "triton")

# Ops whose CUDA C++ kernels passed their CUDA tests on a real GPU *and* beat the Triton kernels
# in a committed GPU benchmark (bench/results/). Only those may be "auto"'s choice; add an entry
# only together with the results file that shows both. The two H200 runs of 2026-11-30
# (bench/results/cuda-2026-11-30-*) found the CUDA kernels faster than Triton for most ops but
# four of their tests failing (C++ checks that raise crashed torch 2.11 there), and the channels_last
# depthwise forward has new kernels in both backends since, not yet run on a GPU: so "auto" still
# means Triton everywhere.
AUTO_PREFERS_CUDA: dict = {}

_current = "auto"


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _validate(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"fastops.set_backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    name = name.lower()
    if name == "cuda" and not _extension.has_cuda_kernels():
        raise RuntimeError(
            "fastops.set_backend: backend 'cuda' needs the CUDA kernels, but fastops was built without "
            "them (CPU-only torch, no nvcc, or FASTOPS_CPU_ONLY=1); reinstall with a CUDA toolkit"
        )
    if name == "triton" and not triton_available():
        raise RuntimeError("fastops.set_backend: backend 'triton' needs the `triton` package, which is not importable")
    return name


def set_backend(name: str) -> None:
    """Choose the implementation for CUDA tensors: "auto", "cuda" or "triton"."""
    global _current
    _current = _validate(name)


def get_backend() -> str:
    return _current


@contextlib.contextmanager
def use_backend(name: str):
    """`with fastops.use_backend("cuda"): ...` runs the block with that backend, then restores."""
    global _current
    previous, _current = _current, _validate(name)
    try:
        yield
    finally:
        _current = previous


def resolve(op: str) -> str:
    """The backend ("cuda" or "triton") that runs `op` on CUDA tensors under the current setting."""
    if _current != "auto":
        return _current
    return "cuda" if AUTO_PREFERS_CUDA.get(op) and _extension.has_cuda_kernels() else "triton"


def _from_environment() -> None:
    name = os.environ.get("FASTOPS_BACKEND", "").strip()
    if not name:
        return
    if name.lower() not in BACKENDS:
        raise ValueError(f"FASTOPS_BACKEND={name!r} is not a fastops backend; choose one of {', '.join(BACKENDS)}")
    try:
        set_backend(name)
    except RuntimeError as e:  # valid name, but not usable on this install: keep "auto"
        warnings.warn(f"FASTOPS_BACKEND={name!r} ignored: {e}", RuntimeWarning, stacklevel=3)


_from_environment()
