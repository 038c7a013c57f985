"""The cluster a cost model prediction is for: hosts x GPUs, one machine class and two link classes.

The cost model's free constants, grouped by what they describe:

* :class:`Machine`, one per machine class (a GPU or CPU type and its software stack): memory
  bandwidth, effective FLOP rate, fixed per-step overhead (launches, Python, optimizer), the cost
  of one compressed collective's encode/decode, the overlap of compute with communication, and
  the extra cost of torchrec's pipelined step;
* :class:`Link`, one per link class (intra-host, inter-host): nominal bandwidth, the efficiency a
  collective reaches on it, and the latency alpha of one collective call.

:class:`Cluster` bundles hosts x GPUs with one machine and two links; presets live in
``dmt/perf/clusters/*.json`` (see :func:`load_cluster`). ``dmt.perf.calibration`` fits the free
constants from measured ``dmt bench`` JSONs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmt.errors import DmtError

CLUSTER_DIR = Path(__file__).with_name("clusters")


class ClusterFileError(DmtError):
    """A cluster JSON that cannot be read or has a bad field."""


@dataclass(frozen=True, kw_only=True)
class Link:
    """One link class. ``per="gpu"``: each GPU has ``gbytes_per_s``; ``"host"``: the host's GPUs share it.

    Args:
        gbytes_per_s: nominal bandwidth each way, GB/s (1e9 bytes).
        per: "gpu" or "host".
        latency_us: alpha of one collective call (launch, rendezvous, first byte).
        latency_per_peer_us: extra alpha per remote peer of an all-to-all (many small sends).
        efficiency: the fraction of nominal bandwidth a collective reaches (fitted).
        ring_efficiency: NCCL's ring collectives (reduce-scatter, all-gather, all-reduce) over
            the all-to-all's bandwidth on this link: they pipeline chunks over several channels,
            where an all-to-all opens one connection per peer (fitted where runs have them; 1
            in presets fitted on all-to-all dominated runs).
    """

    gbytes_per_s: float
    per: str = "gpu"
    latency_us: float = 10.0
    latency_per_peer_us: float = 0.0
    efficiency: float = 1.0
    ring_efficiency: float = 1.0

    def rank_bytes_per_s(self, ranks_per_host: int, ring: bool = False) -> float:
        """Bandwidth one rank gets when every rank of its host sends at once (``ring``: in a ring collective)."""
        share = ranks_per_host if self.per == "host" else 1
        return self.gbytes_per_s * 1e9 * self.efficiency * (self.ring_efficiency if ring else 1.0) / share


@dataclass(frozen=True, kw_only=True)
class Machine:
    """Per-rank compute constants of a machine class.

    Args:
        name: e.g. "H200 + torchrec 1.6.1 + NCCL".
        memory_gbytes_per_s: embedding-table bandwidth per rank (HBM, or a DRAM share on CPU).
        effective_tflops: dense FLOP rate per rank reached by the model's layers (fitted).
        step_overhead_ms: fixed cost of a step: kernel launches, Python, dense optimizer (fitted).
        codec_ms: encode + decode of one compressed collective, beyond its bytes (fitted).
        overlap: fraction of min(step overhead + compute, comm) hidden under queued collectives (fitted).
        pipeline_ms: extra (or saved, if negative) time of torchrec's pipelined step (fitted).
        pipeline_overlap: in a pipelined step, the fraction of min(overhead + compute, comm)
            hidden: its side streams let the host's launch work run under the collectives (fitted).
        tower_ms: fixed cost of each tower a rank's host holds (DMT only): its tower module's
            launches; before towers were grouped per host (one lookup per host), also a sharded
            lookup and a DDP each (on 2x H200 four towers, two per host, then took 12.3 ms where
            two took 7.4) (fitted).
        tower_path_ms: fixed cost of DMT's tower path once per step: the host's own sharded
            lookup behind the cross-host id exchange, with its launches and the host sync of its
            split sizes (fitted; 0 in the presets fitted before it existed).
        intra_lookup_ms: extra fixed cost of that lookup when a host has several GPUs: its
            intra-host id all-to-all (another host sync) and reduce-scatter / all-gather launches
            (fitted).
    """

    name: str
    memory_gbytes_per_s: float
    effective_tflops: float
    step_overhead_ms: float = 0.0
    codec_ms: float = 0.0
    overlap: float = 0.0
    pipeline_ms: float = 0.0
    pipeline_overlap: float = 0.0
    tower_ms: float = 0.0
    tower_path_ms: float = 0.0
    intra_lookup_ms: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """Hosts x GPUs per host, one machine class, an intra-host and an inter-host link class."""

    name: str
    hosts: int
    gpus_per_host: int
    machine: Machine
    intra_host: Link
    inter_host: Link
    description: str = ""
    # Intra- and inter-host collectives on one medium (e.g. NCCL over TCP sockets for both, as
    # when NCCL_P2P_DISABLE applies to the whole process): a rank's bytes on the two then add up
    # in time instead of travelling at once.
    shared_medium: bool = False

    @property
    def world_size(self) -> int:
        return self.hosts * self.gpus_per_host

    def with_hosts(self, hosts: int) -> Cluster:
        return dataclasses.replace(self, hosts=hosts)


def _build(cls: type, data: dict, where: str, nested: dict | None = None) -> Any:
    """``cls(**data)`` with unknown / missing / mistyped fields reported as one ClusterFileError."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ClusterFileError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(names)}")
    missing = [
        n
        for n, f in names.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ClusterFileError(f"{where}: missing field(s) {missing}")
    kwargs = dict(data)
    for key, sub in (nested or {}).items():
        if not isinstance(kwargs[key], dict):
            raise ClusterFileError(f"{where}.{key}: expected an object, got {type(kwargs[key]).__name__}")
        kwargs[key] = _build(sub, kwargs[key], f"{where}.{key}")
    for key, value in kwargs.items():
        if key in (nested or {}):
            continue
        if names[key].type in ("float", "int") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ClusterFileError(f"{where}.{key}: expected a number, got {value!r}")
        if names[key].type == "bool" and not isinstance(value, bool):
            raise ClusterFileError(f"{where}.{key}: expected true or false, got {value!r}")
        if names[key].type == "str" and not isinstance(value, str):
            raise ClusterFileError(f"{where}.{key}: expected a string, got {value!r}")
    return cls(**kwargs)


def _check(topo: Cluster, where: str) -> Cluster:
    """Ranges a JSON can get wrong while still having the right types."""
    bad = []
    if topo.hosts < 1 or topo.gpus_per_host < 1 or int(topo.hosts) != topo.hosts:
        bad.append(f"hosts={topo.hosts} and gpus_per_host={topo.gpus_per_host} must be integers >= 1")
    for side in ("intra_host", "inter_host"):
        link = getattr(topo, side)
        if link.gbytes_per_s <= 0 or link.efficiency <= 0 or link.ring_efficiency <= 0:
            bad.append(f"{side}.gbytes_per_s, .efficiency and .ring_efficiency must be > 0")
        if link.per not in ("gpu", "host"):
            bad.append(f"{side}.per={link.per!r} must be 'gpu' or 'host'")
        if link.latency_us < 0 or link.latency_per_peer_us < 0:
            bad.append(f"{side}.latency_us must be >= 0")
    m = topo.machine
    if m.memory_gbytes_per_s <= 0 or m.effective_tflops <= 0:
        bad.append("machine.memory_gbytes_per_s and machine.effective_tflops must be > 0")
    if not (0 <= m.overlap <= 1 and 0 <= m.pipeline_overlap <= 1):
        bad.append(f"machine.overlap={m.overlap} and .pipeline_overlap={m.pipeline_overlap} must be within [0, 1]")
    if bad:
        raise ClusterFileError(f"{where}: " + "; ".join(bad))
    return topo


def cluster_from_dict(data: object, where: str = "cluster") -> Cluster:
    """A :class:`Cluster` from its JSON object; any problem is one :class:`ClusterFileError`."""
    if not isinstance(data, dict):
        raise ClusterFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    topo = _build(Cluster, data, where, {"machine": Machine, "intra_host": Link, "inter_host": Link})
    return _check(topo, where)


def cluster_to_dict(topo: Cluster) -> dict:
    return dataclasses.asdict(topo)


def preset_names() -> list[str]:
    return sorted(p.stem for p in CLUSTER_DIR.glob("*.json"))


def load_cluster(name_or_path: str | os.PathLike[str]) -> Cluster:
    """A preset name (``dmt/perf/clusters/<name>.json``) or the path of a user JSON of the same form.

    Example:
        >>> t = load_cluster("h100-nvlink-400g")
        >>> t.gpus_per_host, t.inter_host.gbytes_per_s
        (8, 50.0)
    """
    path = Path(name_or_path)
    if not path.suffix and (CLUSTER_DIR / f"{path}.json").exists():
        path = CLUSTER_DIR / f"{path}.json"
    if not path.exists():
        raise ClusterFileError(f"no cluster preset or file {str(name_or_path)!r}; presets: {preset_names()}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClusterFileError(f"{path}: not valid JSON ({e})") from None
    return cluster_from_dict(data, str(path))
