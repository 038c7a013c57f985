"""dmt.perf.cost_model: alpha-beta arithmetic on hand-computed cases, bytes equal to dmt.perf.comm_model's,
calibration recovering known constants, and the `dmt plan-cluster` command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest

from dmt.cli import main
from dmt.errors import DmtError
from dmt.perf.calibration import Measurement, Param, calibrate, codec_of, measurements_from_bench, predict_ms
from dmt.perf.comm_model import CommShape, analytic_dmt, analytic_flat
from dmt.perf.cost_model import (
    CODECS,
    Cluster,
    ClusterFileError,
    Link,
    Machine,
    ModelShape,
    Setup,
    cluster_from_dict,
    cluster_to_dict,
    collective_times,
    dense_sizes,
    load_cluster,
    num_tower_outputs,
    predict_step,
    preset_names,
)

GPU_JSON = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "gpu_h200x2", "bench_fast_lossy.json")


def _topo(hosts: int = 2, gpus: int = 1, **machine: float) -> Cluster:
    m = dict(name="toy", memory_gbytes_per_s=1000.0, effective_tflops=1.0) | machine
    return Cluster(
        name="toy",
        hosts=hosts,
        gpus_per_host=gpus,
        machine=Machine(**m),
        intra_host=Link(gbytes_per_s=10.0, latency_us=10.0),
        inter_host=Link(gbytes_per_s=1.0, latency_us=100.0),
    )


TINY = ModelShape(num_tables=2, embedding_dim=4, dense_arch=(4,), over_arch=(1,), num_dense=1)


def test_alpha_beta_by_hand():
    # flat table-wise, 2 hosts x 1 GPU: each rank sends half its samples' pooled vectors across,
    # 2 features x 4 dims x 4 B x 1/2 = 16 B/sample; B=1000 -> 16 kB at 1 GB/s = 16 us, + alpha 100 us.
    colls = {(c.op, c.phase, c.payload): c for c in collective_times(TINY, Setup(), _topo(), 1000)}
    fwd = colls[("all_to_all_single", "forward", "float")]
    assert fwd.cross_bytes == pytest.approx(16_000) and fwd.calls == 1
    assert fwd.ms == pytest.approx(0.100 + 0.016)
    ids = colls[("all_to_all_single", "forward", "int")]  # 2 x (4 + 8) B x 1/2 = 12 B/sample, 3 calls
    assert ids.calls == 3 and ids.ms == pytest.approx(3 * 0.100 + 0.012)


def test_link_shared_per_host_and_per_peer_latency():
    link = Link(gbytes_per_s=8.0, per="host", efficiency=0.5)
    assert link.rank_bytes_per_s(4) == pytest.approx(1e9)
    topo = dataclasses.replace(
        _topo(hosts=4), inter_host=Link(gbytes_per_s=1.0, latency_us=100.0, latency_per_peer_us=10.0)
    )
    fwd = next(c for c in collective_times(TINY, Setup(), topo, 1000) if c.phase == "forward" and c.payload == "float")
    # 4 ranks: 3 remote peers; 2*4*4 B x 3/4 = 24 B/sample -> 24 us
    assert fwd.ms == pytest.approx(0.100 + 3 * 0.010 + 0.024)


def test_step_sums_its_parts():
    topo = _topo(step_overhead_ms=1.0, overlap=0.5, codec_ms=0.25)
    p = predict_step(TINY, Setup(num_towers=2, compression=2, codec=CODECS["fp16"]), topo, 1000)
    assert p.codec_ms == pytest.approx(2 * 0.25)  # forward and backward tower exchange
    # the host's step overhead runs under queued collectives as the compute does
    assert p.hidden_ms == pytest.approx(0.5 * min(1.0 + p.compute_ms, p.comm_ms))
    assert p.step_ms == pytest.approx(1.0 + p.compute_ms + p.codec_ms + p.comm_ms - p.hidden_ms)
    assert p.comm_ms == pytest.approx(sum(c.ms for c in p.collectives))


@pytest.mark.parametrize("hosts,gpus", [(2, 1), (2, 2), (4, 2)])
def test_bytes_match_comm_model(hosts, gpus):
    model = ModelShape(embedding_dim=16)
    shape = CommShape(num_features=26, embedding_dim=16, num_hosts=hosts, ranks_per_host=gpus, batch_size=64)
    flat = predict_step(model, Setup(), _topo(hosts, gpus), 64)
    expected = analytic_flat(shape, "table_wise", dense_params=dense_sizes(model, Setup()).dense_params).total()
    assert flat.cross_host_bytes_per_sample == pytest.approx(expected.cross_host)
    assert flat.intra_host_bytes_per_sample == pytest.approx(expected.intra_host)
    setup = Setup(num_towers=hosts, compression=4)
    d = dense_sizes(model, setup)
    dmt = predict_step(model, setup, _topo(hosts, gpus), 64)
    expected = analytic_dmt(
        shape, d.tower_features, d.tower_outputs, dense_params=d.dense_params, tower_params=d.tower_params
    ).total()
    assert dmt.cross_host_bytes_per_sample == pytest.approx(expected.cross_host)
    assert dmt.intra_host_bytes_per_sample == pytest.approx(expected.intra_host)


def test_measured_gpu_bytes_and_sizes():
    """The H200 bench JSON: the model's sizes and codec'd cross-host bytes equal what was counted."""
    report = json.loads(Path(GPU_JSON).read_text())
    ms = {m.source.split(":")[1]: m for m in measurements_from_bench(GPU_JSON, "x")}
    assert ms["dmt+comm"].setup.codec.name == "lossy8"
    for name, m in ms.items():
        v = report["variants"][name]
        d = dense_sizes(m.model, m.setup)
        assert (d.dense_params, d.tower_params) == (v["dense_params"], v["tower_params"])
        pred = predict_step(m.model, m.setup, load_cluster("h200x2-emulated-fast"), m.batch_size)
        # the unmodelled split-size all-to-all is < 0.01 B/sample here
        assert pred.cross_host_bytes_per_sample == pytest.approx(v["cross_host_bytes_per_sample"], abs=0.01)


def test_num_tower_outputs_matches_towers():
    from towers.config import num_tower_outputs as reference  # torch-free: towers loads its modules lazily

    for f in range(1, 14):
        for c in (1.0, 1.5, 2.0, 3.0, 4.0, 8.0):
            assert num_tower_outputs(f, c) == reference(f, c)


def test_codec_of_bench_config():
    assert codec_of(None).name == "fp32"
    assert codec_of({"forward": "fp16", "backward": "fp16"}).name == "fp16"


def _synthetic(truth: dict[str, Cluster]) -> list[Measurement]:
    out = []
    model = ModelShape(embedding_dim=64)
    setups = [
        Setup(),
        Setup(num_towers=2, compression=4),
        Setup(num_towers=2, compression=2, codec=CODECS["fp16"]),
        Setup(pipeline=True),
        Setup(num_towers=2, compression=8, pipeline=True),
    ]
    for name in truth:
        for s in setups:
            for b in (512, 2048, 8192):
                m = Measurement(f"{name}:{s.label()}:{b}", name, model, s, b, 1.0, 1.0, 1.0)
                out.append(dataclasses.replace(m, step_ms=predict_ms(m, truth)))
    return out


def test_calibration_recovers_known_constants():
    base = _topo()
    machine = dataclasses.replace(
        base.machine, effective_tflops=20.0, step_overhead_ms=3.0, codec_ms=0.2, overlap=0.3, pipeline_ms=1.0
    )
    fast = dataclasses.replace(
        base, name="fast", machine=machine, inter_host=Link(gbytes_per_s=100.0, latency_us=20.0, efficiency=0.6)
    )
    slow = dataclasses.replace(fast, name="slow", inter_host=Link(gbytes_per_s=5.0, latency_us=100.0, efficiency=0.5))
    truth = {"fast": fast, "slow": slow}
    names = ("fast", "slow")
    params = [
        Param("overhead", "machine.step_overhead_ms", names),
        Param("tflops", "machine.effective_tflops", names),
        Param("codec", "machine.codec_ms", names),
        Param("pipeline", "machine.pipeline_ms", names, log=False, bounds=(-10.0, 10.0)),
        Param("fast eff", "inter_host.efficiency", ("fast",)),
        Param("slow eff", "inter_host.efficiency", ("slow",)),
    ]
    start = {
        n: dataclasses.replace(
            t,
            machine=dataclasses.replace(
                t.machine, effective_tflops=5.0, step_overhead_ms=1.0, codec_ms=0.05, pipeline_ms=0.0
            ),
            inter_host=dataclasses.replace(t.inter_host, efficiency=1.0),
        )
        for n, t in truth.items()
    }
    fit = calibrate(_synthetic(truth), start, params)
    expected = {"overhead": 3.0, "tflops": 20.0, "codec": 0.2, "pipeline": 1.0, "fast eff": 0.6, "slow eff": 0.5}
    for k, v in expected.items():
        assert fit.values[k] == pytest.approx(v, rel=1e-3), k
    assert fit.rms_log_error < 1e-6


def test_presets_load_and_round_trip():
    assert {"h100-nvlink-400g", "h200x2-emulated-fast", "cpu-shaped-1gbit"} <= set(preset_names())
    for name in preset_names():
        t = load_cluster(name)
        assert cluster_from_dict(cluster_to_dict(t)) == t


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "missing field"),
        (json.dumps(cluster_to_dict(load_cluster("cpu-2x2-loopback")) | {"gpus": 3}), "unknown field"),
        (json.dumps(cluster_to_dict(load_cluster("cpu-2x2-loopback")) | {"hosts": "two"}), "expected a number"),
        (
            json.dumps(cluster_to_dict(load_cluster("cpu-2x2-loopback")) | {"shared_medium": 1}),
            "expected true or false",
        ),
    ],
)
def test_bad_topology_json_is_one_error(tmp_path, text, needle):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ClusterFileError, match=needle):
        load_cluster(path)


def test_plan_cluster_cli(tmp_path, capsys):
    png, md = tmp_path / "speedup.png", tmp_path / "plan.md"
    assert (
        main(
            [
                "plan-cluster",
                "--cluster",
                "h100-nvlink-400g",
                "--hosts",
                "2",
                "--num-tables",
                "32",
                "--plot",
                str(png),
                "--report",
                str(md),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| flat fp32 |" in out and "| dmt T=4 c=8 cw lossy8 |" in out and "recommended:" in out
    assert "| flat twrw fp32 |" in out and "| dmt T=4 c=2 tw fp32 |" in out and "flat or DMT (fp32" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "## Assumptions" in text and "1.9x" in text and "| 256 |" in text


def test_plan_cluster_bad_topology_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "hosts": 2}')
    assert main(["plan-cluster", "--cluster", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing field" in err[0]
    assert main(["plan-cluster", "--cluster", "no-such-preset"]) == 2
    assert "no cluster preset" in capsys.readouterr().err


def test_recommendation_prefers_dmt_on_a_slow_link():
    from dmt.cli.plan_cluster import recommend, sweep

    rows = sweep(ModelShape(embedding_dim=128), load_cluster("h200x2-emulated-slow"), 8192)
    pick = recommend(rows)
    assert pick.setup.is_dmt and pick.speedup > 2 and math.isfinite(pick.step_ms)


def test_shared_medium_adds_intra_and_cross_host_time():
    """On one medium (NCCL sockets for every collective) a rank's intra- and cross-host bytes queue
    behind each other: beta is their sum, not the larger one."""
    apart = _topo(hosts=2, gpus=2)
    shared = dataclasses.replace(apart, shared_medium=True)
    setup = Setup(num_towers=2, compression=2, intra_sharding="table_row_wise")
    for a, b in zip(collective_times(TINY, setup, apart, 1000), collective_times(TINY, setup, shared, 1000)):
        alpha = a.calls * 1e-3 * (100.0 if a.group != "intra_host" else 10.0)
        beta_apart = max(a.cross_bytes / 1e9, a.intra_bytes / 1e10) * 1e3
        beta_shared = (a.cross_bytes / 1e9 + a.intra_bytes / 1e10) * 1e3
        if a.group == "intra_host" or a.cross_bytes == 0 or a.intra_bytes == 0:
            assert b.ms == pytest.approx(a.ms)
        else:
            assert a.ms == pytest.approx(alpha + beta_apart, rel=1e-6) and b.ms == pytest.approx(
                alpha + beta_shared, rel=1e-6
            )
    assert predict_step(TINY, setup, shared, 1000).comm_ms > predict_step(TINY, setup, apart, 1000).comm_ms


def test_dmt_fixed_costs_and_intra_host_lookup_only_with_several_gpus():
    fixed = dict(tower_path_ms=-0.5, tower_ms=0.25, intra_lookup_ms=2.0)
    model = dataclasses.replace(TINY, num_tables=4)
    setup, flat = Setup(num_towers=4, compression=2), Setup()  # 4 towers on 2 hosts: 2 per host
    for gpus, extra in ((1, -0.5 + 0.25 * 2), (2, -0.5 + 0.25 * 2 + 2.0)):
        base, with_costs = _topo(gpus=gpus), _topo(gpus=gpus, **fixed)
        assert predict_step(model, setup, with_costs, 100).overhead_ms == pytest.approx(
            predict_step(model, setup, base, 100).overhead_ms + extra
        )
        assert (
            predict_step(model, flat, with_costs, 100).overhead_ms == predict_step(model, flat, base, 100).overhead_ms
        )


def test_a_param_over_two_fields_sets_both():
    from dmt.perf.calibration import apply_params

    topo = _topo(gpus=2)
    out = apply_params({"t": topo}, [Param("eff", "intra_host.efficiency+inter_host.efficiency", ("t",))], [0.3])["t"]
    assert out.intra_host.efficiency == out.inter_host.efficiency == 0.3
    assert out.machine == topo.machine


@pytest.mark.parametrize("layout", ["table_row_wise", "row_wise"])
def test_flat_baselines_bytes_match_comm_model(layout):
    model = ModelShape(embedding_dim=16)
    shape = CommShape(num_features=26, embedding_dim=16, num_hosts=2, ranks_per_host=2, batch_size=64)
    setup = Setup(flat_sharding=layout)
    expected = analytic_flat(shape, layout, dense_params=dense_sizes(model, setup).dense_params).total()
    got = predict_step(model, setup, _topo(2, 2), 64)
    assert got.cross_host_bytes_per_sample == pytest.approx(expected.cross_host)
    assert got.intra_host_bytes_per_sample == pytest.approx(expected.intra_host)
    assert setup.label() == {"table_row_wise": "flat twrw fp32", "row_wise": "flat rw fp32"}[layout]


def test_flat_2d_syncs_its_share_of_the_tables_inside_the_host():
    """2D: flat table-wise's cross-host bytes (one rank per host shards the tables), plus an
    intra-host all-reduce of the rank's half of the tables and row-wise state, every sync."""
    model = ModelShape(num_tables=2, num_embeddings=10, embedding_dim=4, dense_arch=(4,), over_arch=(1,), num_dense=1)
    tw = predict_step(model, Setup(), _topo(2, 2), 8)
    two_d = predict_step(model, Setup(flat_sharding="2d"), _topo(2, 2), 8)
    assert two_d.cross_host_bytes_per_sample == pytest.approx(tw.cross_host_bytes_per_sample)
    sync = next(c for c in two_d.collectives if c.op == "all_reduce")
    # 2 tables x 10 rows x (4 + 1) / 2 hosts x 4 B x 2(L-1)/L = 200 B per rank per step
    assert sync.intra_bytes == pytest.approx(200.0) and sync.cross_bytes == 0
    rarer = predict_step(model, Setup(flat_sharding="2d", sync_every=4), _topo(2, 2), 8)
    assert next(c for c in rarer.collectives if c.op == "all_reduce").intra_bytes == pytest.approx(50.0)


