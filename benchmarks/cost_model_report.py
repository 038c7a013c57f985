"""Calibrate dmt.perf.cost_model on every measured ``dmt bench`` JSON; report predicted vs measured.

    .venv/bin/python -m benchmarks.cost_model_report --out benchmarks/results/cost_model \
        [--write-presets]

Machine classes and what is fitted (constants per class or link, never per configuration):

* h200x2 (benchmarks/results/gpu_h200x2): machine step overhead, effective TFLOP/s, overlap,
  codec cost, pipeline cost and overlap; inter-host efficiency of the NVLink and of the NCCL-sockets link.
  The intra-host link is unused there (1 GPU per emulated host). Link latencies keep their preset
  values (with 2 ranks they are indistinguishable from the step overhead). The
  ``*_before_bucket_fix`` runs (per-parameter DDP buckets, since removed) are shown, not fitted.
* cpu-2x2 (benchmarks/results/cpu_2x2): machine step overhead, effective TFLOP/s, codec cost;
  one loopback efficiency (intra-host links, and the inter-host link of the loopback run) and the
  efficiency of each shaped link. Overlap is fixed at 0 (gloo collectives block the CPU ranks).
* h200x4 with the hierarchical link (benchmarks/results/gpu_h200x4_hier, ``dmt bench --link
  hierarchical``, 2 hosts x 2 GPUs): part of the h200x4 class (same machine constants; its
  intra-host link is the class's NVLink efficiency); the socket link between hosts has its own
  efficiency and ring efficiency (NCCL's reduce-scatter / all-gather / all-reduce against the
  all-to-all).
* h200x2-2x1-hierarchical (benchmarks/results/gpu_h200x2_scale's bench runs: the 2x H200 box, same
  software, 2 hosts x 1 GPU on the hierarchical link): in the h200x4 class with its own step
  overhead (another host), and the socket efficiency of h200x4-2x1-sockets (one NCCL socket
  transport per host process either way).

``--write-presets`` writes the fitted constants into dmt/perf/clusters/*.json, and the H200 class's
machine constants plus its NVLink efficiency into the h100-nvlink-400g projection preset.

The projection (projection.md + PNG): the best DMT configuration against the best flat baseline
(fp32, row-wise Adagrad's exact shardings, c <= 4) on 16-512 GPUs of 8-GPU hosts, with the fitted
constants, for the 400G RDMA projection preset and for the same hosts joined by the measured
socket link (``dmt.perf.planning.projection``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import statistics

from benchmarks.cost_model_projection import projection_text, write_presets
from dmt.atomic import atomic_open, atomic_write_text
from dmt.perf.calibration import Fit, Measurement, Param, calibrate, link_kind, measurements_from_bench, predict_ms
from dmt.perf.cost_model import load_cluster, predict_step

RESULTS = os.path.join(os.path.dirname(__file__), "results")
GPU = ("h200x2-emulated-fast", "h200x2-emulated-slow")
# The 4x H200 box, after towers were grouped per host: 2 hosts x 1 GPU and 2 hosts x 2 GPUs; the
# last with NVLink inside a host and sockets between hosts (dmt bench --link hierarchical).
# Last, the 2x H200 box of the same software as 2 hosts x 1 GPU on the hierarchical link
# (benchmarks/results/gpu_h200x2_scale): fitted with the 4x box's machine constants.
GPU4 = (
    "h200x4-2x1-nvlink",
    "h200x4-2x1-sockets",
    "h200x4-2x2-nvlink",
    "h200x4-2x2-sockets",
    "h200x4-2x2-hierarchical",
    "h200x2-2x1-hierarchical",
)
HIER, HIER_2X1 = GPU4[4], GPU4[5]
_GPU4_LINKS = {"default": "nvlink", "nvlink": "nvlink", "sockets": "sockets", "hierarchical": "hierarchical"}
CPU = ("cpu-2x2-loopback", "cpu-shaped-1gbit", "cpu-shaped-250mbit")


def gpu_measurements() -> list[Measurement]:
    out = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "gpu_h200x2", "bench_*.json"))):
        with open(path) as f:
            slow = "slow-link" in json.load(f)["config"]["link"]
        topo = GPU[1] if slow else GPU[0]
        why = "per-parameter DDP buckets (overhead since removed)" if "before_bucket_fix" in path else None
        out += measurements_from_bench(path, topo, excluded=why)
    return out


def gpu4_measurements() -> list[Measurement]:
    """Every run of the 4x H200 box (NVLink, sockets and hierarchical links), and the 2x box's 2x1 hierarchical runs."""
    out = []
    paths = glob.glob(os.path.join(RESULTS, "gpu_h200x4", "bench_*.json"))
    paths += glob.glob(os.path.join(RESULTS, "gpu_h200x4_hier", "*.json"))
    for path in sorted(paths):
        with open(path) as f:
            report = json.load(f)
        if "variants" not in report:
            continue  # not a dmt bench JSON
        link = _GPU4_LINKS[link_kind(report)]
        if link == "hierarchical" and report["ranks_per_host"] == 1:
            link = "sockets"  # one GPU per host: every byte between ranks crosses hosts
        out += measurements_from_bench(path, f"h200x4-2x{report['ranks_per_host']}-{link}")
    return out + hier_2x1_measurements()


