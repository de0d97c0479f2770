"""The layers of the efficient-CNN family, read off fastops' model builders (not hand-listed):
each network runs once on the meta device (no compute, no memory) in training mode, and a
dispatch mode records every convolution it runs (aten convolutions, and fastops' separable op,
which Xception's blocks call directly) with its input shape and geometry, and every other fused
op: BatchNorm + activation, squeeze-excite, channel shuffle, concat-shuffle.

    python bench/layers.py            # print the unique layers of every kind and their networks
"""

from __future__ import annotations

import functools
import importlib
import sys

NETWORKS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v1",
            "shufflenet_v2_x1_0", "xception", "squeezenet1_1")


KINDS = ("depthwise", "pointwise", "dense", "separable", "bn_act", "squeeze_excite", "channel_shuffle",
         "concat_shuffle")


@functools.lru_cache(maxsize=None)
def layers(networks: tuple[str, ...] = NETWORKS, size: int = 224) -> tuple[dict, ...]:
    """Unique layers of `networks` at size x size input, in first-seen order: dicts with "kind"
    (one of KINDS), the input's C, H, W, the layer's own fields and "networks" (those that have
    it). Convolutions: OC, k, stride, groups, dilation. separable: OC, k, stride, dilation, act.
    bn_act: act (the BatchNorm + activation after a conv). squeeze_excite: S (squeeze
    channels), act, gate. channel_shuffle: groups. concat_shuffle: C is each half's."""
    torch = importlib.import_module("torch")
    fastops = importlib.import_module("fastops")
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[tuple, dict] = {}

    def add(network, kind, x_shape, **fields):
        _, c, h, w = x_shape
        entry = dict(kind=kind, C=c, H=h, W=w, **fields)
        entry = seen.setdefault(tuple(entry.items()), dict(entry, networks=[]))
        if network not in entry["networks"]:
            entry["networks"].append(network)

    def conv(network, x_shape, w_shape, stride, dilation, groups):
        c, oc, k = x_shape[1], w_shape[0], w_shape[2]
        kind = "depthwise" if groups == c and oc % c == 0 and k > 1 else "pointwise" if k == 1 else "dense"
        add(network, kind, x_shape, OC=oc, k=k, stride=stride, groups=groups, dilation=dilation)

    class Recorder(TorchDispatchMode):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name, net = func.name(), self.network
            if name == "aten::convolution":
                x, w = args[0], args[1]
                conv(net, tuple(x.shape), tuple(w.shape), args[3][0], args[5][0], args[8])
            elif name == "fastops::separable_conv_bn_act":  # depthwise, then 1x1 at the output size
                x, dw, pw, stride, dilation, act = args[0], args[1], args[2], args[5][0], args[7][0], args[8]
                add(net, "separable", tuple(x.shape), OC=pw.shape[0], k=dw.shape[2], stride=stride,
                    dilation=dilation, act=act)
                conv(net, tuple(x.shape), tuple(dw.shape), stride, dilation, x.shape[1])
                conv(net, (x.shape[0], dw.shape[0], out.shape[2], out.shape[3]), tuple(pw.shape), 1, 1, 1)
            elif name == "fastops::bn_act_train":
                add(net, "bn_act", tuple(args[0].shape), act=args[4])
            elif name == "fastops::squeeze_excite":
                add(net, "squeeze_excite", tuple(args[0].shape), S=args[1].shape[0], act=args[5], gate=args[6])
            elif name == "fastops::channel_shuffle":
                add(net, "channel_shuffle", tuple(args[0].shape), groups=args[1])
            elif name == "fastops::concat_shuffle":
                add(net, "concat_shuffle", tuple(args[0].shape))
            return out

    for name in networks:
        model = fastops.models.create_model(name).to("meta").train()
        x = torch.empty(2, 3, size, size, device="meta")  # 2: training BatchNorm needs > 1 value
        with torch.no_grad(), Recorder(name):
            model(x)
    return tuple(seen.values())


def conv_layers(networks: tuple[str, ...] = NETWORKS, size: int = 224) -> tuple[dict, ...]:
    """The convolutions among layers(): kinds depthwise, pointwise and dense."""
    return tuple(d for d in layers(networks, size) if d["kind"] in ("depthwise", "pointwise", "dense"))


def main() -> int:
    for d in layers():
        fields = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("kind", "C", "H", "W", "networks"))
        print(f"{d['kind']:15s} C{d['C']:<5d} {d['H']}x{d['W']:<4d} {fields:55s} {', '.join(d['networks'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
