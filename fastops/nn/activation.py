"""Drop-in activation modules: subclasses of torch's, so `isinstance(m, nn.Hardswish)` holds,
`inplace=` works and `repr`/state_dict are unchanged; `forward` runs the fastops op."""

import torch
from torch import nn

from .. import ops


class Hardswish(nn.Hardswish):
    """`torch.nn.Hardswish` running `fastops.ops.hardswish`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.hardswish(x, inplace=self.inplace)


class Hardsigmoid(nn.Hardsigmoid):
    """`torch.nn.Hardsigmoid` running `fastops.ops.hardsigmoid`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.hardsigmoid(x, inplace=self.inplace)
