"""Feature representations learned from briefly trained flat DLRMs (the "learned embeddings" of TP).

The probe (``partitioner.probe``) is dmt's flat DLRM, trained for a few hundred steps. Its
interaction arch outputs, per sample, ``z_ij = <e_i, e_j>`` for every pair of pooled embeddings;
the over-arch turns those into the logit. Three ways to score a pair (i, j) over held-out rows:

* ``"attribution"`` (default): ``mean |z_ij * d logit / d z_ij|``, gradient x input. It measures
  how much the logit actually moves through that pair, i.e. pairs the model *uses*. A pair with
  large dot products that the over-arch ignores (two popular, unrelated features) scores ~0.
* ``"dot"``: ``mean |z_ij|``, the raw interaction magnitude. Cheaper, but it also rewards pairs that
  merely have large embeddings; kept for comparison.
* ``"embedding"``: clusters the learned embeddings themselves (the design card's "clusters
  features using learned embeddings"): the affinity of i and j is the cosine between the
  covariance matrices of their pooled embeddings (D x D each), i.e. how much the two features use
  the same directions of the embedding space, which features that interact must share. On the
  planted-group benchmark (``benchmarks/results/partitioner/``, the same probes scored both
  ways) it gives the same towers from 100k rows on (37 cells, ARI within 0.023) and no better
  ones at 30k rows (4 towers, 8 seeds: mean ARI 0.79 vs 0.81, worse on 4 seeds, better on 1);
  averaging the two affinities gave 0.81. So ``attribution`` stays the default: it scores what
  the probe's logit actually uses, and nothing measured favours the alternative.

Pair scores are made *relative*: each is divided by the geometric mean of the two features'
totals (``a_ij / sqrt(d_i d_j)``). A feature that is often missing or weakly predictive has small
scores with everyone; without this it would look unrelated to its own group.

**Uncertainty.** ``num_probes`` probes are trained (seeds ``seed``, ``seed + 1``, ...: another
initialisation and batch order each) and their affinities averaged: one probe on small data can
learn a weak feature wrongly, the average rarely does. Scores are accumulated per held-out batch
of :data:`SCORE_BATCH` rows, so ``num_resamples`` bootstrap replicates (a probe in turn, its
held-out batches drawn with replacement) cost no training; they become the representation's
``affinity_samples``, from which the partitioner measures how stable its towers are.

Example (seconds on CPU):
    >>> import numpy as np
    >>> from dmt.data.criteo import CriteoArrays
    >>> rng = np.random.default_rng(0)
    >>> arrays = CriteoArrays(rng.integers(0, 2, 512).astype(np.float32),
    ...                       rng.random((512, 13), dtype=np.float32), rng.integers(0, 50, (512, 26)))
    >>> rep = LearnedEmbedder(ProbeConfig.debug(), num_probes=2, num_resamples=4, progress=False).embed(arrays)
    >>> rep.affinity.shape, rep.affinity_samples.shape, rep.source
    ((26, 26), (4, 26, 26), 'learned:attribution')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from dmt import DmtError
from dmt.data import SPARSE_NAMES, CriteoArrays, iter_batches
from partitioner.probe import ProbeConfig, one_thread, prepare, train_probe
from partitioner.representation import FeatureEmbedder, FeatureRepresentation

SCORES = ("attribution", "dot", "embedding")
# Rows per held-out scoring batch: the bootstrap's unit. 8192 held-out rows give 64 units.
SCORE_BATCH = 128


class LearnedEmbedder(FeatureEmbedder):
    """Train probe DLRMs on the data, then score every feature pair (see the module docstring).

    Args:
        config: probe model and training length.
        score: "attribution" (gradient x input), "dot" (mean |<e_i, e_j>|) or "embedding"
            (covariance of the learned embeddings).
        num_probes: probes trained (different seeds); their affinities are averaged.
        num_resamples: bootstrap replicates of the affinity kept for the stability estimate.
        progress: show a tqdm bar while training.
    """

    def __init__(
        self,
        config: ProbeConfig | None = None,
        *,
        score: str = "attribution",
        num_probes: int = 3,
        num_resamples: int = 24,
        progress: bool = True,
    ) -> None:
        if score not in SCORES:
            raise DmtError(f"score={score!r} is not one of {SCORES}")
        if num_probes < 1 or num_resamples < 0:
            raise DmtError(f"num_probes={num_probes} must be >= 1 and num_resamples={num_resamples} >= 0")
        self.config = config or ProbeConfig()
        self.score = score
        self.num_probes = num_probes
        self.num_resamples = num_resamples
        self.progress = progress

    def embed(self, data: CriteoArrays, names: Sequence[str] | None = None) -> FeatureRepresentation:
        return self.embed_scores(data, names, scores=(self.score,))[self.score]

    def embed_scores(
        self, data: CriteoArrays, names: Sequence[str] | None = None, *, scores: Sequence[str] = SCORES
    ) -> dict[str, FeatureRepresentation]:
        """One representation per score in ``scores``, all from the same probes (benchmarks compare them)."""
        names = tuple(names or SPARSE_NAMES)
        bad = [s for s in scores if s not in SCORES]
        if bad:
            raise DmtError(f"scores {bad} are not in {SCORES}")
        cfg = self.config
        train, holdout, sizes = prepare(data, cfg)
        stats: dict[str, list[BatchStats]] = {s: [] for s in scores}
        summaries = []
        with one_thread():
            for p in range(self.num_probes):
                pcfg = dataclasses.replace(cfg, seed=cfg.seed + p)
                label = f"probe {p + 1}/{self.num_probes}"
                model, summary = train_probe(train, holdout, sizes, pcfg, self.progress, desc=label)
                summaries.append(summary)
                for s in scores:
                    stats[s].append(batch_statistics(model, holdout, sizes, s))
        info = _summarise(summaries) | {"probe": dataclasses.asdict(cfg), "num_probes": self.num_probes}
        rng = np.random.default_rng([cfg.seed, 7])
        out = {}
        for s in scores:
            affinity = np.mean([st.affinity() for st in stats[s]], axis=0)
            samples = bootstrap_affinities(stats[s], self.num_resamples, rng) if self.num_resamples else None
            extra = {"pair_score_cv": pair_score_cv(affinity, samples)} if samples is not None else {}
            out[s] = FeatureRepresentation(
                names=names,
                vectors=affinity.copy(),
                affinity=affinity,
                source=f"learned:{s}",
                info=info | extra,
                affinity_samples=samples,
            )
        return out


def _summarise(summaries: list[dict]) -> dict:
    """The probes' training summaries: means for the one-line report, every probe's in ``probes``."""
    return {
        "heldout_auc": float(np.mean([s["heldout_auc"] for s in summaries])),
        "initial_heldout_auc": float(np.mean([s["initial_heldout_auc"] for s in summaries])),
        "heldout_loss": float(np.mean([s["heldout_loss"] for s in summaries])),
        "best_step": int(np.median([s["best_step"] for s in summaries])),
        "steps_run": int(np.median([s["steps_run"] for s in summaries])),
        "samples_seen": int(np.median([s["samples_seen"] for s in summaries])),
        "stop_reason": summaries[0]["stop_reason"],
        "table_rows": summaries[0]["table_rows"],
        "probes": [{k: v for k, v in s.items() if k != "table_rows"} for s in summaries],
    }


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """Per held-out batch sums of one score, from one probe: what the bootstrap resamples.

    Args:
        score: the score they are for.
        sums: (B, ...) per-batch sums (pair scores (F, F); or embedding sums and second moments).
        rows: (B,) rows per batch.
    """

    score: str
    sums: np.ndarray
    rows: np.ndarray

    def affinity(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(F, F) affinity from the batches, each counted ``weights[b]`` times (default once)."""
        w = np.ones(len(self.rows)) if weights is None else weights
        mean = np.tensordot(w, self.sums, axes=1) / float(w @ self.rows)
        if self.score == "embedding":
            return _covariance_cosine(mean)
        return relative_affinity(mean)


