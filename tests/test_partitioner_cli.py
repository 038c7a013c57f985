"""`dmt partition`: table, plan, PNG and ARI on generated data; bad input exits 2 with one line."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from dmt.cli import main
from dmt.data.synthetic import SyntheticSpec, generate_criteo
from dmt.plan import TowerPlan


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    truth = generate_criteo(d / "rows.txt", rows=40_000, seed=1, spec=SyntheticSpec.tiny())
    (d / "truth.json").write_text(json.dumps(truth))
    return d


def _args(d, *extra):
    return [
        "partition",
        "--data",
        str(d / "rows.txt"),
        "--num-towers",
        "4",
        "--out",
        str(d / "plan.json"),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def tp_run(data):
    """One TP partition, run once: its output, and its cached representation for the baseline tests."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(
            _args(
                data,
                "--hosts",
                "2",
                "--steps",
                "150",
                "--probes",
                "2",
                "--resamples",
                "8",
                "--plot",
                str(data / "towers.png"),
                "--truth",
                str(data / "truth.json"),
                "--representation",
                str(data / "rep.npz"),
            )
        )
    return rc, stdout.getvalue()


def test_tp_writes_plan_table_png_and_ari(data, tp_run):
    rc, out = tp_run
    assert rc == 0
    assert "intra-tower affinity" in out and "tower_3" in out
    ari = float(out.split("adjusted Rand index")[1].split(":")[1].split()[0])
    assert ari > 0.5  # plumbing; recovery itself is tested in test_partitioner_learned.py
    plan = TowerPlan.from_json(data / "plan.json")
    assert plan.method == "tp" and plan.num_towers == 4 and sorted(t.host for t in plan.towers) == [0, 0, 1, 1]
    assert len(plan.features) == 26
    assert (data / "towers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (data / "rep.npz").exists()
    assert "from 2 probe(s)" in out and "best achievable" in out and "stability" in out
    confidence = plan.params["confidence"]
    assert len(confidence["stability"]) == 4 and confidence["num_resamples"] == 8
    assert isinstance(confidence["trusted"], bool) and len(confidence["internal_share"]) == 4
    assert confidence["regret"] >= 0


def test_too_little_data_is_flagged_in_the_output_and_the_plan(data, capsys):
    # 3,000 rows: the probes disagree, towers change between resamples (stability ~0.5).
    rc = main(_args(data, "--max-rows", "3000", "--steps", "60", "--probes", "2", "--resamples", "8"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "warning: low confidence: on 8 resamples" in out and "3,000 rows are likely too few" in out
    confidence = TowerPlan.from_json(data / "plan.json").params["confidence"]
    assert confidence["trusted"] is False and confidence["warning"].startswith("low confidence")


def test_eight_towers_work_at_the_default_tolerance(data, tp_run, capsys):
    # 26 features cannot be within 1.1x of the mean in 8 towers; the limit is 1.1x the best achievable.
    assert tp_run[0] == 0
    assert main(_args(data, "--num-towers", "8", "--representation", str(data / "rep.npz"))) == 0
    plan = TowerPlan.from_json(data / "plan.json")
    assert plan.num_towers == 8 and len(plan.features) == 26
    stats = plan.params["stats"]
    assert stats["imbalance"] <= stats["max_imbalance"] == pytest.approx(1.1 * stats["best_imbalance"])
    assert "best achievable" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["random", "round_robin", "greedy"])
def test_baselines_reuse_the_cached_representation(data, tp_run, capsys, method):
    assert tp_run[0] == 0 and (data / "rep.npz").exists()
    assert (
        main(_args(data, "--method", method, "--representation", str(data / "rep.npz"), "--balance-tolerance", "0.0"))
        == 0
    )
    out = capsys.readouterr().out
    assert "from " + str(data / "rep.npz") in out
    assert f"warning: {method}: max tower load is" in out  # nothing balances 26 features exactly
    assert TowerPlan.from_json(data / "plan.json").method == method


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-towers", "0"], "--num-towers=0 must be >= 1"),
        (["--num-towers", "27", "--steps", "0", "--method", "greedy"], "n_samples=26 features cannot fill"),
        (["--balance-tolerance", "-1"], "--balance-tolerance=-1.0 must be >= 0"),
        (["--steps", "0"], "tp needs >= 1 steps"),
        (["--truth", "/nonexistent/truth.json"], "cannot read --truth"),
        (["--hosts", "0"], "--hosts=0 must be >= 1"),
        (["--probes", "0"], "--probes=0 must be >= 1"),
        (["--resamples", "-1"], "--resamples=-1 must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(data, capsys, extra, message):
    assert main(_args(data, *extra)) == 2  # a repeated flag: argparse keeps the last
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dmt partition: error: ") and message in err


def test_missing_data_exits_2(tmp_path, capsys):
    assert (
        main(
            [
                "partition",
                "--data",
                str(tmp_path / "none.txt"),
                "--num-towers",
                "2",
                "--out",
                str(tmp_path / "p.json"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "none.txt" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_dmt_never_imports_sklearn_or_networkx():
    code = (
        "import sys, dmt, dmt.cli, dmt.cli.partition; dmt.cli.build_parser(); "
        "bad = [m for m in ('sklearn', 'networkx', 'partitioner') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cached_representation_of_other_data_is_refused(data, capsys):
    if not (data / "rep.npz").exists():
        pytest.skip("needs the representation cached by the tp test")
    assert main(_args(data, "--representation", str(data / "rep.npz"), "--max-rows", "20000")) == 2
    assert "delete it to re-learn" in capsys.readouterr().err
