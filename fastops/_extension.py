"""Loads the compiled kernels (fastops._C) if they were built, and says what was built.

fastops works without them: if `_C` is missing or fails to load (built against another torch,
a CPU-only install, a broken build), `import fastops` warns once and every op runs its
plain-PyTorch reference.
"""

import warnings

import torch

_C = None
load_error = None

try:
    from fastops import _C  # noqa: F401  (importing it registers torch.ops.fastops.*)
except Exception as e:  # ImportError, OSError (undefined symbol), ...
    load_error = e
    warnings.warn(
        f"fastops: compiled kernels are unavailable ({type(e).__name__}: {e}); every fastops op "
        "will run its plain-PyTorch reference. Build them with `pip install --no-build-isolation .`",
        RuntimeWarning,
        stacklevel=2,
    )


def has_extension() -> bool:
    """True when the compiled kernels (fastops._C) loaded: CPU kernels, and CUDA ones if built."""
    return _C is not None


# Read once: the ops' Python layer asks on every call, also inside torch.compile'd code, where
# Dynamo cannot trace the dispatcher query (a call returning a bool) but reads a global.
_HAS_CUDA_KERNELS = _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key("fastops::hardswish", "CUDA")


def has_cuda_kernels() -> bool:
    """True when fastops._C was built with its CUDA kernels (no GPU is needed for that)."""
    return _HAS_CUDA_KERNELS
