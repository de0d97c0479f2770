"""The fastops benchmark harness: every op family's bench module plugs into this.

What it does, and why (see shared/benchmarking.md for the measurements behind each rule):

* Machine set-up (`setup_machine`): a fixed, recorded thread count, and on Linux/glibc an allocator
  held steady with mallopt, because glibc's habit of returning freed multi-MB blocks to the OS and
  faulting them back in distorts eager timings by up to 2.5x. Every contender runs under the same
  setting and the report says which.
* A memory roof (`copy_bandwidth`): the bandwidth of a large tensor copy, measured at the start and
  again between cases. A case whose surrounding copy bandwidth fell below 75% of the start value is
  flagged: the machine was busy, its absolute numbers are suspect (its ratios usually are not).
* Interleaved timing (`run_case`): warm-up, then R rounds in which every contender is timed once
  (A B C, B C A, ...), each sample timing `inner` back-to-back calls. Absolute times move +-20-30%
  between runs on the shared VMs, so only same-run ratios of medians are quoted.
* Cold inputs: when a case's inputs would fit in the last-level cache, K copies of the inputs are
  made and call number k uses set k mod K, so a call does not find its inputs already cached.
* Results: median, p10/p90 and IQR per contender, GB/s from the case's bytes moved, fraction of the
  measured copy bandwidth, speedups (ratios of medians); a plain-text table and a JSON file.

A bench module (bench/bench_<family>.py) provides `cases(quick, device, dtypes, layouts)` returning
`Case`s; `standard_contenders` builds the usual fastops / eager / torch.compile contenders for an op
that has a torch.nn.functional equivalent.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

BANDWIDTH_FLAG_FRACTION = 0.75  # flag a case whose copy bandwidth fell below this x the start value
BUSY_FLAG_CORES = 0.25  # flag a case during whose timing other processes used more than this many cores
CACHE_MULTIPLE = 4  # rotate inputs until their footprint is at least this x the last-level cache
MAX_INPUT_SETS = 512  # ...but never more sets than this (tiny tensors stay cache resident)
MAX_ROTATION_BYTES = 1 << 30  # ...nor more memory than this
DEFAULT_LLC_BYTES = 32 << 20  # when the cache size cannot be read
UNSTABLE_IQR_FRACTION = 0.25  # a contender whose IQR exceeds this x its median is not compared
ROOF_CACHE = Path(os.environ.get("FASTOPS_BENCH_CACHE", Path.home() / ".cache" / "fastops")) / "roofs.json"

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
LAYOUTS = ("nchw", "channels_last")
MODES = ("fwd", "fwd+bwd")
# "compile": torch.compile with default settings; "compile+freezing": inference with
# torch._inductor.config.freezing=True, which treats the module's parameters as constants (BatchNorm
# folded into the conv): the strongest inference baseline, for cases that have a module.
STANDARD_CONTENDERS = ("fastops", "eager", "compile", "compile+freezing")

# What setup_machine did; copied into the report.
_MACHINE: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------
# Machine set-up and description
# ---------------------------------------------------------------------------------------------


def setup_machine(threads: int | None = None) -> dict[str, Any]:
    """Fix the thread count and hold glibc's allocator steady. Call before allocating tensors.

    Returns (and records for the report) {"threads": n, "allocator": {...}}."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    _MACHINE["threads"] = torch.get_num_threads()
    _MACHINE["allocator"] = _hold_glibc_allocator()
    return dict(_MACHINE)


def _hold_glibc_allocator() -> dict[str, Any]:
    """mallopt(M_MMAP_MAX, 0) + mallopt(M_TRIM_THRESHOLD, 2**31-1): large blocks come from the heap
    and freed memory is kept, so a call does not page-fault its output buffer back in each time.
    Equivalent to MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 in the environment."""
    env = {k: os.environ[k] for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    if not sys.platform.startswith("linux"):
        return {"held": False, "setting": "platform default", "why": f"not Linux ({sys.platform})", "env": env}
    libc_name, libc_version = platform.libc_ver()
    if libc_name != "glibc":
        return {"held": False, "setting": "platform default", "why": f"libc is {libc_name or 'unknown'}, not glibc", "env": env}
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success, 0 on error
        ok_mmap = mallopt(M_MMAP_MAX, 0) == 1
        ok_trim = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError) as e:
        return {"held": False, "setting": "glibc default", "why": f"mallopt unavailable: {e}", "env": env}
    held = ok_mmap and ok_trim
    return {
        "held": held,
        "setting": "glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2147483647" if held else "glibc default (mallopt failed)",
        "glibc": libc_version,
        "mmap_max_ok": ok_mmap,
        "trim_threshold_ok": ok_trim,
        "env": env,
    }


def llc_bytes(device: str) -> int:
    """Last-level cache size: the GPU's L2, or the CPU's L3 (L2 if no L3) from sysfs."""
    if device == "cuda":
        size = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
        return int(size) or DEFAULT_LLC_BYTES
    best = 0
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
        if level >= 2 and size > best:
            best = size
    return best or DEFAULT_LLC_BYTES


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        try:
            from importlib import metadata

            return metadata.version(module)
        except Exception:
            return None


