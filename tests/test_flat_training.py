"""The flat baseline trains, and sharding it over emulated hosts changes nothing but speed.

The distributed runs are real: `dmt train --hosts H --ranks-per-host L` starts H torchrun agents
with L gloo ranks each, and the result is compared against the unsharded one-process run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmt.cli import main

COMMON = ["--preset", "debug", "--max-steps", "24", "--eval-every", "12", "--no-progress", "--seed", "3"]


def _train(data, out, *extra: str) -> dict:
    assert main(["train", "--data", str(data), "--out", str(out), *COMMON, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single_process(synthetic_criteo, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return _train(synthetic_criteo, out, "--batch-size", "128")


def test_single_process_learns_and_reports(single_process):
    m = single_process
    assert m["steps"] == 24 and len(m["losses"]) == 24
    assert [e["step"] for e in m["evals"]] == [12, 24]
    for key in ("auc", "logloss", "ne", "samples_per_s"):
        assert np.isfinite(m[key])
    assert m["losses"][-1] < m["losses"][0]  # it learns something


def test_fixed_seed_gives_identical_loss_curve(synthetic_criteo, tmp_path, single_process):
    again = _train(synthetic_criteo, tmp_path, "--batch-size", "128")
    assert again["losses"] == single_process["losses"]


@pytest.mark.parametrize(
    "sharding, hosts, ranks",
    [("table_wise", 2, 2), ("row_wise", 2, 2)],
    ids=["tw-2x2", "rw-2x2"],
)
def test_sharded_matches_single_process(synthetic_criteo, tmp_path, single_process, sharding, hosts, ranks):
    # Same global batch (128 = 32 x 4 ranks), same seed: the same samples at every step.
    sharded = _train(
        synthetic_criteo,
        tmp_path,
        "--batch-size",
        str(128 // (hosts * ranks)),
        "--hosts",
        str(hosts),
        "--ranks-per-host",
        str(ranks),
        "--sharding",
        sharding,
    )
    assert sharded["world_size"] == hosts * ranks
    # every held-out row scored once on 4 ranks too: the last batch is padded, the padding masked
    assert sharded["eval_rows"] == single_process["eval_rows"] == 1200
    np.testing.assert_allclose(sharded["losses"], single_process["losses"], rtol=2e-5, atol=2e-6)
    assert sharded["auc"] == pytest.approx(single_process["auc"], abs=1e-4)


def test_dcn_sharded_matches_single_process(synthetic_criteo, tmp_path):
    one = _train(synthetic_criteo, tmp_path / "one", "--model", "dlrm_dcn", "--batch-size", "64")
    two = _train(
        synthetic_criteo,
        tmp_path / "two",
        "--model",
        "dlrm_dcn",
        "--batch-size",
        "32",
        "--hosts",
        "2",
        "--ranks-per-host",
        "1",
    )
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=2e-5, atol=2e-6)


def test_profile_window_follows_the_count_window():
    from dmt.train.loop import COUNT_AFTER, COUNT_STEPS, count_window, profile_window

    assert count_window(0, 1000).stop == COUNT_AFTER + COUNT_STEPS == profile_window(0, 1000).start
    assert profile_window(0, 1000) == range(25, 30)
    assert profile_window(40, 1000) == range(65, 70)  # a resumed run: after its own warm-up
    assert profile_window(0, 24) == range(19, 24)  # a short run: its last steps
    assert profile_window(0, 3) == range(3)


def test_profile_records_steps_without_changing_the_run(synthetic_criteo, tmp_path, single_process):
    """--profile writes a top-ops table and a Chrome trace, leaves those steps out of samples/s, and
    trains exactly as without it. Its window (the last 5 of 24 steps) is cut by an evaluation at
    step 21: one profile, of its first 2 steps."""
    m = _train(synthetic_criteo, tmp_path / "run", "--batch-size", "128", "--eval-every", "21", "--profile")
    assert m["losses"] == single_process["losses"]
    assert m["profiled_steps"] == 2 and single_process["profiled_steps"] == 0
    assert m["stage_seconds"]["profile"] > 0 and "profile" not in single_process["stage_seconds"]
    table = (tmp_path / "run" / "profile" / "train_rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    trace = json.loads((tmp_path / "run" / "profile" / "train_rank0.trace.json").read_text())
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
