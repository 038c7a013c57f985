"""`dmt train --plan`: DMT with compressing tower modules, sharded over emulated hosts, trains exactly
like the unsharded DMT model in one process (same seed, same global batch)."""

from __future__ import annotations

import json

import numpy as np

from dmt.cli import main
from dmt.plan import Tower, TowerPlan


def test_compressed_dmt_sharded_matches_unsharded(synthetic_criteo, tmp_path):
    feats = [f"cat_{i}" for i in range(26)]
    # tower order differs from host order; 7/6/7/6 features, linear modules with c=4
    plan = TowerPlan(
        towers=(
            Tower("a", feats[0:7], host=1),
            Tower("b", feats[7:13], host=0),
            Tower("c", feats[13:20], host=1),
            Tower("d", feats[20:], host=0),
        ),
        num_hosts=2,
    )
    plan.to_json(tmp_path / "plan.json")
    common = [
        "--data",
        str(synthetic_criteo),
        "--preset",
        "debug",
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        "--no-progress",
        "--plan",
        str(tmp_path / "plan.json"),
        "--tower-module",
        "linear",
        "--compression",
        "4",
    ]
    assert main(["train", *common, "--batch-size", "64", "--out", str(tmp_path / "one")]) == 0
    assert (
        main(
            [
                "train",
                *common,
                "--batch-size",
                "16",
                "--hosts",
                "2",
                "--ranks-per-host",
                "2",
                "--out",
                str(tmp_path / "four"),
                "--profile",  # the profiled steps train like the others, on every rank
            ]
        )
        == 0
    )
    one = json.loads((tmp_path / "one/metrics.json").read_text())
    four = json.loads((tmp_path / "four/metrics.json").read_text())
    assert one["model"] == four["model"] == "dmt(dlrm)"
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=2e-5, atol=2e-6)
    assert four["cross_host_bytes_per_sample"] > 0 and four["intra_host_bytes_per_sample"] > 0
    assert four["profiled_steps"] == 5
    assert sorted(p.name for p in (tmp_path / "four/profile").glob("*.txt")) == [f"train_rank{r}.txt" for r in range(4)]
