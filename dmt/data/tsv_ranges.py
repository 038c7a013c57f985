"""Criteo TSV by byte ranges: cut a file at line starts, parse one range with the vectorised kernel.

``dmt.data.read_criteo`` reads whole files from the first byte; preprocessing in parallel needs a
reader that starts and stops anywhere, so this one reads ``[start, stop)`` of a plain file (both
at line starts, found by ``plan_ranges``) into the same ``criteo_kernel.parse_block``. gzip
streams cannot be entered in the middle, so a ``.gz`` file is always one range.

Bad rows are reported by their line number *within the range*; the caller, which knows how many
lines the earlier ranges held, turns that into ``file:line``.
"""

from __future__ import annotations

import gzip
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dmt.data.criteo import CriteoArrays, _explain, _last_newline  # one home each: wording a bad row, row ends
from dmt.data.criteo_kernel import PAD, parse_block
from dmt.errors import DataFormatError

_BLOCK_BYTES = 1 << 20  # as dmt.data.criteo: parse temporaries stay in cache
_MAX_LINE_BYTES = 1 << 20
MAX_EXAMPLES = 5


def plan_ranges(path: str, part_bytes: int, min_parts: int = 1) -> list[tuple[int, int]]:
    """Cut ``path`` into ranges of whole lines of about ``part_bytes`` (at least ``min_parts``).

    Returns ``[(start, stop), ...]`` byte offsets covering the file; a ``.gz`` file is one range
    ``(0, -1)`` (-1: to the end of the stream).
    """
    if path.endswith(".gz"):
        return [(0, -1)]
    size = os.path.getsize(path)
    nparts = max(1, -(-size // part_bytes), min(min_parts, size // (1 << 20)))  # >= 1 MB per part
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, nparts):
            cut = _next_line_start(f, size * k // nparts, size)
            if cut > cuts[-1] and cut < size:
                cuts.append(cut)
    cuts.append(size)
    return list(itertools.pairwise(cuts))


def _next_line_start(f, pos: int, size: int) -> int:
    """The first line start at or after ``pos``: ``pos`` itself if the byte before it is a newline."""
    at = max(pos, 1) - 1
    f.seek(at)
    while at < size:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        hits = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
        if len(hits):
            return at + int(hits[0]) + 1
        at += len(chunk)
    return size


@dataclass
class RangeStats:
    """What parsing a range found.

    Args:
        rows: valid rows returned.
        lines: lines read (valid or not).
        bad_rows: malformed rows skipped.
        examples: up to MAX_EXAMPLES skipped rows as (line within the range, 1-based; reason).
        first_bad: with ``skip_bad_rows=False``, the first malformed row as (line, reason);
            parsing stops there.
    """

    rows: int = 0
    lines: int = 0
    bad_rows: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)
    first_bad: tuple[int, str] | None = None


def iter_range(
    path: str,
    start: int,
    stop: int,
    *,
    skip_bad_rows: bool,
    stats: RangeStats,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[CriteoArrays]:
    """Parse the lines of ``path[start:stop]`` (``stop=-1``: to the end) block by block.

    Malformed rows are counted in ``stats``; without ``skip_bad_rows`` the first one is recorded as
    ``stats.first_bad`` and iteration stops. ``on_bytes(n)`` is told of every ``n`` file bytes read
    (compressed bytes for ``.gz``), for a progress bar.

    Raises:
        DataFormatError: unreadable file, corrupt or truncated gzip, a line over 1 MB.
    """
    try:
        with open(path, "rb") as raw:
            if path.endswith(".gz"):
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
                left = -1
            else:
                raw.seek(start)
                stream, left = raw, stop - start
            yield from _parse_stream(path, stream, raw, left, skip_bad_rows, stats, on_bytes)
    except (OSError, EOFError) as e:
        if path.endswith(".gz"):
            raise DataFormatError(f"{path}: cannot decompress ({e}); is the file complete?") from None
        raise DataFormatError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _parse_stream(path, stream, raw, left, skip_bad_rows, stats, on_bytes) -> Iterator[CriteoArrays]:
    """The block loop of ``iter_range``: ``left`` bytes to read (-1: all), carrying partial lines."""
    store = np.full(PAD + _MAX_LINE_BYTES + _BLOCK_BYTES + 1, 9, np.uint8)
    view = memoryview(store)  # type: ignore[arg-type]  # numpy arrays export the buffer protocol
    ncarry, told = 0, raw.tell()
    while True:
        want = _BLOCK_BYTES if left < 0 else min(_BLOCK_BYTES, left)
        got = stream.readinto(view[PAD + ncarry : PAD + ncarry + want]) if want else 0
        left = left - got if left >= 0 else left
        if on_bytes is not None:
            on_bytes(raw.tell() - told)
            told = raw.tell()
        end = PAD + ncarry + got
        if not got and ncarry:
            store[end] = 10  # a last line without newline is a complete row
            end += 1
        cut = end if not got else _last_newline(store, PAD, end) + 1
        if cut <= PAD:
            ncarry = end - PAD
            if ncarry > _MAX_LINE_BYTES:
                raise DataFormatError(
                    f"{path}: a line runs over {ncarry:,} bytes without a newline; is this Criteo TSV?"
                )
            if not got:
                return
            continue
        arrays = _parse_lines(store, cut, skip_bad_rows, stats)
        ncarry = end - cut
        store[PAD : PAD + ncarry] = store[cut:end]
        if len(arrays):
            yield arrays
        if stats.first_bad is not None or not got:
            return


def _parse_lines(store: np.ndarray, cut: int, skip_bad_rows: bool, stats: RangeStats) -> CriteoArrays:
    """Parse the complete lines ``store[PAD:cut]``, account for them in ``stats``."""
    *columns, bad, nlines = parse_block(store[:cut])
    arrays = CriteoArrays(*columns)
    if len(bad):
        want = 1 if not skip_bad_rows else max(0, MAX_EXAMPLES - len(stats.examples))
        if want:
            block = store[PAD:cut]
            nl = np.flatnonzero(block == 10)
            starts = np.concatenate([[0], nl[:-1] + 1])
            found = [(stats.lines + i + 1, _explain(block[starts[i] : nl[i]].tobytes())) for i in bad[:want].tolist()]
            if not skip_bad_rows:
                stats.first_bad = found[0]
                arrays = arrays.slice(0, int(bad[0]))  # the rows before it are fine, and unused
                stats.lines += int(bad[0]) + 1
                stats.rows += len(arrays)
                return arrays
            stats.examples += found
        stats.bad_rows += len(bad)
    stats.lines += nlines
    stats.rows += len(arrays)
    return arrays


def lines_before(path: str, offset: int) -> int:
    """Newlines in ``path[:offset]`` (plain files): the line number of the line at ``offset`` minus 1."""
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < offset:
            chunk = f.read(min(1 << 24, offset - done))
            if not chunk:
                break
            count += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == 10))
            done += len(chunk)
    return count


def describe_bad_row(path: str, line: int, reason: str) -> str:
    """The one-line message for a malformed row at ``path:line``, with the fix."""
    if reason == "CRLF":
        return (
            f"{path}:{line}: Windows line endings (CRLF) at line {line}; convert the file with "
            f"`sed -i 's/\\r$//' {path}`"
        )
    return f"{path}:{line}: {reason}; fix the row or pass --skip-bad-rows to skip and count such rows"
