"""Fit :mod:`dmt.perf.cost_model`'s free constants to measured ``dmt bench`` JSONs.

Every variant of a bench JSON is one :class:`Measurement` (its median step time and the setup the
cost model needs, read from the JSON's own config). :func:`calibrate` fits a few named
:class:`Param` s -- each a constant of the machine class (shared by all its clusters) or of one
link class -- by least squares on ``log(predicted / measured)``, so every configuration weighs
the same in relative error. Constants are never per configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dmt.choices import TowerSharding
from dmt.errors import DmtError
from dmt.perf.bench_variants import parse_variant
from dmt.perf.cost_model import (
    CODECS,
    FLAT_BASELINES,
    Cluster,
    Codec,
    ModelShape,
    Setup,
    lossy_bytes_factor,
    predict_step,
)


@dataclass(frozen=True)
class Measurement:
    """One variant of one ``dmt bench`` run, on the cluster preset it ran on."""

    source: str  # "file.json:variant"
    cluster: str  # key into the clusters mapping
    model: ModelShape
    setup: Setup
    batch_size: int
    step_ms: float  # median
    p10_ms: float
    p90_ms: float
    excluded: str | None = None  # why it is shown but not fitted


def _codec_factor(name: str, cfg: dict) -> float:
    """Bytes factor of one direction of ``dmt.distributed.qcomm.CommCompression``."""
    if name in ("fp16", "bf16"):
        return 0.5
    if name == "lossy":  # the width the codec itself picks for the bound
        from dmt.distributed.qcomm.lossy import lossy_width  # torch, only for lossy runs

        return lossy_bytes_factor(lossy_width(cfg["lossy_eb"]), cfg["lossy_block"])
    if name in ("int8", "fp8"):
        return 0.25
    return 1.0


def codec_of(comm: dict | None) -> Codec:
    """The cost model's codec of a bench JSON's ``config.comm``."""
    if not comm:
        return CODECS["fp32"]
    fwd, bwd = _codec_factor(comm["forward"], comm), _codec_factor(comm["backward"], comm)
    named = [c for c in CODECS.values() if (c.forward, c.backward) == (fwd, bwd)]
    return named[0] if named else Codec(name=f"{comm['forward']}/{comm['backward']}", forward=fwd, backward=bwd)


def link_kind(report: dict) -> str:
    """A bench JSON's link as one word: its ``link_kind``, or read off the label of older JSONs
    ("NCCL sockets (--slow-link)" or "default")."""
    cfg = report["config"]
    if "link_kind" in cfg:
        return cfg["link_kind"]
    return "sockets" if "slow-link" in cfg["link"] else "default"


def _flat_setup(v: dict, cfg: dict, codec: Codec) -> tuple[Setup | None, str | None]:
    """The Setup of a flat variant, or None and why it is not modelled (a planner's mixed plan)."""
    layout = v.get("layout") or cfg.get("flat_sharding", "table_wise")
    if layout == "planner":  # what the planner chose; modelled when it is one type for every table
        types = list(v.get("sharding_types") or {})
        if len(types) != 1 or types[0] not in FLAT_BASELINES:
            return None, f"planner's plan {v.get('sharding_types')} mixes or uses unmodelled types"
        layout = types[0]
    if layout not in FLAT_BASELINES:
        return None, f"flat {layout} is not modelled"
    return Setup(
        codec=codec, pipeline=cfg["pipeline"], flat_sharding=layout, sync_every=cfg.get("sync_every_2d", 1)
    ), None


def _tower_setup(v: dict, cfg: dict, codec: Codec) -> Setup:
    """dmt and stock: the same towers and bytes (stock differs in torchrec's code path only)."""
    towers = tuple(len(t["features"]) for t in cfg["plan"]["towers"])
    intra = v.get("intra_sharding")  # what "auto" resolved to (newer JSONs)
    if intra is None:
        # older JSONs: "auto" inside a host of several GPUs was TWRW (row-wise Adagrad, 200k-row tables)
        cw = (v.get("layout") or cfg.get("tower_sharding")) == TowerSharding.TABLE_COLUMN_WISE
        intra = TowerSharding.TABLE_COLUMN_WISE if cw else TowerSharding.TABLE_ROW_WISE
    return Setup(
        num_towers=len(towers),
        compression=cfg["compression"],
        tower_module=cfg["tower_module"],
        codec=codec,
        tower_features=towers,
        pipeline=cfg["pipeline"],
        intra_sharding=intra,
    )


def measurements_from_bench(
    path: str | os.PathLike[str], cluster: str, *, excluded: str | None = None
) -> list[Measurement]:
    """Every modelled variant of a ``dmt bench --out`` JSON (flat of any modelled layout, dmt, stock,
    +comm; plain or pipelined). Variants the cost model has no setup for are left out."""
    report = json.loads(Path(path).read_text())
    cfg = report["config"]
    model = ModelShape(num_embeddings=cfg["num_embeddings"], embedding_dim=cfg["embedding_dim"], pooling=cfg["pooling"])
    out = []
    for name, v in report["variants"].items():
        variant = parse_variant(name)
        codec = codec_of(cfg["comm"]) if variant.comm else CODECS["fp32"]
        if variant.is_flat:
            setup, _ = _flat_setup(v, cfg, codec)
            if setup is None:
                continue
        else:
            setup = _tower_setup(v, cfg, codec)
        s = v["step_ms"]
        out.append(
            Measurement(
                f"{os.path.basename(path)}:{name}",
                cluster,
                model,
                setup,
                cfg["batch_size"],
                s["median"],
                s["p10"],
                s["p90"],
                excluded,
            )
        )
    return out


@dataclass(frozen=True)
class Param:
    """A fitted constant: ``field`` ("machine.overlap", "inter_host.efficiency", ...) of ``clusters``.

    ``field`` may name several fields joined by "+" ("intra_host.efficiency+inter_host.efficiency":
    one link carrying both, e.g. NCCL sockets for every collective); they get the same value.
    ``log``: fit log(value) (positive constants spanning decades); else the value, within ``bounds``.
    ``also``: more ``(cluster, field)`` pairs that get the same value (one physical link appearing
    as another field elsewhere, e.g. NVLink as the inter-host link of one preset and the
    intra-host link of another).
    """

    name: str
    field: str
    clusters: tuple[str, ...]
    log: bool = True
    bounds: tuple[float, float] = (1e-6, 1e6)
    also: tuple[tuple[str, str], ...] = ()


def _get(topo: Cluster, field: str) -> float:
    part, attr = field.split("+")[0].split(".")
    return getattr(getattr(topo, part), attr)


def _set(topo: Cluster, field: str, value: float) -> Cluster:
    part, attr = field.split(".")
    return dataclasses.replace(topo, **{part: dataclasses.replace(getattr(topo, part), **{attr: value})})


def apply_params(
    clusters: Mapping[str, Cluster], params: Sequence[Param], values: Sequence[float]
) -> dict[str, Cluster]:
    """The clusters with each parameter's value written into each of its clusters."""
    out = dict(clusters)
    for p, v in zip(params, values):
        targets = [(name, field) for name in p.clusters for field in p.field.split("+")] + list(p.also)
        for name, field in targets:
            out[name] = _set(out[name], field, v)
    return out


def predict_ms(m: Measurement, clusters: Mapping[str, Cluster]) -> float:
    return predict_step(m.model, m.setup, clusters[m.cluster], m.batch_size).step_ms


@dataclass(frozen=True)
class Fit:
    """Fitted clusters, the parameter values, and the RMS of log(pred/meas) over fitted rows."""

    clusters: dict[str, Cluster]
    values: dict[str, float]
    rms_log_error: float


def calibrate(measurements: Sequence[Measurement], clusters: Mapping[str, Cluster], params: Sequence[Param]) -> Fit:
    """Least squares on log(predicted / measured) over the non-excluded measurements.

    Starts from the clusters' current values. Raises DmtError when there are fewer measurements
    than parameters (the fit would be underdetermined).
    """
    from scipy.optimize import least_squares  # only calibration needs scipy

    rows = [m for m in measurements if m.excluded is None]
    if len(rows) < len(params):
        raise DmtError(f"{len(rows)} measurements cannot determine {len(params)} parameters")
    x0, lo, hi = [], [], []
    for p in params:
        v = min(max(_get(clusters[p.clusters[0]], p.field), p.bounds[0]), p.bounds[1])
        x0.append(math.log(v) if p.log else v)
        lo.append(math.log(p.bounds[0]) if p.log else p.bounds[0])
        hi.append(math.log(p.bounds[1]) if p.log else p.bounds[1])

    def values(x) -> list[float]:
        return [math.exp(xi) if p.log else float(xi) for p, xi in zip(params, x)]

    def residuals(x) -> list[float]:
        topos = apply_params(clusters, params, values(x))
        return [math.log(predict_ms(m, topos) / m.step_ms) for m in rows]

    res = least_squares(residuals, x0, bounds=(lo, hi), method="trf", x_scale=1.0, diff_step=1e-4)
    best = values(res.x)
    rms = math.sqrt(sum(r * r for r in res.fun) / len(rows))
    return Fit(apply_params(clusters, params, best), {p.name: v for p, v in zip(params, best)}, rms)