def hier_2x1_measurements() -> list[Measurement]:
    """The 2x H200 box's bench runs beside the 100M-row job (2 hosts x 1 GPU, hierarchical link)."""
    out = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "gpu_h200x2_scale", "scale_bench_*.json"))):
        with open(path) as f:
            report = json.load(f)
        if link_kind(report) != "hierarchical" or (report["hosts"], report["ranks_per_host"]) != (2, 1):
            raise ValueError(f"{path}: expected 2 hosts x 1 GPU on the hierarchical link")
        out += measurements_from_bench(path, HIER_2X1)
    return out


def cpu_measurements() -> list[Measurement]:
    files = {
        "bench_loopback.json": CPU[0],
        "bench_1gbit.json": CPU[1],
        "bench_250mbit.json": CPU[2],
        "bench_1gbit_r2.json": CPU[1],
        "bench_250mbit_r2.json": CPU[2],  # r2: repeats, 20 steps
        # _idle: the same on an otherwise idle machine (the others ran beside 6-9 busy processes)
        "bench_loopback_idle.json": CPU[0],
        "bench_1gbit_idle.json": CPU[1],
        "bench_250mbit_idle.json": CPU[2],
    }
    return [
        m for name, topo in files.items() for m in measurements_from_bench(os.path.join(RESULTS, "cpu_2x2", name), topo)
    ]


def gpu_params() -> list[Param]:
    return [
        Param("step overhead ms", "machine.step_overhead_ms", GPU),
        Param("effective TFLOP/s", "machine.effective_tflops", GPU, bounds=(1.0, 67.0)),  # H200 fp32 peak: 67
        Param("overlap", "machine.overlap", GPU, log=False, bounds=(0.0, 1.0)),
        Param("codec ms / coded collective", "machine.codec_ms", GPU),
        Param("pipeline ms", "machine.pipeline_ms", GPU, log=False, bounds=(-20.0, 20.0)),
        Param("pipeline overlap", "machine.pipeline_overlap", GPU, log=False, bounds=(0.0, 1.0)),
        Param("ms per tower on a host", "machine.tower_ms", GPU, log=False, bounds=(0.0, 20.0)),
        # net of what DMT saves on its smaller global interaction (7 vectors instead of 27), so may be < 0
        Param("tower path ms", "machine.tower_path_ms", GPU, log=False, bounds=(-20.0, 20.0)),
        Param(
            "NVLink efficiency", "inter_host.efficiency", GPU[:1], bounds=(0.5, 1.0)
        ),  # physical range for 100 MB all-to-alls; left free, the fit traded it against the step overhead (0.09)
        Param("NCCL sockets efficiency", "inter_host.efficiency", GPU[1:], bounds=(1e-3, 10.0)),
    ]


