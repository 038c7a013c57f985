"""Silence third-party noise that says nothing to a DMT user (set DMT_VERBOSE=1 to keep it).

torchrec, fbgemm and torch print deprecation notices, planner advice and fx-tracing notes on every
rank at every start; a four-rank run would open with forty lines of them. Only these known sources
are silenced: warnings raised by DMT itself still show.
"""

from __future__ import annotations

import logging
import os
import warnings

_NOISY_MODULES = r"(torchrec|fbgemm_gpu|torch)(\.|$)"
_NOISY_LOGGERS = ("torchrec", "fbgemm_gpu", "torch.fx._symbolic_trace", "torch.distributed.run")


def quiet_third_party() -> None:
    if os.environ.get("DMT_VERBOSE"):
        return
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_NOISY_MODULES)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Inherited by torchrun workers, which import torch before any of our code runs.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
