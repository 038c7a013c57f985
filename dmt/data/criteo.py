"""Vectorised reader for the Criteo Kaggle / Terabyte TSV format.

One row per line, 40 tab-separated fields: the label (0/1), 13 decimal integers (``int_0`` ..
``int_12``, may be negative, empty = missing) and 26 hashed categoricals written as hex
(``cat_0`` .. ``cat_25``, normally 8 lowercase digits, empty = missing). ``.gz`` files are read
transparently.

The parser never loops over rows or fields in Python. It reads the file in byte blocks cut at a
newline into one reused buffer, finds every tab and newline with numpy, loads the last 8 bytes of
every field as one 64-bit word and validates and decodes all 8 characters at once with integer
bit tricks (SWAR, "SIMD within a register"; the kernel is :mod:`dmt.data.criteo_kernel`); the
rare integer longer than 8 characters goes through a per-character window. Rows that break the
format are found the same way; only the few that are reported are re-split in Python to explain
what is wrong with them.

Shapes: N = rows, 13 dense and 26 sparse columns.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "day.txt")
    >>> row = ["1", "5", "-1"] + [""] * 11 + ["68fd1e64"] + [""] * 25
    >>> with open(path, "w") as f:
    ...     _ = f.write("\\t".join(row) + "\\n")
    >>> arrays, report = read_criteo(path)
    >>> report.rows, arrays.labels.tolist(), arrays.sparse[0, :2].tolist()
    (1, [1.0], [1761418852, -1])
    >>> round(float(arrays.dense[0, 0]), 4), float(arrays.dense[0, 1])  # log1p(5), negative -> 0
    (1.7918, 0.0)
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from torchrec.datasets.criteo import DEFAULT_CAT_NAMES, DEFAULT_INT_NAMES
from tqdm import tqdm

from dmt.data.criteo_kernel import (
    MAX_DENSE_CHARS,
    MAX_HEX_DIGITS,
    NUM_DENSE,
    NUM_FIELDS,
    NUM_SPARSE,
    PAD,
    parse_block,
)
from dmt.errors import DataFormatError

DENSE_NAMES: list[str] = list(DEFAULT_INT_NAMES)
SPARSE_NAMES: list[str] = list(DEFAULT_CAT_NAMES)

PathLike = str | os.PathLike[str]

# Bytes read per block (~4k rows). The parse temporaries, ~10x the block, then stay in cache and
# are recycled by malloc instead of being fresh pages each time: 1 MB blocks took 40% less CPU
# than 4 MB ones. Memory stays bounded whatever the file size.
_BLOCK_BYTES = 1 << 20
# A "line" this long without a newline means the file is not Criteo TSV (rows are < 1 kB).
_MAX_LINE_BYTES = 1 << 20
_MAX_EXAMPLES = 5
_FIX_HINT = "fix the row or pass --skip-bad-rows to skip and count such rows"

_DENSE_RE = re.compile(rb"-?[0-9]+")
_HEX_RE = re.compile(rb"[0-9a-fA-F]{1,%d}" % MAX_HEX_DIGITS)


@dataclass
class CriteoArrays:
    """Parsed rows, column-aligned with DENSE_NAMES and SPARSE_NAMES.

    Args:
        labels: (N,) float32 in {0, 1}.
        dense: (N, 13) float32, ``log1p(max(x, 0))``; missing -> 0.
        sparse: (N, 26) int64, the raw hashed value in [0, 2**32); missing -> -1.
    """

    labels: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int, stop: int) -> CriteoArrays:
        """Rows ``start:stop`` (views, no copy)."""
        return CriteoArrays(self.labels[start:stop], self.dense[start:stop], self.sparse[start:stop])

    @staticmethod
    def concat(parts: Sequence[CriteoArrays]) -> CriteoArrays:
        """Rows of all ``parts`` in order; an empty sequence gives zero rows."""
        if not parts:
            return CriteoArrays(
                np.zeros(0, np.float32),
                np.zeros((0, NUM_DENSE), np.float32),
                np.zeros((0, NUM_SPARSE), np.int64),
            )
        if len(parts) == 1:
            return parts[0]
        return CriteoArrays(
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.dense for p in parts]),
            np.concatenate([p.sparse for p in parts]),
        )


@dataclass
class ReadReport:
    """What a read did: the run report prints it.

    Args:
        paths: files read, in order.
        rows: rows returned.
        bad_rows_skipped: rows that broke the format and were skipped (``skip_bad_rows=True``).
        bad_row_examples: the first few skipped rows as ``"file:line: reason"``.
    """

    paths: list[str]
    rows: int = 0
    bad_rows_skipped: int = 0
    bad_row_examples: list[str] = field(default_factory=list)


def read_criteo(
    paths: PathLike | Sequence[PathLike],
    *,
    skip_bad_rows: bool = False,
    max_rows: int | None = None,
    progress: bool = False,
) -> tuple[CriteoArrays, ReadReport]:
    """Read whole Criteo TSV files (plain or ``.gz``) into arrays.

    Args:
        paths: one path or a sequence of paths, read in order.
        skip_bad_rows: skip malformed rows and count them in the report instead of raising.
        max_rows: stop after this many rows (``None``: read everything).
        progress: show a tqdm progress bar per file.

    Returns:
        The rows and a ReadReport.

    Raises:
        DataFormatError: a malformed row (unless ``skip_bad_rows``), an empty file, or no valid
            rows at all. The message names ``file:line``, the problem and the fix.
    """
    path_list = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not path_list:
        raise DataFormatError("no input files given")
    if max_rows is not None and max_rows < 1:
        raise DataFormatError(f"max_rows={max_rows} must be >= 1")
    report = ReadReport(paths=path_list)
    out = _RowBuffer(path_list, max_rows)
    for path in path_list:
        for part, nbytes in _iter_blocks(path, skip_bad_rows, report, progress):
            if max_rows is not None and out.rows + len(part) >= max_rows:
                out.append(part.slice(0, max_rows - out.rows), nbytes)
                break
            out.append(part, nbytes)
        if max_rows is not None and out.rows >= max_rows:
            break
    report.rows = out.rows
    if report.rows == 0:
        raise DataFormatError(
            f"no valid rows in {', '.join(path_list)} ({report.bad_rows_skipped} bad rows skipped, "
            f"e.g. {report.bad_row_examples[:1]}); is this Criteo TSV?"
        )
    return out.result(), report


class _RowBuffer:
    """Collects parsed blocks into arrays sized from the file size, so a big read holds the rows
    once (concatenating blocks at the end would briefly hold them twice)."""

    def __init__(self, paths: list[str], max_rows: int | None) -> None:
        self.bytes_left = sum(_text_bytes(p) for p in paths)
        self.max_rows = max_rows
        self.rows = 0
        self.arrays = CriteoArrays.concat([])

    def append(self, part: CriteoArrays, nbytes: int) -> None:
        need = self.rows + len(part)
        self.bytes_left = max(0, self.bytes_left - nbytes)
        if need > len(self.arrays):
            # Estimate the total from the bytes per row seen so far; grow by >= 1.5x if short.
            per_row = max(nbytes, 1) / max(len(part), 1)
            guess = need + int(self.bytes_left / per_row * 1.02) + 1024
            capacity = max(guess, int(len(self.arrays) * 1.5), need)
            if self.max_rows is not None:
                capacity = max(min(capacity, self.max_rows), need)
            old, self.arrays = (
                self.arrays,
                CriteoArrays(
                    np.empty(capacity, np.float32),
                    np.empty((capacity, NUM_DENSE), np.float32),
                    np.empty((capacity, NUM_SPARSE), np.int64),
                ),
            )
            self._put(0, old.slice(0, self.rows))
        self._put(self.rows, part)
        self.rows = need

    def _put(self, at: int, part: CriteoArrays) -> None:
        n = len(part)
        self.arrays.labels[at : at + n] = part.labels
        self.arrays.dense[at : at + n] = part.dense
        self.arrays.sparse[at : at + n] = part.sparse

    def result(self) -> CriteoArrays:
        rows = self.arrays.slice(0, self.rows)
        if self.rows < 0.9 * len(self.arrays):  # a poor estimate: give the spare memory back
            rows = CriteoArrays(rows.labels.copy(), rows.dense.copy(), rows.sparse.copy())
        return rows


def iter_criteo_chunks(
    path: PathLike, *, chunk_rows: int = 262144, skip_bad_rows: bool = False
) -> Iterator[tuple[CriteoArrays, int]]:
    """Stream one file in chunks of ``chunk_rows`` rows (the last may be shorter), bounded memory.

    Args:
        path: a Criteo TSV file, plain or ``.gz``.
        chunk_rows: rows per yielded chunk.
        skip_bad_rows: skip malformed rows instead of raising.

    Yields:
        ``(chunk, bad_rows)``: the rows, and how many malformed rows were skipped since the
        previous chunk.

    Raises:
        DataFormatError: as ``read_criteo``.
    """
    if chunk_rows < 1:
        raise DataFormatError(f"chunk_rows={chunk_rows} must be >= 1")
    path = os.fspath(path)
    report = ReadReport(paths=[path])
    pending: list[CriteoArrays] = []
    npending = 0
    bad_reported = 0
    for part, _ in _iter_blocks(path, skip_bad_rows, report, progress=False):
        pending.append(part)
        npending += len(part)
        while npending >= chunk_rows:
            rows = CriteoArrays.concat(pending)
            rest = rows.slice(chunk_rows, len(rows))
            pending, npending = ([rest] if len(rest) else []), len(rest)
            yield rows.slice(0, chunk_rows), report.bad_rows_skipped - bad_reported
            bad_reported = report.bad_rows_skipped
    if npending or report.bad_rows_skipped > bad_reported:
        yield CriteoArrays.concat(pending), report.bad_rows_skipped - bad_reported


def _text_bytes(path: str) -> int:
    """Rough size of the text in ``path`` (0 if unreadable: the reader reports that itself)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    return size * 4 if path.endswith(".gz") else size  # Criteo text gzips about 4:1


