"""How far to trust a plan: how much of each tower's affinity stays inside, how stable it is.

Per tower:

* **internal share**: of the affinity its features have (to anyone), the part that stays inside
  the tower. A tower of F_t features drawn at random keeps about (F_t - 1) / (F - 1) of it.
* **stability**: the partition is redone on resampled affinities (the probes and the held-out
  rows bootstrapped, ``partitioner.learned``), and each tower is matched to its most similar
  tower there; stability is the mean Jaccard index of that match (Hennig 2007, "Cluster-wise
  assessment of cluster stability"). 1.0: every resample rebuilds the tower exactly.

And for the plan, the **regret**: on each resample, how much of the objective (intra-tower
affinity less the modularity penalty, ``partitioner.refine``) the plan loses against the plan
made from that resample, relative to the latter; the mean over resamples.

Whether to trust the plan is decided by the regret, not the stability. A tower can be unstable
and still right: with more towers than natural groups a group must be split, and which half gets
which feature is a coin toss that every resample redoes (planted groups, 8 towers, 100k rows:
stability 0.5 with every tower inside one group). Regret asks the question that matters: would
the data, drawn again, have given a clearly better plan? Measured on planted groups
(``benchmarks/results/partitioner/``): at most 3.2 % from 100k rows on (37 cells: 2, 4 and 8
towers, seeds 0-7), 2.3 to 25 % at 30k rows, where towers often mix groups (17 of 19 cells above
4 %; the two below it have ARI 0.89). Hence :data:`MAX_REGRET`.

Example:
    >>> import numpy as np
    >>> labels = np.array([0, 0, 1, 1])
    >>> tower_stability(labels, [np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])]).round(3).tolist()
    [0.75, 0.833]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

# A plan whose mean regret over resamples exceeds this is not trusted (see the module docstring).
MAX_REGRET = 0.04
# Below Hennig's "stable" threshold a tower is listed as unstable in the warning.
MIN_STABILITY = 0.75


@dataclass(frozen=True)
class Confidence:
    """Confidence figures of a fitted partition.

    Args:
        internal_share: (K,) each tower's affinity that stays inside it, as a share of the
            affinity its features have.
        stability: (K,) mean best-match Jaccard index over resamples; None without resamples.
        feature_stability: (F,) per feature, the mean Jaccard index between its tower and its
            tower in each resample; None without resamples.
        regret: mean relative objective the plan loses against each resample's own plan; None
            without resamples.
        num_resamples: partitions compared.
        trusted: regret <= MAX_REGRET; None without resamples.
    """

    internal_share: np.ndarray
    stability: np.ndarray | None = None
    feature_stability: np.ndarray | None = None
    regret: float | None = None
    num_resamples: int = 0
    trusted: bool | None = None

    def to_dict(self, tower_names: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: what the plan's params record (towers in plan order, features by name)."""
        out: dict[str, Any] = {
            "internal_share": [round(float(x), 4) for x in self.internal_share],
            "num_resamples": self.num_resamples,
            "max_regret": MAX_REGRET,
            "trusted": self.trusted,
            "warning": self.warning(tower_names, names),
        }
        if self.stability is not None and self.feature_stability is not None:
            out["regret"] = round(float(self.regret), 4)
            out["stability"] = [round(float(x), 4) for x in self.stability]
            out["feature_stability"] = {n: round(float(x), 4) for n, x in zip(names, self.feature_stability)}
        return out

    def warning(self, tower_names: Sequence[str], feature_names: Sequence[str]) -> str | None:
        """One line on why the plan is not trusted (None when it is, or when nothing was resampled)."""
        if self.trusted is not False or self.stability is None:
            return None
        weak = ", ".join(f"{t} ({s:.2f})" for t, s in zip(tower_names, self.stability) if s < MIN_STABILITY)
        features = ", ".join(self.unstable_features(feature_names))
        return (
            f"low confidence: on {self.num_resamples} resamples of the affinity the plan loses "
            f"{100 * self.regret:.1f} % of the objective against the plan each resample gives (limit "
            f"{100 * MAX_REGRET:.0f} %); unstable towers: {weak or 'none'}; least stable features: {features or 'none'}"
        )

    def unstable_features(self, names: Sequence[str], limit: int = 5) -> list[str]:
        """The least stable features below MIN_STABILITY, least stable first."""
        if self.feature_stability is None:
            return []
        order = np.argsort(self.feature_stability, kind="stable")
        return [names[i] for i in order[:limit] if self.feature_stability[i] < MIN_STABILITY]


