"""`FusedSequential`: an `nn.Sequential` whose runs of conv -> BatchNorm -> activation run as
fused kernels. The children and the state_dict are those of the plain Sequential, so
`fastops.optimize` turns any `nn.Sequential` into one by changing its class."""

from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import conv as _conv
from .conv import ConvBNAct, act_name, conv_bn_act, module_tensors, settings
from .separable import SeparableConv2d, separable_bn_act


def plan(mods: List[nn.Module]) -> List[Tuple]:
    """The steps a list of modules runs as: ("conv", conv, bn, act), ("separable", sep, bn, act),
    where bn and act are the BatchNorm2d and activation children that follow (or None), and
    ("module", m) for anything else."""
    steps, i = [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, (nn.Conv2d, SeparableConv2d)):
            j, bn, act = i + 1, None, None
            if j < len(mods) and isinstance(mods[j], nn.BatchNorm2d):
                bn, j = mods[j], j + 1
            if j < len(mods) and not isinstance(mods[j], nn.Identity) and act_name(mods[j]) not in (None, "none"):
                act, j = mods[j], j + 1
            steps.append(("conv" if isinstance(m, nn.Conv2d) else "separable", m, bn, act))
            i = j
        else:
            steps.append(("module", m))
            i += 1
    return steps


class FusedSequential(nn.Sequential):
    """`nn.Sequential` (same children, same keys) that runs conv [-> BatchNorm2d] [-> activation]
    runs through `conv_bn_act` and separable conv [-> BN] [-> act] runs through
    `separable_bn_act`; other children run as they are. `forward(x, residual=None)` returns
    `self(x) + residual`, the add fused into the last conv's kernel when nothing (no activation,
    no other module) follows that conv's BatchNorm. In CPU inference it replays the kernel calls
    its children made last time while nothing they depend on has changed (see below; REPLAY)."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        replay = residual is None and _replayable(x)
        if replay:
            y = _replay(self, x)
            if y is not None:
                return y
        mods = tuple(self._modules.values())
        cached = self.__dict__.get("_fastops_plan")
        if cached is None or cached[0] != mods:  # element-wise identity (modules compare by identity)
            cached = (mods, plan(list(mods)))  # made again whenever a child is added, removed or replaced
            self.__dict__["_fastops_plan"] = cached
        steps = cached[1]
        calls, x0 = ([] if replay else None), x
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            kind, m = step[0], step[1]
            if kind == "module":
                fuse = last and residual is not None and isinstance(m, ConvBNAct) and _no_act(m)
                if calls is not None:
                    x = _recording(calls, x, m, ())
                    continue
                x = m(x, residual=residual) if fuse else m(x)
                if fuse:
                    return x
                continue
            bn, act = step[2], step[3]
            if last and residual is not None and act is None:
                if kind == "conv":
                    return conv_bn_act(x, m, bn, None, residual=residual)
                return separable_bn_act(x, m, bn, None, residual=residual)
            run = conv_bn_act if kind == "conv" else separable_bn_act
            x = run(x, m, bn, act) if calls is None else _recording(calls, x, run, (m, bn, act))
        if calls is not None:
            _keep_replay(self, x0, calls)
        return x if residual is None else x + residual


# Replaying a FusedSequential: in CPU inference each child of a fastops network (a whole block,
# a conv + BN + act) ends in one kernel call whose arguments, besides the input, are constants
# (weights, folded BatchNorms); deciding that call again in Python costs 50-200 us a child (the
# interpreter's code and data are out of the cache after each large kernel). So the Sequential
# records, the first time, the call each child made, and later runs the recorded calls one after
# another, as long as nothing the children's decisions read has changed: the input's shape,
# strides, dtype and device, the thread count, inference mode, fastops' switches, every module
# below the Sequential (class, children, train / eval mode, no forward hooks, no forward of its
# own set on the instance) and every parameter and buffer (version and storage). A child that
# made no single recordable call (another module, several kernels) is called as a module. (The
# recording list is global: Python threads recording at once keep fewer calls, as modules, but a
# call is kept only when its input and output are the child's own.) The check costs ~0.22 ms a
# forward (MobileNet V2's 209 modules and 312 tensors). Measured (2 cores, channels_last,
# interleaved against REPLAY = False): MobileNet V2 N=8 34.2 vs 35.9 ms (its 17 blocks alone:
# 28 ms as bare kernel calls, 31-32 ms through the modules), N=1 7.2 vs 7.9 ms; V3-Large N=8
# 29.1 vs 30.2 ms; ShuffleNet V2 N=8 19.6 vs 20.5 ms.

REPLAY = True


def _replayable(x: torch.Tensor) -> bool:
    return (REPLAY and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch._C._autograd._profiler_enabled() and _get_current_dispatch_mode() is None
            and not torch._C._is_torch_function_mode_enabled())


def _recording(calls: list, x: torch.Tensor, fn, args: tuple) -> torch.Tensor:
    """fn(x, *args), a child's step, appending to `calls` what replays it: its one kernel call
    (fn, args) when it made exactly one recordable call from x to its result, else the step.
    Only fastops' own modules are replaced by their call (another class's forward may do more
    than its kernel call, which the replay would skip); a conv step (fn conv_bn_act or
    separable_bn_act, args (conv, bn, act)) is fastops' code whatever the modules."""
    outer = _conv._RECORDER
    _conv._RECORDER = made = []
    try:
        y = fn(x, *args)
    finally:
        _conv._RECORDER = outer
    ours = bool(args) or (type(fn).__module__.startswith("fastops.") and "forward" not in fn.__dict__)
    if ours and len(made) == 1 and made[0][2] is x and made[0][3] is y:
        calls.append(made[0][:2])
    else:
        calls.append((fn, args))
    return y


