"""Fault injection for torchrun workers: SIGKILL one rank right after it saves one checkpoint.

Python imports ``sitecustomize`` at start-up from ``sys.path``, so a process started with this
directory on PYTHONPATH runs this file first; ``tests/_fault.py`` sets that up for a test, and
every torchrun worker inherits it. With ``DMT_TEST_KILL_AFTER_CHECKPOINT="rank:step"``, the worker of
that global rank wraps ``dmt.train.checkpoint.save_checkpoint`` (when the job first imports it,
so nothing else about the run changes) and kills itself once the checkpoint of that step is saved.

Fires once per run: an attempt resumed from that checkpoint never writes it again, and a torchrun
restart (TORCHELASTIC_RESTART_COUNT > 0) is skipped too. Every other process (the torchrun agents,
other ranks) is left as it is.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import signal
import sys

ENV = "DMT_TEST_KILL_AFTER_CHECKPOINT"
_MODULE = "dmt.train.checkpoint"


def _kill_after(save, step: int):
    """``save`` (save_checkpoint), then SIGKILL this process if it just saved checkpoint ``step``."""

    @functools.wraps(save)
    def save_then_die(root, at_step, *args, **kwargs):
        saved = save(root, at_step, *args, **kwargs)
        if at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return saved

    return save_then_die


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Find ``dmt.train.checkpoint`` as usual, then wrap its ``save_checkpoint`` once it has run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)  # one import to catch; and lets the lookup below skip this finder
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_then_wrap(module) -> None:
            exec_module(module)
            module.save_checkpoint = _kill_after(module.save_checkpoint, self.step)

        spec.loader.exec_module = exec_then_wrap
        return spec


def _install() -> None:
    spec = os.environ.get(ENV)
    if not spec or "RANK" not in os.environ or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    rank, step = (int(x) for x in spec.split(":"))
    if int(os.environ["RANK"]) == rank:
        sys.meta_path.insert(0, _WrapOnImport(step))


_install()
