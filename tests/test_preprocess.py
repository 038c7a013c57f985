"""`dmt preprocess`: TSV -> torchrec's per-day .npy layout, in parallel ranges, restartable, and its faults."""

from __future__ import annotations

import gzip
import itertools
import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from dmt.cli.main import main
from dmt.data import preprocess as pp
from dmt.data.criteo import CriteoArrays, read_criteo
from dmt.data.npy_layout import MANIFEST, open_preprocessed
from dmt.data.preprocess import PreprocessConfig, preprocess_criteo
from dmt.data.synthetic import generate_criteo
from dmt.data.tsv_ranges import RangeStats, iter_range, plan_ranges
from dmt.errors import DataFormatError

MIB = 1 << 20


@pytest.fixture(scope="module")
def tsv(tmp_path_factory) -> Path:
    """~3 MB of generated rows: three 1 MiB ranges."""
    path = tmp_path_factory.mktemp("tsv") / "train.txt"
    generate_criteo(path, rows=12_000, seed=3)
    return path


@pytest.fixture(scope="module")
def reference(tsv) -> CriteoArrays:
    return read_criteo(tsv)[0]


def _assert_day_equals(root: Path, stem: str, ref: CriteoArrays) -> None:
    data = open_preprocessed(root)
    day = next(d for d in data.days if d.name == stem)
    np.testing.assert_array_equal(day.dense, ref.dense)
    np.testing.assert_array_equal(day.sparse, ref.sparse)
    np.testing.assert_array_equal(day.labels[:, 0], ref.labels.astype(np.int32))


def _npy_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.npy"))


def _run_cli(*argv: str) -> int:
    """``dmt preprocess ARGV``'s exit code (argparse's own exits included); no progress bar on stderr."""
    try:
        return main(["preprocess", *argv, "--no-progress"])
    except SystemExit as e:
        return int(e.code)


def test_parallel_ranges_give_the_readers_arrays_in_torchrecs_layout(tsv, reference, tmp_path):
    report = preprocess_criteo(PreprocessConfig(inputs=(tsv,), out=tmp_path, workers=2, part_bytes=MIB))
    assert report.rows == len(reference) and report.parts_parsed == 3
    _assert_day_equals(tmp_path, "day_0", reference)
    # the exact layout torchrec's BinaryCriteoUtils writes and InMemoryBinaryCriteoIterDataPipe reads
    for part, dtype, width in (("dense", "<f4", 13), ("sparse", "<i8", 26), ("labels", "<i4", 1)):
        arr = np.load(tmp_path / f"day_0_{part}.npy", mmap_mode="r")
        assert (arr.dtype.str, arr.shape) == (dtype, (len(reference), width))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["complete"] and manifest["days"][0]["rows"] == len(reference)
    assert manifest["days"][0]["source"]["bytes"] == tsv.stat().st_size
    assert not (tmp_path / ".parts").exists()


@pytest.mark.parametrize("part_bytes", [50_000, 333_333, 10**9])
def test_ranges_cover_every_line_once(tsv, reference, part_bytes):
    ranges = plan_ranges(str(tsv), part_bytes, min_parts=2)
    assert ranges[0][0] == 0 and ranges[-1][1] == tsv.stat().st_size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    parts = [a for lo, hi in ranges for a in iter_range(str(tsv), lo, hi, skip_bad_rows=False, stats=RangeStats())]
    got = CriteoArrays.concat(parts)
    np.testing.assert_array_equal(got.sparse, reference.sparse)
    np.testing.assert_array_equal(got.dense, reference.dense)


def test_days_keep_their_numbers_and_gz_is_read(tsv, reference, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tsv, src / "day_5")
    with open(tsv, "rb") as f, gzip.open(src / "day_2.gz", "wb") as g:
        g.write(f.read())
    out = tmp_path / "out"
    assert _run_cli(str(src / "day_5"), str(src / "day_2.gz"), "--out", str(out), "--workers", "2") == 0
    assert [d.name for d in open_preprocessed(out).days] == ["day_2", "day_5"]
    _assert_day_equals(out, "day_2", reference)
    _assert_day_equals(out, "day_5", reference)


def test_other_names_become_day_0_1_in_order(tsv, tmp_path):
    other = tmp_path / "b.tsv"
    generate_criteo(other, rows=500, seed=9)
    report = preprocess_criteo(PreprocessConfig(inputs=(tsv, other), out=tmp_path / "o", workers=1))
    assert [(d["stem"], d["source"]["path"]) for d in report.days] == [("day_0", str(tsv)), ("day_1", str(other))]
    assert len(open_preprocessed(tmp_path / "o").days[1]) == 500


def _with_bad_row(tsv: Path, dest: Path, line: int, bad: str) -> Path:
    lines = tsv.read_bytes().splitlines(keepends=True)
    lines.insert(line - 1, bad.encode() + b"\n")
    dest.write_bytes(b"".join(lines))
    return dest


