"""AUC of flat DLRM vs DMT for each tower module and compression ratio, on planted and random towers.

Each configuration is one ``dmt train`` run on the same data, seed and budget (sharded over
``--hosts`` x ``--ranks-per-host`` emulated hosts, which trains exactly like one process on the
global batch but faster). Prints a markdown table, writes ``<out>/results.json``,
``<out>/sweep.md`` and ``<out>/sweep.png`` (AUC vs c per module, planted vs random towers).

    python benchmarks/sweep_tower_modules.py --data rows.tsv --planted planted.json \
        --random random.json --out runs/sweep

``planted.json`` / ``random.json`` are TowerPlans (``dmt partition --method tp`` / ``--method
random``, or a plan written from the generator's truth groups).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from dmt.atomic import atomic_write_text

MODULES = {"linear": "", "dot": "", "dcn": "", "mlp": "64"}


def run_one(args: argparse.Namespace, name: str, extra: list[str]) -> dict:
    out = Path(args.out) / name
    metrics = out / "metrics.json"
    if not metrics.exists():  # resumable: a finished configuration is not run again
        cmd = [
            sys.executable,
            "-m",
            "dmt.cli",
            "train",
            "--data",
            args.data,
            "--out",
            str(out),
            "--hosts",
            str(args.hosts),
            "--ranks-per-host",
            str(args.ranks_per_host),
            "--batch-size",
            str(args.batch_size),
            "--seed",
            str(args.seed),
            "--no-progress",
            *extra,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    m = json.loads(metrics.read_text())
    return {
        "name": name,
        "auc": m["auc"],
        "logloss": m["logloss"],
        "cross_host_bytes_per_sample": m["cross_host_bytes_per_sample"],
    }


def configurations(args: argparse.Namespace) -> list[tuple[str, dict, list[str]]]:
    configs = [("flat", {"towers": "-", "module": "flat", "c": 1.0}, [])]
    for towers, plan in (("planted", args.planted), ("random", args.random)):
        configs.append((f"{towers}_identity", {"towers": towers, "module": "identity", "c": 1.0}, ["--plan", plan]))
        for module in args.modules:
            hidden = MODULES[module]
            for c in args.compressions:
                extra = ["--plan", plan, "--tower-module", module, "--tower-compression", str(c)]
                extra += ["--tower-hidden", hidden] if hidden else []
                configs.append((f"{towers}_{module}_c{c:g}", {"towers": towers, "module": module, "c": c}, extra))
    return configs


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = next(r["auc"] for r in rows if r["module"] == "flat")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, towers in zip(axes, ("planted", "random")):
        for module in MODULES:
            pts = sorted((r["c"], r["auc"]) for r in rows if r["towers"] == towers and r["module"] == module)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=module)
        ax.axhline(flat, color="black", linestyle="--", label="flat DLRM")
        ident = [r["auc"] for r in rows if r["towers"] == towers and r["module"] == "identity"]
        if ident:
            ax.axhline(ident[0], color="grey", linestyle=":", label="identity towers")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression ratio c")
        ax.set_title(f"{towers} towers")
    axes[0].set_ylabel("eval AUC")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--planted", required=True, help="TowerPlan of the planted groups (or TP's)")
    p.add_argument("--random", required=True, help="TowerPlan of random towers")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--compressions", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--modules", nargs="+", default=list(MODULES), choices=list(MODULES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for name, info, extra in tqdm(configurations(args), desc="sweep", unit="run"):
        rows.append({**info, **run_one(args, name, extra)})
    out = Path(args.out)
    table = ["| towers | module | c | AUC | log loss | cross-host B/sample |", "|---|---|---|---|---|---|"]
    table += [
        f"| {r['towers']} | {r['module']} | {r['c']:g} | {r['auc']:.4f} | {r['logloss']:.4f} | "
        f"{r['cross_host_bytes_per_sample']:,.0f} |"
        for r in rows
    ]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    atomic_write_text(out / "sweep.md", "\n".join(table) + "\n")
    plot(rows, out / "sweep.png")
    print("\n".join(table))
    print(f"\nwrote {out / 'sweep.md'}, {out / 'sweep.png'}")


if __name__ == "__main__":
    main()
