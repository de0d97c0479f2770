"""fastops: fused PyTorch operators for efficient CNNs.

    import fastops
    y = fastops.ops.hardswish(x)          # functional API: picks the kernel, checks arguments
    m = fastops.nn.Hardswish()            # drop-in modules
    torch.ops.fastops.hardswish(x)        # the raw custom op (eager, autograd, compile, export)
    fastops.reference.hardswish(x)        # the plain-PyTorch truth every kernel is tested against
    fastops.triton.hardswish(x)           # the Triton kernel itself
    model = fastops.models.mobilenet_v3_large()   # networks on fused blocks, torchvision's keys
    model = fastops.optimize(torchvision_model)   # an existing model's modules swapped for fused twins

The compiled kernels are optional at import: without them every op runs its reference.
"""

import importlib

from ._extension import has_cuda_kernels, has_extension
from ._backend import get_backend, set_backend, use_backend
from . import ops, reference, nn  # noqa: E402  (ops registers fake impls and autograd)
from . import models  # noqa: E402
from .optimize import optimize  # noqa: E402  (the function; the module stays in sys.modules)

__version__ = "0.1.0"

__all__ = [
    "ops", "reference", "nn", "models", "optimize", "triton",
    "has_extension", "has_cuda_kernels", "set_backend", "get_backend", "use_backend",
]


def __getattr__(name):
    # fastops.triton is imported on first use, not with fastops: importing triton is slow, it may
    # be absent (CPU-only torch), and TRITON_INTERPRET must be set before its kernels are defined.
    if name == "triton":
        return importlib.import_module("fastops.triton")
    raise AttributeError(f"module 'fastops' has no attribute {name!r}")
