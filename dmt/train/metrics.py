"""Evaluation metrics for click prediction, from libraries rather than hand-rolled.

- AUC: torchmetrics' exact binary AUROC.
- Log loss: torch's binary cross entropy (natural log), mean over samples.
- NE (normalised entropy): torchrec.metrics' ``compute_ne``: the log loss divided by the entropy of
  the empirical click rate, so 1.0 means "no better than predicting the base rate".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc
from torchrec.metrics.ne import compute_cross_entropy, compute_ne

_ETA = 1e-12  # torchrec's clamp for probabilities and counts


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """AUC, log loss and NE of ``logits`` (N,) against 0/1 ``labels`` (N,)."""
    logits = logits.detach().double().reshape(-1)
    labels = labels.detach().double().reshape(-1)
    probs = torch.sigmoid(logits)
    weights = torch.ones_like(labels)
    ce_sum = compute_cross_entropy(labels, probs, weights, _ETA).sum()
    pos = labels.sum()
    ne = compute_ne(ce_sum, weights.sum(), pos, weights.sum() - pos, _ETA)
    return {
        "auc": float(binary_auroc(probs, labels.long())),
        "logloss": float(F.binary_cross_entropy_with_logits(logits, labels)),
        "ne": float(ne),
        "num_samples": int(labels.numel()),
    }
