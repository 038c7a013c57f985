"""``dmt bench``'s report: ratios, the best flat baseline per precision, DMT against it, the table.

Pure functions of the per-variant results (no torch), so the table can be rebuilt from a saved
JSON: ``format_bench_table(json.load(open("bench.json")))``.

"Best flat" is the fastest flat variant (median step) at one exchange precision: fp32 (no
``+comm``) or the run's codec (``+comm``). Every DMT variant (``dmt*``, ``stock*``) is compared with
the best flat variant of its own precision: speed-up = flat step / DMT step, next to its *byte
bound* = flat cross-host bytes / DMT cross-host bytes, the speed-up DMT would reach if the
cross-host exchange were the whole step.

Example:
    >>> results = {n: {"step_ms": {"median": ms}, "samples_per_s": 1.0, "cross_host_bytes_per_sample": b,
    ...                "intra_host_bytes_per_sample": 0.0} for n, ms, b in
    ...            [("flat:table_wise", 60.0, 400.0), ("flat:row_wise", 140.0, 900.0), ("dmt", 20.0, 100.0)]}
    >>> best_flat(results)["fp32"]["variant"]
    'flat:table_wise'
    >>> vs = versus_best_flat(results)["dmt"]
    >>> vs["speedup"], vs["byte_bound"]
    (3.0, 4.0)
"""

from __future__ import annotations

from dmt.perf.bench_variants import parse_variant

PHASES = ("forward", "backward", "optimizer")


def _precision(name: str) -> str:
    return "comm" if parse_variant(name).comm else "fp32"


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def ratios(a: dict, b: dict) -> dict:
    """``a`` over ``b``: step time, samples/s, cross- and intra-host bytes per sample."""
    return {
        "step_ms": _ratio(a["step_ms"]["median"], b["step_ms"]["median"]),
        "samples_per_s": _ratio(a["samples_per_s"], b["samples_per_s"]),
        "cross_host_bytes_per_sample": _ratio(a["cross_host_bytes_per_sample"], b["cross_host_bytes_per_sample"]),
        "intra_host_bytes_per_sample": _ratio(a["intra_host_bytes_per_sample"], b["intra_host_bytes_per_sample"]),
    }


def best_flat(results: dict) -> dict:
    """Per precision ("fp32", "comm") the fastest flat variant: its name, step ms and cross-host bytes."""
    out: dict = {}
    for name, r in results.items():
        if not parse_variant(name).is_flat:
            continue
        p = _precision(name)
        if p not in out or r["step_ms"]["median"] < out[p]["step_ms"]:
            out[p] = {
                "variant": name,
                "step_ms": r["step_ms"]["median"],
                "cross_host_bytes_per_sample": r["cross_host_bytes_per_sample"],
            }
    return out


def versus_best_flat(results: dict) -> dict:
    """Every DMT variant against the best flat variant of its precision: speed-up and byte bound."""
    best = best_flat(results)
    out = {}
    for name, r in results.items():
        ref = best.get(_precision(name))
        if parse_variant(name).is_flat or ref is None:
            continue
        out[name] = {
            "flat": ref["variant"],
            "speedup": _ratio(ref["step_ms"], r["step_ms"]["median"]),
            "byte_bound": _ratio(ref["cross_host_bytes_per_sample"], r["cross_host_bytes_per_sample"]),
        }
    return out


def summary(results: dict) -> dict:
    """The report's comparison fields: ``ratios`` (each variant over ``flat``, as before), ``best_flat``
    and ``vs_best_flat``."""
    flat = results.get("flat")
    return {
        "ratios": {f"{v}/flat": ratios(results[v], flat) for v in results if v != "flat" and flat is not None},
        "best_flat": best_flat(results),
        "vs_best_flat": versus_best_flat(results),
    }


def _head(report: dict) -> str:
    cfg = report["config"]
    return (
        f"dmt bench: {report['hosts']} hosts x {report['ranks_per_host']} ranks on {report['device']} "
        f"({report['backend']}, link: {cfg['link']}); 26 tables x {cfg['num_embeddings']:,} rows x dim "
        f"{cfg['embedding_dim']}, batch {cfg['batch_size']}/rank, towers: {len(cfg['plan']['towers'])} "
        f"{cfg['tower_module']} c={cfg['compression']:g} ({cfg['tower_sharding']}), flat {cfg['flat_sharding']}, "
        f"{'pipelined' if cfg['pipeline'] else 'plain'} steps; median of {cfg['steps']} after {cfg['warmup']} "
        "warm-up"
    )


def _variant_rows(report: dict) -> list[str]:
    lines = []
    for name, r in report["variants"].items():
        s, ph = r["step_ms"], r.get("phases_ms") or {}
        phase_cells = [f"{ph[p]:.2f}" if p in ph else "-" for p in PHASES]
        layout = r.get("layout") or "-"
        lines.append(
            f"| {name} | {layout} | {s['median']:.2f} | {s['p10']:.2f}-{s['p90']:.2f} | {r['samples_per_s']:,.0f} "
            f"| {r['cross_host_bytes_per_sample']:,.1f} | {r['intra_host_bytes_per_sample']:,.1f} | "
            + " | ".join(phase_cells)
            + " |"
        )
    return lines


def format_bench_table(report: dict) -> str:
    """The printed comparison: one row per variant, the ratios over ``flat``, then DMT vs the best flat."""
    lines = [
        _head(report),
        "",
        "| variant | layout | step ms | p10-p90 ms | samples/s | cross-host B/sample | intra-host B/sample "
        "| fwd ms | bwd ms | opt ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *_variant_rows(report),
    ]
    for name, q in report.get("ratios", {}).items():
        keys = ("step_ms", None, "samples_per_s", "cross_host_bytes_per_sample", "intra_host_bytes_per_sample")
        cells = [q[k] if k else None for k in keys]
        lines.append(f"| **{name}** | | " + " | ".join("-" if c is None else f"{c:.3f}x" for c in cells) + " | | | |")
    for name, error in report.get("failed", {}).items():
        lines.append(f"| {name} | failed: {error} |")
    best, versus = report.get("best_flat", {}), report.get("vs_best_flat", {})
    if versus:
        lines += ["", "| DMT variant | best flat (same precision) | flat ms | speed-up vs best flat | byte bound |"]
        lines.append("|---|---|---:|---:|---:|")
        for name, v in versus.items():
            ref = best["comm" if parse_variant(name).comm else "fp32"]
            speed = "-" if v["speedup"] is None else f"{v['speedup']:.2f}x"
            bound = "-" if v["byte_bound"] is None else f"{v['byte_bound']:.2f}x"
            lines.append(f"| {name} | {v['flat']} | {ref['step_ms']:.2f} | {speed} | {bound} |")
    return "\n".join(lines)
