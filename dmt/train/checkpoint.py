"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, atomic, resumable.

Layout under a checkpoint directory::

    step_00000120/      one DCP checkpoint (every rank writes its own shards) + meta.json
    .tmp-step_00000160/ a save in progress, or one a crash interrupted: never loaded

A save goes to a ``.tmp-`` directory; only after every rank has finished writing does rank 0 add
``meta.json`` and rename the directory into place. A crash at any point therefore leaves either the
previous checkpoints untouched or a ``.tmp-`` directory that ``latest_checkpoint`` ignores, never a
checkpoint that loads wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from dmt.atomic import atomic_write_text

_STEP_DIR = re.compile(r"^step_(\d{8})$")


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
    """Save model + optimizer state at ``step`` (collective: every rank calls it). Returns the directory."""
    root = Path(root)
    final, tmp = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_state(model, optimizer), checkpoint_id=str(tmp))
    _barrier()  # every rank's shards are on disk before the checkpoint becomes visible
    if _is_main():
        atomic_write_text(tmp / "meta.json", json.dumps({"step": step, **meta}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(_complete(root))[:-keep]:
            shutil.rmtree(root / f"step_{old:08d}", ignore_errors=True)
    _barrier()
    return final


def _complete(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    steps = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / "meta.json").is_file():
            steps.append(int(m.group(1)))
    return steps


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    steps = _complete(Path(root))
    return Path(root) / f"step_{max(steps):08d}" if steps else None


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer) -> dict:
    """Load a checkpoint into ``model`` and ``optimizer`` in place (collective). Returns its meta."""
    # DCP loads into existing tensors; optimizers create their state lazily, so make it exist first.
    optimizer.init_state()
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    return json.loads((Path(path) / "meta.json").read_text())
