"""Argument checks of the Python layer. Same errors, same words as csrc/pointwise.h: a wrong
dtype raises TypeError, a wrong shape or device ValueError, and the message names the op and the
argument."""

import torch

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(op: str, arg: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastops.{op}: argument '{arg}' must be a torch.Tensor, got {type(t).__name__}")


def check_floating(op: str, arg: str, t) -> None:
    check_tensor(op, arg, t)
    if t.dtype not in FLOATING:
        raise TypeError(
            f"fastops.{op}: argument '{arg}' must be a floating-point tensor "
            f"(float32, float64, float16 or bfloat16), got {t.dtype}"
        )


def check_like(op: str, arg: str, a, barg: str, b) -> None:
    """`a` must match `b` (the primary argument) in shape, dtype and device."""
    check_tensor(op, arg, a)
    if a.shape != b.shape:
        raise ValueError(f"fastops.{op}: argument '{arg}' has shape {list(a.shape)} but '{barg}' has shape {list(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"fastops.{op}: argument '{arg}' has dtype {a.dtype} but '{barg}' has dtype {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"fastops.{op}: argument '{arg}' is on {a.device} but '{barg}' is on {b.device}")


def check_writable(op: str, arg: str, t) -> None:
    """An in-place op cannot write a tensor whose elements share memory (an expanded view)."""
    # (the stride test ATen's has_internal_overlap answers "yes" to; written out so that
    # torch.compile can trace it)
    if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
        raise RuntimeError(
            f"fastops.{op}: argument '{arg}' has elements that share memory (an expanded view); "
            "in-place is not possible, clone it first"
        )
