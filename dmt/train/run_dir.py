"""A run directory (``dmt train --out``): which run it holds, and a lock while a run uses it.

    <out>/run.json   the run's identity: config hash, fingerprint, data fingerprint, when it started
    <out>/.lock      flock()ed by the run that uses the directory, released when its last process ends

A new run into a directory that already holds a run is refused unless it continues it (``--resume``)
or replaces it (``--overwrite``: its checkpoints, metrics and identity are deleted first). A second
run while one is using the directory is refused whatever its flags: two jobs writing one directory
corrupt each other's checkpoints and metrics.

Who holds the lock: the process that owns the run. One process: itself. Emulated hosts: the
launcher, which passes the locked file to its torchrun agents (``pass_fds``); an flock belongs to the
open file, not the process, so the lock stays held until the launcher *and* every agent are gone (an
agent ends only after stopping its ranks, see ``dmt.distributed.launch``). Under the user's own
torchrun: global rank 0. The lock is the kernel's, so a run killed with ``kill -9`` leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
from dataclasses import asdict
from typing import TYPE_CHECKING

from dmt.atomic import atomic_write_text
from dmt.errors import DmtError

if TYPE_CHECKING:
    from dmt.train.build import TowerSpec
    from dmt.train.job import JobConfig

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
CLAIMED_ENV = "DMT_RUN_DIR_CLAIMED"  # the launcher holds the run directory named here; its ranks skip the claim
_OWN_OUTPUTS = ("checkpoints", "metrics.json", RUN_FILE)  # what --overwrite deletes: nothing else
# Not part of what a run *is*: where it writes, how it was started, how it reports.
_BOOKKEEPING = ("out", "resume", "overwrite", "progress")
_SAMPLES, _BLOCK = 16, 1 << 16  # the data's sampled hash: 16 blocks of 64 KiB spread over the file


def data_fingerprint(path: str | os.PathLike) -> dict:
    """Path, size, mtime and a sampled SHA-256 of a data file (whole file up to 1 MiB).

    The sampled hash reads 1 MiB whatever the file size, and tells apart files of equal size and
    row count (a resume on other data of the same length was accepted before it existed). A
    preprocessed directory is fingerprinted file by file (its ``.npy`` days and manifest, by
    name), the sizes summed and the hashes hashed together.
    """
    if os.path.isdir(path):
        return _directory_fingerprint(path)
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLES * _BLOCK:
            h.update(f.read())
        else:
            for i in range(_SAMPLES):
                f.seek((size - _BLOCK) * i // (_SAMPLES - 1))
                h.update(f.read(_BLOCK))
    return {
        "path": os.path.abspath(path),
        "size": size,
        "mtime_ns": os.stat(path).st_mtime_ns,
        "sample_sha256": h.hexdigest(),
    }


def _directory_fingerprint(path: str | os.PathLike) -> dict:
    names = sorted(n for n in os.listdir(path) if n.endswith(".npy") or n == "manifest.json")
    parts = [(n, data_fingerprint(os.path.join(path, n))) for n in names]
    h = hashlib.sha256("".join(f"{n}:{p['sample_sha256']};" for n, p in parts).encode())
    return {
        "path": os.path.abspath(path),
        "size": sum(p["size"] for _, p in parts),
        "mtime_ns": max((p["mtime_ns"] for _, p in parts), default=0),
        "sample_sha256": h.hexdigest(),
    }


def towers_dict(towers: TowerSpec | None) -> dict | None:
    """The towers as a resumed run must share them (plan, module, global interaction)."""
    if towers is None:
        return None
    # Not the sharding inside a host: it changes where shards live, not the math, and DCP
    # reshards on load (tests/test_checkpoint.py resumes a row-wise run column-wise).
    inter = towers.global_interaction
    return {
        "plan": towers.plan.to_dict(),
        "module": towers.module.to_dict(),
        "global_interaction": inter.to_dict() if inter is not None else None,
    }


def config_dict(cfg: JobConfig) -> dict:
    """The job's whole configuration as JSON data (metrics.json's "config", run.json's "config")."""
    d = {**asdict(cfg), "towers": cfg.towers and {**towers_dict(cfg.towers), "sharding": cfg.towers.sharding}}
    return json.loads(json.dumps(d, default=str))


