"""Markdown tables from committed benchmark results; the README's benchmark section is made by it.

    python bench/report.py bench/results/cpu-....json [more.json ...]     # print the tables
    python bench/report.py --update-readme bench/results/cpu-....json      # rewrite README's section

One row per case: the median time of each contender, fastops' speedup over eager and over
torch.compile, and the fraction of the machine's measured copy bandwidth fastops reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def _ms(row):
    return f"{row['median_ms']:.3f}" if row and row.get("status") == "ok" else "—"


def table(path: str) -> str:
    with open(path) as f:
        report = json.load(f)
    m = report["machine"]
    cases: "OrderedDict[str, dict]" = OrderedDict()
    for row in report["rows"]:
        cases.setdefault(row["case"], {})[row["contender"]] = row
    head = (
        f"**{os.path.basename(path)}** — {m.get('device_name') or m.get('cpu_model')}, {m.get('threads')} threads, "
        f"torch {m.get('torch')}, copy bandwidth {m.get('copy_gbps_start', 0):.1f} GB/s, "
        f"allocator: {m.get('allocator', {}).get('setting', 'default')}, {m.get('date', '')[:10]}\n\n"
        "| case | fastops ms | eager ms | compile ms | vs eager | vs compile | roof |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, rows in cases.items():
        f = rows.get("fastops")
        flags = []
        if any(r.get("busy_flag") or r.get("bandwidth_flag") for r in rows.values()):
            flags.append("noisy")
        ok = f and f.get("status") == "ok"
        se = f"{f['speedup_vs_eager']:.2f}×" if ok and f.get("speedup_vs_eager") else "—"
        sc = f"{f['speedup_vs_compile']:.2f}×" if ok and f.get("speedup_vs_compile") else "—"
        roof = f"{100 * f['roof_fraction']:.0f}%" if ok and f.get("roof_fraction") else "—"
        label = name + (f" ({', '.join(flags)})" if flags else "")
        lines.append(
            f"| {label} | {_ms(f)} | {_ms(rows.get('eager'))} | {_ms(rows.get('compile'))} | {se} | {sc} | {roof} |"
        )
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
