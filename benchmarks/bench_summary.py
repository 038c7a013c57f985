"""One markdown table of many ``dmt bench --out`` JSONs: median step ms per variant and DMT/flat ratios.

    python -m benchmarks.bench_summary benchmarks/results/gpu_h200x4/bench_*.json

Each row is one invocation (variants side by side on the same batches); ratios are within the
row, never across invocations (the same configuration varies by up to 30% between invocations
on the sockets link).
"""

from __future__ import annotations

import argparse
import json
import os

VARIANTS = ("flat", "dmt", "stock", "dmt+comm", "flat+comm")


def row(path: str) -> str:
    with open(path) as f:
        report = json.load(f)
    cfg, v = report["config"], report["variants"]
    ms = {k: v[k]["step_ms"]["median"] for k in VARIANTS if k in v}
    link = "sockets" if "slow-link" in cfg["link"] else "NVLink"
    towers = len(cfg["plan"]["towers"])
    inside = " cw" if cfg.get("tower_sharding") == "table_column_wise" else ""
    cells = [f"{ms[k]:.2f}" if k in ms else "-" for k in VARIANTS]
    flat = ms["flat"]
    ratio = [f"{ms[k] / flat:.3f}x" if k in ms else "-" for k in ("dmt", "stock", "dmt+comm")]
    cross = v["dmt"]["cross_host_bytes_per_sample"] / v["flat"]["cross_host_bytes_per_sample"]
    name = os.path.basename(path)
    return (
        f"| {name} | {report['hosts']}x{report['ranks_per_host']} | {link} | {towers}{inside} | "
        + " | ".join(cells)
        + " | "
        + " | ".join(ratio)
        + f" | {cross:.3f}x |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="dmt bench JSONs")
    args = ap.parse_args(argv)
    print(
        "| run | hosts x GPUs | link | towers | "
        + " | ".join(f"{k} ms" for k in VARIANTS)
        + " | dmt/flat | stock/flat | (dmt+comm)/flat | cross-host bytes dmt/flat |"
    )
    print("|---|---|---|---|" + "---:|" * (len(VARIANTS) + 4))
    for path in args.paths:
        print(row(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
