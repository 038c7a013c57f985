"""`dmt gen-data`: writes data + truth, prints one line; bad arguments exit 2 and write nothing."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dmt.cli import gen_data, main
from dmt.data.criteo import read_criteo


def test_writes_data_and_truth(tmp_path, capsys):
    out, truth = tmp_path / "d.txt", tmp_path / "t.json"
    rc = main(
        [
            "gen-data",
            "--rows",
            "2000",
            "--out",
            str(out),
            "--truth",
            str(truth),
            "--seed",
            "3",
            "--preset",
            "tiny",
            "--groups",
            "3",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "2,000 rows" in lines[0] and "3 planted groups" in lines[0]
    t = json.loads(truth.read_text())
    assert t["rows"] == 2000 and t["seed"] == 3 and len(t["groups"]) == 3
    assert read_criteo(out)[1].rows == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "t.json"]  # no temp files left


def test_gz_and_new_directories(tmp_path):
    out, truth = tmp_path / "a" / "d.txt.gz", tmp_path / "b" / "t.json"
    args = ["gen-data", "--rows", "500", "--out", str(out), "--truth", str(truth), "--preset", "tiny"]
    assert main(args) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b" and read_criteo(out)[1].rows == 500


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rows", "0"], "argument --rows: 0 must be >= 1"),
        (["--rows", "-5"], "argument --rows: -5 must be >= 1"),
        (["--rows", "ten"], "argument --rows: 'ten' is not an integer"),
        (["--rows", "10", "--seed", "-1"], "argument --seed: -1 must be between 0 and"),
        (["--rows", "10", "--groups", "0"], "argument --groups: 0 must be >= 1"),
        (["--rows", "10", "--groups", "27"], "num_groups=27 must be in [1, 26]"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, extra, message):
    out, truth = tmp_path / "d.txt", tmp_path / "t.json"
    assert main(["gen-data", *extra, "--out", str(out), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dmt gen-data: error: ") and message in err
    assert not list(tmp_path.iterdir())


def test_unwritable_paths_exit_2_and_write_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    good = tmp_path / "d.txt"
    cases = [
        (str(blocker / "sub" / "d.txt"), str(tmp_path / "t.json"), "is a file, not a directory"),
        (str(good), str(blocker / "t.json"), "is a file, not a directory"),
        (str(tmp_path), str(tmp_path / "t.json"), "is a directory"),
        (str(good), str(good), "the same file"),
        ("", str(tmp_path / "t.json"), "--out is empty"),
    ]
    for out, truth, message in cases:
        assert main(["gen-data", "--rows", "10", "--out", out, "--truth", truth]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_truth_write_removes_the_data(tmp_path, monkeypatch, capsys):
    def fail(path: str, text: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gen_data, "atomic_write_text", fail)
    out, truth = tmp_path / "d.txt", tmp_path / "t.json"
    args = ["gen-data", "--rows", "10", "--out", str(out), "--truth", str(truth), "--preset", "tiny"]
    assert main(args) == 2
    assert "cannot write" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_special_files_are_refused_before_any_work(tmp_path, capsys):
    """The atomic writer would rename over them (as root it replaced /dev/full with a regular file)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out, truth in ((fifo, tmp_path / "t.json"), (tmp_path / "d.txt", fifo)):
        assert main(["gen-data", "--rows", "10", "--out", str(out), "--truth", str(truth)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not a regular file" in err[0] and str(fifo) in err[0], err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_missing_required_argument_is_a_usage_error(tmp_path, capsys):
    assert main(["gen-data", "--rows", "10", "--truth", str(tmp_path / "t.json")]) == 2
    assert "--out" in capsys.readouterr().err


def test_truth_defaults_to_a_file_beside_the_rows(tmp_path):
    assert main(["gen-data", "--rows", "10", "--out", str(tmp_path / "d.txt")]) == 0
    truth = json.loads((tmp_path / "d.txt.truth.json").read_text())
    assert truth["rows"] == 10 and len(truth["groups"]) >= 2


def test_days_are_the_pieces_of_one_file(tmp_path, capsys):
    base = ["--rows", "20000", "--seed", "2", "--preset", "tiny"]
    assert main(["gen-data", *base, "--out", str(tmp_path / "one.tsv")]) == 0
    assert main(["gen-data", *base, "--days", "3", "--workers", "2", "--out", str(tmp_path / "days")]) == 0
    days = [(tmp_path / "days" / f"day_{d}").read_bytes() for d in range(3)]
    assert all(days) and b"".join(days) == (tmp_path / "one.tsv").read_bytes()
    truth = json.loads((tmp_path / "days" / "truth.json").read_text())
    assert (
        truth["rows"] == 20000
        and truth["groups"] == json.loads((tmp_path / "one.tsv.truth.json").read_text())["groups"]
    )
    assert "next: dmt preprocess" in capsys.readouterr().out


def test_workers_without_days_is_refused(tmp_path, capsys):
    assert main(["gen-data", "--rows", "10", "--workers", "2", "--out", str(tmp_path / "x.tsv")]) == 2
    assert "--days" in capsys.readouterr().err and not (tmp_path / "x.tsv").exists()
