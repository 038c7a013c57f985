"""Criteo TSV -> the per-day ``.npy`` layout (:mod:`dmt.data.npy_layout`), in parallel and restartable.

Every input file becomes one day. A plain file is cut into byte ranges of whole lines (``part_bytes``
each, and at least one per worker); a ``.gz`` file is one range (gzip cannot be entered midway).
Worker processes parse ranges with the vectorised kernel and stream each range's rows into raw
part files under ``OUT/.parts/<day>/``; a part counts as done once its marker JSON exists (written
last, atomically). When every part of a day is done the parent writes the day's three ``.npy``
files (an ``.npy`` header, then the parts' bytes copied by the kernel), each atomically, then lists
the day in ``manifest.json``, then deletes the parts. A run killed anywhere leaves finished parts
and days, which a rerun with the same inputs keeps (checked by path, size and mtime), and nothing
that looks finished but is not: a day without its manifest entry is not read.

Why not torchrec's ``BinaryCriteoUtils.tsv_to_npys``: it parses row by row in Python and holds the
whole day in lists (a 200M-row Terabyte day would need >100 GB), one file at a time.

Example:
    >>> import tempfile, os
    >>> from dmt.data.synthetic import generate_criteo
    >>> d = tempfile.mkdtemp()
    >>> _ = generate_criteo(os.path.join(d, "train.txt"), rows=1000, seed=0)
    >>> report = preprocess_criteo(PreprocessConfig(inputs=(os.path.join(d, "train.txt"),), out=d, workers=1))
    >>> report.rows, sorted(f for f in os.listdir(d) if f.endswith(".npy"))
    (1000, ['day_0_dense.npy', 'day_0_labels.npy', 'day_0_sparse.npy'])
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import json
import multiprocessing
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from dmt.atomic import atomic_open, atomic_write_text
from dmt.data.npy_layout import (
    PART_DTYPES,
    PART_WIDTHS,
    PARTS,
    day_file,
    day_number,
    new_manifest,
    read_manifest,
    write_manifest,
)
from dmt.data.tsv_ranges import RangeStats, describe_bad_row, iter_range, lines_before, plan_ranges
from dmt.errors import DataFormatError, DmtError

_INPUT_DAY_RE = re.compile(r"^(day_\d+)(\.[A-Za-z0-9]+)*$")  # day_7, day_7.gz, day_7.txt
_PARTS_DIR = ".parts"
_MAX_EXAMPLES = 5


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """What ``dmt preprocess`` does.

    Args:
        inputs: Criteo TSV files (``.gz`` too), one day each. Files named ``day_N`` keep N;
            otherwise they become ``day_0``, ``day_1``, ... in the order given.
        out: the output directory (created; may already hold an unfinished run to resume).
        workers: parallel processes; 0 uses every core.
        skip_bad_rows: skip and count malformed rows instead of stopping at the first.
        part_bytes: a plain input is parsed in ranges of about this many bytes (the unit of
            parallelism and of restart).
        progress: show a tqdm bar (bytes of input).
    """

    inputs: tuple[str, ...]
    out: str
    workers: int = 0
    skip_bad_rows: bool = False
    part_bytes: int = 256 << 20  # ~1.2M Criteo rows: a few seconds of one core
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(os.fspath(p) for p in self.inputs))
        if not self.inputs:
            raise DmtError("no input files given; pass Criteo TSV files (day_0 ... or train.txt)")
        if self.workers < 0:
            raise DmtError(f"workers={self.workers} must be >= 0 (0: every core)")
        if self.part_bytes < 1 << 20:
            raise DmtError(f"part_bytes={self.part_bytes} must be >= 1 MiB (--part-mb 1 or more)")

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass
class PreprocessReport:
    """What a run did. ``days`` are the manifest's entries (rows, bad rows, source of every day)."""

    out: str
    days: list[dict]
    parts_parsed: int = 0  # ranges parsed by this run
    parts_reused: int = 0  # ranges an earlier, interrupted run had finished
    days_reused: int = 0  # days an earlier run had finished
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(d["rows"] for d in self.days)

    @property
    def bad_rows_skipped(self) -> int:
        return sum(d["bad_rows_skipped"] for d in self.days)


@dataclass
class _DayJob:
    """One input file on its way to a day: its byte ranges and which of them are done."""

    stem: str
    source: dict  # {"path", "bytes", "mtime_ns"}
    ranges: list[tuple[int, int]]
    parts_dir: str
    done: dict[int, dict] = field(default_factory=dict)  # range index -> its marker

    def task(self, k: int, skip_bad_rows: bool) -> tuple:
        start, stop = self.ranges[k]
        return (self.source["path"], start, stop, os.path.join(self.parts_dir, f"{k:05d}"), skip_bad_rows)