def batch_statistics(model: torch.nn.Module, sample: CriteoArrays, sizes: Sequence[int], score: str) -> BatchStats:
    """Per-batch sums of ``score`` over ``sample`` (batches of :data:`SCORE_BATCH` rows), from the probe.

    Args:
        model: the trained probe (``DLRMTrain``).
        sample: rows to score on, ids encoded as for training.
        sizes: table size per feature.
        score: "attribution", "dot" or "embedding" (see the module docstring).
    """
    dlrm = model.model
    num = sample.sparse.shape[1]
    captured: list[torch.Tensor] = []
    # The interaction arch's output holds [dense (D), pairs]; the sparse arch's (B, F, D) embeddings.
    hooked = dlrm.sparse_arch if score == "embedding" else dlrm.inter_arch
    handle = hooked.register_forward_hook(lambda _m, _i, out: captured.append(out))
    sums, rows = [], []
    model.eval()
    try:
        for batch in iter_batches(
            sample, batch_size=min(SCORE_BATCH, len(sample)), num_embeddings=sizes, shuffle=False
        ):
            captured.clear()
            logits = dlrm(batch.dense_features, batch.sparse_features).reshape(-1)
            out = captured[0]
            if score == "embedding":
                sums.append(_embedding_moments(out.detach()))
            else:
                sums.append(_pair_sums(out, logits, num, score))
            rows.append(len(logits))
    finally:
        handle.remove()
        model.train()
    return BatchStats(score, np.stack(sums), np.asarray(rows, dtype=np.float64))