def internal_share(graph: sp.csr_array, labels: np.ndarray, num_towers: int) -> np.ndarray:
    """(K,) of the affinity degree of each tower's features, the share to features of the same tower."""
    coo = sp.coo_array(graph)
    same = labels[coo.row] == labels[coo.col]
    inside = np.bincount(labels[coo.row[same]], weights=coo.data[same], minlength=num_towers)
    total = np.bincount(labels[coo.row], weights=coo.data, minlength=num_towers)
    return np.divide(inside, total, out=np.zeros(num_towers), where=total > 0)


def tower_stability(labels: np.ndarray, resampled: Sequence[np.ndarray]) -> np.ndarray:
    """(K,) for each tower of ``labels``, the mean over ``resampled`` of its best Jaccard match."""
    k = int(labels.max()) + 1
    onehot = np.eye(k)[labels]  # (F, K)
    sizes = onehot.sum(axis=0)
    total = np.zeros(k)
    for other in resampled:
        theirs = np.eye(int(other.max()) + 1)[other]  # (F, K')
        inter = onehot.T @ theirs  # (K, K')
        union = sizes[:, None] + theirs.sum(axis=0)[None, :] - inter
        total += (inter / union).max(axis=1)
    return total / max(len(resampled), 1)


def feature_stability(labels: np.ndarray, resampled: Sequence[np.ndarray]) -> np.ndarray:
    """(F,) per feature, the mean Jaccard index between its tower here and its tower in a resample."""
    same = labels[:, None] == labels[None, :]
    total = np.zeros(len(labels))
    for other in resampled:
        theirs = other[:, None] == other[None, :]
        total += (same & theirs).sum(axis=1) / (same | theirs).sum(axis=1)
    return total / max(len(resampled), 1)


def assess(
    graph: sp.csr_array,
    labels: np.ndarray,
    samples: np.ndarray | None,
    resample: Callable[[np.ndarray], tuple[np.ndarray, sp.csr_array]],
    value: Callable[[sp.csr_array, np.ndarray], float],
) -> Confidence:
    """Confidence of ``labels`` on ``graph``, re-partitioning each affinity in ``samples``.

    Args:
        graph: the affinity graph the partition was fitted on.
        labels: (F,) the fitted towers.
        samples: (B, F, F) resampled affinities, or None.
        resample: partitions one resampled affinity under the same constraints; returns the
            labels and that affinity's graph.
        value: the objective of labels on a graph (what the partitioner maximises).

    Returns:
        The :class:`Confidence`.
    """
    share = internal_share(graph, labels, int(labels.max()) + 1)
    if samples is None or len(samples) == 0:
        return Confidence(share)
    resampled, regrets = [], []
    for affinity in samples:
        theirs, their_graph = resample(affinity)
        best = value(their_graph, theirs)
        regrets.append(max(0.0, best - value(their_graph, labels)) / max(abs(best), 1e-300))
        resampled.append(theirs)
    regret = float(np.mean(regrets))
    return Confidence(
        internal_share=share,
        stability=tower_stability(labels, resampled),
        feature_stability=feature_stability(labels, resampled),
        regret=regret,
        num_resamples=len(resampled),
        trusted=regret <= MAX_REGRET,
    )
