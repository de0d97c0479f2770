"""The conv layers of the efficient-CNN family, read off fastops' model builders (not hand-listed):
each network runs once on the meta device (no compute, no memory) in training mode, and a
dispatch mode records every convolution it runs (aten convolutions, and fastops' separable op,
which Xception's blocks call directly) with its input shape and geometry.

    python bench/layers.py            # print the unique depthwise and 1x1 layers and their networks
"""

from __future__ import annotations

import functools
import importlib
import sys

NETWORKS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v1",
            "shufflenet_v2_x1_0", "xception", "squeezenet1_1")


@functools.lru_cache(maxsize=None)
def conv_layers(networks: tuple[str, ...] = NETWORKS, size: int = 224) -> tuple[dict, ...]:
    """Unique conv layers of `networks` at size x size input, batch 1, in first-seen order: dicts
    with kind ("depthwise", "pointwise", "dense"), C, OC, H, W, k, stride, groups, dilation and
    the networks that have the layer."""
    torch = importlib.import_module("torch")
    fastops = importlib.import_module("fastops")
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[tuple, dict] = {}

    def record(network, x_shape, w_shape, stride, dilation, groups):
        _, c, h, w = x_shape
        oc, _, k, _ = w_shape
        kind = "depthwise" if groups == c and oc % c == 0 and k > 1 else "pointwise" if k == 1 else "dense"
        key = (kind, c, oc, h, w, k, stride, groups, dilation)
        entry = seen.setdefault(key, dict(zip(("kind", "C", "OC", "H", "W", "k", "stride", "groups", "dilation"),
                                              key), networks=[]))
        if network not in entry["networks"]:
            entry["networks"].append(network)

    class Recorder(TorchDispatchMode):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.name()
            if name == "aten::convolution":
                x, w = args[0], args[1]
                record(self.network, tuple(x.shape), tuple(w.shape), args[3][0], args[5][0], args[8])
            elif name == "fastops::separable_conv_bn_act":  # depthwise, then 1x1 at the output size
                x, dw, pw, stride, dilation = args[0], args[1], args[2], args[5][0], args[7][0]
                record(self.network, tuple(x.shape), tuple(dw.shape), stride, dilation, x.shape[1])
                oh, ow = out.shape[2], out.shape[3]
                record(self.network, (x.shape[0], dw.shape[0], oh, ow), tuple(pw.shape), 1, 1, 1)
            return out

    for name in networks:
        model = fastops.models.create_model(name).to("meta").train()
        x = torch.empty(2, 3, size, size, device="meta")  # 2: training BatchNorm needs > 1 value
        with torch.no_grad(), Recorder(name):
            model(x)
    return tuple(seen.values())


def main() -> int:
    for layer in conv_layers():
        if layer["kind"] != "dense":
            print(f"{layer['kind']:9s} C{layer['C']:<5d} OC{layer['OC']:<5d} {layer['H']}x{layer['W']} k{layer['k']} "
                  f"s{layer['stride']} g{layer['groups']}  {', '.join(layer['networks'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