def _pair_sums(z: torch.Tensor, logits: torch.Tensor, num: int, score: str) -> np.ndarray:
    """(F, F) sum over the batch of |z_ij| or |z_ij dlogit/dz_ij|, zero diagonal."""
    if score == "attribution":
        # autograd.grad, not backward(): no parameter gradients, so the in-backward embedding
        # optimizer never fires and the probe is left untouched.
        (grad,) = torch.autograd.grad(logits.sum(), z)
        z = z * grad
    d = z.shape[1] - num * (num + 1) // 2  # the dense arch's D outputs come first
    per_pair = z[:, d:].detach().abs().sum(dim=0).double().numpy()
    # torchrec's InteractionArch stacks [dense, sparse_0..sparse_F-1] and keeps the strict upper
    # triangle of their Gram matrix: pair (i, j) of that stack.
    iu = np.triu_indices(num + 1, k=1)
    full = np.zeros((num + 1, num + 1))
    full[iu] = per_pair
    return (full + full.T)[1:, 1:]  # drop the dense row/column: only sparse features are partitioned


def _embedding_moments(emb: torch.Tensor) -> np.ndarray:
    """Per-batch sums of e_i and e_i e_i^T for every feature, flattened: (F, D + D * D)."""
    e = emb.double()
    first = e.sum(dim=0)  # (F, D)
    second = torch.einsum("bfd,bfe->fde", e, e).reshape(e.shape[1], -1)  # (F, D * D)
    return torch.cat([first, second], dim=1).numpy()


def _covariance_cosine(mean_moments: np.ndarray) -> np.ndarray:
    """(F, F) cosine between the features' embedding covariance matrices (Frobenius), zero diagonal.

    Covariances are positive semi-definite, so the cosine lies in [0, 1]: 1 when two features
    spread their embeddings over the same directions, 0 when over orthogonal ones.
    """
    num, width = mean_moments.shape
    d = round((-1 + np.sqrt(1 + 4 * width)) / 2)  # width = D + D^2
    mu = mean_moments[:, :d]
    cov = mean_moments[:, d:].reshape(num, d, d) - mu[:, :, None] * mu[:, None, :]
    flat = cov.reshape(num, -1)
    norm = np.linalg.norm(flat, axis=1)
    flat = flat / np.where(norm > 0, norm, 1.0)[:, None]
    sim = np.clip(flat @ flat.T, 0.0, None)
    np.fill_diagonal(sim, 0.0)
    return sim


def bootstrap_affinities(stats: Sequence[BatchStats], num: int, rng: np.random.Generator) -> np.ndarray:
    """(num, F, F) replicates: probe ``r % len(stats)``, its held-out batches drawn with replacement."""
    out = []
    for r in range(num):
        st = stats[r % len(stats)]
        weights = rng.multinomial(len(st.rows), np.full(len(st.rows), 1.0 / len(st.rows))).astype(np.float64)
        out.append(st.affinity(weights))
    return np.stack(out)


def pair_score_cv(affinity: np.ndarray, samples: np.ndarray) -> float:
    """Median coefficient of variation over resamples of the strongest half of the pairs.

    The strong pairs are the ones that decide towers; 0.1 means their scores move by about 10 %
    from one resample to the next.
    """
    iu = np.triu_indices(len(affinity), k=1)
    mean, std = samples.mean(axis=0)[iu], samples.std(axis=0)[iu]
    strong = mean >= np.median(mean)
    return float(np.median(std[strong] / np.maximum(mean[strong], 1e-300)))


def pair_scores(
    model: torch.nn.Module, sample: CriteoArrays, sizes: Sequence[int], cfg: ProbeConfig, score: str
) -> np.ndarray:
    """(F, F) mean score of every feature pair over ``sample`` (zero diagonal), from the probe.

    Args:
        model: the trained probe (``DLRMTrain``).
        sample: rows to score on, ids encoded as for training.
        sizes: table size per feature.
        cfg: the probe config (kept for callers; scoring batches are :data:`SCORE_BATCH` rows).
        score: "attribution" or "dot".
    """
    if score not in ("attribution", "dot"):
        raise DmtError(f"pair_scores: score={score!r} is not 'attribution' or 'dot'")
    st = batch_statistics(model, sample, sizes, score)
    return st.sums.sum(axis=0) / st.rows.sum()


def relative_affinity(scores: np.ndarray) -> np.ndarray:
    """``a_ij / sqrt(d_i d_j)`` with ``d_i = sum_j a_ij``: pair strength relative to each feature's total."""
    scores = np.asarray(scores, dtype=np.float64)
    degree = scores.sum(axis=1)
    inv = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    out = inv[:, None] * scores * inv[None, :]
    np.fill_diagonal(out, 0.0)
    return out
