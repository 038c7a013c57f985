"""Side-by-side report of training runs: a markdown page with plots, written atomically.

Input: ``{run name: metrics.json dict}`` as ``dmt train`` writes them. Output: ``report.md`` plus
``curves.png`` (training loss and evaluation AUC per step), ``bytes.png`` (bytes per sample by
collective, cross-host vs intra-host) and, for DMT runs, ``towers.png`` (load per tower and host).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from dmt.atomic import atomic_open, atomic_write_text


def results_table(runs: dict[str, dict]) -> str:
    """Markdown table of the headline figures of each run, with DMT/flat ratios against the first run."""
    base = next(iter(runs.values()))
    rows = [
        "| run | AUC | best AUC (step) | log loss | NE | steps | samples/s | cross-host B/sample "
        "| intra-host B/sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in runs.items():
        cross = m.get("cross_host_bytes_per_sample", 0.0)
        ratio = (
            f" ({cross / base['cross_host_bytes_per_sample']:.2f}x)"
            if base.get("cross_host_bytes_per_sample") and m is not base
            else ""
        )
        rows.append(
            f"| {name} | {m['auc']:.4f} | {_best(m)} | {m['logloss']:.4f} | {m['ne']:.4f} | {m['steps']} "
            f"| {m['samples_per_s']:,.0f} | {cross:,.0f}{ratio} | {m.get('intra_host_bytes_per_sample', 0.0):,.0f} |"
        )
    return "\n".join(rows)


def _best(m: dict) -> str:
    best = m.get("best")  # metrics.json of older runs has none
    return f"{best['auc']:.4f} ({best['step']})" if best else "-"


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def _smooth(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window or window < 2:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def plot_curves(runs: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt  # plotting only when reporting

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in runs.items():
        window = max(1, len(m["losses"]) // 50)
        smooth = _smooth(m["losses"], window)
        ax_loss.plot(np.arange(len(smooth)) + window, smooth, label=name)
        ax_auc.plot([e["step"] for e in m["evals"]], [e["auc"] for e in m["evals"]], marker="o", label=name)
    ax_loss.set(title="training loss (moving average)", xlabel="step", ylabel="log loss")
    ax_auc.set(title="evaluation AUC", xlabel="step", ylabel="AUC")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_bytes(runs: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 4, 4))
    x = np.arange(len(names))
    kinds = sorted({k for m in runs.values() for k in m.get("comm_bytes_per_sample", {})})
    bottom_cross, bottom_intra = np.zeros(len(names)), np.zeros(len(names))
    colors = plt.colormaps["tab20"](np.linspace(0, 1, max(len(kinds), 1)))
    for kind, color in zip(kinds, colors):
        cross = np.array([runs[n].get("comm_bytes_per_sample", {}).get(kind, {}).get("cross_host", 0.0) for n in names])
        intra = np.array([runs[n].get("comm_bytes_per_sample", {}).get(kind, {}).get("intra_host", 0.0) for n in names])
        if cross.any():
            ax.bar(x - 0.2, cross, 0.38, bottom=bottom_cross, color=color, label=kind)
        if intra.any():
            ax.bar(
                x + 0.2, intra, 0.38, bottom=bottom_intra, color=color, hatch="//", label=None if cross.any() else kind
            )
        bottom_cross += cross
        bottom_intra += intra
    ax.set_xticks(x, [f"{n}\ncross | intra" for n in names])
    ax.set(title="bytes per sample by collective (solid: cross-host, hatched: intra-host)", ylabel="bytes / sample")
    if ax.get_legend_handles_labels()[0]:  # runs without counted bytes draw no bars
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    plt.close(fig)


def plot_towers(plan: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    towers = plan["towers"]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(towers) + 2), 3.5))
    hosts = sorted({t["host"] for t in towers})
    colors = plt.colormaps["tab10"](np.arange(len(hosts)) % 10)
    loads = [t.get("cost") or len(t["features"]) for t in towers]
    ax.bar([t["name"] for t in towers], loads, color=[colors[hosts.index(t["host"])] for t in towers])
    for host, color in zip(hosts, colors):
        ax.bar([], [], color=color, label=f"host {host}")
    unit = "cost" if any(t.get("cost") for t in towers) else "features"
    ax.set(title=f"tower loads ({plan.get('method', '?')} plan)", ylabel=unit)
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def write_report(
    runs: dict[str, dict], out_dir: str | os.PathLike, title: str = "DMT vs flat", notes: tuple[str, ...] = ()
) -> Path:
    """Write report.md and its plots into ``out_dir``; returns the report's path. ``notes``:
    paragraphs printed under the table (e.g. how large the seed noise is)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out / "curves.png")
    plot_bytes(runs, out / "bytes.png")
    lines = [
        f"# {title}",
        "",
        results_table(runs),
        "",
        *(line for note in notes for line in (note, "")),
        "![loss and AUC](curves.png)",
        "",
        "![bytes per sample](bytes.png)",
        "",
    ]
    for name, m in runs.items():
        towers = (m.get("config") or {}).get("towers")
        if towers:
            png = f"towers_{name.replace(' ', '_').replace('/', '_')}.png"
            plot_towers(towers["plan"], out / png)
            module = towers["module"]
            lines += [
                f"## {name}: {len(towers['plan']['towers'])} towers, module {module['kind']} "
                f"(c={module['compression']:g})",
                "",
                f"![tower loads]({png})",
                "",
            ]
    lines += [
        "Bytes are logical bytes per training sample summed over ranks (dmt.perf.comm_counter); cross-host ratios "
        "are against the first run.",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
