"""Initial grouping of features by affinity, before balance is enforced.

A :class:`Clusterer` (one verb, ``cluster``) maps the symmetric affinity graph to ``num_towers``
groups, ignoring cost. The balancer (``partitioner.refine``) then repairs balance and memory and
polishes the cut, so a clusterer only has to put strongly linked features together.

* :class:`SpectralClusterer` (default): normalised spectral embedding (Ng, Jordan & Weiss 2001)
  of the graph, then k-means on the unit-normalised rows. Dense ``eigh`` up to a few thousand
  features; beyond, scikit-learn's ARPACK shift-invert on the sparse graph (10,000 features, 64
  towers: ~4 s on 2 cores).
* :class:`KernighanLinClusterer`: networkx Kernighan-Lin, recursive bisection into halves sized
  by the number of towers on each side. Python-speed: for a few hundred features.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> w = np.kron(np.eye(2), np.ones((3, 3)))  # two cliques of three features
    >>> labels = SpectralClusterer().cluster(sp.csr_array(w), 2, np.random.RandomState(0))
    >>> len(set(labels[:3])), len(set(labels[3:])), bool(labels[0] != labels[3])
    (1, 1, True)
"""

from __future__ import annotations

import abc
import warnings

import numpy as np
import scipy.sparse as sp

# Up to this many features the eigenvectors come from dense eigh (exact, no convergence issues).
_DENSE_EIGH_LIMIT = 3000


class Clusterer(abc.ABC):
    """Groups features by affinity into ``num_towers`` labels (cost is the balancer's job)."""

    @abc.abstractmethod
    def cluster(self, graph: sp.csr_array, num_towers: int, rng: np.random.RandomState) -> np.ndarray:
        """Return (F,) int labels in ``[0, num_towers)`` for the (F, F) symmetric affinity ``graph``."""


class SpectralClusterer(Clusterer):
    """Spectral embedding of the affinity graph + k-means.

    Args:
        num_init: k-means restarts; the best inertia wins.
    """

    def __init__(self, num_init: int = 4) -> None:
        self.num_init = num_init

    def cluster(self, graph: sp.csr_array, num_towers: int, rng: np.random.RandomState) -> np.ndarray:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        num = graph.shape[0]
        if num_towers >= num:
            return np.arange(num) % num_towers
        emb = spectral_rows(graph, num_towers, rng)
        km = KMeans(num_towers, n_init=self.num_init, random_state=rng)
        # One thread: k-means over F points of K coordinates is microseconds of work, and OpenMP's
        # threads spin-waiting for each other cost 50 ms a run on a busy 2-core machine.
        with threadpool_limits(1):
            return km.fit_predict(emb).astype(np.int64)


def spectral_rows(graph: sp.csr_array, num_components: int, rng: np.random.RandomState) -> np.ndarray:
    """(F, c) unit-length rows of the top-c eigenvectors of D^-1/2 W D^-1/2 (NJW embedding).

    Rows are normalised at the end, so any per-row scaling of the eigenvectors (scikit-learn's
    D^-1/2 for the random-walk variant) gives the same result.
    """
    num = graph.shape[0]
    num_components = min(num_components, num - 1)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    # An isolated feature (no affinity to anyone) gets degree 1 so the scaling stays finite; its
    # row is then zero and k-means puts it wherever is cheapest.
    inv_sqrt = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    if num <= _DENSE_EIGH_LIMIT:
        norm = inv_sqrt[:, None] * graph.toarray() * inv_sqrt[None, :]
        _, vecs = np.linalg.eigh(norm)
        emb = vecs[:, -num_components:]
    else:
        from sklearn.manifold import spectral_embedding

        # scikit-learn accepts only 32-bit sparse indices; scipy may have chosen 64-bit ones.
        graph = sp.csr_matrix(graph)
        graph.indices, graph.indptr = graph.indices.astype(np.int32), graph.indptr.astype(np.int32)
        with warnings.catch_warnings():
            # Planted or natural clusters often make the kNN graph disconnected; that is the
            # point of clustering it, not a problem.
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            emb = spectral_embedding(
                graph, n_components=num_components, eigen_solver="arpack", random_state=rng, drop_first=False
            )
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


class KernighanLinClusterer(Clusterer):
    """Recursive Kernighan-Lin bisection (networkx) of the affinity graph.

    Each split seeds the two sides from the Fiedler order (spectral_rows' second coordinate) and
    lets Kernighan-Lin swap pairs; side sizes stay proportional to the towers each side gets.

    Args:
        max_iter: Kernighan-Lin passes per bisection.
    """

    def __init__(self, max_iter: int = 10) -> None:
        self.max_iter = max_iter

    def cluster(self, graph: sp.csr_array, num_towers: int, rng: np.random.RandomState) -> np.ndarray:
        import networkx as nx

        num = graph.shape[0]
        labels = np.zeros(num, dtype=np.int64)
        full = nx.from_scipy_sparse_array(graph)
        # Work list of (features, first label, towers): split until each part is one tower.
        todo = [(np.arange(num), 0, num_towers)]
        while todo:
            nodes, first, towers = todo.pop()
            if towers == 1 or len(nodes) <= 1:
                labels[nodes] = first
                continue
            left_towers = towers // 2
            left_size = max(1, min(len(nodes) - 1, round(len(nodes) * left_towers / towers)))
            left, right = self._bisect(full.subgraph(nodes.tolist()), nodes, left_size, rng)
            todo.append((left, first, left_towers))
            todo.append((right, first + left_towers, towers - left_towers))
        return labels

    def _bisect(self, sub, nodes: np.ndarray, left_size: int, rng: np.random.RandomState):
        import networkx as nx

        sub_graph = sp.csr_array(nx.to_scipy_sparse_array(sub, nodelist=nodes.tolist()))
        order = np.argsort(spectral_rows(sub_graph, 2, rng)[:, -2]) if len(nodes) > 2 else np.arange(len(nodes))
        init = (set(nodes[order[:left_size]].tolist()), set(nodes[order[left_size:]].tolist()))
        seed = int(rng.randint(2**31 - 1))
        left, right = nx.algorithms.community.kernighan_lin_bisection(
            sub, partition=init, max_iter=self.max_iter, weight="weight", seed=seed
        )
        return np.array(sorted(left), dtype=np.int64), np.array(sorted(right), dtype=np.int64)
