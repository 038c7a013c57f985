"""`dmt bench`: one run times flat and DMT side by side and counts the bytes each sends.

The runs are real: 2 emulated hosts x 1 rank through torchrun, on a tiny Criteo-shaped model. The
byte counts are checked against the analytic model (dmt.perf.comm_model): DMT with identity towers
sends exactly what the flat table-wise model sends across hosts, compressed towers send less.
Timings are printed, never asserted, except one physical bound in the shaped-link test: a step
cannot move its cross-host bytes faster than the link's rate.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from dmt.cli import main
from dmt.perf.netns import LinkShape, NetnsError, check_can_shape

TINY = [
    "--hosts",
    "2",
    "--ranks-per-host",
    "1",
    "--num-embeddings",
    "500",
    "--embedding-dim",
    "8",
    "--batch-size",
    "32",
    "--warmup",
    "1",
    "--steps",
    "2",
    "--count-steps",
    "1",
    "--no-progress",
]


def _bench(tmp_path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["bench", *TINY, "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _cross(report: dict, variant: str) -> tuple[float, float]:
    """Measured and analytic cross-host bytes per sample."""
    v = report["variants"][variant]
    return v["cross_host_bytes_per_sample"], v["analytic"]["cross_host"]


def test_bench_flat_vs_dmt_bytes(tmp_path, capfd):
    identity = _bench(tmp_path, "identity", "--tower-module", "identity", "--compression", "1")
    assert set(identity["variants"]) == {"flat", "dmt"}
    for v in identity["variants"].values():
        assert len(v["step_ms"]["all"]) == 2 and v["step_ms"]["median"] > 0 and v["samples_per_s"] > 0
        assert set(v["phases_ms"]) == {"forward", "backward", "optimizer"}
    flat, flat_model = _cross(identity, "flat")
    same, same_model = _cross(identity, "dmt")
    # The model leaves out the split-size all-to-alls: a few int64 per rank pair and step.
    assert flat == pytest.approx(flat_model, rel=1e-3)
    assert same == pytest.approx(same_model, rel=1e-3)
    assert same == pytest.approx(flat, rel=1e-3)  # identity towers: exactly flat's cross-host bytes
    assert identity["ratios"]["dmt/flat"]["cross_host_bytes_per_sample"] == pytest.approx(1.0, rel=1e-3)

    compressed = _bench(tmp_path, "linear", "--variants", "dmt", "--tower-module", "linear", "--compression", "4")
    fewer, fewer_model = _cross(compressed, "dmt")
    assert fewer == pytest.approx(fewer_model, rel=1e-3)
    assert fewer < 0.9 * flat
    table = capfd.readouterr().out  # printed by rank 0, a child process
    assert "| flat |" in table and "| dmt |" in table and "**dmt/flat**" in table


def test_bench_several_towers_per_host(tmp_path):
    """4 towers on 2 hosts (2 per host, grouped into one lookup each): bytes as the analytic model
    says with every tower's own k_t (F_t = 7, 7, 6, 6 -> k_t = 2, 2, 2, 2 at c=4)."""
    report = _bench(
        tmp_path, "four", "--variants", "dmt,stock", "--towers", "4", "--tower-module", "linear", "--compression", "4"
    )
    for variant in ("dmt", "stock"):
        counted, model = _cross(report, variant)
        assert counted == pytest.approx(model, rel=1e-3), variant
    assert [len(t["features"]) for t in report["config"]["plan"]["towers"]] == [7, 7, 6, 6]


