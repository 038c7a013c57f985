"""A run directory records its run, is locked while used, and is never reused by accident.

Issue 20, item 3: a second run into a used --out overwrote metrics.json, kept the old run's higher
checkpoints (deleting the new run's), and two runs on one --out both "succeeded".
"""

from __future__ import annotations

import json

import pytest

from dmt.cli import main
from dmt.train.checkpoint import latest_checkpoint
from dmt.train.job import JobConfig
from dmt.train.run_dir import claim_run_dir, data_fingerprint

FAST = ["--preset", "debug", "--batch-size", "64", "--no-progress", "--seed", "1"]


def _train(data, out, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *FAST, *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmt train: error:"), err
    return err[0]


def test_a_used_out_is_refused_and_left_untouched(synthetic_criteo, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic_criteo, out, "--max-steps", "4", "--checkpoint-every", "2") == 0
    # .lock aside: whoever takes the lock writes who holds it, refused or not
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert _train(synthetic_criteo, out, "--max-steps", "6", "--lr", "0.1") == 2
    line = _one_error_line(capsys)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_run_json_records_the_identity(synthetic_criteo, tmp_path):
    out = tmp_path / "run"
    assert _train(synthetic_criteo, out, "--max-steps", "2") == 0
    run = json.loads((out / "run.json").read_text())
    assert len(run["config_sha256"]) == 64 and run["config"]["values"]["optim"]["sparse_lr"] == 0.05
    assert run["data"] == {**data_fingerprint(synthetic_criteo), "mtime_ns": run["data"]["mtime_ns"]}
    assert run["fingerprint"]["optimizer"] == {"sparse": "rowwise_adagrad", "dense": "adagrad"}
    assert run["fingerprint"]["data"]["sample_sha256"] == run["data"]["sample_sha256"]


def test_overwrite_replaces_the_old_run_and_its_checkpoints(synthetic_criteo, tmp_path):
    out = tmp_path / "run"
    assert _train(synthetic_criteo, out, "--max-steps", "30", "--checkpoint-every", "10") == 0
    assert _train(synthetic_criteo, out, "--max-steps", "10", "--checkpoint-every", "5", "--overwrite") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000005", "step_00000010"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 10
    # ... and a later --resume continues the new run, not the old weights
    assert latest_checkpoint(out / "checkpoints").name == "step_00000010"


def test_resume_and_overwrite_together_are_refused(synthetic_criteo, tmp_path, capsys):
    assert _train(synthetic_criteo, tmp_path / "run", "--resume", "--overwrite") == 2
    assert "give one of them" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_directory_in_use_is_refused(synthetic_criteo, tmp_path, capsys):
    """Another process holds the lock (here: this one, through a second open file: flock tells them apart)."""
    out = tmp_path / "run"
    cfg = JobConfig(data=str(synthetic_criteo), out=str(out))
    with claim_run_dir(cfg, 1):
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert _train(synthetic_criteo, out, "--max-steps", "2", *extra) == 2
            line = _one_error_line(capsys)
            assert "is in use by another run" in line and "pid" in line
        assert not (out / "metrics.json").exists()
    assert _train(synthetic_criteo, out, "--max-steps", "2") == 0  # free again once released


def test_resume_reports_changed_settings(synthetic_criteo, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic_criteo, out, "--max-steps", "4", "--checkpoint-every", "2") == 0
    capsys.readouterr()
    assert _train(synthetic_criteo, out, "--max-steps", "6", "--checkpoint-every", "2", "--lr", "0.1", "--resume") == 0
    out_text = capsys.readouterr().out
    assert "resumed from" in out_text and "settings changed since the last run" in out_text
    assert "optim.sparse_lr 0.05 -> 0.1" in out_text


def test_a_failed_run_leaves_nothing_behind(tmp_path, capsys):
    """Bad rows found after the claim: the claim is undone (no run.json, no directory)."""
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\t3\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(bad), "--out", str(out), *FAST]) == 2
    assert "bad.tsv:1" in _one_error_line(capsys)
    assert not out.exists()


def test_retention_never_deletes_the_newest_checkpoint_of_this_run(tmp_path):
    """Checkpoints of higher steps from another run are dropped, not this run's newest."""
    torch = pytest.importorskip("torch")
    from dmt.train.checkpoint import save_checkpoint

    root = tmp_path / "checkpoints"
    for step in (30, 40):  # another run's, further along
        (root / f"step_{step:08d}").mkdir(parents=True)
        (root / f"step_{step:08d}" / "meta.json").write_text("{}")
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = {"fingerprint": {}, "progress": {}}
    for step in (5, 10, 15):
        save_checkpoint(root, step, model, optimizer, meta)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000010", "step_00000015"]
    assert latest_checkpoint(root).name == "step_00000015"
