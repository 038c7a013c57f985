"""--resume loads only checkpoints this job wrote, intact, for this run (issue 20, item 4).

Before: a crafted .metadata ran code (DCP unpickles it), corrupted shard bytes loaded silently, a
garbage/empty meta.json, a missing .distcp or another --sparse-optimizer ended in tracebacks, and
other data with the same row count was accepted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from types import SimpleNamespace

import pytest

from dmt.cli import main
from dmt.train.checkpoint import CheckpointError, _CheckedLoadPlanner

FAST = ["--preset", "debug", "--batch-size", "64", "--no-progress", "--seed", "2", "--checkpoint-every", "2"]
STEP = "checkpoints/step_00000004"


class _RunsCode:
    """A pickle that, when loaded without restriction, creates ``marker`` (stands for any code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_run(synthetic_criteo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", "--data", str(synthetic_criteo), "--out", str(out), *FAST, "--max-steps", "4"]) == 0
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    """A private copy of the finished run, to tamper with."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _resume_fails(capsys, data, out, *extra: str) -> str:
    """--resume exits 2 with one line, and writes nothing: no new checkpoint, metrics.json as it was."""
    metrics = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    argv = ["train", "--data", str(data), "--out", str(out), *FAST, "--max-steps", "6", "--resume", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmt train: error:"), err
    assert (out / "metrics.json").read_bytes() == metrics
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    return err[0]


def _rewrite_manifest(ckpt) -> None:
    """Make meta.json's checksums match the files as they are now (what a crafted checkpoint would do)."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in ckpt.iterdir()
        if p.name != "meta.json"
    }
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_resume_of_an_intact_checkpoint_works(synthetic_criteo, run):
    argv = ["train", "--data", str(synthetic_criteo), "--out", str(run), *FAST, "--max-steps", "6", "--resume"]
    assert main(argv) == 0
    assert json.loads((run / "metrics.json").read_text())["resumed_from_step"] == 4


def test_crafted_metadata_pickle_is_refused_without_running_it(synthetic_criteo, run, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    (run / STEP / ".metadata").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    _rewrite_manifest(run / STEP)
    line = _resume_fails(capsys, synthetic_criteo, run)
    assert "not a DCP metadata file" in line and "refusing to load it" in line
    assert not marker.exists()


def test_non_tensor_values_are_loaded_only_if_plain_data(tmp_path):
    marker = tmp_path / "code-ran"
    planner = _CheckedLoadPlanner()
    item = SimpleNamespace(dest_index=SimpleNamespace(fqn="optim.state.x"))
    with pytest.raises(CheckpointError, match="is not plain data"):
        planner.load_bytes(item, io.BytesIO(pickle.dumps(_RunsCode(str(marker)))))
    assert not marker.exists()


def test_corrupted_shard_is_refused(synthetic_criteo, run, capsys):
    shard = run / STEP / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    shard.write_bytes(bytes(data))
    line = _resume_fails(capsys, synthetic_criteo, run)
    assert "__0_0.distcp is corrupted" in line and "delete" in line


def test_missing_shard_and_stray_file_are_refused(synthetic_criteo, finished_run, run, capsys):
    (run / STEP / "__0_0.distcp").unlink()
    assert "missing ['__0_0.distcp']" in _resume_fails(capsys, synthetic_criteo, run)
    shutil.copy(finished_run / STEP / "__0_0.distcp", run / STEP / "__0_0.distcp")
    (run / STEP / "extra.bin").write_bytes(b"x")
    assert "unexpected ['extra.bin']" in _resume_fails(capsys, synthetic_criteo, run)


@pytest.mark.parametrize("content", ["", "garbage{", "[1, 2]", '{"format": 2, "step": "four"}'])
def test_garbage_or_empty_meta_json_is_refused(synthetic_criteo, run, capsys, content):
    (run / STEP / "meta.json").write_text(content)
    line = _resume_fails(capsys, synthetic_criteo, run)
    assert "meta.json" in line and "delete" in line


def test_checkpoint_without_checksums_is_refused(synthetic_criteo, run, capsys):
    meta = json.loads((run / STEP / "meta.json").read_text())
    del meta["format"], meta["files"]  # what the older dmt wrote
    (run / STEP / "meta.json").write_text(json.dumps(meta))
    assert "has no checksums" in _resume_fails(capsys, synthetic_criteo, run)


def test_other_sparse_optimizer_is_refused(synthetic_criteo, run, capsys):
    line = _resume_fails(capsys, synthetic_criteo, run, "--sparse-optimizer", "adagrad")
    assert "different run" in line and "['optimizer']" in line


def test_other_data_with_the_same_row_count_is_refused(synthetic_criteo, run, tmp_path, capsys):
    text = synthetic_criteo.read_text()
    other = tmp_path / "other.tsv"
    other.write_text(("1" if text[0] == "0" else "0") + text[1:])  # one label flipped: same size, same rows
    line = _resume_fails(capsys, other, run)
    assert "different run" in line and "['data']" in line


def test_resume_past_the_last_step_is_refused(synthetic_criteo, run, capsys):
    """The checkpoint (step 4) is already past --max-steps 2: nothing to train (an IndexError before)."""
    assert "already reaches this run's last step 2" in _resume_fails(capsys, synthetic_criteo, run, "--max-steps", "2")
