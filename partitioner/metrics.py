"""Quality figures of a partition: intra-tower affinity, balance, agreement with planted groups.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> w = sp.csr_array(np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]], float))
    >>> intra_affinity(w, np.array([0, 0, 1]))  # pair (0, 1) kept: 2 of 3
    0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def tower_intra_affinity(graph: sp.csr_array, labels: np.ndarray, num_towers: int) -> np.ndarray:
    """(K,) affinity inside each tower as a share of the graph's total affinity."""
    coo = sp.coo_array(graph)
    rows, cols, w = coo.row, coo.col, coo.data
    same = labels[rows] == labels[cols]
    total = w.sum()
    per = np.bincount(labels[rows[same]], weights=w[same], minlength=num_towers)
    return per / total if total > 0 else per


def intra_affinity(graph: sp.csr_array, labels: np.ndarray) -> float:
    """Share of the total affinity (sum over pairs) that falls inside towers, in [0, 1]."""
    return float(tower_intra_affinity(graph, labels, int(labels.max()) + 1).sum())


def imbalance(loads: np.ndarray, num_towers: int) -> float:
    """max tower load / mean load (1.0 = perfect); the mean counts empty towers too."""
    mean = float(np.sum(loads)) / num_towers
    return float(np.max(loads)) / mean if mean > 0 else 1.0


def ari_vs_groups(names: Sequence[str], labels: np.ndarray, groups: Sequence[Sequence[str]]) -> float:
    """Adjusted Rand index between towers and planted groups, over the features in some group.

    Features outside every planted group carry no truth, so they are left out rather than
    counted as a group of their own.
    """
    from sklearn.metrics import adjusted_rand_score

    index = {n: i for i, n in enumerate(names)}
    truth, pred = [], []
    for g, members in enumerate(groups):
        for f in members:
            if f in index:
                truth.append(g)
                pred.append(int(labels[index[f]]))
    return float(adjusted_rand_score(truth, pred))
