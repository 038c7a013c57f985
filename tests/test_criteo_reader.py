"""The vectorised Criteo TSV reader: values, bad rows, gzip, blocks, torchrec parity, real rows."""

from __future__ import annotations

import gzip
import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmt.data import criteo
from dmt.data.criteo import CriteoArrays, iter_criteo_chunks, read_criteo
from dmt.data.synthetic import SyntheticSpec, generate_criteo
from dmt.errors import DataFormatError


def _row(label: str = "0", dense: list[str] | None = None, sparse: list[str] | None = None) -> str:
    dense = dense if dense is not None else [str(i) for i in range(13)]
    sparse = sparse if sparse is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *dense, *sparse])


def _reference(text: str) -> CriteoArrays:
    """Plain-Python parse of valid rows: what the vectorised reader must agree with."""
    rows = [line.split("\t") for line in text.splitlines()]
    return CriteoArrays(
        np.array([float(r[0]) for r in rows], np.float32).reshape(-1),
        np.array([[math.log1p(max(int(v), 0)) if v else 0.0 for v in r[1:14]] for r in rows], np.float32),
        np.array([[int(v, 16) if v else -1 for v in r[14:]] for r in rows], np.int64),
    )


def _assert_same(a: CriteoArrays, b: CriteoArrays) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.dense, b.dense, rtol=1e-6)
    np.testing.assert_array_equal(a.sparse, b.sparse)


def test_values_missing_and_signs(tmp_path):
    dense = ["-3", "", "0", "7", "1234567890", "", "-1", "12", "", "99999999", "5", "", "1"]
    sparse = ["68fd1e64", "", "FFFFFFFF", "1f", "0", *[""] * 20, "00000001"]
    text = _row("1", dense, sparse) + "\n" + _row() + "\n"
    path = tmp_path / "d.txt"
    path.write_text(text)
    arrays, report = read_criteo(path)
    assert report.rows == 2 and report.bad_rows_skipped == 0 and report.paths == [str(path)]
    _assert_same(arrays, _reference(text))
    assert arrays.sparse[0, :5].tolist() == [0x68FD1E64, -1, 2**32 - 1, 0x1F, 0]
    assert arrays.dense[0, 0] == 0.0 and arrays.dense[0, 4] == pytest.approx(math.log1p(1234567890))
    assert arrays.labels.dtype == np.float32 and arrays.dense.dtype == np.float32
    assert arrays.sparse.dtype == np.int64 and arrays.dense.shape == (2, 13)


def test_last_line_without_newline_and_trailing_empty_fields(tmp_path):
    # Trailing empty fields keep their tabs: a valid row, the last categoricals missing.
    full = _row(sparse=[f"{i:x}" for i in range(20)] + [""] * 6)
    path = tmp_path / "d.txt"
    path.write_text(_row() + "\n" + full)  # no final newline
    arrays, _ = read_criteo(path)
    assert len(arrays) == 2 and (arrays.sparse[1, 20:] == -1).all()


