"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, atomic, checksummed, safe to load.

Layout under a checkpoint directory::

    step_00000120/      one DCP checkpoint (every rank writes its own shards) + meta.json
    .tmp-step_00000160/ a save in progress, or one a crash interrupted: never loaded

A save goes to a ``.tmp-`` directory; only after every rank has finished writing does rank 0 add
``meta.json`` and rename the directory into place. A crash at any point therefore leaves either the
previous checkpoints untouched or a ``.tmp-`` directory that ``latest_checkpoint`` ignores.

``meta.json`` is the checkpoint's manifest, plain JSON: the step, the size and SHA-256 of every
other file of the directory (DCP's ``.metadata`` and each rank's ``.distcp`` shards, hashed by the
ranks in parallel at save time), and the job's own record (fingerprint, progress). Loading checks,
before DCP reads anything, that the directory holds exactly those files with those checksums, so a
flipped byte, a truncated or missing shard or a stray file is refused with the file's name instead
of loading silently or failing deep inside DCP.

Nothing from a checkpoint is unpickled without restriction. DCP's ``.metadata`` is a pickle, and
its loader unpickles non-tensor values with ``torch.load(weights_only=False)``: a crafted directory
would run code, whatever checksums it carries (an attacker writes those too). So the metadata is
first read by an unpickler that resolves only DCP's own metadata classes (plus ``torch.Size``,
dtypes, layouts and paths), and every non-tensor value is first read with
``torch.load(weights_only=True)``; only bytes that pass are handed to DCP. Tensors DCP already
reads with ``weights_only=True``. Shared storage is assumed, as DCP itself needs to reshard on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException

from dmt.atomic import atomic_write_text
from dmt.errors import DmtError

_STEP_DIR = re.compile(r"^step_(\d{8})$")
META = "meta.json"
FORMAT = 2  # format 1 (no checksums) could not be verified and is refused
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(DmtError):
    """A checkpoint that cannot be trusted or does not fit this job: the message names the file and the fix."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _state(model: torch.nn.Module, optimizer) -> dict:
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def save_checkpoint(
    root: str | os.PathLike, step: int, model: torch.nn.Module, optimizer, meta: dict, keep: int = 2
) -> Path:
    """Save model + optimizer state at ``step`` (collective: every rank calls it). Returns the directory.

    Keeps this checkpoint and the ``keep - 1`` newest older ones; any checkpoint of a *higher* step
    (left by another run in this directory) is deleted, so the newest checkpoint is always this run's.
    """
    root = Path(root)
    final, tmp = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_state(model, optimizer), checkpoint_id=str(tmp))
    _barrier()  # every rank's shards are on disk before they are hashed and the checkpoint becomes visible
    files = _file_digests(tmp)
    if _is_main():
        atomic_write_text(tmp / META, json.dumps({"format": FORMAT, "step": step, "files": files, **meta}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(root, step, keep)
    _barrier()
    return final


def _prune(root: Path, newest: int, keep: int) -> None:
    """Keep ``newest`` and the ``keep - 1`` newest checkpoints below it; drop the rest and stale saves."""
    older = sorted(s for s in _complete(root) if s < newest)
    kept = {newest, *(older[len(older) - (keep - 1) :] if keep > 1 else [])}
    for s in _complete(root):
        if s not in kept:
            shutil.rmtree(root / f"step_{s:08d}", ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):  # saves a crash interrupted; ours is already renamed
        shutil.rmtree(stale, ignore_errors=True)


def _complete(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    steps = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / META).is_file():
            steps.append(int(m.group(1)))
    return steps


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    steps = _complete(Path(root))
    return Path(root) / f"step_{max(steps):08d}" if steps else None


# ------------------------------------------------------------------ checksums


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _file_digests(directory: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file in ``directory``; each rank hashes every W-th file (collective)."""
    names = sorted(p.name for p in directory.iterdir() if p.name != META)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = {n: {"size": (directory / n).stat().st_size, "sha256": _sha256(directory / n)} for n in names[rank::world]}
    if world == 1:
        return mine
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, mine)
    return {n: d for part in parts for n, d in sorted(part.items())}