# ----------------------------------------------------------------------------- file blocks
def _iter_blocks(
    path: str, skip_bad_rows: bool, report: ReadReport, progress: bool
) -> Iterator[tuple[CriteoArrays, int]]:
    """Parse ``path`` block by block, yielding (rows, bytes of text they came from).

    Skipped rows are recorded in ``report``; without ``skip_bad_rows`` the first one raises.
    """
    try:
        total = os.path.getsize(path)
    except OSError as e:
        raise DataFormatError(f"cannot read {path}: {e.strerror}") from None
    if total == 0:
        raise DataFormatError(f"{path} is empty; expected Criteo TSV rows (label, 13 integers, 26 hex categoricals)")
    first_line = 1  # 1-based number of the first line of the current block
    # One buffer for the whole file: PAD tab bytes, the partial line carried over from the last
    # block, then the new block read in place. No per-block allocation or concatenation.
    store = np.full(PAD + _MAX_LINE_BYTES + _BLOCK_BYTES + 1, 9, np.uint8)
    ncarry = 0
    try:
        with (
            open(path, "rb") as raw,
            tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path), disable=not progress) as bar,
        ):
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
            view = memoryview(store)  # type: ignore[arg-type]  # numpy arrays export the buffer protocol
            while True:
                got = stream.readinto(view[PAD + ncarry : PAD + ncarry + _BLOCK_BYTES])
                bar.update(raw.tell() - bar.n)
                end = PAD + ncarry + got
                if not got:
                    if not ncarry:
                        break
                    store[end] = 10  # a last line without newline is a complete row
                    end += 1
                cut = _last_newline(store, PAD, end) + 1
                if cut == 0:
                    ncarry = end - PAD
                    _check_line_length(path, first_line, ncarry)
                    continue
                *columns, bad, nlines = parse_block(store[:cut])
                arrays = CriteoArrays(*columns)
                if len(bad):
                    _handle_bad(path, store[PAD:cut], bad, first_line, skip_bad_rows, report)
                first_line += nlines
                ncarry = end - cut
                _check_line_length(path, first_line, ncarry)
                store[PAD : PAD + ncarry] = store[cut:end]  # numpy copes with the overlap
                if len(arrays):
                    yield arrays, cut - PAD
                if not got:
                    break
    except OSError as e:  # unreadable file, truncated or corrupt gzip
        if path.endswith(".gz"):
            raise DataFormatError(f"{path}: cannot decompress ({e.strerror or e}); is the file complete?") from None
        raise DataFormatError(f"cannot read {path}: {e.strerror or e}") from None
    except EOFError as e:
        raise DataFormatError(f"{path}: cannot decompress ({e}); is the file complete?") from None
    if first_line == 1:
        raise DataFormatError(f"{path} is empty after decompression; expected Criteo TSV rows")


