"""Feature representations learned from a briefly trained flat DLRM (the "learned embeddings" of TP).

The probe (``partitioner.probe``) is dmt's flat DLRM, trained for a few hundred steps. Its
interaction arch outputs, per sample, ``z_ij = <e_i, e_j>`` for every pair of pooled embeddings;
the over-arch turns those into the logit. Two ways to score a pair (i, j) over the held-out rows:

* ``"attribution"`` (default): ``mean |z_ij * d logit / d z_ij|``, gradient x input. It measures
  how much the logit actually moves through that pair, i.e. pairs the model *uses*. A pair with
  large dot products that the over-arch ignores (two popular, unrelated features) scores ~0.
* ``"dot"``: ``mean |z_ij|``, the raw interaction magnitude. Cheaper, but it also rewards pairs that
  merely have large embeddings; kept for comparison.

The affinity is then made *relative*: each pair's score is divided by the geometric mean of the
two features' total scores (``a_ij / sqrt(d_i d_j)``). A feature that is often missing or weakly
predictive has small scores with everyone, and without this step it would look unrelated to its
own group. The vector of feature i is its row of that matrix: features of one group interact with
the same partners, so their rows are close.

Example (seconds on CPU):
    >>> import numpy as np
    >>> from dmt.data.criteo import CriteoArrays
    >>> rng = np.random.default_rng(0)
    >>> arrays = CriteoArrays(rng.integers(0, 2, 512).astype(np.float32),
    ...                       rng.random((512, 13), dtype=np.float32), rng.integers(0, 50, (512, 26)))
    >>> rep = LearnedEmbedder(ProbeConfig.debug(), progress=False).embed(arrays)
    >>> rep.vectors.shape, rep.dense_affinity().shape, rep.source
    ((26, 26), (26, 26), 'learned:attribution')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch

from dmt import DmtError
from dmt.data import SPARSE_NAMES, CriteoArrays, iter_batches
from partitioner.probe import ProbeConfig, one_thread, prepare, train_probe
from partitioner.representation import FeatureEmbedder, FeatureRepresentation

SCORES = ("attribution", "dot")


class LearnedEmbedder(FeatureEmbedder):
    """Train a probe DLRM on the data, then score every feature pair (see the module docstring).

    Args:
        config: probe model and training length.
        score: "attribution" (gradient x input) or "dot" (mean |<e_i, e_j>|).
        progress: show a tqdm bar while training.
    """

    def __init__(self, config: ProbeConfig | None = None, *, score: str = "attribution", progress: bool = True) -> None:
        if score not in SCORES:
            raise DmtError(f"score={score!r} is not one of {SCORES}")
        self.config = config or ProbeConfig()
        self.score = score
        self.progress = progress

    def embed(self, data: CriteoArrays, names: Sequence[str] | None = None) -> FeatureRepresentation:
        names = tuple(names or SPARSE_NAMES)
        cfg = self.config
        train, holdout, sizes = prepare(data, cfg)
        with one_thread():
            model, summary = train_probe(train, holdout, sizes, cfg, self.progress)
            scores = pair_scores(model, holdout, sizes, cfg, self.score)  # (F, F)
        affinity = relative_affinity(scores)
        info = {**summary, "probe": asdict(cfg)}
        return FeatureRepresentation(
            names=names, vectors=affinity.copy(), affinity=affinity, source=f"learned:{self.score}", info=info
        )


def pair_scores(
    model: torch.nn.Module, sample: CriteoArrays, sizes: Sequence[int], cfg: ProbeConfig, score: str
) -> np.ndarray:
    """(F, F) score of every feature pair over ``sample`` (zero diagonal), from the probe.

    Args:
        model: the trained probe (``DLRMTrain``).
        sample: rows to score on, ids encoded as for training.
        sizes: table size per feature.
        cfg: the probe config (batch size, embedding dim).
        score: "attribution" or "dot" (see the module docstring).
    """
    dlrm = model.model
    num = sample.sparse.shape[1]
    d = cfg.embedding_dim
    # torchrec's InteractionArch stacks [dense, sparse_0..sparse_F-1] and keeps the strict upper
    # triangle of their Gram matrix, after the D dense outputs: pair (i, j) of that stack.
    iu = torch.triu_indices(num + 1, num + 1, offset=1)
    captured: list[torch.Tensor] = []
    handle = dlrm.inter_arch.register_forward_hook(lambda _m, _i, out: captured.append(out))
    contrib: list[torch.Tensor] = []
    rows = 0  # iter_batches drops a last partial batch: count what was scored
    model.eval()
    try:
        for batch in iter_batches(
            sample, batch_size=min(cfg.batch_size, len(sample)), num_embeddings=sizes, shuffle=False
        ):
            captured.clear()
            logits = dlrm(batch.dense_features, batch.sparse_features).reshape(-1)
            z = captured[0]
            if score == "attribution":
                # autograd.grad, not backward(): no parameter gradients, so the in-backward
                # embedding optimizer never fires and the probe is left untouched.
                (grad,) = torch.autograd.grad(logits.sum(), z)
                z = z * grad
            contrib.append(z[:, d:].detach().abs().sum(dim=0).double())
            rows += len(z)
    finally:
        handle.remove()
        model.train()
    per_pair = (torch.stack(contrib).sum(dim=0) / rows).numpy()
    full = np.zeros((num + 1, num + 1))
    full[iu[0].numpy(), iu[1].numpy()] = per_pair
    full = full + full.T
    return full[1:, 1:]  # drop the dense row/column: only sparse features are partitioned


def relative_affinity(scores: np.ndarray) -> np.ndarray:
    """``a_ij / sqrt(d_i d_j)`` with ``d_i = sum_j a_ij``: pair strength relative to each feature's total."""
    scores = np.asarray(scores, dtype=np.float64)
    degree = scores.sum(axis=1)
    inv = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    out = inv[:, None] * scores * inv[None, :]
    np.fill_diagonal(out, 0.0)
    return out
