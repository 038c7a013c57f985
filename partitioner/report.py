"""Human-readable output of a fitted partitioner: the summary table and the PNG.

Example:
    >>> import numpy as np
    >>> from partitioner import FeatureRepresentation, TowerPartitioner
    >>> w = np.array([[0, 9, 1, 0], [9, 0, 0, 1], [1, 0, 0, 9], [0, 1, 9, 0]], float)
    >>> tp = TowerPartitioner(2, random_state=0).fit(FeatureRepresentation(names=tuple("abcd"), affinity=w))
    >>> print(format_tower_table(tp))  # doctest: +NORMALIZE_WHITESPACE
    tower    host  #features  cost share  memory  intra-tower affinity  internal
    tower_0     0          2      50.0 %     0 B                45.0 %      90 %
    tower_1     0          2      50.0 %     0 B                45.0 %      90 %
    total       -          4     100.0 %     0 B                90.0 %         -
"""

from __future__ import annotations

import io
import os

import numpy as np

from partitioner.representation import FeatureRepresentation


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_tower_table(model) -> str:
    """One row per tower: host, #features, share of the lookup cost, memory, intra-tower affinity,
    the share of its features' affinity that stays inside, and its stability (when measured)."""
    loads = model.tower_loads_
    total = float(loads.sum()) or 1.0
    counts = np.bincount(model.labels_, minlength=len(loads))
    stability = model.tower_stability_
    head = ("tower", "host", "#features", "cost share", "memory", "intra-tower affinity", "internal")
    rows = [head + (("stability",) if stability is not None else ())]
    for t, tower in enumerate(model.plan_.towers):
        row = (
            tower.name,
            str(tower.host),
            str(counts[t]),
            f"{100 * loads[t] / total:.1f} %",
            human_bytes(model.tower_memory_[t]),
            f"{100 * model.tower_intra_affinity_[t]:.1f} %",
            f"{100 * model.tower_internal_share_[t]:.0f} %",
        )
        rows.append(row + ((f"{stability[t]:.2f}",) if stability is not None else ()))
    last = ("total", "-", str(counts.sum()), "100.0 %", human_bytes(model.tower_memory_.sum()))
    last += (f"{100 * model.intra_affinity_:.1f} %", "-")
    rows.append(last + (("-",) if stability is not None else ()))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    return "\n".join(lines)


def plot_partition(model, rep: FeatureRepresentation, path: str | os.PathLike[str], title: str = "") -> None:
    """PNG: the affinity matrix ordered by tower (boundaries drawn) and the per-tower load bars.

    Args:
        model: a fitted partitioner.
        rep: the representation it was fitted on (its affinity is drawn; vectors' kNN graph if none).
        path: output PNG, written atomically.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    from dmt import atomic_open

    fig, (ax_m, ax_b) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1.1, 1]})
    _draw_affinity(fig, ax_m, model, rep)
    _draw_loads(ax_b, model)
    num, k = len(model.labels_), len(model.tower_loads_)
    fig.suptitle(title or f"{model.plan_.method}: {num} features -> {k} towers on {model.plan_.num_hosts} hosts")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def _draw_affinity(fig, ax_m, model, rep: FeatureRepresentation) -> None:
    """Left panel: the affinity matrix, features ordered by tower, tower boundaries in white."""
    labels = model.labels_
    order = np.argsort(labels, kind="stable")
    num, k = len(labels), len(model.tower_loads_)
    graph = rep.affinity_graph()
    if num <= 2000:
        mat = graph.toarray()[np.ix_(order, order)]
        im = ax_m.imshow(mat, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax_m, fraction=0.046, pad=0.04, label="affinity")
    else:  # a dense image of 10^8 pixels is unreadable anyway: draw the links as points
        sub = graph[order][:, order].tocoo()
        ax_m.scatter(sub.col, sub.row, s=0.2, c=sub.data, cmap="viridis")
        ax_m.set_xlim(0, num)
        ax_m.set_ylim(num, 0)
    bounds = np.cumsum(np.bincount(labels, minlength=k))[:-1] - 0.5
    for b in bounds:
        ax_m.axhline(b, color="white", lw=1.2)
        ax_m.axvline(b, color="white", lw=1.2)
    if num <= 60:
        names = [model.features_[i] for i in order]
        ax_m.set_xticks(range(num), names, rotation=90, fontsize=7)
        ax_m.set_yticks(range(num), names, fontsize=7)
    ax_m.set_title(f"feature affinity ordered by tower ({k} towers; white lines = tower boundaries)")


def _draw_loads(ax_b, model) -> None:
    """Right panel: every tower's share of the lookup cost, coloured by host, with mean and cap."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels = model.labels_
    k = len(model.tower_loads_)
    share = model.tower_loads_ / max(float(model.tower_loads_.sum()), 1e-300)
    hosts = model.tower_hosts_
    colors = plt.get_cmap("tab10")(hosts % 10)
    ax_b.bar(range(k), 100 * share, color=colors)
    mean = 100.0 / model.num_towers
    ax_b.axhline(mean, color="black", ls="--", lw=1, label=f"mean {mean:.2f} %")
    cap = mean * model.max_imbalance_
    ax_b.axhline(
        cap,
        color="red",
        ls=":",
        lw=1,
        label=f"cap (1 + {model.balance_tolerance}) x best {model.best_imbalance_:.3f} x mean",
    )
    handles, _ = ax_b.get_legend_handles_labels()
    handles += [Patch(color=plt.get_cmap("tab10")(h % 10), label=f"host {h}") for h in np.unique(hosts)]
    for t, s in enumerate(share):
        if k <= 32:
            ax_b.text(t, 100 * s, f"{100 * s:.1f}", ha="center", va="bottom", fontsize=7)
    if k <= 32:
        ax_b.set_xticks(range(k), [f"t{t}\n{np.sum(labels == t)}f" for t in range(k)], fontsize=8)
    ax_b.set_xlabel("tower (t = tower, f = #features)")
    ax_b.set_ylabel("share of lookup cost (%)")
    ax_b.set_title(
        f"per-tower load: max/mean = {model.imbalance_:.3f}, intra-tower affinity = {100 * model.intra_affinity_:.1f} %"
    )
    ax_b.set_ylim(0, 1.12 * max(cap, 100 * float(share.max())))
    ax_b.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, fontsize=8)