def test_bench_flat_baselines_against_dmt(tmp_path):
    """2 hosts x 2 ranks: every flat baseline next to DMT with whole tables and with row shards inside
    a host. Bytes are what the analytic model says for each layout; the best flat baseline is the
    fastest flat variant and every DMT variant is rated against it."""
    variants = "flat:table_wise,flat:table_row_wise,flat:row_wise,flat:planner,dmt:table_wise,dmt:table_row_wise"
    report = _bench(tmp_path, "baselines", "--ranks-per-host", "2", "--variants", variants, "--compression", "4")
    v = report["variants"]
    assert list(v) == variants.split(",") and not report["failed"] and report["complete"]
    for name in ("flat:table_wise", "flat:table_row_wise", "flat:row_wise", "dmt:table_wise", "dmt:table_row_wise"):
        measured, model = _cross(report, name)
        assert measured == pytest.approx(model, rel=1e-3), name
        assert v[name]["intra_host_bytes_per_sample"] == pytest.approx(v[name]["analytic"]["intra_host"], rel=1e-3)
    assert v["flat:table_row_wise"]["sharding_types"] == {"table_row_wise": 26}
    assert sum(v["flat:planner"]["sharding_types"].values()) == 26  # the planner's own choice, recorded
    assert (v["dmt:table_wise"]["intra_sharding"], v["dmt:table_row_wise"]["intra_sharding"]) == (
        "table_wise",
        "table_row_wise",
    )
    # whole tables: (L-1)/L of a pooled vector per sample and table inside a host, row shards L-1
    assert v["dmt:table_wise"]["intra_host_bytes_per_sample"] < v["dmt:table_row_wise"]["intra_host_bytes_per_sample"]
    flats = {n: r["step_ms"]["median"] for n, r in v.items() if n.startswith("flat")}
    best = report["best_flat"]["fp32"]
    assert best["variant"] == min(flats, key=flats.get) and "comm" not in report["best_flat"]
    for name in ("dmt:table_wise", "dmt:table_row_wise"):
        vs = report["vs_best_flat"][name]
        assert vs["flat"] == best["variant"]
        assert vs["speedup"] == pytest.approx(best["step_ms"] / v[name]["step_ms"]["median"])
        assert vs["byte_bound"] == pytest.approx(best["cross_host_bytes_per_sample"] / _cross(report, name)[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--towers", "27"], "--towers=27 must be between 1 and 26"),
        (["--variants", "flat,nope"], "'nope' is not <base>[:<layout>][+comm]"),
        (["--variants", "flat:bogus"], "'flat:bogus' is not <base>[:<layout>][+comm]"),
        (["--variants", "dmt:row_wise"], "a tower layout in"),
        (["--variants", "flat,flat"], "give distinct names"),
        (["--shaped-link", "fast"], "expected RATE[,DELAY]"),
        (["--variants", "flat,stock", "--tower-module", "identity", "--compression", "1"], "stock needs"),
        (["--variants", "flat,stock+comm", "--comm-compression", "fp16"], "drop the +comm of stock"),
        (["--slow-link", "--link", "nvlink"], "--slow-link is the old spelling of --link sockets"),
        (["--link", "nvlink", "--socket-threads", "4"], "tune NCCL's socket transport"),
        (["--link", "sockets", "--socket-threads", "32"], "between 1 and 16"),
        (["--link", "sockets", "--socket-threads", "16", "--sockets-per-thread", "8"], "at most 64"),
        (["--link", "hierarchical", "--shaped-link", "1gbit"], "exclude each other"),
    ],
)
def test_bad_arguments_fail_in_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="what CPU machines refuse")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--link", "hierarchical"], "--link hierarchical chooses NCCL transports and needs GPUs"),
        (["--slow-link"], "--link sockets chooses NCCL transports"),
        (["--variants", "flat:2d,dmt"], "runs on CUDA only"),
    ],
)
def test_gpu_only_options_are_refused_on_cpu(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_plan_needing_more_hosts_fails(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "version": 1,
                "num_hosts": 4,
                "towers": [
                    {"features": [f"cat_{i}" for i in range(13)], "host": 0},
                    {"features": [f"cat_{i}" for i in range(13, 26)], "host": 3},
                ],
            }
        )
    )
    assert main(["bench", "--hosts", "2", "--plan", str(plan)]) == 2
    assert "towers on 4 hosts but the topology has 2" in capsys.readouterr().err


def test_link_shape_parsing():
    assert LinkShape.parse("1gbit,0.5ms") == LinkShape(rate_bits=1e9, delay_ms=0.5)
    assert LinkShape.parse("10mbit,200us") == LinkShape(rate_bits=1e7, delay_ms=0.2)
    assert str(LinkShape.parse("250mbit")) == "250mbit"


def test_shaping_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="needs root"):
        check_can_shape()


def _can_shape() -> bool:
    try:
        check_can_shape()
    except NetnsError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _can_shape(), reason="--shaped-link needs root and iproute2 (ip, tc)")
def test_shaped_link_carries_the_cross_host_bytes(tmp_path):
    rate_bits = 50e6
    report = _bench(tmp_path, "shaped", "--shaped-link", "50mbit", "--steps", "3")
    assert report["config"]["link"].startswith("shaped 50mbit")
    flat = report["variants"]["flat"]
    # Each host sends half the step's cross-host bytes through its own uplink of rate_bits.
    per_host_bytes = flat["cross_host_bytes_per_sample"] * 32 * 2 / 2
    assert flat["step_ms"]["median"] >= 0.8 * per_host_bytes * 8 / rate_bits * 1e3
    # Nothing is left behind: no namespace of ours, no veth or bridge.
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"dmt{os.getpid()}h" not in leftovers
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"d{os.getpid()}h" not in links and f"d{os.getpid()}br" not in links
