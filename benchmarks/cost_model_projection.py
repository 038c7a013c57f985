"""The cost model's projection to clusters we cannot rent: best DMT vs best flat on 16-512 GPUs.

Split from benchmarks/cost_model_report.py (which fits the constants and calls this): the H100
projection preset takes the 4x H200 box's fitted machine constants, and ``--write-presets`` writes
every fitted cluster and that preset.
"""

from __future__ import annotations

import dataclasses
import json
import os

from dmt.atomic import atomic_open, atomic_write_text
from dmt.perf.calibration import Fit
from dmt.perf.cost_model import CLUSTER_DIR, cluster_to_dict, load_cluster


def h100_projection(fits: list[Fit]):
    """The H100 projection preset with the 4x H200 box's fitted machine (the current code, hosts of
    2 GPUs) and NVLink efficiency."""
    gpu = fits[1].clusters["h200x4-2x2-nvlink"]
    h100 = load_cluster("h100-nvlink-400g")
    machine = dataclasses.replace(
        gpu.machine, name=h100.machine.name, memory_gbytes_per_s=h100.machine.memory_gbytes_per_s
    )
    intra = dataclasses.replace(h100.intra_host, efficiency=gpu.inter_host.efficiency)  # NVLink, measured
    return dataclasses.replace(h100, machine=machine, intra_host=intra)


def write_presets(fits: list[Fit]) -> None:
    """Fitted clusters into their preset files; :func:`h100_projection` into the H100 projection preset."""
    for fit in fits:
        for name, topo in fit.clusters.items():
            atomic_write_text(CLUSTER_DIR / f"{name}.json", json.dumps(cluster_to_dict(topo), indent=2) + "\n")
    h100 = h100_projection(fits)
    atomic_write_text(CLUSTER_DIR / "h100-nvlink-400g.json", json.dumps(cluster_to_dict(h100), indent=2) + "\n")


PROJECTION_GPUS = (16, 32, 64, 128, 256, 512)


def projection_text(fits: list[Fit], out: str, *, socket_link: str) -> str:
    """Best DMT vs best flat baseline on 16-512 GPUs of 8-GPU hosts, with the fitted constants, for the
    400G RDMA preset and for the same hosts joined by the socket link of the fitted cluster
    ``socket_link`` (the hierarchical box's); a PNG too."""
    from dmt.perf.cost_model import ModelShape
    from dmt.perf.planning import projection

    h100 = h100_projection(fits)
    sockets = dataclasses.replace(
        h100, name="h100 hosts, sockets between", inter_host=fits[1].clusters[socket_link].inter_host
    )
    models = {
        "26 x 200k x 128 (dmt bench)": ModelShape(num_embeddings=200_000, embedding_dim=128),
        "64 x 200k x 128": ModelShape(num_tables=64, num_embeddings=200_000, embedding_dim=128),
    }
    lines = [
        "# Projected DMT speed-up over the best flat baseline (fitted constants)",
        "",
        "Best DMT (towers H or 2H, row-wise or whole tables inside a host: exact under row-wise Adagrad, "
        "c <= 4) over the best of flat table-wise, table-row-wise, row-wise and 2D, fp32, batch 8192 "
        "per GPU, 8 GPUs per host (`dmt.perf.planning.projection`). `-`: DMT needs a table per host.",
        "",
        "| model | cluster | " + " | ".join(f"{g} GPUs" for g in PROJECTION_GPUS) + " |",
        "|---|---|" + "---:|" * len(PROJECTION_GPUS),
    ]
    curves = {}
    for mname, model in models.items():
        for topo in (h100, sockets):
            points = projection(model, topo, 8192, PROJECTION_GPUS)
            curves[f"{mname}, {topo.name}"] = points
            cells = ["-" if s is None else f"{s:.2f}x" for _, s, _ in points]
            lines.append(f"| {mname} | {topo.name} | " + " | ".join(cells) + " |")
    best = max(((s, g, k) for k, pts in curves.items() for g, s, _ in pts if s is not None), default=None)
    if best is not None:
        lines += ["", f"Highest: {best[0]:.2f}x ({best[2]}, {best[1]} GPUs); the paper reports up to 1.9x."]
    _plot_projection(curves, os.path.join(out, "projection_vs_best_flat.png"))
    return "\n".join(lines) + "\n"


def _plot_projection(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves.items():
        pts = [(g, s) for g, s, _ in points if s is not None]
        ax.plot([g for g, _ in pts], [s for _, s in pts], "o-", label=label)
    ax.axhline(1.9, color="0.5", ls="--", lw=0.8, label="DMT paper: up to 1.9x")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="GPUs (8 per host)", ylabel="best DMT / best flat (fp32)")
    ax.minorticks_off()  # log-axis minor labels would overprint the GPU counts
    ax.set_xticks(list(PROJECTION_GPUS), [str(g) for g in PROJECTION_GPUS])
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
