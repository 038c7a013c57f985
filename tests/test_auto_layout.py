"""`dmt train --plan auto`: the cost model picks flat or DMT before training and says why."""

from __future__ import annotations

import json

import pytest

from dmt.cli import main
from dmt.perf.cost_model import ModelShape, load_cluster
from dmt.perf.planning import auto_plan, choose_layout

COMMON = ["--preset", "debug", "--max-steps", "3", "--batch-size", "32", "--no-progress"]
FEATURES = tuple(f"cat_{i}" for i in range(26))


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *COMMON, *extra])


def test_one_host_trains_flat_and_says_why(synthetic_criteo, tmp_path, capsys):
    assert _train(synthetic_criteo, tmp_path, "--plan", "auto") == 0
    assert "--plan auto: flat: DMT needs at least 2 hosts" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["model"] == "dlrm"


def test_slow_link_cluster_trains_the_chosen_dmt(synthetic_criteo, tmp_path, capfd):
    # The debug model moves few bytes: a slow link (250 Mbit/s between the 2 CPU hosts) and a
    # larger batch make DMT's smaller exchange pay for its fixed cost (predicted 1.31x; at batch
    # 32 it is 1.01x, and the H200 hierarchical presets, refit on their runs, choose flat).
    args = ["--plan", "auto", "--cluster", "cpu-shaped-250mbit", "--batch-size", "1024"]
    args += ["--hosts", "2", "--ranks-per-host", "1"]
    assert _train(synthetic_criteo, tmp_path, *args) == 0
    err = capfd.readouterr().err
    assert err.count("--plan auto: DMT:") == 1  # the launcher says it once, not every rank
    m = json.loads((tmp_path / "metrics.json").read_text())
    towers = m["config"]["towers"]
    assert m["model"] == "dmt(dlrm)" and towers["module"]["kind"] == "dot"  # c=4 (the reason line says)
    assert sorted(f for t in towers["plan"]["towers"] for f in t["features"]) == sorted(FEATURES)


def test_auto_plan_follows_the_choice():
    model = ModelShape(num_embeddings=200_000, embedding_dim=128)
    dmt = choose_layout(model, load_cluster("h200x4-2x2-hierarchical"), 8192)
    flat = choose_layout(model, load_cluster("h200x4-2x2-nvlink"), 8192)
    assert (dmt.kind, flat.kind) == ("dmt", "flat") and auto_plan(flat, FEATURES, 2) is None
    plan = auto_plan(dmt, FEATURES, 2)
    assert len(plan.towers) == dmt.dmt.setup.num_towers
    assert [t.host for t in plan.towers] == [i % 2 for i in range(len(plan.towers))]
    assert [f for t in plan.towers for f in t.features] == list(FEATURES)  # contiguous, in order


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cluster", "h100-nvlink-400g"], "add --plan auto"),
        (["--plan", "auto", "--tower-compression", "4"], "chooses the tower module"),
        (["--plan", "auto", "--cluster", "no-such-cluster", "--hosts", "2"], "no-such-cluster"),
    ],
    ids=["cluster-without-auto", "auto-with-compression", "unknown-cluster"],
)
def test_bad_auto_flags_are_one_line(synthetic_criteo, tmp_path, capsys, extra, message):
    assert _train(synthetic_criteo, tmp_path / "r", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