def test_whole_tables_move_fewer_intra_host_bytes_and_pay_for_idle_gpus():
    from dmt.perf.cost_model import tw_intra_imbalance

    model = ModelShape(embedding_dim=16)
    row, whole = (Setup(num_towers=2, compression=4, intra_sharding=s) for s in ("table_row_wise", "table_wise"))
    for gpus in (2, 8):
        r, w = predict_step(model, row, _topo(2, gpus), 64), predict_step(model, whole, _topo(2, gpus), 64)
        assert w.cross_host_bytes_per_sample == pytest.approx(r.cross_host_bytes_per_sample)
        assert w.intra_host_bytes_per_sample < r.intra_host_bytes_per_sample
    # 13 tables per host: 7 on the busiest of 2 GPUs; 2 on the busiest of 8
    assert tw_intra_imbalance(model, whole, _topo(2, 2)) == pytest.approx(7 / 6.5)
    assert tw_intra_imbalance(model, whole, _topo(2, 8)) == pytest.approx(2 / (13 / 8))
    assert tw_intra_imbalance(model, row, _topo(2, 8)) == 1.0


def test_ring_efficiency_speeds_up_ring_collectives_only():
    slow = _topo(2, 2)
    fast = dataclasses.replace(slow, inter_host=dataclasses.replace(slow.inter_host, ring_efficiency=2.0))
    setup = Setup(flat_sharding="row_wise")
    a = {(c.op, c.phase, c.payload): c for c in collective_times(TINY, setup, slow, 1000)}
    b = {(c.op, c.phase, c.payload): c for c in collective_times(TINY, setup, fast, 1000)}
    rs = ("reduce_scatter", "forward", "float")
    alpha = a[rs].calls * 0.100
    assert b[rs].ms - alpha == pytest.approx((a[rs].ms - alpha) / 2)
    ids = ("all_to_all_single", "forward", "int")
    assert b[ids].ms == pytest.approx(a[ids].ms)