def _check_line_length(path: str, line: int, nbytes: int) -> None:
    """Refuse a line that would not fit the buffer: such a file is not Criteo TSV."""
    if nbytes > _MAX_LINE_BYTES:
        raise DataFormatError(
            f"{path}:{line}: a line runs over {nbytes:,} bytes without a newline; is this a Criteo "
            "TSV text file (gzip files must end in .gz)?"
        )


def _last_newline(store: np.ndarray, lo: int, hi: int) -> int:
    """Index of the last newline in ``store[lo:hi]``, or -1; scans backwards from the end."""
    step = 1 << 16
    top = hi
    while top > lo:
        bottom = max(lo, top - step)
        hits = np.flatnonzero(store[bottom:top] == 10)
        if len(hits):
            return bottom + int(hits[-1])
        top = bottom
    return -1


def _handle_bad(path: str, block: np.ndarray, bad: np.ndarray, first_line: int, skip: bool, report: ReadReport) -> None:
    """Raise for the first bad line of a block, or count them and keep a few examples."""
    want = 1 if not skip else max(0, _MAX_EXAMPLES - len(report.bad_row_examples))
    if want:
        nl = np.flatnonzero(block == 10)
        starts = np.concatenate([[0], nl[:-1] + 1])
        for i in bad[:want].tolist():
            line = block[starts[i] : nl[i]].tobytes()
            lineno = first_line + i
            reason = _explain(line)
            if reason == "CRLF":
                if skip:
                    report.bad_row_examples.append(f"{path}:{lineno}: Windows line ending (CRLF)")
                    continue
                raise DataFormatError(
                    f"{path}:{lineno}: Windows line endings (CRLF) at line {lineno}; "
                    f"convert the file with `sed -i 's/\\r$//' {path}`"
                )
            if not skip:
                raise DataFormatError(f"{path}:{lineno}: {reason}; {_FIX_HINT}")
            report.bad_row_examples.append(f"{path}:{lineno}: {reason}")
    report.bad_rows_skipped += len(bad)


