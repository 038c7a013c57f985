"""``dmt plan-cluster``: predicted flat vs DMT step time on a cluster, and a recommendation.

    dmt plan-cluster --cluster h100-nvlink-400g --hosts 8 --embedding-dim 128 --batch-size 8192 \
        --plot speedup.png --report plan_cluster.md

Sweeps the flat baselines (table-wise, table-row-wise "twrw", row-wise "rw", 2D) and DMT's towers
(H and 2H), intra-host sharding (row-wise, column-wise "cw", whole tables "tw"), tower compression
c in {1, 2, 4, 8}, each under codec {fp32, fp16, lossy8}, through :mod:`dmt.perf.cost_model`
(:mod:`dmt.perf.planning`); prints one row per configuration (predicted step ms, cross-host bytes
per sample, speed-up vs the best flat baseline at the same codec), recommends the fastest, says
whether DMT is worth it (flat or DMT, :func:`dmt.perf.planning.choose_layout`), and optionally
plots the projected DMT speed-up against GPU count (8..512) with a markdown report of the assumptions.
"""

from __future__ import annotations

import argparse
import os

from dmt.cli.args import POSITIVE_FLOAT, POSITIVE_INT
from dmt.cli.outputs import check_output_file
from dmt.errors import DmtError
from dmt.perf.planning import COMPRESSIONS, INTRA, MAX_RECOMMENDED_COMPRESSION, Row, choose_layout, recommend
from dmt.perf.planning import projection as planning_projection
from dmt.perf.planning import sweep as planning_sweep

__all__ = ["COMPRESSIONS", "INTRA", "MAX_RECOMMENDED_COMPRESSION", "projection", "recommend", "sweep"]

