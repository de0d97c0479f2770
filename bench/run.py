"""Run the fastops benchmarks: `python bench/run.py` or `python -m bench` from the repository root.

    python bench/run.py                              # quick preset, every op family, default device
    python bench/run.py --ops activation --full --device cuda
    python bench/run.py --dtype float32 bfloat16 --layout channels_last --mode fwd -k 240x28x28
    python bench/run.py --ops networks --full --batch 1 8      # whole networks, latency and throughput
    python bench/run.py --ops dwconv pwconv --model-layers mobilenet_v2 shufflenet_v1   # their own layers
    python bench/run.py --model-layers all --list      # every op family on every network's layers
    python bench/run.py --device cuda --backends triton cuda   # + fastops under each CUDA backend

Op families are discovered by file name: bench/bench_<family>.py provides
`cases(quick, device, dtypes, layouts)`. Results go to bench/results/<device>-<date>-<time>.json
(or --out), with the same rows as CSV beside it (.csv) and plots (-speedup.png, -roof.png,
-networks.png; matplotlib); the table is printed last. The matmul roof is measured once per
machine and cached (~/.cache/fastops/roofs.json, or $FASTOPS_BENCH_CACHE); the copy bandwidth is
measured around every case. A contender whose timings spread too wide (IQR > 25% of the median)
is not compared: its speedups are left out and the table says "unstable".
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the `bench` package importable. Appended, not prepended, so an
    # installed fastops is not shadowed by the source tree.
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from bench import harness
else:
    from . import harness

import torch

BENCH_DIR = Path(__file__).resolve().parent

PRESETS = {
    # quick: ~1-2 minutes on a 2-core VM for the activation family
    "quick": harness.Settings(rounds=15, warmup=3, target_s=4e-3),
    "full": harness.Settings(rounds=41, warmup=10, target_s=10e-3),
}


def families() -> list[str]:
    """The op families in name order, then whole networks (slowest to set up: torch.compile of a
    network), so that a run cut short keeps the op results."""
    names = sorted(m.name[len("bench_") :] for m in pkgutil.iter_modules([str(BENCH_DIR)]) if m.name.startswith("bench_"))
    return sorted(names, key=lambda n: n == "networks")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=None, metavar="FAMILY", help=f"op families (default: all of {families()})")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", choices=list(harness.DTYPES), default=None, help="default: float32 on CPU; float16 bfloat16 float32 on CUDA")
    p.add_argument("--layout", nargs="+", choices=list(harness.LAYOUTS), default=None, help="default: per family and preset")
    p.add_argument("--mode", nargs="+", choices=list(harness.MODES), default=list(harness.MODES))
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="preset", action="store_const", const="quick", help="fewer cases and rounds (default)")
    preset.add_argument("--full", dest="preset", action="store_const", const="full", help="every case, more rounds")
    p.set_defaults(preset="quick")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per case (quick 15, full 41)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--contenders", nargs="+", default=list(harness.STANDARD_CONTENDERS))
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-<date>-<time>.json)")
    p.add_argument("-k", "--match", default=None, help="only cases whose name contains this text, e.g. 240x28x28")
    p.add_argument("--hot", action="store_true", help="one input set: inputs stay cache resident (default: rotate)")
    p.add_argument("--llc-mb", type=float, default=None, help="last-level cache size for input rotation (default: read from the machine)")
    p.add_argument("--retries", type=int, default=0, help="rerun a case flagged noisy or busy up to this many times")
    p.add_argument("--batch", type=int, nargs="+", default=None, metavar="N",
                   help="batch sizes (default: the preset's; quick N=8 on CPU / 64 on CUDA, full adds N=1)")
    p.add_argument("--backends", nargs="+", default=None, metavar="BACKEND", choices=["triton", "cuda"],
                   help="also time fastops under each of these CUDA backends (contenders fastops[triton], "
                   "fastops[cuda]); the plain fastops contender runs the 'auto' choice")
    p.add_argument("--model-layers", nargs="+", default=None, metavar="NETWORK",
                   help="time the op families on these networks' own layers (read off fastops.models, "
                   "e.g. mobilenet_v2 shufflenet_v1, or 'all': every network of bench/layers.py) "
                   "instead of the hand-picked ones")
    p.add_argument("--refresh-roofs", action="store_true", help="measure the matmul roof again (it is cached per machine)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots beside the results")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory call of each contender (CPU: one call under torch.profiler)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    return p.parse_args(argv)


def collect_cases(args) -> list[harness.Case]:
    quick = args.preset == "quick"
    dtypes = [harness.DTYPES[d] for d in args.dtype] if args.dtype else None
    wanted = args.ops or families()
    unknown = sorted(set(wanted) - set(families()))
    if unknown:
        sys.exit(f"unknown op family {unknown}; known: {families()}")
    cases = []
    for fam in wanted:
        module = importlib.import_module(f"bench.bench_{fam}")
        cases += module.cases(quick, args.device, dtypes, args.layout)
    cases = [c for c in cases if c.mode in args.mode]
    if args.match:
        cases = [c for c in cases if args.match in c.name]
    for c in cases:
        harness.backend_contenders(c, args.backends or [])
    return cases


def _summary(res: harness.CaseResult) -> str:
    parts = []
    for r in res.rows:
        parts.append(f"{r['contender']} {r['median_ms']:.4f} ms" if r.get("median_ms") is not None else f"{r['contender']} {r['status']}")
    flag = "  NOISY" if res.rows and res.rows[0].get("bandwidth_flag") else ""
    if res.other_load_cores is not None:
        flag += f"  others {res.other_load_cores:.2f} cores" + (" BUSY" if res.rows and res.rows[0].get("busy_flag") else "")
    return f"{' | '.join(parts)}  (K={res.input_sets} sets, inner={res.inner}){flag}"


def _report(args, argv, machine, settings, t_start, results, copy_start, copy_end, complete):
    """The JSON report of the cases run so far (`complete`: all of them)."""
    machine = dict(machine, copy_gbps_start=copy_start, copy_gbps_end=copy_end)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = [r for res in results for r in res.rows]
    return {
        "schema": 1,
        "complete": complete,
        "machine": machine,
        "settings": {
            "preset": args.preset,
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "target_sample_s": settings.target_s,
            "rotate_inputs": settings.rotate,
            "llc_bytes": settings.llc_bytes,
            "contenders": args.contenders,
            "argv": sys.argv[1:] if argv is None else list(argv),
            "notes": "times are per call; speedup_vs_X = median(X) / median(this contender); "
            "roof_fraction = max(bytes / mean(copy bandwidth just before and after the case), "
            "flops / matmul rate) / median time (roof_bound says which); "
            "unstable: IQR > 25% of the median, speedups against it left out; "
            "bandwidth_flag: that copy bandwidth fell below 75% of copy_gbps_start; "
            "other_load_cores: CPU time of other processes + steal per second while the case was timed; "
            "busy_flag: other_load_cores > 0.25",
        },
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "acceptance": harness.acceptance(results),
        "rows": rows,
    }


class _Progress:
    """A progress bar over the cases (rich's when it is installed, tqdm's otherwise, else none)
    with the per-case lines printed above it."""

    def __init__(self, total: int):
        self.total, self._rich, self._tqdm, self._task = total, None, None, None

    def __enter__(self):
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), transient=True)
            self._rich.__enter__()
            self._task = self._rich.add_task("cases", total=self.total)
        except ImportError:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=self.total, unit="case", leave=False)
            except ImportError:
                pass
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.__exit__(*exc)
        if self._tqdm is not None:
            self._tqdm.close()
        return False

    def log(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        elif self._tqdm is not None:
            self._tqdm.write(text)
        else:
            print(text, flush=True)

    def describe(self, text: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, description=text[:60])
        elif self._tqdm is not None:
            self._tqdm.set_description(text[:60])

    def advance(self) -> None:
        if self._rich is not None:
            self._rich.advance(self._task)
        elif self._tqdm is not None:
            self._tqdm.update(1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    t_start = time.perf_counter()
    # Threads and allocator first: every tensor after this is allocated under the held setting.
    harness.setup_machine(args.threads)

    settings = PRESETS[args.preset]
    if args.rounds:
        settings.rounds = args.rounds
    settings.rotate = not args.hot
    settings.memory = not args.no_memory
    settings.llc_bytes = int(args.llc_mb * 2**20) if args.llc_mb else harness.llc_bytes(args.device)

    harness.BATCH_SIZES = args.batch
    if args.model_layers == ["all"]:
        from bench.layers import NETWORKS

        args.model_layers = list(NETWORKS)
    harness.MODEL_LAYERS = args.model_layers
    cases = collect_cases(args)
    if args.list:
        for c in cases:
            print(c.name + (f"  [{c.label}]" if c.label else ""))
        return 0
    if not cases:
        sys.exit("no cases selected")
    # the fastops variants (fastops[<backend>], fastops.models) come with "fastops"
    extra = [n for c in cases for n in c.contenders if n.startswith(("fastops[", "fastops.")) and "fastops" in args.contenders]
    contenders = list(dict.fromkeys(args.contenders + extra))
    unknown = sorted(set(contenders) - {n for c in cases for n in c.contenders})
    if unknown:
        print(f"warning: no case has contender(s) {unknown}", file=sys.stderr)

    machine = harness.machine_info(args.device)
    alloc = machine["allocator"]
    fo = machine["fastops"]
    print(f"device {args.device} ({machine['device_name']}), {machine['threads']} threads, allocator: {alloc['setting']}")
    print(f"torch {machine['torch']}, triton {machine['triton']}, fastops "
          + (f"{fo.get('version')} (extension: {fo.get('has_extension', '?')})" if fo["importable"] else f"NOT importable: {fo['error']}"))
    print(f"{len(cases)} cases, preset {args.preset}: {settings.rounds} rounds, ~{settings.target_s * 1e3:g} ms per sample, "
          f"inputs {'rotated (LLC %d MB)' % (settings.llc_bytes >> 20) if settings.rotate else 'hot (one set)'}")

    # Copy bandwidth at the start, then between cases: the measurement after case i is the one
    # before case i+1.
    copy_start = harness.copy_bandwidth(args.device)
    roofs = harness.cached_roofs(args.device, sorted({c.dtype for c in cases}, key=str), refresh=args.refresh_roofs)
    machine["roofs"] = roofs
    rates = roofs["matmul_gflops"]
    print(f"copy bandwidth at start: {copy_start:.1f} GB/s; matmul "
          + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items()) + "\n")
    before = copy_start
    results = []
    if args.out:
        out = Path(args.out)
    else:
        out = BENCH_DIR / "results" / f"{args.device}-{datetime.datetime.now():%Y-%m-%d-%H%M%S}.json"
    with _Progress(len(cases)) as progress:
        for i, case in enumerate(cases, 1):
            progress.log(f"[{i}/{len(cases)}] {case.name}")
            progress.describe(case.name)
            for attempt in range(args.retries + 1):
                res = harness.run_case(case, settings, contenders, log=progress.log)
                after = harness.copy_bandwidth(args.device)
                harness.finish_rows(res, copy_start, before, after, rates.get(str(case.dtype).replace("torch.", "")))
                before = after
                flagged = res.rows and (res.rows[0].get("bandwidth_flag") or res.rows[0].get("busy_flag"))
                if not flagged or attempt == args.retries:
                    break
                progress.log(f"    {_summary(res)}\n    machine noisy or busy: retrying")
            results.append(res)
            progress.log(f"    {_summary(res)}")
            progress.advance()
            # written after every case ("complete": false), so that a run cut short keeps its results
            harness.write_json(out, _report(args, argv, machine, settings, t_start, results, copy_start, before, False))

    report = _report(args, argv, machine, settings, t_start, results, copy_start, before, complete=True)
    harness.write_json(out, report)
    harness.write_csv(out.with_suffix(".csv"), report)
    plots = [] if args.no_plots else importlib.import_module("bench.plots").write_plots(report, out)
    accept = report["acceptance"]

    n_noisy = sum(1 for r in results if r.rows and r.rows[0].get("bandwidth_flag"))
    n_busy = sum(1 for r in results if r.rows and r.rows[0].get("busy_flag"))
    print(f"\ncopy bandwidth: start {copy_start:.1f} GB/s, end {before:.1f} GB/s; of {len(results)} cases "
          f"{n_noisy} flagged NOISY (copy bw < 75% of start), {n_busy} BUSY (other processes > "
          f"{harness.BUSY_FLAG_CORES} cores while timing)")
    for a in accept:
        s = f"{a['speedup']:.2f}x" if a["speedup"] is not None else a["fastops_status"]
        print(f"acceptance: {a['case']}: fastops vs eager {s} -> {'PASS' if a['passed'] else 'FAIL'}"
              + ("" if a["conclusive"] else "  (INCONCLUSIVE: noisy/busy machine, rerun)"))
    n_unstable = sum(1 for r in report["rows"] if r.get("unstable"))
    if n_unstable:
        print(f"{n_unstable} timings had an IQR above {100 * harness.UNSTABLE_IQR_FRACTION:.0f}% of their median: "
              "their speedups are not claimed (marked 'unstable'); rerun on a quieter machine")
    print(f"results written to {out} and {out.with_suffix('.csv').name}"
          + (f", plots {', '.join(p.name for p in plots)}" if plots else "") + f" ({report['elapsed_s']} s)\n")
    harness.print_table(report["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