def test_malformed_row_names_file_and_line_in_a_later_range_and_writes_nothing(tsv, tmp_path, capsys):
    bad = _with_bad_row(tsv, tmp_path / "bad.txt", 9_000, "1\t2\t3")  # in the third 1 MiB range
    out = tmp_path / "out"
    assert _run_cli(str(bad), "--out", str(out), "--workers", "2", "--part-mb", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dmt preprocess: error: {bad}:9000: expected 40 tab-separated fields (label, 13 integers, 26 hex "
        "categoricals), found 3; fix the row or pass --skip-bad-rows to skip and count such rows"
    ]
    assert _npy_files(out) == []
    assert not json.loads((out / MANIFEST).read_text())["complete"]
    with pytest.raises(DataFormatError, match="did not finish"):
        open_preprocessed(out)


def test_skip_bad_rows_counts_them_with_lines_across_ranges(tsv, reference, tmp_path):
    bad = _with_bad_row(tsv, tmp_path / "bad.txt", 9_000, "2\t" + "\t" * 38)
    bad = _with_bad_row(bad, tmp_path / "bad.txt", 3, "not a row")
    report = preprocess_criteo(
        PreprocessConfig(inputs=(bad,), out=tmp_path / "o", workers=2, part_bytes=MIB, skip_bad_rows=True)
    )
    day = report.days[0]
    assert day["bad_rows_skipped"] == 2 and day["rows"] == len(reference)
    assert [e.split(": ")[0] for e in day["bad_row_examples"]] == [f"{bad}:3", f"{bad}:9001"]
    assert "label is '2', expected 0 or 1" in day["bad_row_examples"][1]
    _assert_day_equals(tmp_path / "o", "day_0", reference)


def test_truncated_gz_is_one_line_exit_2_and_nothing_written(tsv, tmp_path, capsys):
    whole = gzip.compress(tsv.read_bytes())
    cut = tmp_path / "day_0.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    assert _run_cli(str(cut), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decompress" in err[0] and "is the file complete?" in err[0]
    assert _npy_files(tmp_path / "out") == []


def test_output_that_cannot_be_written_is_refused_before_any_work(tsv, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _run_cli(str(tsv), "--out", str(blocker / "sub")) == 2
    assert capsys.readouterr().err.strip() == (
        f"dmt preprocess: error: --out {blocker}/sub: cannot write there (Not a directory); choose a writable directory"
    )
    assert _run_cli(str(tsv), "--out", str(blocker)) == 2
    assert "is a file; give a directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_output_directory_is_refused(tsv, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert _run_cli(str(tsv), "--out", str(ro)) == 2
    assert "cannot write there (Permission denied)" in capsys.readouterr().err


def _killed_run(tsv: str, out: str, kill_after: int) -> None:
    """Child process: preprocess, SIGKILL itself once ``kill_after`` ranges are done (no cleanup runs)."""
    real, done = pp.parse_part, []

    def parse_then_die(task, on_bytes=None):
        if len(done) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        done.append(task)
        return real(task, on_bytes)

    pp.parse_part = parse_then_die
    preprocess_criteo(PreprocessConfig(inputs=(tsv,), out=out, workers=1, part_bytes=MIB))


def test_a_killed_run_looks_unfinished_and_a_rerun_redoes_only_the_rest(tsv, reference, tmp_path):
    out = tmp_path / "out"
    child = multiprocessing.get_context("spawn").Process(target=_killed_run, args=(str(tsv), str(out), 2))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert _npy_files(out) == []
    with pytest.raises(DataFormatError, match="did not finish") as e:
        open_preprocessed(out)
    assert "rerun `dmt preprocess`" in str(e.value)
    (out / ".parts" / "day_0" / ".tmp-left-by-a-kill").write_text("half")  # what a kill mid-write leaves
    report = preprocess_criteo(PreprocessConfig(inputs=(tsv,), out=out, workers=2, part_bytes=MIB))
    assert (report.parts_reused, report.parts_parsed) == (2, 1)
    _assert_day_equals(out, "day_0", reference)
    assert not any(p.name.startswith(".tmp-") for p in out.rglob("*"))


def test_a_finished_day_is_not_redone_but_a_changed_source_is(tsv, tmp_path):
    src = tmp_path / "day_0"
    shutil.copy(tsv, src)
    out = tmp_path / "out"
    preprocess_criteo(PreprocessConfig(inputs=(src,), out=out, workers=1))
    before = (out / "day_0_sparse.npy").stat().st_mtime_ns
    again = preprocess_criteo(PreprocessConfig(inputs=(src,), out=out, workers=2))
    assert (again.days_reused, again.parts_parsed) == (1, 0)
    assert (out / "day_0_sparse.npy").stat().st_mtime_ns == before
    generate_criteo(src, rows=300, seed=1)  # the source changed: its day is made again
    changed = preprocess_criteo(PreprocessConfig(inputs=(src,), out=out, workers=1))
    assert changed.days_reused == 0 and len(open_preprocessed(out).days[0]) == 300


def test_a_day_of_another_source_is_refused(tsv, tmp_path, capsys):
    other = tmp_path / "other.txt"
    generate_criteo(other, rows=200, seed=2)
    out = tmp_path / "out"
    assert _run_cli(str(tsv), "--out", str(out)) == 0
    assert _run_cli(str(other), "--out", str(out)) == 2
    assert f"already holds day_0 made from {tsv}" in capsys.readouterr().err


def test_missing_damaged_or_mismatched_days_are_one_clear_line(tsv, tmp_path):
    out = tmp_path / "out"
    src = tmp_path / "src"
    src.mkdir()
    for d in ("day_0", "day_1"):
        shutil.copy(tsv, src / d)
    preprocess_criteo(PreprocessConfig(inputs=(src / "day_0", src / "day_1"), out=out, workers=1))
    cases = [
        (lambda: (out / "day_1_sparse.npy").unlink(), r"day_1_sparse\.npy is missing"),
        (lambda: _truncate(out / "day_1_dense.npy", 1000), r"day_1_dense\.npy is damaged"),
        (lambda: _replace_rows(out / "day_1_labels.npy", 5), r"day_1 is mismatched: rows"),
    ]
    for damage, message in cases:
        keep = {p: p.read_bytes() for p in out.glob("day_1_*.npy")}
        damage()
        with pytest.raises(DataFormatError, match=message) as e:
            open_preprocessed(out)
        assert "\n" not in str(e.value) and "rerun `dmt preprocess`" in str(e.value)
        for p, data in keep.items():
            p.write_bytes(data)
    assert len(open_preprocessed(out).days) == 2


def _truncate(path: Path, nbytes: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - nbytes)


def _replace_rows(path: Path, rows: int) -> None:
    np.save(path, np.zeros((rows, 1), np.int32))


def test_torchrecs_loader_reads_our_directory(tsv, reference, tmp_path):
    from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

    preprocess_criteo(PreprocessConfig(inputs=(tsv,), out=tmp_path, workers=1))
    hashes = [1000] * 26
    pipe = InMemoryBinaryCriteoIterDataPipe(
        "train",
        *[[str(tmp_path / f"day_0_{p}.npy")] for p in ("dense", "sparse", "labels")],
        batch_size=len(reference),
        rank=0,
        world_size=1,
        hashes=hashes,
    )
    batch = next(iter(pipe))
    np.testing.assert_array_equal(batch.dense_features.numpy(), reference.dense)
    np.testing.assert_array_equal(batch.labels.numpy(), reference.labels.astype(np.int32))
    # torchrec takes ids modulo the table sizes: a missing categorical (-1) becomes the last row
    ids = batch.sparse_features.values().numpy().reshape(26, -1).T
    np.testing.assert_array_equal(ids, np.where(reference.sparse < 0, 999, reference.sparse % 1000))


def test_we_read_a_directory_made_by_torchrecs_tools(tsv, reference, tmp_path):
    from torchrec.datasets.criteo import BinaryCriteoUtils

    small = tmp_path / "small.txt"
    small.write_bytes(b"".join(tsv.read_bytes().splitlines(keepends=True)[:2000]))
    torchrec_dir = tmp_path / "torchrec"
    torchrec_dir.mkdir()
    BinaryCriteoUtils.tsv_to_npys(
        str(small), *[str(torchrec_dir / f"day_0_{p}.npy") for p in ("dense", "sparse", "labels")]
    )
    data = open_preprocessed(torchrec_dir)
    assert data.manifest is None and "torchrec" in data.dense_transform
    day = data.days[0]
    np.testing.assert_array_equal(day.labels[:, 0], reference.labels[:2000])
    np.testing.assert_array_equal(day.sparse, np.where(reference.sparse[:2000] < 0, 0, reference.sparse[:2000]))
    np.testing.assert_array_equal(day.dense, np.load(torchrec_dir / "day_0_dense.npy"))


@pytest.mark.criteo
def test_real_criteo_rows_give_the_readers_arrays(criteo_sample, tmp_path):
    ref, _ = read_criteo(criteo_sample)
    report = preprocess_criteo(PreprocessConfig(inputs=(criteo_sample,), out=tmp_path, workers=2))
    assert report.rows == len(ref) == 10_000
    _assert_day_equals(tmp_path, "day_0", ref)
    assert open_preprocessed(tmp_path).days[0].sparse.min() == -1  # real rows have missing categoricals


def test_help_lists_preprocess(capsys):
    try:
        code = main(["--help"])
    except SystemExit as e:
        code = e.code
    assert code == 0 and "preprocess" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"), [(["--workers", "-1"], "-1 must be >= 0"), (["--part-mb", "0"], "0 must be >= 1")]
)
def test_bad_arguments_are_one_line_exit_2(tsv, tmp_path, capsys, argv, message):
    assert _run_cli(str(tsv), "--out", str(tmp_path / "o"), *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()