GPU_COUNTS = (8, 16, 32, 64, 128, 256, 512)
PAPER_RANGE = "up to 1.9x at 16-512 GPUs (DMT paper, MLSys'24; the 1.9x reportedly on 64 H100)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan-cluster",
        help="predict flat vs DMT step time on a cluster and recommend towers/c/codec",
        description="Sweep towers, tower compression and codec through the calibrated cost model "
        "(dmt.perf.cost_model) for a cluster preset or JSON, print predicted step time, cross-host bytes "
        "per sample and speed-up vs flat, and recommend one configuration.",
    )
    p.add_argument(
        "--cluster",
        "--topology",
        dest="cluster",
        default="h100-nvlink-400g",
        help="preset name (dmt/perf/clusters/*.json) or a JSON path (h100-nvlink-400g; --topology is the old spelling)",
    )
    p.add_argument("--hosts", type=POSITIVE_INT, help="override the cluster's host count")
    p.add_argument("--num-tables", type=POSITIVE_INT, default=26, help="sparse features, one table each (26)")
    p.add_argument("--num-embeddings", type=POSITIVE_INT, default=100_000, help="rows per table (100000)")
    p.add_argument("--embedding-dim", type=POSITIVE_INT, default=64, help="(64)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8192, help="per GPU (8192)")
    p.add_argument("--pooling", type=POSITIVE_FLOAT, default=1.0, help="ids per sample and feature (1)")
    p.add_argument("--plot", help="PNG of projected DMT speed-up vs GPU count (8..512)")
    p.add_argument("--report", help="markdown report: table, recommendation, projection, assumptions")
    p.set_defaults(func=run_command)


def sweep(model, topo, batch_size: int) -> list[Row]:
    """Flat baselines and DMT configurations, each against the best flat baseline at its codec
    (:func:`dmt.perf.planning.sweep`)."""
    return planning_sweep(model, topo, batch_size)


def format_table(rows: list[Row], pick: Row) -> str:
    lines = [
        "| configuration | step ms | cross-host B/sample | speed-up vs best flat (same codec) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        mark = " **<- recommended**" if r is pick else ""
        lines.append(f"| {r.setup.label()}{mark} | {r.step_ms:.2f} | {r.cross_bytes:,.0f} | {r.speedup:.2f}x |")
    return "\n".join(lines)


def projection(model, topo, batch_size: int) -> list[tuple[int, float | None, str]]:
    """Best DMT speed-up vs the best flat baseline (fp32, row-wise Adagrad's exact shardings) per
    GPU count (hosts = GPUs / GPUs per host); None if infeasible."""
    return planning_projection(model, topo, batch_size, GPU_COUNTS)


def plot_projection(points, topo, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmt.atomic import atomic_open

    xs = [g for g, s, _ in points if s is not None]
    ys = [s for _, s, _ in points if s is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(xs, ys, "o-", label=f"dmt.perf.cost_model, best DMT config ({topo.name})")
    ax.axhspan(1.0, 1.9, color="0.9", label="DMT paper: up to 1.9x (16-512 GPUs)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(
        xscale="log",
        xticks=list(GPU_COUNTS),
        xlabel="GPUs",
        ylabel="speed-up vs flat (fp32)",
        title="Projected DMT speed-up",
    )
    ax.set_xticklabels([str(g) for g in GPU_COUNTS])
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def assumptions(topo, model, batch_size: int) -> list[str]:
    m, a, e = topo.machine, topo.intra_host, topo.inter_host
    return [
        f"cluster {topo.name}: {topo.hosts} hosts x {topo.gpus_per_host} GPUs; {topo.description}",
        f"machine {m.name}: {m.effective_tflops:g} effective TFLOP/s, HBM {m.memory_gbytes_per_s:g} GB/s, "
        f"step overhead {m.step_overhead_ms:.2f} ms, overlap {m.overlap:.2f}, codec {m.codec_ms:.2f} ms/collective, "
        f"DMT tower path {m.tower_path_ms:+.2f} ms + {m.tower_ms:.2f} ms per tower on a host "
        f"+ {m.intra_lookup_ms:.2f} ms for an intra-host sharded lookup (hosts of several GPUs)",
        f"intra-host link {a.gbytes_per_s:g} GB/s per {a.per} x efficiency {a.efficiency:.2f}, alpha "
        f"{a.latency_us:g} us + {a.latency_per_peer_us:g} us/peer; inter-host {e.gbytes_per_s:g} GB/s per {e.per} "
        f"x efficiency {e.efficiency:.2f}, alpha {e.latency_us:g} us + {e.latency_per_peer_us:g} us/peer",
        f"model: {model.num_tables} tables x D={model.embedding_dim}, pooling {model.pooling:g}, dense arch "
        f"{list(model.dense_arch)}, over arch {list(model.over_arch)}, batch {batch_size} per GPU (weak scaling)",
        "flat baselines: table-wise, table-row-wise, row-wise over the world and 2D (torchrec's DMPCollection: "
        "table-wise over one rank per host, replicas synced over the host every step), bytes of "
        "dmt.perf.comm_model; speed-ups are against the fastest at the same codec; table-wise lookups "
        "assumed balanced (idle ranks when tables < GPUs are not penalised: favours flat)",
        "DMT: contiguous towers round-robin on hosts, row-, column-wise (cw) or whole (tw) tables inside a "
        "host (tw: the busiest GPU's share of the host's tables sets its lookup and exchange time), linear "
        "tower modules, dot global interaction; codecs compress the cross-host tower exchange only; the "
        "flat-or-DMT choice and the projection use row-wise Adagrad's exact shardings (not cw) and c <= 4",
        "non-blocking inter-host fabric; all-reduce bytes are dmt.perf.comm_counter's direct-exchange upper bound",
        "constants: calibrated on a 4x H200 box as 2 emulated hosts x 1 and x 2 GPUs (benchmarks/results/"
        "gpu_h200x4); the 400G RDMA efficiency and the per-peer latency are assumed, not measured",
    ]


def run_command(args: argparse.Namespace) -> int:
    from dmt.atomic import atomic_write_text
    from dmt.perf.cost_model import ModelShape, load_cluster

    check_output_file(args.plot, "--plot")  # before the sweep: a bad path used to fail after the work
    check_output_file(args.report, "--report")
    if args.plot is not None and args.report is not None and os.path.abspath(args.plot) == os.path.abspath(args.report):
        raise DmtError(f"--plot and --report are the same file ({args.plot}); give two paths")
    topo = load_cluster(args.cluster)
    if args.hosts is not None:
        topo = topo.with_hosts(args.hosts)
    model = ModelShape(
        num_tables=args.num_tables,
        num_embeddings=args.num_embeddings,
        embedding_dim=args.embedding_dim,
        pooling=args.pooling,
    )
    rows = sweep(model, topo, args.batch_size)
    pick = recommend(rows)
    table = format_table(rows, pick)
    head = (
        f"dmt plan-cluster: {topo.name}, {topo.hosts} hosts x {topo.gpus_per_host} GPUs; {model.num_tables} "
        f"tables x D={model.embedding_dim}, batch {args.batch_size}/GPU"
    )
    choice = choose_layout(model, topo, args.batch_size)
    rec = (
        f"recommended: {pick.setup.label()}: {pick.step_ms:.2f} ms/step, {pick.speedup:.2f}x vs the best flat "
        f"baseline at its codec\nflat or DMT (fp32, row-wise Adagrad): {choice.reason}"
    )
    print(f"{head}\n\n{table}\n\n{rec}")
    points = projection(model, topo, args.batch_size) if (args.plot or args.report) else []
    if args.plot:
        plot_projection(points, topo, args.plot)
        print(f"wrote {args.plot}")
    if args.report:
        proj = ["| GPUs | best DMT speed-up vs best flat (fp32) | configurations |", "|---:|---:|---|"]
        proj += [f"| {g} | {'-' if s is None else f'{s:.2f}x'} | {c} |" for g, s, c in points]
        text = "\n".join(
            [
                f"# {head}",
                "",
                table,
                "",
                rec,
                "",
                "## Projection (same model, more hosts)",
                "",
                *proj,
                "",
                f"Reference: {PAPER_RANGE}.",
                "",
                "## Assumptions",
                "",
                *[f"- {a}" for a in assumptions(topo, model, args.batch_size)],
                "",
            ]
        )
        atomic_write_text(args.report, text)
        print(f"wrote {args.report}")
    return 0
