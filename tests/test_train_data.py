"""`dmt train` on preprocessed (memory-mapped) data, the field's splits, evaluations and early stop.

The distributed run is real (2 emulated hosts x 2 gloo ranks) and is compared with one process on
the same preprocessed data: the batch order depends on the seed only, never on the world size.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dmt.cli import main
from dmt.errors import DmtError
from dmt.train.job import _progress
from dmt.train.loop import LoopConfig, LoopResult

COMMON = ["--preset", "debug", "--no-progress", "--seed", "5"]


def _train(data, out, *extra: str) -> dict:
    assert main(["train", "--data", str(data), "--out", str(out), *COMMON, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def _rows(path) -> int:
    return len(path.read_text().splitlines())


@pytest.fixture(scope="module")
def preprocessed(synthetic_criteo, tmp_path_factory):
    out = tmp_path_factory.mktemp("npy") / "days"
    assert main(["preprocess", str(synthetic_criteo), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def kaggle_one_process(preprocessed, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return _train(preprocessed, out, "--split", "kaggle", "--batch-size", "128", "--epochs", "2")


def test_kaggle_split_of_preprocessed_days_evaluates_each_epoch(kaggle_one_process, synthetic_criteo):
    m = kaggle_one_process
    rows = _rows(synthetic_criteo)
    day = rows // 7
    assert m["train_rows"] == 6 * day
    assert m["eval_rows"] == (rows - 6 * day + 1) // 2  # day 6's first half (validation)
    assert m["data"] == {"train": "days 0-5", "eval": "day 6 (validation half)", "memory_mapped": True}
    per_epoch = 6 * day // 128
    assert m["steps_per_epoch"] == per_epoch and m["steps"] == 2 * per_epoch
    assert [e["step"] for e in m["evals"]] == [per_epoch, 2 * per_epoch]  # one per epoch end
    best = max(m["evals"], key=lambda e: e["auc"])
    assert m["best"]["step"] == best["step"] and m["best"]["auc"] == best["auc"]
    stages = m["stage_seconds"]
    assert {"start", "data", "build", "train", "eval", "other", "total"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    assert sum(v for k, v in stages.items() if k != "total") == pytest.approx(stages["total"], rel=1e-6)
    assert m["config"]["data_workers"] == "auto" and 1 <= m["data_workers"] <= 4


def test_sharded_on_preprocessed_matches_one_process(preprocessed, tmp_path, kaggle_one_process):
    sharded = _train(
        preprocessed,
        tmp_path,
        "--split",
        "kaggle",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--hosts",
        "2",
        "--ranks-per-host",
        "2",
    )
    assert sharded["world_size"] == 4 and sharded["eval_rows"] == kaggle_one_process["eval_rows"]
    # "auto" builds on at most this rank's share of the CPUs (2 ranks per host here).
    assert 1 <= sharded["data_workers"] <= max(1, min(4, len(os.sched_getaffinity(0)) // 2))
    np.testing.assert_allclose(sharded["losses"], kaggle_one_process["losses"], rtol=2e-5, atol=2e-6)
    assert sharded["auc"] == pytest.approx(kaggle_one_process["auc"], abs=1e-4)


def test_eval_data_trains_on_all_rows_and_scores_the_other_input(preprocessed, synthetic_criteo, tmp_path):
    m = _train(preprocessed, tmp_path, "--eval-data", str(synthetic_criteo), "--batch-size", "256", "--max-steps", "3")
    rows = _rows(synthetic_criteo)
    assert m["train_rows"] == rows and m["eval_rows"] == rows
    assert m["data"]["memory_mapped"] is True


def test_early_stop_when_the_evaluation_stops_improving(synthetic_criteo, tmp_path):
    # Learning rates far below float32 resolution: the model does not change, so neither does its AUC.
    frozen = ["--sparse-optimizer", "sgd", "--lr", "1e-30", "--dense-optimizer", "sgd", "--dense-lr", "1e-30"]
    m = _train(
        synthetic_criteo,
        tmp_path,
        *frozen,
        "--batch-size",
        "64",
        "--max-steps",
        "20",
        "--eval-every",
        "2",
        "--early-stop",
        "2",
    )
    assert m["stopped_early"] is True
    assert [e["step"] for e in m["evals"]] == [2, 4, 6] and m["steps"] == 6
    assert m["best"]["step"] == 2


def test_stall_rule_and_evaluation_steps():
    result = LoopResult(evals=[{"step": s, "auc": a} for s, a in [(1, 0.6), (2, 0.7), (3, 0.69), (4, 0.7)]])
    assert result.stalled(2) and not result.stalled(3) and not result.stalled(0)
    assert result.best_eval()["step"] == 2  # the earliest of equals
    cfg = LoopConfig(steps=25, eval_every=4, steps_per_epoch=10)
    boundaries, step = [], 0
    while step < 25:
        step = cfg.next_eval(step)
        boundaries.append(step)
    assert boundaries == [4, 8, 10, 12, 16, 20, 24, 25]


def test_progress_of_a_checkpoint_from_before_eval_seconds_is_accepted(tmp_path):
    meta = {"step": 3, "progress": {"losses": [0.7] * 3, "evals": [], "steps": 3, "train_seconds": 1.5}}
    assert _progress(meta, tmp_path).eval_seconds == 0.0
    meta["progress"]["unknown"] = 1
    with pytest.raises(DmtError, match="malformed"):
        _progress(meta, tmp_path)


def test_mlperf_preset_trains_multi_hot_at_a_small_row_cap(synthetic_criteo, tmp_path):
    args = ["--preset", "mlperf_dcnv2", "--row-cap", "200", "--batch-size", "16", "--max-steps", "2"]
    m = _train(synthetic_criteo, tmp_path, *args, "--eval-fraction", "0.01")
    model = m["config"]["model"]
    assert model["arch"] == "dlrm_dcn" and model["embedding_dim"] == 128 and max(model["num_embeddings"]) == 200
    assert model["multi_hot_sizes"][0] > 1  # MLPerf's multi-hot inputs, not one-hot
    assert np.isfinite(m["auc"]) and m["steps"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "terabyte"], "--split terabyte needs preprocessed days"),
        (["--split", "kaggle", "--eval-data", "EVAL"], "give one of them"),
        (["--eval-data", "/nonexistent/eval"], "/nonexistent/eval"),
    ],
    ids=["terabyte-on-tsv", "split-and-eval-data", "missing-eval-data"],
)
def test_bad_data_options_are_one_line(synthetic_criteo, tmp_path, capsys, extra, message):
    extra = [str(synthetic_criteo) if a == "EVAL" else a for a in extra]
    rc = main(["train", "--data", str(synthetic_criteo), "--out", str(tmp_path / "r"), *COMMON, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_cli_choices_match_the_library():
    from dmt.cli import train as cli
    from dmt.data.multi_hot import METHODS
    from dmt.model.flat import PRESETS
    from dmt.train.data import SPLIT_CHOICES

    assert (cli.PRESETS, cli.SPLIT_CHOICES, cli.MULTI_HOT_METHODS) == (PRESETS, SPLIT_CHOICES, METHODS)


def test_kaggle_split_leaves_out_torchrecs_unlabelled_test_day(tmp_path):
    from dmt.data.npy_layout import write_day
    from dmt.model.flat import ModelConfig
    from dmt.train.data import load_job_data
    from dmt.train.job import JobConfig

    def day(stem, n):
        write_day(tmp_path, stem, np.zeros((n, 13)), np.zeros((n, 26)), np.zeros((n, 1)))

    day("day_0", 70)
    day("test", 30)  # torchrec's tools write Kaggle's test.txt too: no labels to train or score on
    cfg = JobConfig(
        data=str(tmp_path), out=str(tmp_path / "r"), model=ModelConfig.preset("debug"), split="kaggle", batch_size=4
    )
    data = load_job_data(cfg, world=1, is_main=True)
    assert (len(data.train), len(data.eval)) == (60, 5)  # 7 days of 10 rows: 0-5 train, day 6's first half