def test_choose_layout_says_flat_or_dmt_and_why():
    from dmt.perf.planning import DMT_MARGIN, choose_layout, sweep

    model = ModelShape(num_embeddings=200_000, embedding_dim=128)
    hier = choose_layout(model, load_cluster("h200x4-2x2-hierarchical"), 8192)
    assert hier.kind == "dmt" and hier.speedup >= DMT_MARGIN and hier.reason.startswith("DMT:")
    assert hier.dmt.setup.intra_sharding != "table_column_wise"  # row-wise Adagrad: exact shardings only
    nvlink = choose_layout(model, load_cluster("h200x4-2x2-nvlink"), 8192)
    assert nvlink.kind == "flat" and nvlink.speedup < DMT_MARGIN and "flat:" in nvlink.reason
    assert nvlink.flat.step_ms == min(
        r.step_ms
        for r in sweep(model, load_cluster("h200x4-2x2-nvlink"), 8192)
        if not r.setup.is_dmt and r.setup.codec.name == "fp32"
    )
    with pytest.raises(DmtError, match="at least 2 hosts"):
        choose_layout(model, load_cluster("h200x4-2x2-nvlink").with_hosts(1), 8192)


def test_sweep_rates_each_row_against_the_best_flat_at_its_codec():
    from dmt.perf.planning import sweep

    rows = sweep(ModelShape(embedding_dim=128), load_cluster("h200x4-2x2-hierarchical"), 2048)
    assert {r.setup.flat_sharding for r in rows if not r.setup.is_dmt} == {
        "table_wise",
        "table_row_wise",
        "row_wise",
        "2d",
    }
    assert {r.setup.intra_sharding for r in rows if r.setup.is_dmt} == {
        "table_row_wise",
        "table_column_wise",
        "table_wise",
    }
    for r in rows:
        best = min(f.step_ms for f in rows if not f.setup.is_dmt and f.setup.codec.name == r.setup.codec.name)
        assert r.speedup == pytest.approx(best / r.step_ms)


