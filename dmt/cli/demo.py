"""`dmt demo`: the main job end to end on generated data, no download needed.

generate Criteo-format rows with planted feature groups (once) -> partition the features into towers
from a briefly trained probe model -> train the flat DLRM and DMT (those towers, linear tower
modules with compression c) on 2 emulated hosts x 2 ranks -> print the comparison and write a report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmt.errors import DmtError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate data, partition, train flat vs DMT on emulated hosts (the main job)",
        description="Generate synthetic Criteo-format data if absent, partition its features into "
        "towers, train the flat DLRM and DMT on --hosts x --ranks-per-host emulated hosts, print AUC, "
        "log loss, cross-host bytes and throughput side by side, and write a report with plots.",
    )
    p.add_argument("--workdir", default="runs/demo", help="where data and results go (runs/demo)")
    p.add_argument("--rows", type=int, default=300_000, help="generated rows (300000)")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="per rank (128)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--towers", type=int, default=4, help="towers for DMT (4)")
    p.add_argument("--compression", type=float, default=4.0, help="tower output compression c (4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _run_dmt(argv: list[str]) -> None:
    from dmt.cli import main  # cli imports this module

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
        _run_dmt(
            ["gen-data", "--rows", str(args.rows), "--out", str(data), "--truth", str(truth), "--seed", str(args.seed)]
        )
    plan = work / "plan.json"
    print(f"[demo] partitioning {args.towers} towers over {args.hosts} hosts -> {plan}")
    _run_dmt(
        [
            "partition",
            "--data",
            str(data),
            "--num-towers",
            str(args.towers),
            "--hosts",
            str(args.hosts),
            "--out",
            str(plan),
            "--truth",
            str(truth),
            "--plot",
            str(work / "towers.png"),
            "--seed",
            str(args.seed),
        ]
    )
    common = [
        "--data",
        str(data),
        "--model",
        "dlrm",
        "--hosts",
        str(args.hosts),
        "--ranks-per-host",
        str(args.ranks_per_host),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--eval-every",
        "200",
    ]
    runs = {
        "flat DLRM": (work / "flat", []),
        f"DMT (TP towers, linear c={args.compression:g})": (
            work / "dmt",
            ["--plan", str(plan), "--tower-module", "linear", "--compression", str(args.compression)],
        ),
    }
    for name, (out, extra) in runs.items():
        print(f"[demo] training {name} on {args.hosts} hosts x {args.ranks_per_host} ranks -> {out}")
        _run_dmt(["train", *common, "--out", str(out), *extra])
    from dmt.train.report import results_table, write_report

    metrics = {name: json.loads((out / "metrics.json").read_text()) for name, (out, _) in runs.items()}
    report = write_report(metrics, work / "report", title="DMT demo: flat DLRM vs DMT on generated data")
    print()
    print(results_table(metrics))
    print(f"\n[demo] report: {report} (plots beside it); tower plot: {work / 'towers.png'}")
    return 0
