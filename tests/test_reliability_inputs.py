"""Bad numbers and plan fields, output paths checked before work, every row scored (issue 20, items 5-8).

Every bad input: one line naming the problem, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from dmt.atomic import atomic_write_text
from dmt.cli import main
from dmt.cli.outputs import check_output_dir, check_output_file
from dmt.data.batching import PAD_LABEL, iter_batches
from dmt.data.criteo import CriteoArrays
from dmt.errors import DmtError
from dmt.plan import PlanError, Tower, TowerPlan

FEATURES = [f"cat_{i}" for i in range(26)]
FAST = ["--preset", "debug", "--no-progress"]


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dmt {command}: error:"), err
    return err[0]


# ------------------------------------------------------------------ item 7: numbers


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "-1"),
        ("--dense-lr", "0"),
        ("--tower-lr", "nan"),
        ("--seed", "-1"),
        ("--checkpoint-every", "-1"),
        ("--embedding-dim", "-4"),
        ("--embedding-dim", "0"),  # was silently replaced by the preset's
        ("--num-embeddings", "0"),  # likewise
        ("--batch-size", "0"),
        ("--epochs", "0"),
        ("--max-steps", "-1"),
        ("--eval-every", "-2"),
        ("--eval-fraction", "1.5"),
        ("--eval-fraction", "0"),
        ("--max-restarts", "-1"),
        ("--hosts", "0"),
        ("--ranks-per-host", "two"),
        ("--tower-compression", "0"),
    ],
)
def test_train_numbers_are_checked_before_anything_runs(synthetic_criteo, tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    assert main(["train", "--data", str(synthetic_criteo), "--out", str(out), *FAST, flag, value]) == 2
    line = _one_line(capsys, "train")
    assert f"argument {flag}" in line and value in line
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["plan-cluster", "--pooling", "nan"],
        ["plan-cluster", "--num-tables", "0"],
        ["plan-cluster", "--hosts", "0"],
        ["plan-cluster", "--embedding-dim", "-4"],
        ["demo", "--rows", "10"],
        ["demo", "--towers", "0"],
        ["demo", "--seed", "-1"],
    ],
)
def test_other_commands_check_their_numbers(capsys, argv):
    assert main(argv) == 2
    assert f"argument {argv[1]}" in _one_line(capsys, argv[0])


@pytest.mark.parametrize(
    "tower, problem",
    [
        ({"cost": "abc"}, "'cost' must be a finite number"),
        ({"cost": True}, "'cost' must be a finite number"),
        ({"host": "0"}, "'host' must be an integer"),
        ({"host": 0.0}, "'host' must be an integer"),
        ({"memory_bytes": -1}, "'memory_bytes' must be >= 0"),
        ({"name": 3}, "'name' must be a string"),
    ],
)
def test_plan_tower_fields_of_the_wrong_type(tower, problem):
    d = TowerPlan.from_groups([FEATURES], num_hosts=1).to_dict()
    d["towers"][0] |= tower
    with pytest.raises(PlanError, match=problem):
        TowerPlan.from_dict(d)


@pytest.mark.parametrize("num_hosts", [None, "2", 2.7, 2.0, True])
def test_plan_num_hosts_must_be_a_json_integer(num_hosts):
    """``"2"`` and 2.7 were accepted (converted by int()); null raised a TypeError."""
    d = TowerPlan.from_groups([FEATURES[:13], FEATURES[13:]], num_hosts=2).to_dict() | {"num_hosts": num_hosts}
    with pytest.raises(PlanError, match="'num_hosts' must be an integer"):
        TowerPlan.from_dict(d)


def test_plan_with_a_bad_field_fails_train_in_one_line(synthetic_criteo, tmp_path, capsys):
    d = TowerPlan.from_groups([FEATURES], num_hosts=1).to_dict()
    d["towers"][0]["cost"] = "abc"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(d))
    out = tmp_path / "out"
    assert main(["train", "--data", str(synthetic_criteo), "--out", str(out), *FAST, "--plan", str(plan)]) == 2
    assert "'cost' must be a finite number" in _one_line(capsys, "train")
    assert not out.exists()


def test_python_callers_may_pass_numpy_numbers():
    """The partitioner builds towers from numpy arrays: integral and real numpy values are fine."""
    t = Tower("t", ("cat_0",), host=np.int64(1), cost=np.float32(2.5), memory_bytes=np.int64(8))
    assert (type(t.host), type(t.cost), type(t.memory_bytes)) == (int, float, int)
    with pytest.raises(PlanError, match="'host' must be an integer"):
        Tower("t", ("cat_0",), host=1.5)


# ------------------------------------------------------------------ items 5, 6: outputs


def test_train_out_naming_a_file_fails_before_reading_data(tmp_path, capsys):
    out = tmp_path / "a_file"
    out.write_text("keep me")
    # the data does not exist: the --out check must come first, before anything looks at data
    assert main(["train", "--data", str(tmp_path / "none.tsv"), "--out", str(out), *FAST]) == 2
    assert "--out" in (line := _one_line(capsys, "train")) and "not a directory" in line
    assert out.read_text() == "keep me"


def test_train_empty_out_writes_nothing(synthetic_criteo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(synthetic_criteo), "--out", "", *FAST]) == 2
    assert "--out is empty" in _one_line(capsys, "train")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag", ["--report", "--plot"])
def test_plan_cluster_checks_outputs_before_the_sweep(tmp_path, capsys, flag):
    assert main(["plan-cluster", "--hosts", "2", flag, str(tmp_path)]) == 2
    assert f"{flag} {tmp_path} is a directory" in _one_line(capsys, "plan-cluster")
    assert capsys.readouterr().out == ""  # no table: the work never started


def test_output_checks(tmp_path):
    file, fifo = tmp_path / "file", tmp_path / "fifo"
    file.write_text("x")
    os.mkfifo(fifo)
    check_output_file(tmp_path / "new" / "deeper" / "f.json", "--out")  # fine: created on write
    check_output_file(file, "--out")  # fine: replaced
    check_output_dir(tmp_path / "new" / "dir", "--out")
    check_output_file(None, "--plot")  # flag not given
    for path, check, problem in [
        (tmp_path, check_output_file, "is a directory"),
        (fifo, check_output_file, "is not a regular file"),
        (file / "f.json", check_output_file, "is a file, not a directory"),
        ("", check_output_file, "is empty"),
        (file, check_output_dir, "is not a directory"),
        (file / "sub", check_output_dir, "is a file, not a directory"),
        ("", check_output_dir, "is empty"),
    ]:
        with pytest.raises(DmtError, match=problem):
            check(path, "--flag")


def test_atomic_writer_refuses_special_files_and_keeps_links(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DmtError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]
    with pytest.raises(DmtError, match="is a directory"):
        atomic_write_text(tmp_path, "x")
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_empty_eval_split_fails_before_training(synthetic_criteo, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--data", str(synthetic_criteo), "--out", str(out), *FAST, "--eval-fraction", "0.00001"]
    assert main(argv) == 2
    line = _one_line(capsys, "train")
    assert "evaluation split is empty" in line and "--eval-fraction" in line
    assert not out.exists()


# ------------------------------------------------------------------ item 8: every row, skipped rows


def test_padded_evaluation_batches_hold_every_row_once():
    n, batch, world = 203, 16, 4  # 3 full global batches of 64, then 11 rows
    arrays = CriteoArrays(
        labels=np.ones(n, np.float32),
        dense=np.arange(n, dtype=np.float32)[:, None].repeat(13, 1),
        sparse=np.zeros((n, 26), np.int64),
    )
    seen, shapes = [], set()
    for rank in range(world):
        for b in iter_batches(
            arrays,
            batch_size=batch,
            num_embeddings=[10] * 26,
            rank=rank,
            world_size=world,
            shuffle=False,
            pad_last=True,
        ):
            shapes.add(tuple(b.dense_features.shape))
            seen += b.dense_features[b.labels != PAD_LABEL, 0].int().tolist()
    assert shapes == {(batch, 13)}  # equal shapes on every rank at every step
    assert sorted(seen) == list(range(n))


def test_evaluation_scores_every_row(synthetic_criteo, tmp_path):
    out = tmp_path / "out"
    argv = ["train", "--data", str(synthetic_criteo), "--out", str(out), *FAST, "--batch-size", "128"]
    assert main([*argv, "--max-steps", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_rows"] == 6000 - m["train_rows"] == 1200  # 1,152 before: 9 full batches of 128


def test_skipped_rows_are_reported_with_examples(synthetic_criteo, tmp_path, capsys):
    rows = synthetic_criteo.read_text().splitlines()[:3000]
    data = tmp_path / "third_bad.tsv"
    data.write_text("".join(r + "\n" if i % 3 else "1\t2\tbroken\n" for i, r in enumerate(rows)))
    out = tmp_path / "out"
    argv = ["train", "--data", str(data), "--out", str(out), *FAST, "--batch-size", "64", "--max-steps", "2"]
    assert main([*argv, "--skip-bad-rows"]) == 0
    err = capsys.readouterr().err
    assert "[dmt] --skip-bad-rows: skipped 1,000 malformed rows of 3,000 (33.3%), e.g." in err
    assert "third_bad.tsv:1" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["bad_rows_skipped"] == 1000 and m["bad_row_examples"]