def _explain(line: bytes) -> str:
    """Say in words why one line (without its newline) is not a valid row; mirrors criteo_kernel.parse_block."""
    if line.endswith(b"\r"):
        return "CRLF"
    if not line:
        return "empty line"
    fields = line.split(b"\t")
    if len(fields) != NUM_FIELDS:
        return (
            f"expected {NUM_FIELDS} tab-separated fields (label, {NUM_DENSE} integers, {NUM_SPARSE} hex "
            f"categoricals), found {len(fields)}"
        )
    if fields[0] not in (b"0", b"1"):
        return f"label is {_show(fields[0])}, expected 0 or 1"
    for k, v in enumerate(fields[1 : 1 + NUM_DENSE]):
        if v and (len(v) > MAX_DENSE_CHARS or not _DENSE_RE.fullmatch(v)):
            return f"{DENSE_NAMES[k]} (field {k + 2}) is {_show(v)}, expected a decimal integer or empty"
    for k, v in enumerate(fields[1 + NUM_DENSE :]):
        if v and not _HEX_RE.fullmatch(v):
            return (
                f"{SPARSE_NAMES[k]} (field {k + 2 + NUM_DENSE}) is {_show(v)}, "
                f"expected at most {MAX_HEX_DIGITS} hex digits or empty"
            )
    raise AssertionError(f"parse_block rejected a line _explain accepts: {line[:200]!r}")


def _show(v: bytes) -> str:
    s = v.decode("utf-8", "backslashreplace")
    return repr(s if len(s) <= 40 else s[:40] + "...")
