"""How much of a GPU case's time is the kernels: each contender's call captured in a CUDA graph and
the graph replayed, timed with CUDA events, beside the same call timed as bench/run.py does
(launched from Python, host included). Where the two differ, launches and Python layers cost
more than the GPU work.

    python bench/gpu_kernel_times.py --ops dwconv --dtype float16 --layout channels_last \\
        --backends triton cuda --mode fwd --out kernel-times.json

Takes bench/run.py's case options (--ops, --dtype, --layout, --mode, --batch, -k, --backends);
the contenders are fastops (under each backend given) and eager: torch.compile's own CUDA graphs
are its business. A contender whose call cannot be captured (a host sync inside) is reported as
such. On a CPU (no graphs) it times the calls alone: a dry run of the script.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch

from bench import harness, run as bench_run

WARMUP, REPS, ROUNDS = 3, 20, 7


def _events_ms(fn, reps: int) -> float:
    """Median over ROUNDS of the per-call time of `reps` back-to-back fn() calls, in ms (harness's
    timing: CUDA events around the calls on a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return statistics.median(harness._time_calls(lambda _: fn(), [None] * reps, device) * 1e3
                             for _ in range(ROUNDS))


def _graph_ms(call) -> float | str:
    """Per-replay time of `call` captured in a CUDA graph, or why it could not be captured."""
    if not torch.cuda.is_available():
        return "no CUDA"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture wants
        for _ in range(WARMUP):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            call()
    except Exception as e:  # a host sync or an unsupported call inside
        torch.cuda.synchronize()
        return f"not capturable: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return _events_ms(graph.replay, REPS)


def main(argv=None) -> int:
    args = bench_run.parse_args(argv)
    args.contenders = ["fastops", "eager"]
    cases = bench_run.collect_cases(args)
    if not cases:
        sys.exit("no cases selected")
    wanted = [n for n in ("eager", "fastops") if n in args.contenders]
    wanted += [f"fastops[{b}]" for b in (args.backends or [])]
    bw = harness.copy_bandwidth(args.device)
    print(f"device {args.device}, copy bandwidth {bw:.0f} GB/s, {len(cases)} cases")
    print(f"{'case':64s} {'contender':16s} {'called ms':>10s} {'graph ms':>10s} {'graph roof':>10s}")
    rows = []
    for case in cases:
        sample = case.make_inputs(0)
        for name in wanted:
            if name not in case.contenders:
                continue
            row = {"case": case.name, "contender": name}
            try:
                fn = case.contenders[name]()
                call = lambda: fn(sample)  # noqa: E731
                for _ in range(WARMUP):
                    call()
                row["called_ms"] = _events_ms(call, REPS)
                row["graph_ms"] = _graph_ms(call)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            g = row.get("graph_ms")
            if isinstance(g, float) and case.bytes_moved:
                row["graph_roof_fraction"] = case.bytes_moved / (bw * 1e9) / (g / 1e3)
            rows.append(row)
            called = f"{row['called_ms']:.4f}" if "called_ms" in row else "-"
            graph = f"{g:.4f}" if isinstance(g, float) else "-"
            roof = f"{100 * row['graph_roof_fraction']:.0f}%" if "graph_roof_fraction" in row else ""
            note = row.get("error") or (g if isinstance(g, str) else "")
            print(f"{case.name[:64]:64s} {name:16s} {called:>10s} {graph:>10s} {roof:>10s} {note}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"copy_gbps": bw, "machine": harness.machine_info(args.device),
                                                  "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