def run_fingerprint(cfg: JobConfig, world: int, data: dict) -> dict:
    """What a checkpoint must share with a run to be resumed by it: model, towers, optimizers,
    seed, global batch and the data's content (``data``: :func:`data_fingerprint`)."""
    return json.loads(
        json.dumps(
            {
                "global_batch": cfg.batch_size * world,
                "seed": cfg.seed,
                "model": cfg.model.to_dict(),
                "towers": towers_dict(cfg.towers),
                # The optimizer kinds shape the saved state; learning rates may change on resume.
                "optimizer": {"sparse": cfg.optim.sparse, "dense": cfg.optim.dense},
                "data": {"size": data["size"], "sample_sha256": data["sample_sha256"]},
            }
        )
    )


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """The keys of ``current`` whose values ``saved`` does not share."""
    return sorted(k for k in current if saved.get(k) != current[k])


class RunLock:
    """The lock on a run directory. ``release()`` closes our handle: processes that inherited it
    (``fileno()`` passed to children) keep the directory locked until they end too.

    A run that fails before writing any output (bad input found by the ranks, say) leaves nothing
    behind: set ``failed`` (or leave the ``with`` block by an exception) and the release removes the
    run.json it wrote, and the directory if the claim created it.
    """

    def __init__(self, fd: int, out: str, created: bool) -> None:
        self._fd: int | None = fd
        self.out, self.created = out, created
        self.failed = False

    def fileno(self) -> int:
        assert self._fd is not None, "released"
        return self._fd

    def release(self) -> None:
        if self._fd is None:
            return
        if self.failed and _previous_run(self.out) is None:  # no checkpoint, no metrics: undo the claim
            doomed = [RUN_FILE, LOCK_FILE] if self.created else [RUN_FILE]
            for name in doomed:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.out, name))
            if self.created:
                with contextlib.suppress(OSError):  # not empty: someone else's files, keep them
                    os.rmdir(self.out)
        # close, never flock(LOCK_UN): that would unlock the file for the children holding it too.
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.failed = self.failed or exc_type is not None
        self.release()


def claim_run_dir(cfg: JobConfig, world: int, *, overwrite: bool = False) -> RunLock:
    """Lock ``cfg.out`` for this run and record its identity, or refuse before any work starts.

    Raises:
        DmtError: --resume with --overwrite; ``out`` not a usable directory; in use by another run;
            holding another run without --resume/--overwrite; a checkpoint another run wrote (--resume).
    """
    if cfg.resume and overwrite:
        raise DmtError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    created = not os.path.exists(cfg.out)
    out = _make_dir(cfg.out)
    lock = _lock(out, created)
    try:
        previous = _previous_run(out)
        if previous is not None and not (cfg.resume or overwrite):
            started = previous.get("started_at")
            raise DmtError(
                f"--out {out} already holds a run ({f'started {started}' if started else 'its outputs'}); "
                "add --resume to continue it, --overwrite to replace it, or choose a new --out"
            )
        if overwrite:
            _clear(out)
        data = data_fingerprint(cfg.data)
        identity = {"fingerprint": run_fingerprint(cfg, world, data), "config": _hashed_config(cfg)}
        changed = []
        if cfg.resume and previous is not None:
            _check_resumable(out, identity["fingerprint"])
            changed = changed_settings(previous.get("config"), identity["config"])
        _write_identity(out, identity, data, previous if cfg.resume else None, changed)
    except BaseException:
        lock.failed = True
        lock.release()
        raise
    return lock