def preprocess_criteo(cfg: PreprocessConfig) -> PreprocessReport:
    """Preprocess ``cfg.inputs`` into ``cfg.out``; resumes an interrupted run into the same ``out``.

    Raises:
        DataFormatError: a malformed row (``file:line``; unless ``skip_bad_rows``), an empty,
            unreadable or truncated input, or a day without valid rows.
        DmtError: ``out`` cannot be written, or it already holds a day of another source.
    """
    t0 = time.perf_counter()
    sources = _sources(cfg.inputs)
    with _locked_output(cfg.out):
        manifest = _load_or_new_manifest(cfg.out, cfg.skip_bad_rows)
        report = PreprocessReport(out=cfg.out, days=[])
        jobs = []
        for stem, source in sources:
            entry = _finished_entry(manifest, stem, source, cfg.skip_bad_rows, cfg.out)
            if entry is not None:
                report.days_reused += 1
            else:
                jobs.append(_plan_day(cfg, stem, source))
        manifest["skip_bad_rows"] = cfg.skip_bad_rows
        # Until the last day is written the directory is not complete, whatever an earlier run left.
        manifest["complete"] = False
        write_manifest(cfg.out, manifest)
        _run_jobs(cfg, jobs, manifest, report)
        manifest["complete"] = True
        write_manifest(cfg.out, manifest)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(cfg.out, _PARTS_DIR))
    wanted = {stem for stem, _ in sources}
    report.days = [e for e in manifest["days"] if e["stem"] in wanted]
    report.seconds = time.perf_counter() - t0
    return report


