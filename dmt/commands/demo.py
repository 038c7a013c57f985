"""`dmt demo`: the main job end to end on generated data, no download needed.

generate Criteo-format rows with planted feature groups (once) -> train the flat DLRM sharded over
2 emulated hosts x 2 ranks -> print the results table and where the outputs are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmt.errors import DmtError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate data and train on emulated hosts (the main job)",
        description="Generate synthetic Criteo-format data if absent, train the flat DLRM on "
        "--hosts x --ranks-per-host emulated hosts, and print AUC / log loss / throughput.",
    )
    p.add_argument("--workdir", default="runs/demo", help="where data and results go (runs/demo)")
    p.add_argument("--rows", type=int, default=300_000, help="generated rows (300000)")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256, help="per rank (256)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _run_dmt(argv: list[str]) -> None:
    from dmt.cli import main  # noqa: PLC0415 (cli imports this module)

    rc = main(argv)
    if rc != 0:
        raise DmtError(f"`dmt {' '.join(argv)}` failed with exit code {rc}")


def run(args: argparse.Namespace) -> int:
    if args.rows < 1000:
        raise DmtError(f"--rows={args.rows} is too small for a demo; use at least 1000")
    work = Path(args.workdir)
    data, truth = work / "data" / "synthetic.tsv", work / "data" / "truth.json"
    if data.is_file() and truth.is_file():
        print(f"[demo] using existing data {data}")
    else:
        print(f"[demo] generating {args.rows:,} rows -> {data}")
        _run_dmt(["gen-data", "--rows", str(args.rows), "--out", str(data), "--truth", str(truth),
                  "--seed", str(args.seed)])
    runs = {"flat DLRM": work / "flat"}
    for name, out in runs.items():
        print(f"[demo] training {name} on {args.hosts} hosts x {args.ranks_per_host} ranks -> {out}")
        _run_dmt(["train", "--data", str(data), "--out", str(out), "--model", "dlrm",
                  "--hosts", str(args.hosts), "--ranks-per-host", str(args.ranks_per_host),
                  "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                  "--seed", str(args.seed), "--eval-every", "200"])
    print()
    print(results_table({name: json.loads((out / "metrics.json").read_text()) for name, out in runs.items()}))
    print(f"\n[demo] metrics: {', '.join(str(out / 'metrics.json') for out in runs.values())}")
    return 0


def results_table(results: dict[str, dict]) -> str:
    """Markdown table of the headline metrics of each run."""
    rows = ["| model | AUC | log loss | NE | steps | samples/s |", "|---|---|---|---|---|---|"]
    for name, m in results.items():
        rows.append(f"| {name} | {m['auc']:.4f} | {m['logloss']:.4f} | {m['ne']:.4f} | {m['steps']} "
                    f"| {m['samples_per_s']:,.0f} |")
    return "\n".join(rows)