def _make_dir(out: str) -> str:
    if not out:
        raise DmtError("--out is empty; give a directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DmtError(f"--out {out} exists and is not a directory; give a directory path")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DmtError(f"--out {out}: cannot create the directory ({e.strerror or e}); give another path") from None
    return out


def _lock(out: str, created: bool) -> RunLock:
    path = os.path.join(out, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DmtError(
            f"--out {out}: cannot create {LOCK_FILE} ({e.strerror or e}); give a writable directory"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DmtError(
            f"--out {out} is in use by another run ({holder}); wait for it to end or stop it, or choose another --out"
        ) from None
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {_now()}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    return RunLock(fd, out, created)


def _previous_run(out: str) -> dict | None:
    """The run whose outputs (metrics.json, checkpoints) are in ``out``: its run.json, ``{}`` if that is
    missing or unreadable; None if ``out`` holds no outputs (a run.json alone: a run that wrote nothing)."""
    checkpoints = os.path.join(out, "checkpoints")
    has_checkpoints = os.path.isdir(checkpoints) and any(os.scandir(checkpoints))
    if not (os.path.exists(os.path.join(out, "metrics.json")) or has_checkpoints):
        return None
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(out, RUN_FILE)) as f:
            previous = json.load(f)
        if isinstance(previous, dict):
            return previous
    return {}


def _clear(out: str) -> None:
    for name in _OWN_OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)


def _hashed_config(cfg: JobConfig) -> dict:
    config = {k: v for k, v in config_dict(cfg).items() if k not in _BOOKKEEPING}
    return {"sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(), "values": config}


def _check_resumable(out: str, fingerprint: dict) -> None:
    """Refuse now, before any process starts, when the newest checkpoint belongs to another run."""
    from dmt.train.checkpoint import latest_checkpoint, read_meta  # torch: only when resuming

    path = latest_checkpoint(os.path.join(out, "checkpoints"))
    if path is None:
        return
    differs = fingerprint_differences(read_meta(path)["fingerprint"], fingerprint)
    if differs:
        raise DmtError(
            f"checkpoint {path} was written by a different run (differs in {differs}); resume with "
            "the same data, model, optimizers, seed and global batch, or use --overwrite or a new --out"
        )


def changed_settings(previous: dict | None, current: dict) -> list[str]:
    """On --resume, the other settings (learning rates, eval interval...) that differ from the last
    run, as ``"optim.sparse_lr 0.05 -> 0.1"``; rank 0 prints them once the checkpoint has loaded."""
    if not isinstance(previous, dict) or previous.get("sha256") == current["sha256"]:
        return []
    old, new = _flat(previous.get("values", {})), _flat(current["values"])
    return [f"{k} {_short(old.get(k))} -> {_short(new[k])}" for k in sorted(new) if old.get(k) != new[k]]


def read_changed_settings(out: str) -> list[str]:
    """What :func:`claim_run_dir` recorded in run.json as changed on this resume ([] if nothing)."""
    with contextlib.suppress(OSError, ValueError, AttributeError), open(os.path.join(out, RUN_FILE)) as f:
        return [str(c) for c in json.load(f).get("changed_on_resume", [])]
    return []


def _flat(values: dict, prefix: str = "") -> dict:
    """Nested settings as dotted keys (``optim.sparse_lr``), so a change names the setting itself."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _write_identity(out: str, identity: dict, data: dict, previous: dict | None, changed: list[str]) -> None:
    record = {
        "format": 1,
        "config_sha256": identity["config"]["sha256"],
        "fingerprint": identity["fingerprint"],
        "data": data,
        "config": identity["config"],
        "started_at": (previous or {}).get("started_at", _now()),
        "resumed_at": _now() if previous is not None else None,
        "changed_on_resume": changed,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    atomic_write_text(os.path.join(out, RUN_FILE), json.dumps(record, indent=2) + "\n")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