def _sources(inputs: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(day stem, source fingerprint) per input; refuses missing, empty or duplicate inputs."""
    for path in inputs:
        if not os.path.isfile(path):
            raise DataFormatError(f"{path}: no such file" if not os.path.exists(path) else f"{path} is not a file")
        if os.path.getsize(path) == 0:
            raise DataFormatError(
                f"{path} is empty; expected Criteo TSV rows (label, 13 integers, 26 hex categoricals)"
            )
    names = [_INPUT_DAY_RE.match(os.path.basename(p)) for p in inputs]
    stems = [m.group(1) for m in names] if all(names) else [f"day_{i}" for i in range(len(inputs))]
    seen: dict[str, str] = {}
    for stem, path in zip(stems, inputs):
        if stem in seen:
            raise DmtError(f"{seen[stem]} and {path} would both become {stem}; give each day once")
        seen[stem] = path
    return [(stem, _fingerprint(path)) for stem, path in zip(stems, inputs)]


def _fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


@contextlib.contextmanager
def _locked_output(out: str) -> Iterator[None]:
    """Create ``out``, prove it writable, and hold a lock on it so two runs cannot interleave."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DmtError(f"--out {out} is a file; give a directory")
    try:
        os.makedirs(os.path.join(out, _PARTS_DIR), exist_ok=True)
        fd = os.open(os.path.join(out, ".lock"), os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise DmtError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable directory") from None
    with os.fdopen(fd, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DmtError(f"--out {out} is being written by another `dmt preprocess`; wait for it") from None
        _remove_temporaries(out)
        yield


def _remove_temporaries(out: str) -> None:
    """Delete what a killed run was writing (atomic_open's temp files): it is never reused."""
    for root, _, files in os.walk(out):
        for name in files:
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))


def _load_or_new_manifest(out: str, skip_bad_rows: bool) -> dict:
    try:
        manifest = read_manifest(out)
    except DataFormatError as e:
        raise DmtError(f"--out {out} holds something else: {e}") from None
    return manifest if manifest is not None else new_manifest(skip_bad_rows)


def _finished_entry(manifest: dict, stem: str, source: dict, skip_bad_rows: bool, out: str) -> dict | None:
    """The manifest entry of ``stem`` if it was made from ``source`` and can stand; else drop it."""
    for entry in manifest["days"]:
        if entry["stem"] != stem:
            continue
        if entry["source"]["path"] != source["path"]:
            raise DmtError(
                f"--out {out} already holds {stem} made from {entry['source']['path']}, not {source['path']}; "
                "use a new --out directory, or give all days of the dataset to one directory in the same order"
            )
        same = entry["source"] == source and (skip_bad_rows or entry["bad_rows_skipped"] == 0)
        files = all(os.path.isfile(day_file(out, stem, p)) for p in PARTS)
        if same and files:
            return entry
        manifest["days"].remove(entry)  # changed source, or bad rows that must now fail: redo
        return None
    return None


def _plan_day(cfg: PreprocessConfig, stem: str, source: dict) -> _DayJob:
    """The day's byte ranges and the parts already done, reusing an interrupted run's plan if it matches."""
    parts_dir = os.path.join(cfg.out, _PARTS_DIR, stem)
    plan_path = os.path.join(parts_dir, "plan.json")
    with contextlib.suppress(OSError, ValueError):
        with open(plan_path) as f:
            plan = json.load(f)
        if plan["source"] == source:
            job = _DayJob(stem, source, [tuple(r) for r in plan["ranges"]], parts_dir)
            for k in range(len(job.ranges)):
                marker = _read_marker(os.path.join(parts_dir, f"{k:05d}"))
                if marker is not None and (cfg.skip_bad_rows or marker["bad_rows"] == 0):
                    job.done[k] = marker
            return job
    shutil.rmtree(parts_dir, ignore_errors=True)
    os.makedirs(parts_dir)
    ranges = plan_ranges(source["path"], cfg.part_bytes, min_parts=cfg.num_workers)
    atomic_write_text(plan_path, json.dumps({"source": source, "ranges": ranges}) + "\n")
    return _DayJob(stem, source, ranges, parts_dir)


def _read_marker(prefix: str) -> dict | None:
    try:
        with open(prefix + ".json") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    sizes_ok = all(
        os.path.isfile(f"{prefix}.{p}") and os.path.getsize(f"{prefix}.{p}") == marker["rows"] * _row_bytes(p)
        for p in PARTS
    )
    return marker if sizes_ok else None


def _row_bytes(part: str) -> int:
    return PART_WIDTHS[part] * PART_DTYPES[part].itemsize


# ----------------------------------------------------------------------------- parsing parts
_progress_counter = None  # a worker's shared byte counter (set by _init_worker)


def _init_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter


def _count_bytes(n: int) -> None:
    if _progress_counter is not None and n:
        with _progress_counter.get_lock():
            _progress_counter.value += n


class _StopAtBadRow(Exception):
    """Unwinds a part's writers (their temp files are deleted) when a malformed row stops the run."""


def parse_part(task: tuple, on_bytes=None) -> dict:
    """Parse one range into raw part files ``<prefix>.{dense,sparse,labels}`` and its marker.

    Returns the marker ({"rows", "lines", "bad_rows", "examples"}), or ``{"first_bad": [line, reason]}``
    (line within the range) when a malformed row stops it; then nothing is left behind.
    """
    path, start, stop, prefix, skip_bad_rows = task
    stats = RangeStats()
    try:
        with contextlib.ExitStack() as stack:
            files = {p: stack.enter_context(atomic_open(f"{prefix}.{p}", "wb")) for p in PARTS}
            for arrays in iter_range(
                path, start, stop, skip_bad_rows=skip_bad_rows, stats=stats, on_bytes=on_bytes or _count_bytes
            ):
                files["dense"].write(memoryview(np.ascontiguousarray(arrays.dense)))
                files["sparse"].write(memoryview(np.ascontiguousarray(arrays.sparse)))
                files["labels"].write(memoryview(arrays.labels.astype(np.int32)))
            if stats.first_bad is not None:
                raise _StopAtBadRow
    except _StopAtBadRow:
        return {"first_bad": list(stats.first_bad)}
    marker = {"rows": stats.rows, "lines": stats.lines, "bad_rows": stats.bad_rows, "examples": stats.examples}
    atomic_write_text(prefix + ".json", json.dumps(marker) + "\n")
    return marker


def _run_jobs(cfg: PreprocessConfig, jobs: list[_DayJob], manifest: dict, report: PreprocessReport) -> None:
    """Parse every pending range (a process pool, or this process for one worker), finishing days as they complete."""
    todo = [(job, k) for job in jobs for k in range(len(job.ranges)) if k not in job.done]
    report.parts_reused = sum(len(job.done) for job in jobs)
    total = sum(_range_bytes(job, k) for job, k in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="preprocess", disable=not cfg.progress) as bar:
        for job in jobs:
            if len(job.done) == len(job.ranges):
                _finish_day(cfg, job, manifest)
        if not todo:
            return
        if cfg.num_workers == 1 or len(todo) == 1:
            for job, k in todo:
                _take_result(cfg, job, k, parse_part(job.task(k, cfg.skip_bad_rows), bar.update), manifest, report)
            return
        _run_pool(cfg, todo, manifest, report, bar)


def _run_pool(cfg: PreprocessConfig, todo: list, manifest: dict, report: PreprocessReport, bar: tqdm) -> None:
    # fork starts workers in milliseconds; it is unsafe only if other threads hold locks the
    # workers need, so fall back to spawn (a fresh interpreter per worker, seconds to import torch)
    # when there are threads. tqdm's monitor thread only takes tqdm's lock, which workers never do.
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    method = "fork" if not others and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    counter = ctx.Value("q", 0)
    workers = min(cfg.num_workers, len(todo))
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as pool:
        futures = {pool.submit(parse_part, job.task(k, cfg.skip_bad_rows)): (job, k) for job, k in todo}
        try:
            while futures:
                done, _ = cf.wait(futures, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                bar.update(counter.value - bar.n)
                for fut in done:
                    job, k = futures.pop(fut)
                    _take_result(cfg, job, k, fut.result(), manifest, report)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _range_bytes(job: _DayJob, k: int) -> int:
    start, stop = job.ranges[k]
    return (stop if stop >= 0 else job.source["bytes"]) - start


def _take_result(cfg: PreprocessConfig, job: _DayJob, k: int, result: dict, manifest: dict, report) -> None:
    """Record a parsed range; stop the run at a malformed row; finish the day when it was the last range."""
    if "first_bad" in result:
        line, reason = result["first_bad"]
        start = job.ranges[k][0]
        before = lines_before(job.source["path"], start) if start > 0 else 0
        raise DataFormatError(describe_bad_row(job.source["path"], before + line, reason))
    job.done[k] = result
    report.parts_parsed += 1
    if len(job.done) == len(job.ranges):
        _finish_day(cfg, job, manifest)


def _finish_day(cfg: PreprocessConfig, job: _DayJob, manifest: dict) -> None:
    """Write the day's three ``.npy`` files from its parts, list it in the manifest, drop the parts."""
    markers = [job.done[k] for k in range(len(job.ranges))]
    rows = sum(m["rows"] for m in markers)
    entry = {
        "stem": job.stem,
        "day": day_number(job.stem),
        "source": job.source,
        "rows": rows,
        "bad_rows_skipped": sum(m["bad_rows"] for m in markers),
        "bad_row_examples": _examples(job, markers),
    }
    if rows == 0:
        raise DataFormatError(
            f"no valid rows in {job.source['path']} ({entry['bad_rows_skipped']} bad rows skipped, "
            f"e.g. {entry['bad_row_examples'][:1]}); is this Criteo TSV?"
        )
    prefixes = [os.path.join(job.parts_dir, f"{k:05d}") for k in range(len(job.ranges))]
    for part in PARTS:
        _concatenate(day_file(cfg.out, job.stem, part), part, rows, [f"{p}.{part}" for p in prefixes])
    manifest["days"] = sorted(
        [e for e in manifest["days"] if e["stem"] != job.stem] + [entry],
        key=lambda e: (e["day"] is None, e["day"] or 0, e["stem"]),
    )
    write_manifest(cfg.out, manifest)
    shutil.rmtree(job.parts_dir, ignore_errors=True)


def _examples(job: _DayJob, markers: list[dict]) -> list[str]:
    """The day's first few skipped rows as ``file:line: reason``, lines counted across ranges."""
    out, lines_before_part = [], 0
    for marker in markers:
        for line, reason in marker["examples"]:
            if len(out) < _MAX_EXAMPLES:
                why = "Windows line ending (CRLF)" if reason == "CRLF" else reason
                out.append(f"{job.source['path']}:{lines_before_part + line}: {why}")
        lines_before_part += marker["lines"]
    return out


def _concatenate(path: str, part: str, rows: int, sources: list[str]) -> None:
    """One ``.npy`` of ``rows`` rows from raw part files, written atomically; the kernel copies the bytes."""
    header = {"descr": np.lib.format.dtype_to_descr(PART_DTYPES[part]), "fortran_order": False}
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (rows, PART_WIDTHS[part])})
        f.flush()
        for src in sources:
            with open(src, "rb") as s:
                _copy(s, f, os.fstat(s.fileno()).st_size)


def _copy(src, dst, nbytes: int) -> None:
    """Append ``nbytes`` of ``src`` to ``dst`` in the kernel (copy_file_range), else through a buffer."""
    left = nbytes
    if hasattr(os, "copy_file_range"):
        with contextlib.suppress(OSError):
            while left > 0:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 1 << 30))
                if n == 0:
                    break
                left -= n
    if left > 0:  # no copy_file_range here, or it refused (e.g. across file systems)
        src.seek(nbytes - left)
        dst.seek(0, os.SEEK_END)
        shutil.copyfileobj(src, dst, 1 << 22)
        dst.flush()