def test_stripped_trailing_tabs_are_an_error_not_padding(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text(_row() + "\n" + _row(sparse=[f"{i:x}" for i in range(25)]) + "\n")
    with pytest.raises(DataFormatError) as e:
        read_criteo(path)
    assert str(e.value) == (
        f"{path}:2: expected 40 tab-separated fields (label, 13 integers, 26 hex categoricals), "
        "found 39; fix the row or pass --skip-bad-rows to skip and count such rows"
    )


BAD_ROWS = {
    "too_few": (_row()[: _row().rindex("\t")], "found 39"),
    "too_many": (_row() + "\t1", "found 41"),
    "float_dense": (_row(dense=["1.5"] + ["1"] * 12), "int_0 (field 2) is '1.5', expected a decimal integer"),
    "text_dense": (_row(dense=["1"] * 12 + ["abc"]), "int_12 (field 14) is 'abc'"),
    "bare_minus": (_row(dense=["-"] + ["1"] * 12), "int_0 (field 2) is '-'"),
    "long_bad_dense": (_row(dense=["12345678x9"] + ["1"] * 12), "int_0 (field 2) is '12345678x9'"),
    "non_hex": (
        _row(sparse=["68fd1e6g"] + ["1"] * 25),
        "cat_0 (field 15) is '68fd1e6g', expected at most 8 hex",
    ),
    "hex_too_long": (_row(sparse=["1"] * 25 + ["123456789"]), "cat_25 (field 40) is '123456789'"),
    "space_in_hex": (_row(sparse=[" 1"] + ["1"] * 25), "cat_0 (field 15) is ' 1'"),
    "label_2": (_row(label="2"), "label is '2', expected 0 or 1"),
    "label_empty": (_row(label=""), "label is '', expected 0 or 1"),
    "empty_line": ("", "empty line"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_row_raises_with_file_line_and_fix(tmp_path, name):
    bad, reason = BAD_ROWS[name]
    path = tmp_path / "data.txt"
    path.write_text(f"{_row()}\n{_row('1')}\n{bad}\n{_row()}\n")
    with pytest.raises(DataFormatError) as e:
        read_criteo(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: ") and reason in msg and "--skip-bad-rows" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_skip_mode_counts_bad_rows(tmp_path, name):
    bad, reason = BAD_ROWS[name]
    path = tmp_path / "data.txt"
    path.write_text(f"{_row()}\n{bad}\n{_row('1')}\n{bad}\n")
    arrays, report = read_criteo(path, skip_bad_rows=True)
    assert report.rows == len(arrays) == 2 and arrays.labels.tolist() == [0.0, 1.0]
    assert report.bad_rows_skipped == 2
    assert report.bad_row_examples[0].startswith(f"{path}:2: ") and reason in report.bad_row_examples[0]
    assert report.bad_row_examples[1].startswith(f"{path}:4: ")


@pytest.mark.parametrize("char", list("/:@G`g.+ \x00\x7f\x80\xff"))
def test_bytes_next_to_valid_ranges_are_rejected(tmp_path, char):
    # Characters just outside '0'-'9', 'A'-'F' and 'a'-'f', and bytes >= 0x80: the edges of the
    # bit-parallel range checks. Short (<= 8) and long (> 8) fields take different paths.
    path = tmp_path / "d.bin"
    cases = [("1" + char, "1"), ("123456789" + char, "1"), ("1", "1" + char), ("1", char + "1234567")]
    for dense, sparse in cases:
        row = _row(dense=[dense] + ["1"] * 12, sparse=[sparse] + ["1"] * 25)
        path.write_bytes(row.encode("latin-1") + b"\n")
        with pytest.raises(DataFormatError, match=r":1: (int|cat)_0 "):
            read_criteo(path)


def test_crlf_names_the_line_and_the_conversion(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(f"{_row()}\r\n{_row()}\r\n".encode())
    with pytest.raises(DataFormatError) as e:
        read_criteo(path)
    assert str(e.value) == (
        f"{path}:1: Windows line endings (CRLF) at line 1; convert the file with `sed -i 's/\\r$//' {path}`"
    )
    # Even where the last field is empty, the stray \r is caught.
    path.write_bytes(f"{_row(sparse=['1'] * 25 + [''])}\r\n".encode())
    with pytest.raises(DataFormatError, match="CRLF"):
        read_criteo(path)


def test_empty_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.txt is empty"):
        read_criteo(empty)
    gz = tmp_path / "empty.txt.gz"
    gz.write_bytes(gzip.compress(b""))
    with pytest.raises(DataFormatError, match="empty after decompression"):
        read_criteo(gz)
    all_bad = tmp_path / "bad.txt"
    all_bad.write_text("a\tb\n")
    with pytest.raises(DataFormatError, match="no valid rows"):
        read_criteo(all_bad, skip_bad_rows=True)
    with pytest.raises(DataFormatError, match="no input files"):
        read_criteo([])
    with pytest.raises(DataFormatError, match="cannot read"):
        read_criteo(tmp_path / "missing.txt")


def test_gzip_equals_plain_and_corrupt_gzip_is_reported(tmp_path):
    plain = tmp_path / "d.txt"
    generate_criteo(plain, rows=3000, seed=1, spec=SyntheticSpec.tiny())
    gz = tmp_path / "d.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    _assert_same(read_criteo(gz)[0], read_criteo(plain)[0])
    gz.write_bytes(gz.read_bytes()[:-100])  # truncated download
    with pytest.raises(DataFormatError, match="cannot decompress"):
        read_criteo(gz)


def test_small_blocks_carry_lines_and_count_lines_across_blocks(tmp_path, monkeypatch):
    path = tmp_path / "d.txt"
    generate_criteo(path, rows=500, seed=2, spec=SyntheticSpec.tiny())
    lines = path.read_text().splitlines()
    lines[420] = lines[420].replace("\t", " ", 1)
    path.write_text("\n".join(lines) + "\n")
    whole, report = read_criteo(path, skip_bad_rows=True)
    monkeypatch.setattr(criteo, "_BLOCK_BYTES", 997)  # rows straddle every block boundary
    small, small_report = read_criteo(path, skip_bad_rows=True)
    _assert_same(small, whole)
    assert small_report.bad_row_examples == report.bad_row_examples
    assert report.bad_row_examples[0].startswith(f"{path}:421: ")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:421: ")):
        read_criteo(path)


def test_chunks_paths_and_max_rows(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    generate_criteo(a, rows=1000, seed=1, spec=SyntheticSpec.tiny())
    generate_criteo(b, rows=700, seed=2, spec=SyntheticSpec.tiny())
    whole_a = read_criteo(a)[0]
    chunks = list(iter_criteo_chunks(a, chunk_rows=300))
    assert [len(c) for c, _ in chunks] == [300, 300, 300, 100] and all(n == 0 for _, n in chunks)
    _assert_same(CriteoArrays.concat([c for c, _ in chunks]), whole_a)
    both, report = read_criteo([a, b])
    assert report.rows == 1700 and report.paths == [str(a), str(b)]
    _assert_same(both.slice(1000, 1700), read_criteo(b)[0])
    first, report = read_criteo([a, b], max_rows=1200, progress=True)
    assert report.rows == len(first) == 1200
    _assert_same(first.slice(0, 1000), whole_a)


def test_chunks_report_skipped_rows(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("".join(f"{_row()}\n" if i % 3 else "x\n" for i in range(9)))
    chunks = list(iter_criteo_chunks(path, chunk_rows=4, skip_bad_rows=True))
    assert sum(len(c) for c, _ in chunks) == 6 and sum(n for _, n in chunks) == 3


@pytest.fixture
def plain_tmp() -> Iterator[Path]:
    """A temp dir whose path has no "test" in it: torchrec reads any such path as the unlabelled
    Kaggle test set (and pytest's own tmp_path contains "pytest")."""
    with tempfile.TemporaryDirectory(prefix="dmt-parity-") as tmp:
        yield Path(tmp)


@pytest.mark.filterwarnings("ignore:Local function is not supported by pickle")
def test_matches_torchrec_tsv_to_npys(plain_tmp):
    from torchrec.datasets.criteo import BinaryCriteoUtils

    path = plain_tmp / "train.txt"
    generate_criteo(path, rows=400, seed=4)
    outs = [str(plain_tmp / f"{k}.npy") for k in ("dense", "sparse", "labels")]
    BinaryCriteoUtils.tsv_to_npys(str(path), *outs, dataset_name="criteo_kaggle")
    ours = read_criteo(path)[0]
    # Same hashed ints; torchrec writes a missing categorical as 0, we as -1.
    np.testing.assert_array_equal(np.where(ours.sparse < 0, 0, ours.sparse), np.load(outs[1]))
    np.testing.assert_array_equal(ours.labels, np.load(outs[2])[:, 0])
    # torchrec's dense is log(x - min + 2): same order of values as ours wherever x >= 0.
    theirs = np.load(outs[0])
    present = np.array([[bool(v) for v in line.split("\t")[1:14]] for line in path.read_text().splitlines()])
    keep = present & (ours.dense > 0)
    theirs_by_ours = theirs[keep][np.argsort(ours.dense[keep])]
    assert (np.diff(theirs_by_ours) >= -1e-5).all()  # monotone in the same raw integer


_hex = st.integers(0, 2**32 - 1).flatmap(lambda v: st.sampled_from([f"{v:08x}", f"{v:x}", f"{v:X}"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["0", "1"]),
            st.lists(st.one_of(st.just(""), st.integers(-(10**12), 10**15).map(str)), min_size=13, max_size=13),
            st.lists(st.one_of(st.just(""), _hex), min_size=26, max_size=26),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_random_valid_rows_match_reference(tmp_path, rows):
    text = "".join(_row(label, dense, sparse) + "\n" for label, dense, sparse in rows)
    path = tmp_path / "h.txt"
    path.write_text(text)
    _assert_same(read_criteo(path)[0], _reference(text))


# A near-valid value with one character swapped for a range edge ('/' and ':' around the digits,
# '@' 'G' '`' 'g' around the hex letters), a sign, a stray byte, or a valid character.
_garbage = st.builds(
    lambda v, i, c: v[:i] + c + v[i + 1 :],
    st.one_of(
        st.text(alphabet="0123456789", min_size=1, max_size=9),
        st.text(alphabet="0123456789abcdef", min_size=1, max_size=9),
    ),
    st.integers(0, 9),
    st.sampled_from(list("/:@G`g-. \r\x00\x7fé0aF")),
)
_dense = st.one_of(st.just(""), st.integers(-(10**9), 10**12).map(str))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["0", "1", "1", "2", ""]),
            st.lists(_dense, min_size=13, max_size=13),
            st.lists(st.one_of(st.just(""), _hex), min_size=26, max_size=26),
            st.one_of(st.none(), st.tuples(st.integers(0, 38), _garbage)),  # at most one field corrupted
        ),
        min_size=1,
        max_size=12,
    )
)
def test_random_garbage_is_rejected_exactly_where_python_rejects(tmp_path, rows):
    def valid(label: str, fields: list[str]) -> bool:
        dense_ok = all(v == "" or (re.fullmatch(r"-?[0-9]+", v) and len(v) <= 20) for v in fields[:13])
        hex_ok = all(re.fullmatch(r"[0-9a-fA-F]{0,8}", v) for v in fields[13:])
        return label in ("0", "1") and dense_ok and hex_ok

    lines, good = [], []
    for label, dense, sparse, corrupt in rows:
        fields = dense + sparse
        if corrupt is not None:
            fields[corrupt[0]] = corrupt[1]
        lines.append("\t".join([label, *fields]))
        if valid(label, fields):
            good.append(lines[-1])
    path = tmp_path / "g.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    if not good:
        with pytest.raises(DataFormatError, match="no valid rows"):
            read_criteo(path, skip_bad_rows=True)
        return
    arrays, report = read_criteo(path, skip_bad_rows=True)
    assert report.bad_rows_skipped == len(lines) - len(good)
    _assert_same(arrays, _reference("\n".join(good)))


@pytest.mark.criteo
def test_real_criteo_sample(criteo_sample):
    arrays, report = read_criteo(criteo_sample, progress=False)
    assert report.rows == 10_000 and report.bad_rows_skipped == 0
    assert arrays.labels.sum() == 2182  # 21.8 % clicks, as SOURCE.md records
    sparse_missing = (arrays.sparse < 0).mean(axis=0)
    assert (sparse_missing == 0).sum() >= 10  # many categoricals are never missing
    assert 0.7 < sparse_missing.max() < 0.9  # cat_21 is mostly missing
    assert (arrays.sparse[arrays.sparse >= 0] < 2**32).all()
    first = criteo_sample.read_text().splitlines()[:300]  # exact agreement with plain Python
    _assert_same(arrays.slice(0, 300), _reference("\n".join(first)))