def test_calibration_reads_the_new_bench_json(tmp_path):
    """Layouts per variant, the planner's recorded types, what "auto" resolved to, and the link kind."""
    from dmt.perf.calibration import link_kind

    report = json.loads(Path(GPU_JSON).read_text())
    one = report["variants"]["flat"]
    report["config"] |= {"link_kind": "hierarchical", "tower_sharding": "auto"}
    report["variants"] = {
        "flat:table_row_wise": one | {"layout": "table_row_wise"},
        "flat:planner": one | {"layout": "planner", "sharding_types": {"table_row_wise": 26}},
        "flat:planner+comm": one | {"layout": "planner", "sharding_types": {"table_wise": 20, "row_wise": 6}},
        "dmt": report["variants"]["dmt+comm"] | {"layout": "auto", "intra_sharding": "table_wise"},
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    ms = {m.source.split(":", 1)[1]: m for m in measurements_from_bench(path, "x")}
    assert set(ms) == {"flat:table_row_wise", "flat:planner", "dmt"}  # a mixed plan is not modelled
    assert ms["flat:table_row_wise"].setup.flat_sharding == ms["flat:planner"].setup.flat_sharding == "table_row_wise"
    assert ms["dmt"].setup.intra_sharding == "table_wise" and ms["dmt"].setup.codec.name == "fp32"
    assert link_kind(report) == "hierarchical"
    assert link_kind({"config": {"link": "NCCL sockets (--slow-link)"}}) == "sockets"


def test_a_param_can_also_set_another_clusters_field():
    from dmt.perf.calibration import apply_params

    a, b = _topo(gpus=2), _topo(gpus=2)
    p = Param("nvlink", "inter_host.efficiency", ("a",), also=(("b", "intra_host.efficiency"),))
    out = apply_params({"a": a, "b": b}, [p], [0.7])
    assert out["a"].inter_host.efficiency == out["b"].intra_host.efficiency == 0.7
    assert out["b"].inter_host.efficiency == b.inter_host.efficiency


def test_cluster_for_an_emulated_job():
    from dmt.perf.planning import cluster_for_job

    assert cluster_for_job(hosts=2, ranks_per_host=2, link="hierarchical", cuda=True).name == "h200x4-2x2-hierarchical"
    assert cluster_for_job(hosts=2, ranks_per_host=1, link="hierarchical", cuda=True).name == "h200x4-2x1-sockets"
    assert cluster_for_job(hosts=4, ranks_per_host=2, link="default", cuda=True).hosts == 4
    cpu = cluster_for_job(hosts=2, ranks_per_host=1, link="default", cuda=False)
    assert (cpu.name, cpu.hosts, cpu.gpus_per_host) == ("cpu-2x2-loopback", 2, 1)
    with pytest.raises(DmtError, match="pass it as --cluster"):
        cluster_for_job(hosts=2, ranks_per_host=8, link="nvlink", cuda=True)