def _switches() -> tuple:
    from . import conv, mobilenet, shufflenet_v2, stem

    return (tuple(sorted(conv.ONEDNN_CONVS)), conv.DWCONV_KERNEL, mobilenet.FUSED_BLOCKS, shufflenet_v2.FUSED_UNITS,
            stem.FUSED_STEMS)


def _input_key(x: torch.Tensor) -> tuple:
    return (x.shape, x.stride(), x.dtype, torch.get_num_threads(), torch.is_inference_mode_enabled(), _switches())


def _state(mods: list) -> list:
    """What the replay of a Sequential whose modules are `mods` (itself included) depends on, as
    one flat list to compare with ==: each module's class, mode, settings (conv.settings),
    children, hooks or own forward, each parameter's and buffer's identity, version and storage; global
    forward hooks. (Flat, of plain values: ~0.22 ms for MobileNet V2's 209 modules, and no tuples
    for the garbage collector, which a list of tuples made run every forward.)"""
    out = []
    add, extend = out.append, out.extend
    for m in mods:
        kids = m._modules
        attrs = m.__dict__
        add(m.__class__)
        add(m.training)
        add(len(kids))
        add(bool(m._forward_hooks or m._forward_pre_hooks) or "forward" in attrs)
        for name in settings(m):
            add(attrs.get(name))
        extend(kids.values())
        for d in (m._parameters, m._buffers):
            for t in d.values():
                if t is not None:
                    add(id(t))
                    add(t._version)
                    add(t.data_ptr())
    add(bool(_module._global_forward_hooks or _module._global_forward_pre_hooks))
    return out


def _keep_replay(seq: FusedSequential, x: torch.Tensor, calls: list) -> None:
    mods = list(seq.modules())
    # the tensors are kept too, so that no other tensor can take one of their ids
    kept = (_input_key(x), mods, module_tensors(*mods), _state(mods), calls)
    _conv._KEPT.setdefault(seq, {})["_fastops_replay"] = kept


def _replay(seq: FusedSequential, x: torch.Tensor) -> Optional[torch.Tensor]:
    kept = _conv._KEPT.get(seq)
    recorded = None if kept is None else kept.get("_fastops_replay")
    if recorded is None:
        return None
    key, mods, _, state, calls = recorded
    if state[-1] or key != _input_key(x) or _state(mods) != state:
        return None
    for fn, args in calls:
        x = fn(x, *args)
    return x


def _no_act(m: ConvBNAct) -> bool:
    parts = m.parts()
    return parts is not None and parts[2] is None
