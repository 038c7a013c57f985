"""Kill a rank of a real ``dmt train --hosts ...`` run right after a checkpoint (see ``_fault_site``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SITE_DIR = Path(__file__).with_name("_fault_site")
_ENV = "DMT_TEST_KILL_AFTER_CHECKPOINT"  # read by _fault_site/sitecustomize.py


def kill_rank_after_checkpoint(monkeypatch: pytest.MonkeyPatch, *, rank: int, step: int) -> None:
    """Make global rank ``rank`` of the next torchrun launch SIGKILL itself once checkpoint ``step`` is saved.

    The torchrun agents and workers inherit this process's environment, so the hook reaches them
    through PYTHONPATH; this process itself is not affected.
    """
    monkeypatch.setenv(_ENV, f"{rank}:{step}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(_SITE_DIR), os.environ.get("PYTHONPATH")])))


def stop_killing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launches from now on run without the fault."""
    monkeypatch.delenv(_ENV)
