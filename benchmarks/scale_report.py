"""The whole job against its model's speed: `dmt train` stages and samples/s next to `dmt bench`.

Reads the run directories' metrics.json (or copies of them) and the bench JSONs that
``benchmarks/gpu_suite.sh scale_train`` writes, and prints one markdown table:

    python -m benchmarks.scale_report benchmarks/results/gpu_h200x2_scale

Run names are ``scale_<flat|dmt>_b<batch>``; bench files ``scale_bench_b<batch>.json`` (variants
"flat" and "dmt": the same model, batch and link as the training runs).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STAGES = ("start", "data", "build", "train", "eval", "profile", "other", "total")  # profile: --profile runs only


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json" if path.is_dir() else path).read_text())


def rows(directory: Path) -> list[dict]:
    """One row per training run found in ``directory``, with its bench rate when there is one."""
    out = []
    for path in sorted(directory.glob("scale_*_b*")):
        match = re.fullmatch(r"scale_(flat|dmt)_b(\d+)(?:\.json)?", path.name)
        if not match:
            continue
        name, batch = match.group(1), int(match.group(2))
        m = _metrics(path)
        bench_file = directory / f"scale_bench_b{batch}.json"
        bench = json.loads(bench_file.read_text())["variants"].get(name) if bench_file.exists() else None
        out.append({"name": name, "batch": batch, "m": m, "bench": bench and bench["samples_per_s"]})
    return out


def table(found: list[dict]) -> str:
    profiled = any("profile" in r["m"]["stage_seconds"] for r in found)
    stages = [s for s in STAGES if s != "profile" or profiled]
    head = "| run | batch/GPU | steps | " + " | ".join(f"{s} s" for s in stages)
    head += " | data share | samples/s | bench samples/s | job / bench | AUC (best) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in found:
        m, st = r["m"], r["m"]["stage_seconds"]
        ratio = f"{m['samples_per_s'] / r['bench']:.2f}x" if r["bench"] else "-"
        bench = f"{r['bench']:,.0f}" if r["bench"] else "-"
        lines.append(
            f"| {r['name']} | {r['batch']} | {m['steps']:,} | "
            + " | ".join(f"{st.get(s, 0.0):.1f}" for s in stages)
            + f" | {st['data'] / st['total']:.1%} | {m['samples_per_s']:,.0f} | {bench} | {ratio} | "
            f"{m['auc']:.4f} ({m['best']['auc']:.4f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    args = p.parse_args()
    found = rows(args.directory)
    if not found:
        raise SystemExit(f"no scale_<flat|dmt>_b<batch> runs in {args.directory}")
    print(table(found))


if __name__ == "__main__":
    main()
