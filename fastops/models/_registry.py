"""The model registry behind `fastops.models.list_models()` and `create_model(name, **kw)`."""

import fnmatch
from typing import Callable, Dict, List

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: makes a builder reachable by its function name through create_model."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"fastops.models: {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> List[str]:
    """The registered model names matching a shell-style pattern (e.g. "mobilenet*"), sorted."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """The model `name` built with `kwargs` (e.g. num_classes=10, width_mult=0.5)."""
    if name not in _MODELS:
        raise ValueError(f"fastops.models.create_model: unknown model {name!r}; "
                         f"fastops.models.list_models() has {', '.join(list_models())}")
    return _MODELS[name](**kwargs)