def gpu4_params(with_hierarchical: bool) -> list[Param]:
    """The class's constants; the hierarchical link's own two only once its runs exist."""
    hier = [
        Param("hierarchical sockets efficiency", "inter_host.efficiency", (HIER,), bounds=(1e-3, 10.0)),
        Param("hierarchical sockets ring efficiency", "inter_host.ring_efficiency", (HIER,), bounds=(0.1, 10.0)),
    ]
    return [
        Param("step overhead ms", "machine.step_overhead_ms", GPU4[:-1]),
        # the 2x box's host (CPU, launch path) is another machine's: its own fixed cost per step
        Param("step overhead ms, 2x box", "machine.step_overhead_ms", (HIER_2X1,)),
        Param("effective TFLOP/s", "machine.effective_tflops", GPU4, bounds=(1.0, 67.0)),
        Param("overlap", "machine.overlap", GPU4, log=False, bounds=(0.0, 1.0)),
        Param("codec ms / coded collective", "machine.codec_ms", GPU4),
        Param("tower path ms", "machine.tower_path_ms", GPU4, log=False, bounds=(-20.0, 20.0)),
        Param("ms per tower on a host", "machine.tower_ms", GPU4, log=False, bounds=(0.0, 20.0)),
        Param("intra-host lookup ms", "machine.intra_lookup_ms", GPU4, log=False, bounds=(0.0, 20.0)),
        Param(
            "NVLink efficiency",
            "intra_host.efficiency+inter_host.efficiency",
            (GPU4[0], GPU4[2]),
            bounds=(0.5, 1.0),
            also=((HIER, "intra_host.efficiency"),),
        ),
        # one NCCL socket transport per host process, whether forced (sockets) or between NCCL nodes
        # (hierarchical with 1 GPU per host), on either box
        Param("sockets efficiency, 1 GPU per host", "inter_host.efficiency", (GPU4[1], HIER_2X1), bounds=(1e-3, 10.0)),
        # 4 processes share the box's TCP stack: their own constants; the two peers of a host
        # exchange over the same loopback as the two hosts, but with other NCCL rings and chunking
        Param("sockets efficiency, 2 GPUs per host", "inter_host.efficiency", GPU4[3:4], bounds=(1e-3, 10.0)),
        Param("intra-host sockets efficiency", "intra_host.efficiency", GPU4[3:4], bounds=(1e-3, 10.0)),
        *(hier if with_hierarchical else []),
    ]


def out_of_sample_2x2(fit_h200x2: Fit, ms: list[Measurement]) -> list[tuple[Measurement, float]]:
    """The 2x2 runs predicted by the constants fitted on the 2x H200 box (1 GPU per host) before
    they ran: same machine and link constants, 2 GPUs per host (benchmarks/results/gpu_h200x4/
    predicted_before_run.md); sockets carry the intra-host collectives too."""
    fast, slow = fit_h200x2.clusters[GPU[0]], fit_h200x2.clusters[GPU[1]]
    topos = {
        GPU4[2]: dataclasses.replace(fast, gpus_per_host=2, intra_host=fast.inter_host),
        GPU4[3]: dataclasses.replace(slow, gpus_per_host=2, intra_host=slow.inter_host),
    }
    # (as predicted then: intra- and inter-host bytes assumed to travel at once, not shared_medium)
    return [(m, predict_ms(m, topos)) for m in ms if m.cluster in topos]


def cpu_params() -> list[Param]:
    loop = [Param("loopback efficiency", "intra_host.efficiency", CPU, bounds=(1e-3, 100.0))]
    loop = [*loop, dataclasses.replace(loop[0], field="inter_host.efficiency", clusters=CPU[:1])]
    return [
        Param("step overhead ms", "machine.step_overhead_ms", CPU),
        # at most the per-rank share of 2 cores' fp32 FMA peak (~2 x 80 GFLOP/s over 4 ranks)
        Param("effective TFLOP/s", "machine.effective_tflops", CPU, bounds=(1e-4, 0.04)),
        Param("codec ms / coded collective", "machine.codec_ms", CPU),
        *loop,
        Param("1gbit efficiency", "inter_host.efficiency", CPU[1:2], bounds=(1e-3, 1.5)),
        Param("250mbit efficiency", "inter_host.efficiency", CPU[2:], bounds=(1e-3, 1.5)),
    ]


def fit_class(ms: list[Measurement], names: tuple[str, ...], params: list[Param]) -> Fit:
    """Fit one machine class; the loopback pair of params is one value (tied by the second's name)."""
    topos = {n: load_cluster(n) for n in names}
    tied = [p for p in params if p.name == "loopback efficiency"]
    if len(tied) == 2:  # one parameter, two fields: fit the first, copy to the second
        params = [p for p in params if p is not tied[1]]
        fit = calibrate(ms, topos, params)
        from dmt.perf.calibration import apply_params

        return dataclasses.replace(fit, clusters=apply_params(fit.clusters, [tied[1]], [fit.values[tied[0].name]]))
    return calibrate(ms, topos, params)