def agree(problem: str | None) -> str | None:
    """The first rank's problem, on every rank (collective), so all ranks raise together or none does."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return problem
    problems: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p), None)


# ------------------------------------------------------------------ reading


def read_meta(path: str | os.PathLike) -> dict:
    """The checkpoint's ``meta.json``, checked for shape (not yet against the files: see ``verify``).

    Raises:
        CheckpointError: unreadable, not JSON, not an object, another format, or fields of the wrong type.
    """
    path = Path(path)
    fix = f"delete {path} to resume from the previous checkpoint, or start over with --overwrite"
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {META} is unreadable or not JSON ({e}); {fix}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: {META} is not a JSON object; {fix}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has no checksums (format {meta.get('format', 1)!r}, written by an older dmt or "
            f"another tool), so it cannot be verified; start over with --overwrite or use a new --out"
        )
    files = meta.get("files")
    well_formed = (
        isinstance(meta.get("step"), int)
        and isinstance(files, dict)
        and all(
            isinstance(d, dict) and isinstance(d.get("size"), int) and _SHA256.match(str(d.get("sha256", "")))
            for d in files.values()
        )
        and isinstance(meta.get("fingerprint"), dict)
        and isinstance(meta.get("progress"), dict)
    )
    if not well_formed:
        raise CheckpointError(f"checkpoint {path}: {META} lacks or mistypes step/files/fingerprint/progress; {fix}")
    return meta


def verify(path: str | os.PathLike, meta: dict) -> None:
    """Check (collective) that ``path`` holds exactly the files of ``meta`` with their sizes and
    checksums, and that DCP's metadata pickle references nothing but DCP's metadata classes.

    Raises:
        CheckpointError: on every rank alike, naming the first problem found.
    """
    path = Path(path)
    fix = f"delete {path} to resume from the previous checkpoint, or start over with --overwrite"
    present = {p.name for p in path.iterdir() if p.name != META}
    expected = set(meta["files"])
    problem = None
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        problem = f"checkpoint {path} is incomplete or altered (missing {missing}, unexpected {extra}); {fix}"
    else:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for name in sorted(expected)[rank::world]:
            want, file = meta["files"][name], path / name
            if file.stat().st_size != want["size"] or _sha256(file) != want["sha256"]:
                problem = f"checkpoint {path}: {name} is corrupted (its checksum differs from the one saved); {fix}"
                break
        if problem is None and (path / ".metadata").is_file():
            problem = _unsafe_metadata(path / ".metadata")
    problem = agree(problem)
    if problem:
        raise CheckpointError(problem)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer) -> dict:
    """Verify, then load a checkpoint into ``model`` and ``optimizer`` in place (collective). Returns its meta.

    Raises:
        CheckpointError: a checkpoint that fails ``read_meta``/``verify`` or does not fit this model.
    """
    meta = read_meta(path)
    verify(path, meta)
    # DCP loads into existing tensors; optimizers create their state lazily, so make it exist first.
    optimizer.init_state()
    state = _state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path), planner=_CheckedLoadPlanner())
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        raise _load_failure(path, e) from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    return meta


def _load_failure(path: str | os.PathLike, error: BaseException) -> CheckpointError:
    """One line for a failed DCP load: our own refusal as it was, anything else as "does not fit"."""
    if isinstance(error, CheckpointException) and error.failures:
        error = next(iter(error.failures.values()))[0]  # DCP wraps (exception, traceback) per rank
    if isinstance(error, CheckpointError):
        return error
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return CheckpointError(
        f"checkpoint {path} does not fit this model and optimizer ({first[:300]}); resume with the same "
        "--model/--preset/--plan/--sparse-optimizer, or start over with --overwrite"
    )


# ------------------------------------------------------------------ no untrusted pickles

# What DCP's metadata pickle may reference: DCP's metadata dataclasses and enums, its storage
# record, and the plain torch/pathlib values they hold. Checked on torch 2.11 and 2.13.
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    *(("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")),
}


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a DCP metadata file needs (Python docs,
    "Restricting Globals"); anything else (``os.system``, ``builtins.eval``...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or _is_metadata_class(module, name) or _is_torch_constant(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP checkpoint's metadata")


def _is_metadata_class(module: str, name: str) -> bool:
    if module != _METADATA_MODULE:
        return False
    import torch.distributed.checkpoint.metadata as metadata

    obj = getattr(metadata, name, None)
    return isinstance(obj, type) and obj.__module__ == _METADATA_MODULE


def _is_torch_constant(module: str, name: str) -> bool:
    """``torch.float32``, ``torch.strided``, ``torch.contiguous_format``: values, not callables."""
    return module == "torch" and isinstance(
        getattr(torch, name, None), torch.dtype | torch.layout | torch.memory_format
    )


def _unsafe_metadata(path: Path) -> str | None:
    """None if DCP's metadata pickle at ``path`` unpickles under the allowlist, else the problem."""
    try:
        with open(path, "rb") as f:
            _MetadataUnpickler(f).load()
    except Exception as e:
        return (
            f"checkpoint {path.parent}: {path.name} is not a DCP metadata file this job would write ({e}); "
            "refusing to load it (a crafted checkpoint can run code); use checkpoints written by dmt"
        )
    return None


class _CheckedLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, except that a non-tensor value is loaded only if it unpickles with
    ``torch.load(weights_only=True)`` (DCP itself uses ``weights_only=False``)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        raw = value.read()
        try:
            torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint value {read_item.dest_index.fqn!r} is not plain data ({e}); refusing to load it "
                "(a crafted checkpoint can run code); use checkpoints written by dmt"
            ) from None
        super().load_bytes(read_item, io.BytesIO(raw))
