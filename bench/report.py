"""Markdown tables from committed benchmark results; the README's benchmark section is made by it.

    python bench/report.py bench/results/cpu-....json [more.json ...]     # print the tables
    python bench/report.py --update-readme bench/results/cpu-....json      # rewrite README's section

One row per case: the median time of each contender, fastops' speedup over eager, torch.compile
and torch.compile with freezing (module cases' inference), the fraction of its roof fastops
reaches, and the peak memory of one call, fastops' and eager's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
BACKENDS = ("fastops[cuda]", "fastops[triton]")


def _ms(row):
    return f"{row['median_ms']:.3f}" if row and row.get("status") == "ok" else "—"


def table(path: str) -> str:
    with open(path) as f:
        report = json.load(f)
    m = report["machine"]
    cases: "OrderedDict[str, dict]" = OrderedDict()
    for row in report["rows"]:
        cases.setdefault(row["case"], {})[row["contender"]] = row
    # a GPU run's fastops under each backend (bench/run.py --backends): their times and speedups
    backends = [b for b in BACKENDS if any(row["contender"] == b for row in report["rows"])]
    extra_head = "".join(f" {b} ms | {b} vs eager |" for b in backends)
    head = (
        f"**{os.path.basename(path)}** — {m.get('device_name') or m.get('cpu_model')}, {m.get('threads')} threads, "
        f"torch {m.get('torch')}, copy bandwidth {m.get('copy_gbps_start', 0):.1f} GB/s, "
        f"allocator: {m.get('allocator', {}).get('setting', 'default')}, {m.get('date', '')[:10]}"
        + ("" if report.get("complete", True) else " (run cut short: the cases it finished)") + "\n\n"
        "| case | fastops ms | eager ms | compile ms | compile+freezing ms | vs eager | vs compile "
        "| vs compile+freezing | roof | peak MiB fastops / eager |" + extra_head + "\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(backends)
    )
    lines = [head]
    for name, rows in cases.items():
        f = rows.get("fastops")
        flags = []
        if any(r.get("busy_flag") or r.get("bandwidth_flag") for r in rows.values()):
            flags.append("noisy")
        ok = f and f.get("status") == "ok"

        def vs(other):
            x = f.get(f"speedup_vs_{other}") if ok else None
            return f"{x:.2f}×" if x else "—"

        roof = f"{100 * f['roof_fraction']:.0f}%" if ok and f.get("roof_fraction") else "—"
        mem = "—"
        if ok and f.get("peak_mem_mb") is not None and (rows.get("eager") or {}).get("peak_mem_mb") is not None:
            mem = f"{f['peak_mem_mb']:.3g} / {rows['eager']['peak_mem_mb']:.3g}"
        label = name + (f" ({', '.join(flags)})" if flags else "")
        times = " | ".join(_ms(rows.get(c)) for c in ("fastops", "eager", "compile", "compile+freezing"))
        extra = ""
        for b in backends:
            r = rows.get(b)
            x = r.get("speedup_vs_eager") if r and r.get("status") == "ok" else None
            extra += f" {_ms(r)} | {f'{x:.2f}×' if x else '—'} |"
        lines.append(f"| {label} | {times} | {vs('eager')} | {vs('compile')} | {vs('compile+freezing')} | {roof} | {mem} |"
                     + extra)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    text = "\n\n".join(table(r) for r in args.results)
    if not args.update_readme:
        print(text)
        return
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        content = f.read()
    block = f"{START}\n{text}\n{END}"
    if START in content:
        content = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, content, flags=re.S)
    else:
        content = content.replace("BENCHMARK_TABLE", block)
    with open(readme, "w") as f:
        f.write(content)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
