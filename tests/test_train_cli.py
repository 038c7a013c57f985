"""`dmt train` on bad input: one line naming the problem and the fix, exit 2, nothing written."""

from __future__ import annotations

import pytest

from dmt.cli import main
from dmt.plan import TowerPlan

FEATURES = [f"cat_{i}" for i in range(26)]


@pytest.fixture
def plan_2_hosts(tmp_path):
    path = tmp_path / "plan.json"
    TowerPlan.from_groups([FEATURES[:13], FEATURES[13:]], num_hosts=2).to_json(path)
    return str(path)


def _fails(capsys, tmp_path, argv: list[str], *expected: str) -> None:
    out = tmp_path / "out"
    assert main(["train", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmt train: error:"), err
    for text in expected:
        assert text in err[0]
    assert not (out / "metrics.json").exists()


def test_profile_into_a_file(capsys, tmp_path, synthetic_criteo):
    (tmp_path / "taken").write_text("")
    argv = ["--data", str(synthetic_criteo), "--profile", str(tmp_path / "taken")]
    _fails(capsys, tmp_path, argv, "--profile", "taken", "not a directory")


def test_missing_data_file(capsys, tmp_path):
    _fails(capsys, tmp_path, ["--data", str(tmp_path / "nope.tsv"), "--hosts", "2"], "no such file", "nope.tsv")


def test_plan_needing_more_hosts_than_launched(capsys, tmp_path, synthetic_criteo, plan_2_hosts):
    _fails(
        capsys,
        tmp_path,
        ["--data", str(synthetic_criteo), "--plan", plan_2_hosts, "--hosts", "1", "--ranks-per-host", "2"],
        "2 hosts",
        "re-partition",
    )


def test_plan_for_other_features(capsys, tmp_path, synthetic_criteo):
    path = tmp_path / "plan.json"
    TowerPlan.from_groups([FEATURES[:10], FEATURES[10:20]], num_hosts=2).to_json(path)
    _fails(capsys, tmp_path, ["--data", str(synthetic_criteo), "--plan", str(path)], "cat_20")


def test_bad_plan_json(capsys, tmp_path, synthetic_criteo):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    _fails(capsys, tmp_path, ["--data", str(synthetic_criteo), "--plan", str(path)], "plan.json")


def test_bad_comm_compression(capsys, tmp_path, synthetic_criteo, plan_2_hosts):
    _fails(
        capsys,
        tmp_path,
        ["--data", str(synthetic_criteo), "--plan", plan_2_hosts, "--hosts", "2", "--comm-compression", "fp17"],
        "--comm-compression",
        "fp17",
    )


def test_comm_compression_without_ranks(capsys, tmp_path, synthetic_criteo):
    _fails(capsys, tmp_path, ["--data", str(synthetic_criteo), "--comm-compression", "fp16"], "--hosts")


def test_impossible_topology(capsys, tmp_path, synthetic_criteo):
    _fails(capsys, tmp_path, ["--data", str(synthetic_criteo), "--hosts", "0"], "--hosts", "0 must be >= 1")


def test_bad_row_under_emulated_hosts_is_one_line(capfd, tmp_path):
    """The ranks find it; only rank 0 prints, and torchrun's own failure report stays out."""
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\t3\n")
    _fails(capfd, tmp_path, ["--data", str(bad), "--preset", "debug", "--hosts", "2"], "bad.tsv:1", "--skip-bad-rows")


@pytest.mark.parametrize("workers", ["0", "many"])
def test_bad_data_workers(capsys, tmp_path, synthetic_criteo, workers):
    _fails(capsys, tmp_path, ["--data", str(synthetic_criteo), "--data-workers", workers], "--data-workers", "'auto'")