def _fastops_info() -> dict[str, Any]:
    """Which fastops was imported and which kernels it has: a run of the reference fallback
    instead of the kernels must be visible in the report."""
    try:
        import fastops
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
        return {"importable": False, "error": f"{type(e).__name__}: {e}"}
    info: dict[str, Any] = {"importable": True, "file": getattr(fastops, "__file__", None)}
    info["version"] = getattr(fastops, "__version__", None) or _version("fastops")
    for probe in ("has_extension", "has_cuda_kernels", "get_backend"):
        fn = getattr(fastops, probe, None)
        if callable(fn):
            try:
                info[probe] = fn()
            except Exception as e:  # noqa: BLE001
                info[probe] = f"error: {e}"
    return info


def _git_state() -> dict[str, Any]:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {
        "commit": head.stdout.strip() if head.returncode == 0 else None,
        "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
    }


def machine_info(device: str) -> dict[str, Any]:
    """Everything needed to tell two result files apart."""
    cpu = _cpu_model()
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu,
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "allocator": _MACHINE.get("allocator", {"held": False, "setting": "not set up (setup_machine not called)"}),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "llc_bytes": llc_bytes(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "fastops": _fastops_info(),
        "git": _git_state(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# ---------------------------------------------------------------------------------------------
# Timing primitives
# ---------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_calls(run: Callable[[Any], Any], seq: list[Any], device: str) -> float:
    """Seconds per call of `run(s) for s in seq`. Results are dropped as soon as they are made."""
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for s in seq:
            run(s)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / len(seq)
    t0 = time.perf_counter()
    for s in seq:
        run(s)
    return (time.perf_counter() - t0) / len(seq)


def copy_bandwidth(device: str, nbytes: int | None = None, reps: int = 7, warmup: int = 2) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written, per second) of a large fp32 tensor copy:
    the memory roof the pointwise ops are measured against. Median of `reps` copies."""
    if nbytes is None:
        # CPU: at least 64 MB and about the LLC per buffer, so src+dst do not stay cached;
        # capped so that a measurement stays well under a second on a slow VM.
        nbytes = (1 << 30) if device == "cuda" else min(max(64 << 20, llc_bytes(device)), 256 << 20)
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)  # ones/zeros: pages touched up front
    dst = torch.zeros(n, dtype=torch.float32, device=device)
    for _ in range(warmup):
        dst.copy_(src)
    _sync(device)
    times = sorted(_time_calls(lambda _: dst.copy_(src), [None], device) for _ in range(reps))
    del src, dst
    return 2 * n * 4 / _percentile(times, 50) / 1e9


def matmul_rate(device: str, dtype: torch.dtype = torch.float32, n: int | None = None, reps: int = 5) -> float:
    """Dense matmul rate in GFLOP/s (2*n^3 flops per n x n x n product), median of `reps`: the
    compute roof of the GEMM-bound cases (1x1 convs, whole networks)."""
    n = n or (8192 if device == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    _sync(device)
    times = sorted(_time_calls(lambda _: torch.mm(a, b), [None], device) for _ in range(reps))
    return 2 * n**3 / _percentile(times, 50) / 1e9


def machine_key(device: str) -> str:
    """What the cached roofs are valid for: the processor, the thread count, torch's version."""
    name = torch.cuda.get_device_name() if device == "cuda" else _cpu_model()
    return f"{device}|{name}|{torch.get_num_threads()} threads|torch {torch.__version__}"


def cached_roofs(device: str, dtypes, refresh: bool = False, log=print) -> dict[str, Any]:
    """The machine's matmul rate per dtype (GFLOP/s), measured once per machine key and kept in
    ROOF_CACHE (the copy bandwidth is measured afresh around every case: it also tells a busy
    machine). `refresh` measures again."""
    key = machine_key(device)
    try:
        cache = json.loads(ROOF_CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key, {}) if not refresh else {}
    missing = [d for d in dtypes if str(d).replace("torch.", "") not in entry.get("matmul_gflops", {})]
    if missing:
        rates = dict(entry.get("matmul_gflops", {}))
        for d in missing:
            rates[str(d).replace("torch.", "")] = round(matmul_rate(device, d), 1)
        entry = {"matmul_gflops": rates, "measured": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        cache[key] = entry
        try:
            ROOF_CACHE.parent.mkdir(parents=True, exist_ok=True)
            ROOF_CACHE.write_text(json.dumps(cache, indent=1) + "\n")
        except OSError as e:
            log(f"warning: could not cache the roofs in {ROOF_CACHE}: {e}")
    else:
        log(f"matmul roof from {ROOF_CACHE} (measured {entry.get('measured')}; --refresh-roofs measures again)")
    return dict(entry, key=key, cache=str(ROOF_CACHE))


def _percentile(sorted_xs: list[float], p: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


class OtherLoad:
    """How many cores' worth of CPU time *other* processes (and the hypervisor, as steal time) took
    while a case was being timed: /proc/stat busy time minus this process's own CPU time.

    The copy-bandwidth check misses the worst trap of a 2-core VM: one busy neighbour process makes
    torch's 2-thread parallel regions wait for a descheduled thread, and a 0.5 ms op then takes 8 ms
    (scheduler ticks) while a 40 ms copy barely notices. This measures that neighbour directly.
    Linux only; elsewhere `cores()` is None."""

    def __init__(self):
        self._start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        ticks = [int(x) for x in fields[:8]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()

    def cores(self) -> float | None:
        end = self._snapshot()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self._start))
        return max(0.0, (busy - own) / wall)


# ---------------------------------------------------------------------------------------------
# Cases and contenders
# ---------------------------------------------------------------------------------------------

# An input set is whatever a contender's `run` takes; standard_contenders use
# {"args": (tensor, ...), "grad": tensor | None}.
InputSet = Any
Run = Callable[[InputSet], Any]
# A contender factory does the contender's one-off setup (import, compile, ...) and returns `run`.
# It may raise: the contender is then reported as failed.
ContenderFactory = Callable[[], Run]


@dataclass
class Case:
    """One benchmark configuration: an op on one shape / dtype / layout / mode / device."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str  # "nchw" | "channels_last"
    mode: str  # "fwd" | "fwd+bwd"
    device: str
    bytes_moved: int  # for the roof: each input read once + each output written once
    make_inputs: Callable[[int], InputSet]  # set index -> a fresh input set (on `device`)
    contenders: dict[str, ContenderFactory]  # name -> factory, in report order
    reference: str = "eager"  # contender whose outputs the others are checked against
    accept_vs: str | None = None  # acceptance: fastops must be no slower than this contender
    label: str = ""  # optional short tag shown in the table, e.g. "acceptance"
    flops: int = 0  # for the compute roof (multiply-adds x 2); 0: the case is judged by bytes only
    items: int = 0  # images per call, for networks: images/s is reported when set
    # whether outputs must keep the reference's memory format (False where the reference is a
    # module that itself changes it, as torchvision's ShuffleNet V2 unit returns NCHW)
    layout_checked: bool = True
    # the reference's outputs in float64 for an input set (its tensors upcast): where a contender
    # and the reference disagree, the one nearer these is right (see _check_against_truth)
    truth: Callable[[InputSet], Any] | None = None

    @property
    def name(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return f"{self.op} {'x'.join(map(str, self.shape))} {dt} {self.layout} {self.mode}"


def memory_format(layout: str) -> torch.memory_format:
    return {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}[layout]


def tensor_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _function_run(f: Callable[..., torch.Tensor], mode: str) -> Run:
    """A standard_contenders run of f: f(*args), and in fwd+bwd its gradient for `grad` w.r.t.
    the args that require grad."""
    if mode == "fwd":
        return lambda s: f(*s["args"])
    if mode == "fwd+bwd":

        def fwd_bwd(s):
            wrt = [a for a in s["args"] if isinstance(a, torch.Tensor) and a.requires_grad]
            return torch.autograd.grad(f(*s["args"]), wrt, s["grad"])

        return fwd_bwd
    raise ValueError(f"unknown mode {mode!r}")


def standard_contenders(
    fastops_fn: Callable[[], Callable[..., torch.Tensor]],
    eager_fn: Callable[..., torch.Tensor],
    mode: str,
) -> dict[str, ContenderFactory]:
    """fastops / eager / compile contenders for an op with a plain-PyTorch equivalent.

    fastops_fn: returns the fastops function (called at setup, so a failing `import fastops` is a
        failed contender, not a crashed run).
    eager_fn: the torch equivalent, e.g. torch.nn.functional.hardswish.
    mode "fwd": run = f(*args). mode "fwd+bwd": y = f(*args), then the gradient of y w.r.t. the
        args that require grad for the upstream gradient `grad`. torch.autograd.grad is used rather
        than y.backward(g) so that .grad is not accumulated (which would add a read + write)."""

    def wrap(f: Callable[..., torch.Tensor]) -> Run:
        return _function_run(f, mode)

    def compiled() -> Run:
        # (run_case resets dynamo before each case.) Forward only is compiled; in fwd+bwd
        # AOTAutograd compiles the backward graph too. The compile itself happens on the first
        # call, which the harness makes before timing.
        return wrap(torch.compile(eager_fn, dynamic=False))

    return {
        "fastops": lambda: wrap(fastops_fn()),
        "eager": lambda: wrap(eager_fn),
        "compile": compiled,
    }


def float64_truth(eager_fn: Callable[..., torch.Tensor], mode: str) -> Callable[[InputSet], Any]:
    """Case.truth for a standard_contenders case: eager_fn's run on the input set upcast to
    float64 (layouts and requires_grad kept)."""
    run = _function_run(eager_fn, mode)

    def up(t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        fmt = torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else None
        u = t.detach().double() if fmt is None else t.detach().double().contiguous(memory_format=fmt)
        return u.requires_grad_(t.requires_grad)

    return lambda s: run({k: (tuple(up(a) for a in v) if k == "args" else up(v)) for k, v in s.items()})


def _compiled_apart(module: torch.nn.Module) -> Callable[..., Any]:
    """torch.compile of `module` called through a function whose code object is its own, with the
    module's parameters() (for the runners that differentiate them). Dynamo keeps compiled graphs
    per code object and, inlining nn.Modules, guards them on the module's type, not its identity:
    a second compiled copy of the same network (compile+freezing after compile) found the first's
    graph and ran it, unfrozen, instead of compiling its own."""
    namespace = {"module": module}
    exec("def forward(*args):\n    return module(*args)\n", namespace)  # a fresh code object
    fn = torch.compile(namespace["forward"], dynamic=False)
    fn.parameters = module.parameters
    return fn


def compile_contenders(
    build: Callable[[], torch.nn.Module],
    runner: Callable[[torch.nn.Module], Run],
    mode: str,
    make_sample: Callable[[], InputSet],
) -> dict[str, ContenderFactory]:
    """The torch.compile contenders of a module case: "compile" (default settings) and, for
    inference (mode "fwd"), "compile+freezing" (torch._inductor.config.freezing=True: parameters
    become constants, BatchNorm folds into the conv). build() makes the eager module, runner(m)
    the case's run for a module; make_sample() an input set to compile with. Inference compiles
    under torch.no_grad, as it is timed."""

    def factory(freezing: bool) -> ContenderFactory:
        def make() -> Run:
            run = runner(_compiled_apart(build()))
            with torch._inductor.config.patch(freezing=freezing):
                run(make_sample())  # the compile happens here, under the setting
            return run

        return make

    out = {"compile": factory(False)}
    if mode == "fwd":
        out["compile+freezing"] = factory(True)
    return out


def module_contenders(
    build: Callable[[], tuple[torch.nn.Module, torch.nn.Module]],
    mode: str,
    make_sample: Callable[[], InputSet],
) -> dict[str, ContenderFactory]:
    """fastops / eager / compile (/ compile+freezing) contenders for a block: `build()` returns
    (eager module, fastops module) with the same parameters in the same order, both in eval mode
    (BatchNorm on its running statistics). mode "fwd": under torch.no_grad. mode "fwd+bwd": the
    gradients of the output w.r.t. the inputs that require grad and every parameter.
    make_sample: an input set to compile with."""

    def runner(module: torch.nn.Module) -> Run:
        if mode == "fwd":
            def run(s):
                with torch.no_grad():
                    return module(*s["args"])
            return run

        def run(s):
            wrt = [a for a in s["args"] if isinstance(a, torch.Tensor) and a.requires_grad]
            wrt += [p for p in module.parameters() if p.requires_grad]
            return torch.autograd.grad(module(*s["args"]), wrt, s["grad"])

        return run

    return {"fastops": lambda: runner(build()[1]), "eager": lambda: runner(build()[0]),
            **compile_contenders(lambda: build()[0], runner, mode, make_sample)}


def tensor_inputs(
    shapes: list[tuple[int, ...]], grad_shape: tuple[int, ...], dtype: torch.dtype, layout: str, mode: str, device: str
) -> Callable[[int], InputSet]:
    """make_inputs for a block taking the tensors `shapes` (standard normal, in `layout`), with
    an upstream gradient of `grad_shape` in fwd+bwd mode, where every input requires grad."""
    gen = torch.Generator().manual_seed(0)
    fmt = memory_format(layout)
    bases = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    base_g = torch.randn(grad_shape, generator=gen).to(device=device, dtype=dtype)

    def make(k: int) -> InputSet:
        args = tuple(b.clone(memory_format=fmt).requires_grad_(mode == "fwd+bwd") for b in bases)
        return {"args": args, "grad": base_g.clone(memory_format=fmt) if mode == "fwd+bwd" else None}

    return make


def default_dtypes(device: str, dtypes=None) -> list[torch.dtype]:
    """The dtypes a bench module runs unless told: half types on CUDA, float32 on CPU."""
    if dtypes is not None:
        return list(dtypes)
    return [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]


BATCH_SIZES: list[int] | None = None  # set by `bench/run.py --batch`: overrides the presets' sizes
MODEL_LAYERS: list[str] | None = None  # set by `bench/run.py --model-layers`: networks whose layers to time


def model_layers(kind: str) -> list[dict[str, Any]] | None:
    """The unique layers of `kind` (bench/layers.py KINDS: "depthwise", "pointwise", "separable",
    "bn_act", "squeeze_excite", ...) of the networks named by --model-layers, read off fastops'
    builders; None when not asked for."""
    if not MODEL_LAYERS:
        return None
    from .layers import layers

    return [layer for layer in layers(tuple(MODEL_LAYERS)) if layer["kind"] == kind]


def batch_sizes(quick: bool, device: str) -> list[int]:
    """Batch sizes of the quick / full presets: N=8 on CPU (64 on CUDA), plus N=1 in full;
    BATCH_SIZES instead when set."""
    if BATCH_SIZES:
        return list(BATCH_SIZES)
    n = 64 if device == "cuda" else 8
    return [n] if quick else [1, n]


def backend_contenders(case: "Case", backends: list[str]) -> None:
    """Add a "fastops[<backend>]" contender per fastops CUDA backend named (e.g. "triton",
    "cuda"): the case's fastops contender run under fastops.use_backend(backend)."""
    base = case.contenders.get("fastops")
    if base is None:
        return
    for backend in backends:
        def make(backend=backend):
            fastops = importlib.import_module("fastops")
            with fastops.use_backend(backend):
                run = base()

            def run_under(s):
                with fastops.use_backend(backend):
                    return run(s)
            return run_under
        case.contenders[f"fastops[{backend}]"] = make


def pointwise_inputs(
    shape: tuple[int, ...], dtype: torch.dtype, layout: str, mode: str, device: str, scale: float = 4.0
) -> Callable[[int], InputSet]:
    """make_inputs for a one-tensor pointwise op: x ~ scale * N(0,1) (covers every branch of the
    hard activations), plus an upstream gradient g in fwd+bwd mode. All sets hold the same values
    (cloned from one draw: cheap) in different memory."""
    gen = torch.Generator().manual_seed(0)
    fmt = memory_format(layout)
    base_x = (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)
    base_g = torch.randn(shape, generator=gen).to(device=device, dtype=dtype) if mode == "fwd+bwd" else None

    def make(k: int) -> InputSet:
        x = base_x.clone(memory_format=fmt)
        if base_g is None:
            return {"args": (x,), "grad": None}
        return {"args": (x.requires_grad_(),), "grad": base_g.clone(memory_format=fmt)}

    return make


def _set_bytes(s: Any) -> int:
    """Bytes of the distinct tensors held by an input set (nested dicts / lists / tuples)."""
    seen: dict[int, int] = {}

    def walk(o):
        if isinstance(o, torch.Tensor):
            seen[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(s)
    return sum(seen.values())


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _n_bad(o: torch.Tensor, r: torch.Tensor, dtype: torch.dtype, backward: bool) -> tuple[int, float]:
    """(elements of o out of _check's tolerance around r, for outputs of `dtype`; max |o - r|)."""
    d = (o.detach().double() - r.detach().double()).abs()
    rtol, atol = {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5)}.get(dtype, (1.3e-6, 1e-5))
    if backward:
        rtol = max(rtol, 2.5e-5)
    rd = r.detach().double()
    scale = max(1.0, float(rd.abs().max())) if rd.numel() else 1.0
    bad = d > 4 * atol + 4 * rtol * (rd.abs() + scale)
    return int(bad.sum()), (float(d.max()) if d.numel() else 0.0)


def _check_against_truth(out: Any, ref: Any, truth: Any, backward: bool) -> tuple[bool, int, int]:
    """A contender that _check found off the reference: is it at least as close to the float64
    truth as the reference is? (ok, its elements out of tolerance around the truth, the
    reference's). Near an activation's kink (relu6's 0 and 6) two float32 programs can land on
    either side, and in a training step one such element's gradient differs by O(1) and spreads
    through the convolutions' backward: there the reference itself is off, and the count of
    elements out of tolerance, not the size of the largest error, says who is right."""
    outs, refs, truths = _tensors(out), _tensors(ref), _tensors(truth)
    if not len(outs) == len(refs) == len(truths):
        return False, -1, -1
    mine = theirs = 0
    for o, r, t in zip(outs, refs, truths):
        if o.shape != t.shape:
            return False, -1, -1
        mine += _n_bad(o, t, o.dtype, backward)[0]
        theirs += _n_bad(r, t, r.dtype, backward)[0]
    allowed = max(0, sum(o.numel() for o in outs) // 1_000_000)
    return mine <= max(theirs, allowed), mine, theirs


def _check(out: Any, ref: Any, backward: bool = False, layout: bool = True) -> tuple[str, float | None]:
    """Compare a contender's outputs with the reference's: values and memory layout (the op
    contract: outputs keep the input's memory format). Values: torch's per-dtype tolerances
    relaxed 4x, the absolute one scaled by the output's magnitude (gradients of parameters are
    sums over N*H*W values: their rounding grows with them), and up to one element in a million
    may differ more (an activation's kink: two correct programs that round an intermediate
    differently can land on either side of relu6's 0 or 6). Gradients (`backward`) are held to
    1e-4 of their magnitude: a weight's gradient sums N*H*W products, and float32 sums of 10^5
    terms in different orders (oneDNN's, inductor's, ours) differ by that much."""
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs):
        return f"mismatch: {len(outs)} outputs vs {len(refs)}", None
    err = 0.0
    for o, r in zip(outs, refs):
        if o.shape != r.shape or o.dtype != r.dtype:
            return f"mismatch: {tuple(o.shape)} {o.dtype} vs {tuple(r.shape)} {r.dtype}", None
        n_bad, e = _n_bad(o, r, o.dtype, backward)
        err = max(err, e)
        if n_bad > max(0, o.numel() // 1_000_000):
            return "mismatch", err
    # Forward outputs must keep the reference's memory format. Gradients are not compared: the
    # fastops ops return each input's gradient in that input's layout, where eager's autograd
    # may not (torch.cat's backward returns slices of an NCHW gradient for channels_last inputs).
    for o, r in zip(outs, refs):
        if layout and not backward and o.dim() == 4 and o.is_contiguous(memory_format=torch.channels_last) != r.is_contiguous(
            memory_format=torch.channels_last
        ):
            return "layout differs", err
    return "ok", err


# ---------------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int = 15
    warmup: int = 3  # untimed calls per contender after its first (setup) call
    target_s: float = 4e-3  # a sample times `inner` calls, chosen so the fastest takes about this
    rotate: bool = True  # rotate input sets to keep inputs out of the cache
    llc_bytes: int = DEFAULT_LLC_BYTES
    memory: bool = True  # measure each contender's peak memory (one extra, untimed call)


@dataclass
class CaseResult:
    case: Case
    rows: list[dict[str, Any]] = field(default_factory=list)
    input_sets: int = 1
    inner: int = 1
    copy_gbps_before: float | None = None
    copy_gbps_after: float | None = None
    other_load_cores: float | None = None


def peak_memory_mb(run: Run, s: InputSet, device: str) -> float | None:
    """Peak memory one call allocates above what was allocated before it, in MiB. CUDA: the
    caching allocator's peak statistic. CPU: torch keeps no statistics there, so the call runs
    once under torch.profiler with profile_memory=True, and the peak is that of the running sum
    of the allocations and frees it records (every tensor torch's CPU allocator serves, those of
    torch.compile's generated code included; not the library-internal scratch memory of oneDNN or
    MKL). None where the profiler's trace can't be read."""
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(s)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(s)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    mem = sorted((e["ts"], e["args"]["Bytes"]) for e in events
                 if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0)
    if not mem:
        return None
    held = peak = 0
    for _, nbytes in mem:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def _failed(e: BaseException) -> str:
    """A one-line status for a contender that raised."""
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"failed: {type(e).__name__}: {first}"


class _Counter:
    """The global call counter k: call k uses input set k mod K, whichever contender makes it, so a
    set is reused only after every other set has been touched."""

    def __init__(self, sets: list[Any]):
        self.sets, self.k = sets, 0

    def next(self, n: int) -> list[Any]:
        K = len(self.sets)
        seq = [self.sets[(self.k + i) % K] for i in range(n)]
        self.k += n
        return seq


def run_case(case: Case, settings: Settings, contenders: list[str] | None = None, log=print) -> CaseResult:
    """Time every (selected) contender of `case`, interleaved round by round."""
    device = case.device
    names = [n for n in case.contenders if contenders is None or n in contenders]
    result = CaseResult(case)

    # Input sets: enough copies that the footprint is >= CACHE_MULTIPLE x the LLC, within limits.
    first = case.make_inputs(0)
    per_set = max(1, _set_bytes(first))
    K = 1
    if settings.rotate:
        want = min(CACHE_MULTIPLE * settings.llc_bytes, MAX_ROTATION_BYTES)
        K = max(1, min(MAX_INPUT_SETS, math.ceil(want / per_set)))
    sets = [first] + [case.make_inputs(k) for k in range(1, K)]
    result.input_sets = K
    counter = _Counter(sets)

    # Set up each contender: build it, make its first call (torch.compile compiles here), check
    # its outputs against the reference, warm it up. Any failure marks only that contender.
    runs: dict[str, Run] = {}
    peak_mb: dict[str, float] = {}
    status: dict[str, str] = {}
    errors: dict[str, float | None] = {}
    ref_out = truth_out = None
    notes: dict[str, str] = {}
    order = sorted(names, key=lambda n: n != case.reference)  # reference first, for the checks
    # A fresh dynamo state per case: the cases compile the same functions and modules again, and
    # past cache_size_limit recompilations dynamo would silently fall back to eager. Not per
    # contender: a reset would make the case's first compiled contender compile again, timed.
    torch._dynamo.reset()
    for name in order:
        try:
            run = case.contenders[name]()
            out = run(sets[0])
            _sync(device)
            if name == case.reference:
                ref_out, status[name], errors[name] = out, "ok", 0.0
            elif ref_out is not None:
                status[name], errors[name] = _check(out, ref_out, backward=case.mode != "fwd",
                                                    layout=case.layout_checked)
                if status[name] == "mismatch" and case.truth is not None:
                    if truth_out is None:
                        truth_out = case.truth(sets[0])
                    ok, mine, theirs = _check_against_truth(out, ref_out, truth_out, case.mode != "fwd")
                    notes[name] = (f"off {case.reference} but nearer float64 ({mine} elements out of "
                                   f"tolerance, {case.reference} {theirs})" if ok else
                                   f"float64: {mine} elements out of tolerance, {case.reference} {theirs}")
                    if ok:
                        status[name] = "ok"
            else:
                status[name], errors[name] = "ok (unchecked)", None
            del out
            for s in counter.next(settings.warmup):
                run(s)
            _sync(device)
            if settings.memory:
                peak_mb[name] = peak_memory_mb(run, counter.next(1)[0], device)
            runs[name] = run
        except Exception as e:  # noqa: BLE001 - a contender's failure must not stop the run
            status[name] = _failed(e)
            log(f"    {name}: {status[name]}")
    del ref_out, truth_out

    # Calibrate `inner` (same for every contender) so the fastest contender's sample is ~target_s.
    estimates = {}
    for name, run in list(runs.items()):
        try:
            n = 1
            while True:
                t = _time_calls(run, counter.next(n), device)
                if t * n >= settings.target_s / 4 or n >= 1 << 16:
                    break
                n *= 2
            estimates[name] = t
        except Exception as e:  # noqa: BLE001
            status[name] = _failed(e)
            del runs[name]
    inner = max(1, math.ceil(settings.target_s / min(estimates.values()))) if estimates else 1
    result.inner = inner

    # The rounds: A B C, B C A, C A B, ... (the rotation keeps any position effect off one contender).
    samples: dict[str, list[float]] = {n: [] for n in runs}
    live = list(runs)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    load = OtherLoad()
    try:
        for r in range(settings.rounds):
            shift = r % len(live) if live else 0
            for name in live[shift:] + live[:shift]:
                if name not in runs:
                    continue
                try:
                    samples[name].append(_time_calls(runs[name], counter.next(inner), device))
                except Exception as e:  # noqa: BLE001
                    status[name] = _failed(e)
                    del runs[name]
            live = [n for n in live if n in runs]
    finally:
        if gc_was_enabled:
            gc.enable()
    result.other_load_cores = load.cores()
    del sets, counter, runs

    # Statistics per contender.
    medians: dict[str, float] = {}
    for name in names:
        row: dict[str, Any] = {
            "op": case.op,
            "case": case.name,
            "shape": list(case.shape),
            "dtype": str(case.dtype).replace("torch.", ""),
            "layout": case.layout,
            "mode": case.mode,
            "device": device,
            "contender": name,
            "status": status.get(name, "not run"),
            "max_abs_err": errors.get(name),
            "check_note": notes.get(name),
            "bytes": case.bytes_moved,
            "input_sets": K,
            "input_set_bytes": per_set,
            "cache_resident": K * per_set < settings.llc_bytes,
            "inner": inner,
            "rounds": len(samples.get(name, [])),
            "label": case.label,
            "other_load_cores": result.other_load_cores,
            "busy_flag": bool(result.other_load_cores is not None and result.other_load_cores > BUSY_FLAG_CORES),
        }
        xs = sorted(samples.get(name, []))
        if xs and not row["status"].startswith("failed"):
            med = _percentile(xs, 50)
            medians[name] = med
            row.update(
                median_ms=med * 1e3,
                p10_ms=_percentile(xs, 10) * 1e3,
                p90_ms=_percentile(xs, 90) * 1e3,
                q25_ms=_percentile(xs, 25) * 1e3,
                q75_ms=_percentile(xs, 75) * 1e3,
                iqr_ms=(_percentile(xs, 75) - _percentile(xs, 25)) * 1e3,
                min_ms=xs[0] * 1e3,
                gbps=case.bytes_moved / med / 1e9,
                gflops=case.flops / med / 1e9 if case.flops else None,
                images_per_s=case.items / med if case.items else None,
                unstable=(_percentile(xs, 75) - _percentile(xs, 25)) > UNSTABLE_IQR_FRACTION * med,
            )
        row["flops"] = case.flops
        row["peak_mem_mb"] = peak_mb.get(name)
        result.rows.append(row)
    attach_speedups(result.rows, medians)
    return result


def attach_speedups(rows: list[dict[str, Any]], medians: dict[str, float]) -> None:
    """speedup_vs_X of contender C = median(X) / median(C): > 1 means C is faster than X. A
    contender whose spread is too wide (row["unstable"]: IQR > UNSTABLE_IQR_FRACTION x median) is
    not compared: its speedups, and everyone's against it, are None (the table says "unstable")."""
    unstable = {r["contender"] for r in rows if r.get("unstable")}
    for row in rows:
        mine = None if row["contender"] in unstable else medians.get(row["contender"])
        row["speedup_vs"] = {x: (t / mine if mine and x not in unstable else None)
                             for x, t in medians.items() if x != row["contender"]}
        for x in STANDARD_CONTENDERS:
            if x == row["contender"]:
                row[f"speedup_vs_{x}"] = 1.0 if mine else None
            else:
                row[f"speedup_vs_{x}"] = row["speedup_vs"].get(x)


def finish_rows(result: CaseResult, copy_start: float, before: float, after: float,
                matmul_gflops: float | None = None) -> None:
    """Attach the roof and the noisy-machine flag. The roof is the roofline's time bound: the
    case's bytes over the copy bandwidth (the mean of the measurements just before and just after
    the case) or its flops over the matmul rate, whichever is longer ("roof_bound" says which);
    roof_fraction = that bound / the median time."""
    result.copy_gbps_before, result.copy_gbps_after = before, after
    local = (before + after) / 2
    flag = min(before, after) < BANDWIDTH_FLAG_FRACTION * copy_start
    for row in result.rows:
        row["copy_gbps_before"] = before
        row["copy_gbps_after"] = after
        row["matmul_gflops"] = matmul_gflops
        t_bytes = row["bytes"] / (local * 1e9) if local else 0.0
        t_flops = row.get("flops", 0) / (matmul_gflops * 1e9) if matmul_gflops and row.get("flops") else 0.0
        row["roof_bound"] = "flops" if t_flops > t_bytes else "bytes"
        bound = max(t_bytes, t_flops)
        row["roof_fraction"] = bound / (row["median_ms"] / 1e3) if row.get("median_ms") and bound > 0 else None
        row["bandwidth_flag"] = flag


def acceptance(results: list[CaseResult]) -> list[dict[str, Any]]:
    """For each case with accept_vs: is fastops no slower than that contender (ratio of medians)?"""
    out = []
    for res in results:
        vs = res.case.accept_vs
        if not vs:
            continue
        row = next((r for r in res.rows if r["contender"] == "fastops"), None)
        speedup = row.get(f"speedup_vs_{vs}") if row else None
        if speedup is None and row is not None:
            speedup = row.get("speedup_vs", {}).get(vs)
        out.append(
            {
                "case": res.case.name,
                "criterion": f"fastops median <= {vs} median",
                "speedup": speedup,
                "passed": bool(speedup is not None and speedup >= 1.0),
                "bandwidth_flag": row.get("bandwidth_flag") if row else None,
                "busy_flag": row.get("busy_flag") if row else None,
                # a verdict from a noisy or busy machine says little: rerun on a quiet one
                "conclusive": bool(row and not row.get("bandwidth_flag") and not row.get("busy_flag") and speedup is not None),
                "fastops_status": row["status"] if row else "not run",
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


TABLE_HEADER = ["case", "contender", "median ms", "p10-p90 ms", "GB/s", "roof", "vs eager", "vs compile",
                "vs compile+frz", "notes"]
_NUMERIC_COLUMNS = {2, 3, 4, 5, 6, 7, 8}


def _speedup_cell(r: dict[str, Any], vs: str) -> str:
    x = r.get(f"speedup_vs_{vs}")
    return "-" if x is None else f"{x:.2f}x"


def table_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The table body as strings, one list per case x contender; the case is named on its first row."""
    body = []
    last_case = None
    for r in rows:
        notes = []
        if r["status"] != "ok":
            notes.append(r["status"])
        if r.get("check_note"):
            notes.append(r["check_note"])
        if r.get("bandwidth_flag"):
            notes.append("NOISY (copy bw < 75% of start)")
        if r.get("busy_flag") and r["contender"] == "fastops":
            notes.append(f"BUSY (others used {r['other_load_cores']:.2f} cores)")
        if r.get("unstable"):
            notes.append(f"unstable (IQR {100 * r['iqr_ms'] / r['median_ms']:.0f}% of median): not compared")
        if r.get("roof_bound") == "flops" and r.get("roof_fraction") and r["contender"] == "fastops":
            notes.append("roof: flops")
        if r.get("cache_resident") and r["contender"] == "fastops":
            notes.append("cache resident")
        if r.get("label") and r["contender"] == "fastops":
            notes.append(r["label"])
        if r.get("images_per_s"):
            notes.append(f"{r['images_per_s']:.0f} img/s")
        if r.get("peak_mem_mb") is not None:
            notes.append(f"peak {r['peak_mem_mb']:.3g} MiB")
        ok = r.get("median_ms") is not None
        body.append(
            [
                r["case"] if r["case"] != last_case else "",
                r["contender"],
                _fmt(r.get("median_ms"), ".4f"),
                f"{r['p10_ms']:.4f}-{r['p90_ms']:.4f}" if ok else "-",
                _fmt(r.get("gbps"), ".1f"),
                f"{100 * r['roof_fraction']:.0f}%" if r.get("roof_fraction") else "-",
                _speedup_cell(r, "eager"),
                _speedup_cell(r, "compile"),
                _speedup_cell(r, "compile+freezing"),
                "; ".join(notes),
            ]
        )
        last_case = r["case"]
    return body


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A plain-text table, a blank line between cases."""
    body = table_cells(rows)
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(TABLE_HEADER)]

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in _NUMERIC_COLUMNS else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(TABLE_HEADER), line(["-" * w for w in widths])]
    for i, cells in enumerate(body):
        if i and cells[0]:
            out.append("")
        out.append(line(cells))
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the results table: with rich when it is installed, plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\n".join(table_lines(rows)))
        return
    table = Table(*TABLE_HEADER)
    for i in _NUMERIC_COLUMNS:
        table.columns[i].justify = "right"
    for i, cells in enumerate(table_cells(rows)):
        if i and cells[0]:
            table.add_section()
        table.add_row(*cells)
    Console(width=200).print(table)


CSV_FIELDS = [
    "op", "shape", "dtype", "layout", "mode", "device", "contender", "status", "median_ms", "p10_ms", "p90_ms",
    "iqr_ms", "unstable", "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_compile+freezing", "gbps", "gflops", "roof_fraction", "roof_bound",
    "images_per_s", "peak_mem_mb", "bandwidth_flag", "busy_flag", "check_note",
]


def write_csv(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """One CSV row per case x contender (CSV_FIELDS), plus the machine columns (date, machine,
    threads, torch, fastops version) repeated on every row so that rows from several files mix."""
    import csv

    m = report["machine"]
    machine = {
        "date": m.get("date"), "machine": m.get("device_name"), "threads": m.get("threads"),
        "torch": m.get("torch"), "fastops": (m.get("fastops") or {}).get("version"),
        "git": (m.get("git") or {}).get("commit"),
    }
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS + list(machine))
        w.writeheader()
        for r in report["rows"]:
            row = {k: r.get(k) for k in CSV_FIELDS}
            row["shape"] = "x".join(map(str, r.get("shape", [])))
            w.writerow(dict(row, **machine))


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write atomically (a .tmp then rename), so an interrupted run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, path)
