"""The preprocessed Criteo layout: torchrec's per-day ``.npy`` files plus DMT's manifest.

A preprocessed directory holds, for every day ``i`` (one input file), three arrays in the layout
``torchrec.datasets.criteo`` reads (``BinaryCriteoUtils.tsv_to_npys`` writes it,
``InMemoryBinaryCriteoIterDataPipe`` and torchrec_dlrm's loader read it):

- ``day_{i}_dense.npy``  float32 (N, 13): the dense features, already transformed;
- ``day_{i}_sparse.npy`` int64 (N, 26): the raw hashed categoricals (torchrec's older tools write int32);
- ``day_{i}_labels.npy`` int32 (N, 1): 0/1 clicks.

Checked in torchrec 1.8.0's ``datasets/criteo.py`` and the pytorch/torchrec history: the names,
shapes and label dtype have not changed; sparse went from int32 to int64; the dense transform has
(``log(x + 3)`` in older releases, ``log(x - min + 2)`` with the minimum over the whole file in
newer ones), and in both it is applied *before* saving, so the files hold transformed floats.

What DMT writes differs from torchrec's tools only in values, never in layout:

- dense is ``log1p(max(x, 0))``, exactly what ``dmt.data.read_criteo`` returns for the TSV, so a
  model trained on the TSV and one trained on the preprocessed copy see the same numbers;
- a missing categorical is -1 (torchrec writes 0, which is also a real hash value). torchrec's
  loaders take ids modulo the table sizes (``hashes=``), which maps -1 to the last row: a valid id.
  Read here, -1 is an empty bag (zero embedding), as for the TSV.

So directories made by torchrec's tools train here (their dense transform and "missing = 0" come
along), and ours train under torchrec's loaders. ``manifest.json`` (DMT's addition, ignored by
torchrec) records the days, their sources and row counts; a day is complete only once the
manifest lists it, which is how a killed run is told apart from a finished one.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> write_day(d, "day_0", np.zeros((2, 13), np.float32), np.zeros((2, 26), np.int64), np.ones((2, 1), np.int32))
    >>> [day.name for day in open_preprocessed(d).days], len(open_preprocessed(d).days[0])
    (['day_0'], 2)
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dmt.atomic import atomic_open
from dmt.data.criteo_kernel import NUM_DENSE, NUM_SPARSE
from dmt.errors import DataFormatError

LAYOUT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dmt-criteo-npy"
DENSE_TRANSFORM = "log1p(max(x,0))"
PARTS = ("dense", "sparse", "labels")
# dtype and width each part is written with; sparse from torchrec's older tools is int32.
PART_DTYPES = {"dense": np.dtype(np.float32), "sparse": np.dtype(np.int64), "labels": np.dtype(np.int32)}
PART_WIDTHS = {"dense": NUM_DENSE, "sparse": NUM_SPARSE, "labels": 1}
_READABLE_DTYPES = {"dense": ("<f4",), "sparse": ("<i8", "<i4"), "labels": ("<i4", "<i8", "<f4")}
_DAY_RE = re.compile(r"^day_(\d+)$")
_FILE_RE = re.compile(r"^(?P<stem>.+)_(?P<part>dense|sparse|labels)\.npy$")
_RERUN = "rerun `dmt preprocess` with the same inputs and --out (it resumes)"


def day_file(root: str, stem: str, part: str) -> str:
    """Path of one array of one day, e.g. ``root/day_3_sparse.npy``."""
    return os.path.join(root, f"{stem}_{part}.npy")


def day_number(stem: str) -> int | None:
    """3 for ``day_3``; None for other names (torchrec's Kaggle ``train``)."""
    m = _DAY_RE.match(stem)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Day:
    """One day's three arrays, memory-mapped read-only (nothing is read until rows are indexed).

    Args:
        name: the file stem, e.g. ``day_3``.
        dense, sparse, labels: (N, 13), (N, 26), (N, 1) arrays backed by ``maps``.
        maps: the three mmaps, so their resident pages can be dropped (``release``).
    """

    name: str
    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray
    maps: tuple[mmap.mmap, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def number(self) -> int | None:
        return day_number(self.name)

    def release(self) -> None:
        """Drop this process's mapped pages of the day (they stay in the page cache).

        Why: pages a process touched through an mmap count in its RSS until the kernel needs the
        memory, so walking a 100 GB day would show a 100 GB RSS. MADV_DONTNEED unmaps them; the
        next access faults them back from the page cache.
        """
        for m in self.maps:
            if hasattr(mmap, "MADV_DONTNEED") and len(m):
                m.madvise(mmap.MADV_DONTNEED)


@dataclass(frozen=True)
class Preprocessed:
    """A preprocessed directory (or a list of day files), opened.

    Args:
        root: the directory (of the first day, for a list of files).
        days: the days in order: ``day_N`` by N, otherwise as given.
        manifest: DMT's manifest, or None for a directory made by torchrec's tools.
    """

    root: str
    days: tuple[Day, ...]
    manifest: dict | None

    @property
    def rows(self) -> int:
        return sum(len(d) for d in self.days)

    @property
    def dense_transform(self) -> str:
        """What the dense floats are: DMT's transform, or torchrec's (its version decides which)."""
        if self.manifest is None:
            return "torchrec tsv_to_npys: log(x + c), c = 3 or 2 - file minimum by torchrec version"
        return str(self.manifest.get("dense_transform", DENSE_TRANSFORM))


def open_npy(path: str) -> tuple[np.ndarray, mmap.mmap]:
    """Memory-map a ``.npy`` file read-only: the array and its mmap.

    Like ``np.load(path, mmap_mode="r")``, but the mmap is ours, so its pages can be released, and
    a truncated file is refused here rather than by a bus error in the middle of training.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if fortran or size < need:
                why = "Fortran order" if fortran else f"{size:,} bytes, its header promises {need:,}"
                raise DataFormatError(f"{path} is damaged ({why}); {_RERUN}")
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError) as e:  # bad magic or header, unreadable
        if isinstance(e, FileNotFoundError):
            raise DataFormatError(f"{path} is missing; {_RERUN}") from None
        raise DataFormatError(f"{path} is not a readable .npy file ({e}); {_RERUN}") from None
    return np.ndarray(shape, dtype, buffer=m, offset=offset), m


def open_day(root: str, stem: str, rows: int | None = None) -> Day:
    """Open the three arrays of ``stem`` under ``root`` and check they describe the same rows.

    Raises:
        DataFormatError: a file is missing, damaged, of the wrong shape or dtype, or the row
            counts disagree (with each other, or with ``rows`` from the manifest).
    """
    arrays, maps = {}, []
    for part in PARTS:
        path = day_file(root, stem, part)
        arr, m = open_npy(path)
        maps.append(m)
        if arr.ndim != 2 or arr.shape[1] != PART_WIDTHS[part] or arr.dtype.str not in _READABLE_DTYPES[part]:
            raise DataFormatError(
                f"{path} holds {arr.dtype} {arr.shape}, expected (rows, {PART_WIDTHS[part]}) of "
                f"{' or '.join(_READABLE_DTYPES[part])}; is this a preprocessed Criteo directory?"
            )
        arrays[part] = arr
    counts = {part: len(a) for part, a in arrays.items()}
    if len(set(counts.values())) != 1 or (rows is not None and counts["labels"] != rows):
        expected = f", the manifest says {rows:,}" if rows is not None else ""
        raise DataFormatError(f"{root}: {stem} is mismatched: rows {counts}{expected}; {_RERUN}")
    return Day(stem, arrays["dense"], arrays["sparse"], arrays["labels"], tuple(maps))


def read_manifest(root: str) -> dict | None:
    """The manifest of ``root``, or None if there is none; refuses one that is not ours."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path} is not valid JSON ({e}); delete it and {_RERUN}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataFormatError(f"{path} is not a DMT preprocessing manifest; delete it and {_RERUN}")
    if manifest.get("layout_version") != LAYOUT_VERSION:
        raise DataFormatError(
            f"{path} has layout version {manifest.get('layout_version')}, this DMT reads {LAYOUT_VERSION}; "
            "preprocess the data again into a new directory"
        )
    return manifest


def write_manifest(root: str, manifest: dict) -> None:
    with atomic_open(os.path.join(root, MANIFEST)) as f:
        f.write(json.dumps(manifest, indent=2) + "\n")


def new_manifest(skip_bad_rows: bool) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "layout_version": LAYOUT_VERSION,
        "dense_transform": DENSE_TRANSFORM,
        "sparse_missing": -1,
        "skip_bad_rows": skip_bad_rows,
        "complete": False,
        "days": [],
    }


def open_preprocessed(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Preprocessed:
    """Open a preprocessed directory, or day files (any of a day's three ``.npy`` names a day).

    A directory with DMT's manifest opens the days it lists and checks each against it; one
    without (made by torchrec's tools) opens every ``*_dense.npy`` it holds.

    Raises:
        DataFormatError: no such path, an unfinished preprocessing run, a missing or mismatched day.
    """
    items = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not items:
        raise DataFormatError("no preprocessed data given")
    if len(items) == 1 and os.path.isdir(items[0]):
        return _open_directory(items[0])
    days = []
    for item in items:
        m = _FILE_RE.match(os.path.basename(item))
        if os.path.isdir(item) or m is None:
            raise DataFormatError(
                f"{item}: give one preprocessed directory, or day files named <day>_dense.npy / "
                "_sparse.npy / _labels.npy"
            )
        root = os.path.dirname(item) or "."
        manifest = read_manifest(root)
        days.append(open_day(root, m.group("stem"), _manifest_rows(manifest, m.group("stem"), root)))
    return Preprocessed(os.path.dirname(items[0]) or ".", tuple(days), None)


def _manifest_rows(manifest: dict | None, stem: str, root: str) -> int | None:
    """Rows the manifest records for ``stem`` (None without a manifest); refuses an unlisted day."""
    if manifest is None:
        return None
    for entry in manifest["days"]:
        if entry["stem"] == stem:
            return int(entry["rows"])
    raise DataFormatError(f"{root}: {stem} is not finished (the manifest does not list it); {_RERUN}")


def _open_directory(root: str) -> Preprocessed:
    manifest = read_manifest(root)
    if manifest is not None:
        if not manifest.get("complete"):
            done = len(manifest["days"])
            raise DataFormatError(f"{root}: preprocessing did not finish ({done} day(s) done); {_RERUN}")
        days = [open_day(root, e["stem"], int(e["rows"])) for e in manifest["days"]]
    else:
        stems = sorted(
            {m.group("stem") for name in os.listdir(root) if (m := _FILE_RE.match(name))},
            key=lambda s: (day_number(s) is None, day_number(s) or 0, s),
        )
        if not stems:
            raise DataFormatError(
                f"{root} holds no preprocessed Criteo days (day_N_dense.npy, ...); "
                f"run `dmt preprocess DATA --out {root}` first"
            )
        days = [open_day(root, s) for s in stems]
    return Preprocessed(root, tuple(days), manifest)


def write_day(root: str, stem: str, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
    """Write one day's three arrays atomically (tests and small tools; ``dmt preprocess`` streams parts)."""
    for part, arr in zip(PARTS, (dense, sparse, labels)):
        with atomic_open(day_file(root, stem, part), "wb") as f:
            np.save(f, np.ascontiguousarray(arr, dtype=PART_DTYPES[part]))
