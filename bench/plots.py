"""Plots of a benchmark result file, written beside it as PNGs (matplotlib, no display needed):

    <stem>-speedup.png    fastops' speedup over eager, torch.compile and (inference of modules)
                          torch.compile with freezing, per op case
    <stem>-roof.png       the fraction of the roofline bound (bytes or flops) each contender reaches
    <stem>-networks.png   fastops' speedup per network (when the run had networks)

    python bench/plots.py bench/results/<file>.json     # plots for a committed run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fastops_rows(report: dict[str, Any], networks: bool) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if r["contender"] == "fastops" and (r.get("label") == "network") == networks
            and r.get("median_ms") is not None]


def _finish(plt, fig, ax, labels, line_at, xlabel: str, title: str, path: Path) -> None:
    """Label a horizontal bar chart (one bar group per label, top to bottom), mark x = line_at,
    and save it."""
    ax.axvline(line_at, color="black", linewidth=1)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SERIES = (("speedup_vs_eager", "vs eager", "tab:blue"),
          ("speedup_vs_compile", "vs torch.compile", "tab:orange"),
          ("speedup_vs_compile+freezing", "vs torch.compile + freezing", "tab:red"))


def _speedup_chart(plt, rows, title: str, path: Path) -> None:
    names = [r["case"] for r in rows]
    height = max(3.0, 0.28 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(11, height))
    ys = range(len(rows))
    series = [(key, label, color) for key, label, color in SERIES if any(r.get(key) for r in rows)]
    bar = 0.8 / max(1, len(series))
    for k, (key, label, color) in enumerate(series):
        vals = [r.get(key) or 0.0 for r in rows]
        ax.barh([y + (k - (len(series) - 1) / 2) * bar for y in ys], vals, height=bar, label=label, color=color)
    _finish(plt, fig, ax, names, 1.0, "speedup of fastops (ratio of medians; > 1: fastops faster; no bar: not compared)",
            title, path)


def _roof_chart(plt, report, title: str, path: Path) -> None:
    rows = [r for r in report["rows"] if r.get("roof_fraction") and r.get("label") != "network"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    by = {(r["case"], r["contender"]): r["roof_fraction"] for r in rows}
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.28 * len(cases) + 1.5)))
    bar = 0.8 / max(1, len(contenders))
    for k, c in enumerate(contenders):
        ax.barh([i + (k - (len(contenders) - 1) / 2) * bar for i in range(len(cases))],
                [100 * by.get((case, c), 0.0) for case in cases], height=bar, label=c)
    _finish(plt, fig, ax, cases, 100,
            "% of the roofline bound (bytes / copy bandwidth or flops / matmul rate, whichever is longer)", title, path)


def write_plots(report: dict[str, Any], json_path: str | Path) -> list[Path]:
    """Write the PNGs beside json_path; returns their paths ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install '.[bench]')", file=sys.stderr)
        return []
    json_path = Path(json_path)
    stem = json_path.with_suffix("")
    m = report["machine"]
    where = f"{m.get('device_name')}, {m.get('threads')} threads, {str(m.get('date'))[:10]}"
    out = []
    ops = _fastops_rows(report, networks=False)
    if ops:
        out.append(stem.with_name(stem.name + "-speedup.png"))
        _speedup_chart(plt, ops, f"fastops speedup per op case ({where})", out[-1])
        out.append(stem.with_name(stem.name + "-roof.png"))
        _roof_chart(plt, report, f"fraction of the roof per op case and contender ({where})", out[-1])
    nets = _fastops_rows(report, networks=True)
    if nets:
        out.append(stem.with_name(stem.name + "-networks.png"))
        _speedup_chart(plt, nets, f"fastops speedup per network ({where})", out[-1])
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit(__doc__)
    report = json.loads(Path(argv[0]).read_text())
    for p in write_plots(report, argv[0]):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
