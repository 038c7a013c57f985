"""Checkpoints: atomic on disk, and a run killed mid-way resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json

import pytest
import torch
from _fault import kill_rank_after_checkpoint, stop_killing
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dmt.cli import main
from dmt.plan import Tower, TowerPlan
from dmt.train.checkpoint import latest_checkpoint

ARGS = ["--preset", "debug", "--max-steps", "30", "--checkpoint-every", "10", "--no-progress", "--seed", "5"]


def _train(data, out, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *ARGS, *extra])


def _tensors(ckpt_dir, tmp_path) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint (model and optimizer state), flattened by key."""
    target = tmp_path / f"{ckpt_dir.parent.parent.name}.pt"
    dcp_to_torch_save(ckpt_dir, target)
    out: dict[str, torch.Tensor] = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif torch.is_tensor(v):
                out[prefix + k] = v

    walk(torch.load(target, weights_only=False))
    return out


def _assert_same_state(a_dir, b_dir, tmp_path) -> None:
    a, b = _tensors(a_dir, tmp_path), _tensors(b_dir, tmp_path)
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_single_process_resume_is_exact(synthetic_criteo, tmp_path):
    assert _train(synthetic_criteo, tmp_path / "full", "--batch-size", "64") == 0
    partial = ["--batch-size", "64"]
    assert (
        main(
            [
                "train",
                "--data",
                str(synthetic_criteo),
                "--out",
                str(tmp_path / "resumed"),
                "--preset",
                "debug",
                "--max-steps",
                "20",
                "--checkpoint-every",
                "10",
                "--no-progress",
                "--seed",
                "5",
                *partial,
            ]
        )
        == 0
    )
    assert _train(synthetic_criteo, tmp_path / "resumed", *partial, "--resume") == 0
    full = json.loads((tmp_path / "full/metrics.json").read_text())
    resumed = json.loads((tmp_path / "resumed/metrics.json").read_text())
    assert resumed["losses"] == full["losses"] and len(full["losses"]) == 30
    _assert_same_state(
        tmp_path / "full/checkpoints/step_00000030", tmp_path / "resumed/checkpoints/step_00000030", tmp_path
    )


def _dmt_plan(tmp_path) -> list[str]:
    """Three towers, logical order != host order (hosts 1, 0, 1), linear modules with c=2."""
    feats = [f"cat_{i}" for i in range(26)]
    plan = TowerPlan(
        towers=(Tower("t0", feats[:9], host=1), Tower("t1", feats[9:18], host=0), Tower("t2", feats[18:], host=1)),
        num_hosts=2,
    )
    plan.to_json(tmp_path / "plan.json")
    return ["--plan", str(tmp_path / "plan.json"), "--tower-module", "linear", "--compression", "2"]


@pytest.mark.parametrize("model", ["flat", "dmt"])
def test_kill9_a_rank_then_resume_matches_uninterrupted(synthetic_criteo, tmp_path, monkeypatch, capfd, model):
    """flat: the job relaunches itself (--max-restarts); dmt: the user relaunches with --resume.

    The kill is proven (the launcher's restart line, metrics.json's restarts / resumed_from_step),
    and the resumed run's byte metrics count its own steps (they were 0.0 after any resume).
    """
    dist = ["--batch-size", "16", "--hosts", "2", "--ranks-per-host", "2"]
    if model == "dmt":
        dist += _dmt_plan(tmp_path)
    assert _train(synthetic_criteo, tmp_path / "full", *dist) == 0
    # Rank 1 SIGKILLs itself right after the step-20 checkpoint; its peers die with it.
    kill_rank_after_checkpoint(monkeypatch, rank=1, step=20)
    capfd.readouterr()
    if model == "flat":
        assert _train(synthetic_criteo, tmp_path / "killed", *dist, "--max-restarts", "1") == 0
        assert "restart 1 of 1 from the newest checkpoint" in capfd.readouterr().err
    else:
        assert _train(synthetic_criteo, tmp_path / "killed", *dist, "--resume") != 0
        stop_killing(monkeypatch)
        assert latest_checkpoint(tmp_path / "killed/checkpoints").name == "step_00000020"
        assert _train(synthetic_criteo, tmp_path / "killed", *dist, "--resume") == 0
    full = json.loads((tmp_path / "full/metrics.json").read_text())
    killed = json.loads((tmp_path / "killed/metrics.json").read_text())
    assert (killed["resumed_from_step"], killed["restarts"]) == (20, 1 if model == "flat" else 0)
    assert (full["resumed_from_step"], full["restarts"]) == (0, 0)
    assert killed["losses"] == full["losses"] and len(full["losses"]) == 30
    for key in ("cross_host_bytes_per_sample", "intra_host_bytes_per_sample"):
        # steps 21-30 against steps 1-30 of the same job: the same tensors per step, ids aside
        assert killed[key] > 0 and killed[key] == pytest.approx(full[key], rel=0.05), key
    _assert_same_state(
        tmp_path / "full/checkpoints/step_00000030", tmp_path / "killed/checkpoints/step_00000030", tmp_path
    )