def table(rows: list[tuple[Measurement, float]]) -> str:
    lines = [
        "| machine / link | run : variant | setup | measured ms (p10-p90) | predicted ms | error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for m, pred in rows:
        err = pred / m.step_ms - 1
        note = f" (not fitted: {m.excluded})" if m.excluded else ""
        lines.append(
            f"| {m.cluster} | {m.source}{note} | {m.setup.label()} | {m.step_ms:.2f} "
            f"({m.p10_ms:.2f}-{m.p90_ms:.2f}) | {pred:.2f} | {err:+.1%} |"
        )
    return "\n".join(lines)


def by_configuration(rows: list[tuple[Measurement, float]]) -> list[tuple[str, str, int, int, float, float, float]]:
    """Repeated runs of one configuration (machine/link, setup, batch; fitted runs only) merged:
    (cluster, setup, batch per GPU, runs, min ms, median ms, predicted ms). The same configuration measured
    6.3-10.5 ms on the H200 box across invocations, so one run is not "the" measurement."""
    groups: dict[tuple, list[tuple[Measurement, float]]] = {}
    for m, p in rows:
        if not m.excluded:
            groups.setdefault((m.cluster, m.setup.label(), m.batch_size, m.model), []).append((m, p))
    out = []
    for (topo, label, batch, _), ms in groups.items():
        times = [m.step_ms for m, _ in ms]
        out.append((topo, label, batch, len(times), min(times), statistics.median(times), ms[0][1]))
    return sorted(out)


def configuration_table(configs: list[tuple[str, str, int, int, float, float, float]]) -> str:
    lines = [
        "| machine / link | setup | batch/GPU | runs | measured ms (min, median) | predicted ms | error vs median |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for topo, label, batch, n, lo, med, pred in configs:
        lines.append(f"| {topo} | {label} | {batch} | {n} | {lo:.2f}, {med:.2f} | {pred:.2f} | {pred / med - 1:+.1%} |")
    return "\n".join(lines)


def plot(rows: list[tuple[Measurement, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    colors = {n: plt.cm.tab20(i) for i, n in enumerate(GPU + GPU4 + CPU)}  # 12 clusters: more than C0-C9
    for topo in GPU + GPU4 + CPU:
        pts = [(m, p) for m, p in rows if m.cluster == topo]
        for excluded in (False, True):
            sel = [(m, p) for m, p in pts if bool(m.excluded) == excluded]
            if sel:
                ax.scatter(
                    [m.step_ms for m, _ in sel],
                    [p for _, p in sel],
                    color=colors[topo],
                    marker="x" if excluded else "o",
                    label=topo + (" (not fitted)" if excluded else ""),
                )
    lo, hi = 3, 2000
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.85", label="+-15%")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="measured step ms (median)",
        ylabel="predicted step ms",
        title="dmt.perf.cost_model: predicted vs measured, every dmt bench run",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def fit_classes() -> tuple[list, list, list[str]]:
    """Fit every machine class; returns the fits, (measurement, prediction) rows and the constants' text."""
    gpu4 = gpu4_measurements()
    classes = [
        ("h200x2", gpu_measurements(), GPU, gpu_params()),
        ("h200x4", gpu4, GPU4, gpu4_params(any(m.cluster == HIER for m in gpu4))),
        ("cpu-2x2", cpu_measurements(), CPU, cpu_params()),
    ]
    fits, rows, text = [], [], []
    for label, ms, names, params in classes:
        fit = fit_class(ms, names, params)
        fits.append(fit)
        rows += [(m, predict_ms(m, fit.clusters)) for m in ms]
        consts = ", ".join(f"{k} = {v:.4g}" for k, v in fit.values.items())
        text.append(
            f"- **{label}** ({len(params)} constants, {sum(not m.excluded for m in ms)} fitted runs, "
            f"RMS log error {fit.rms_log_error:.3f}): {consts}"
        )
        for n in names:
            t = fit.clusters[n]
            text.append(
                f"  - {n}: inter-host {t.inter_host.rank_bytes_per_s(t.gpus_per_host) / 1e9:.3g} GB/s "
                f"per rank effective, intra-host {t.intra_host.rank_bytes_per_s(t.gpus_per_host) / 1e9:.3g}"
            )
    return fits, rows, text


def report_text(fits: list, rows: list, text: list[str]) -> str:
    """The markdown report: constants, the out-of-sample check, per configuration, every run."""
    within = sum(abs(p / m.step_ms - 1) <= 0.15 for m, p in rows)
    configs = by_configuration(rows)
    config_within = sum(abs(pred / med - 1) <= 0.15 for *_, med, pred in configs)
    blind = by_configuration(out_of_sample_2x2(fits[0], gpu4_measurements()))
    blind_within = sum(abs(pred / med - 1) <= 0.15 for *_, med, pred in blind)
    lines = ["# dmt.perf.cost_model: predicted vs measured step time", "", "Fitted constants:", "", *text, ""]
    lines += hierarchical_section(configs, fits[1])
    lines += [
        "Out of sample: the 2 hosts x 2 GPUs runs predicted from the h200x2 constants (fitted on "
        "1 GPU per host runs only, older code); the prediction written before the runs, from the "
        "fit of that time, is in benchmarks/results/gpu_h200x4/predicted_before_run.md: "
        f"{blind_within} of {len(blind)} within 15%.",
        "",
        configuration_table(blind),
        "",
        f"Per configuration (median of its runs): {config_within} of {len(configs)} within 15%.",
        "",
        configuration_table(configs),
        "",
        f"Every run: {within} of {len(rows)} within 15%.",
        "",
        table(rows),
        "",
    ]
    return "\n".join(lines)


def hierarchical_section(configs: list, fit: Fit) -> list[str]:
    """The hierarchical-link configurations (2x2 on the 4x box, 2x1 on the 2x box), how many are
    within 15%, and for each miss the same configuration's rate in the ``dmt train`` job, if one ran."""
    hier = [c for c in configs if c[0] in (HIER, HIER_2X1)]
    within = sum(abs(pred / med - 1) <= 0.15 for *_, med, pred in hier)
    lines = [
        f"Hierarchical-link configurations ({HIER}, {HIER_2X1}): {within} of {len(hier)} within 15%.",
        "",
        configuration_table(hier),
        "",
    ]
    for topo, label, batch, _, _, med, pred in hier:
        job = job_step_ms(topo, label, batch)
        if abs(pred / med - 1) > 0.15 and job is not None:
            job_ms, steps, setup, model = job
            piped = predict_step(model, setup, fit.clusters[topo], batch).step_ms
            lines.append(
                f"- Outside 15%: {topo} {label} at {batch}, one bench run of {med:.2f} ms. The `dmt train` job of "
                f"the same configuration ({steps:,} steps, pipelined) ran {job_ms:.2f} ms per step, predicted "
                f"(pipelined) {piped:.2f} ms ({piped / job_ms - 1:+.1%}): the bench's 30 steps ran "
                f"{med / job_ms:.2f}x the job's step{_other_batches(topo, label, batch)}, so the bench run is taken "
                "as the outlier, not the model."
            )
    skipped = unmodelled_variants(HIER_FILES)
    lines.append(
        f"- Not counted: {skipped} variants of these runs that the model has no setup for "
        "(torchrec's planner chose 24 table-wise + 2 table-row-wise tables: a mixed plan)."
    )
    return [*lines, ""]


HIER_FILES = ("gpu_h200x4_hier/*.json", "gpu_h200x2_scale/scale_bench_*.json")


def unmodelled_variants(patterns: tuple[str, ...]) -> int:
    """How many variants of these bench JSONs :func:`measurements_from_bench` leaves out."""
    paths = [p for pat in patterns for p in glob.glob(os.path.join(RESULTS, pat))]
    total = 0
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        if "variants" in report:
            total += len(report["variants"]) - len(measurements_from_bench(path, "unused"))
    return total


def _other_batches(topo: str, label: str, batch: int) -> str:
    """The bench / job comparison at the other batch sizes, e.g. " (at 8192 the bench ran 0.99x its job)"."""
    parts = []
    for m in hier_2x1_measurements():
        job = job_step_ms(topo, label, m.batch_size) if m.setup.label() == label else None
        if m.batch_size != batch and job is not None:
            parts.append(f"at {m.batch_size} the bench ran {m.step_ms / job[0]:.2f}x its job")
    return (" (" + "; ".join(parts) + ")") if parts else ""


def job_step_ms(topo: str, label: str, batch: int):
    """(step ms, steps, pipelined setup, model) of the 100M-row ``dmt train`` job of this configuration
    on the 2x box (benchmarks/results/gpu_h200x2_scale/scale_<flat|dmt>_b<batch>.json), or None."""
    kind = label.split()[0]
    path = os.path.join(RESULTS, "gpu_h200x2_scale", f"scale_{kind}_b{batch}.json")
    if topo != HIER_2X1 or not os.path.exists(path):
        return None
    with open(path) as f:
        job = json.load(f)
    bench = next(m for m in hier_2x1_measurements() if m.setup.label() == label and m.batch_size == batch)
    setup = dataclasses.replace(bench.setup, pipeline=True)
    return job["global_batch"] / job["samples_per_s"] * 1e3, job["steps"], setup, bench.model


def hier_predictions() -> str:
    """The preset h200x4-2x2-hierarchical's predictions for gpu_suite.sh's hier runs, as a markdown table:
    2 towers (and the TP plan's 4) of linear c=4, every flat baseline and DMT layout, fp32 and fp16."""
    from dmt.perf.cost_model import CODECS, ModelShape, Setup
    from dmt.perf.planning import EXACT_UNDER_ROWWISE

    topo, model = load_cluster(HIER), ModelShape(num_embeddings=200_000, embedding_dim=128)
    tp = (7, 6, 6, 7)  # benchmarks/plans/tp_4towers_2hosts.json's towers by host order (7+6 on each host)
    lines = [
        "| batch/GPU | codec | setup | predicted ms | vs best flat | byte bound | cross-host B/sample |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for batch in (8192, 2048):
        for codec in ("fp32", "fp16"):
            c = CODECS[codec]
            flats = [Setup(flat_sharding=f, codec=c) for f in ("table_wise", "table_row_wise", "row_wise", "2d")]
            dmts = [Setup(num_towers=2, compression=4, intra_sharding=i, codec=c) for i in INTRA_ALL]
            dmts.append(Setup(num_towers=4, compression=4, tower_features=tp, codec=c, intra_sharding="table_wise"))
            preds = [predict_step(model, s, topo, batch) for s in flats + dmts]
            best = min(preds[: len(flats)], key=lambda p: p.step_ms)
            for p in preds:
                tag = " (TP plan)" if p.setup.num_towers == 4 else ""
                exact = "" if not p.setup.is_dmt or p.setup.intra_sharding in EXACT_UNDER_ROWWISE else " (not exact)"
                bound = best.cross_host_bytes_per_sample / p.cross_host_bytes_per_sample
                lines.append(
                    f"| {batch} | {codec} | {p.setup.label()}{tag}{exact} | {p.step_ms:.2f} | "
                    f"{best.step_ms / p.step_ms:.2f}x | {bound:.2f}x | {p.cross_host_bytes_per_sample:,.0f} |"
                )
    return "\n".join(lines) + "\n"


INTRA_ALL = ("table_row_wise", "table_column_wise", "table_wise")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(RESULTS, "cost_model"), help="directory for report.md + PNG")
    ap.add_argument("--write-presets", action="store_true")
    ap.add_argument(
        "--predict-hier", action="store_true", help="only print the hierarchical preset's predictions of the hier runs"
    )
    args = ap.parse_args(argv)
    if args.predict_hier:
        print(hier_predictions())
        return 0
    fits, rows, text = fit_classes()
    os.makedirs(args.out, exist_ok=True)
    plot(rows, os.path.join(args.out, "predicted_vs_measured.png"))
    report = report_text(fits, rows, text)
    atomic_write_text(os.path.join(args.out, "report.md"), report)
    print(report)
    projected = projection_text(fits, args.out, socket_link=HIER)
    atomic_write_text(os.path.join(args.out, "projection.md"), projected)
    print(projected)
    if args.write_presets:
        write_presets(fits)
    # parts of the first fitted row, to sanity-check the decomposition
    m, _ = rows[0]
    print(predict_step(m.model, m.setup, fits[0].clusters[m.cluster], m.batch_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