def test_interrupted_save_is_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00000010").mkdir(parents=True)
    (root / "step_00000010" / "meta.json").write_text("{}")
    (root / ".tmp-step_00000020").mkdir()  # a save that crashed before its rename
    (root / "step_00000030").mkdir()  # shards without meta.json: not a finished checkpoint
    assert latest_checkpoint(root).name == "step_00000010"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_resume_refuses_a_different_run(synthetic_criteo, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(synthetic_criteo, out, "--batch-size", "64") == 0
    assert _train(synthetic_criteo, out, "--batch-size", "32", "--resume") == 2
    err = capsys.readouterr().err
    assert "different run" in err and "global_batch" in err


@pytest.mark.parametrize("model", ["flat", "dmt"])
def test_resume_with_a_different_sharding_reshards(synthetic_criteo, tmp_path, model):
    """Same topology, shards on different ranks: save row-wise, resume column-/table-wise (DCP reshards).

    Plain Adagrad (element-wise state): row-wise Adagrad keeps one accumulator per row *per
    shard*, which column-wise sharding splits, so that optimizer cannot move between the two.
    """
    dist = ["--batch-size", "16", "--hosts", "2", "--ranks-per-host", "2", "--sparse-optimizer", "adagrad"]
    if model == "dmt":
        dist += _dmt_plan(tmp_path)
        first, second = ["--tower-sharding", "table_row_wise"], ["--tower-sharding", "table_column_wise"]
    else:
        first, second = ["--sharding", "row_wise"], ["--sharding", "table_wise"]
    assert _train(synthetic_criteo, tmp_path / "full", *dist, *first) == 0
    assert (
        main(
            [
                "train",
                "--data",
                str(synthetic_criteo),
                "--out",
                str(tmp_path / "moved"),
                "--preset",
                "debug",
                "--max-steps",
                "20",
                "--checkpoint-every",
                "10",
                "--no-progress",
                "--seed",
                "5",
                *dist,
                *first,
            ]
        )
        == 0
    )
    assert _train(synthetic_criteo, tmp_path / "moved", *dist, *second, "--resume") == 0
    full = json.loads((tmp_path / "full/metrics.json").read_text())
    moved = json.loads((tmp_path / "moved/metrics.json").read_text())
    assert (
        moved["config"]["flat_sharding" if model == "flat" else "towers"]
        != full["config"]["flat_sharding" if model == "flat" else "towers"]
    )
    # Another sharding sums partial results in another order: equal up to float rounding.
    assert moved["losses"][:20] == full["losses"][:20]
    assert moved["losses"][20:] == pytest.approx(full["losses"][20:], rel=1e-4, abs=1e-6)
    a = _tensors(tmp_path / "full/checkpoints/step_00000030", tmp_path)
    b = _tensors(tmp_path / "moved/checkpoints/step_00000030", tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_checkpoint_at_every_boundary_and_where_the_data_ends(synthetic_criteo, tmp_path):
    """Steps 3 and 6 at --checkpoint-every 3; the data runs out at step 7, which is saved too."""
    out = tmp_path / "short"
    assert (
        main(
            [
                "train",
                "--data",
                str(synthetic_criteo),
                "--out",
                str(out),
                "--preset",
                "debug",
                "--batch-size",
                "640",
                "--epochs",
                "1",
                "--checkpoint-every",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    steps = json.loads((out / "metrics.json").read_text())["steps"]
    assert steps % 3 != 0, steps  # the test needs the data to end between two checkpoints
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == [f"step_{(steps // 3) * 3:08d}", f"step_{steps:08d}"], saved
    assert latest_checkpoint(out / "checkpoints").name == f"step_{steps:08d}"
