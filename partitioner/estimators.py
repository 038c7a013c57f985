"""Partitioners with the scikit-learn estimator contract: TP and three baselines.

``__init__`` only stores its arguments; ``fit(X, costs=...)`` validates, partitions, and sets the
fitted attributes (trailing underscore), then returns ``self``. ``X`` is a
:class:`~partitioner.representation.FeatureRepresentation`, or an (F, k) array of feature vectors
(the features are the *samples* here: one row per feature).

Fitted attributes (all partitioners):
    labels_: (F,) tower of every feature. Towers are numbered in order of their first feature.
    features_: (F,) feature names, aligned with ``labels_``.
    tower_loads_: (K,) lookup cost per tower.   tower_memory_: (K,) bytes per tower.
    tower_hosts_: (K,) host of every tower.     host_loads_: (H,) lookup cost per host.
    imbalance_: max tower load / mean load.      intra_affinity_: share of affinity inside towers.
    plan_: the :class:`dmt.plan.TowerPlan`.

Example:
    >>> import numpy as np
    >>> from partitioner.representation import FeatureRepresentation
    >>> w = np.array([[0, 9, 1, 0], [9, 0, 0, 1], [1, 0, 0, 9], [0, 1, 9, 0]], float)
    >>> rep = FeatureRepresentation(names=("a", "b", "c", "d"), affinity=w)
    >>> tp = TowerPartitioner(2, random_state=0).fit(rep)
    >>> tp.labels_.tolist(), [t.features for t in tp.plan_.towers]
    ([0, 0, 1, 1], [('a', 'b'), ('c', 'd')])
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state

from dmt import Tower, TowerPlan
from partitioner.cluster import Clusterer, KernighanLinClusterer, SpectralClusterer
from partitioner.costs import FeatureCosts
from partitioner.errors import PartitionError, PartitionErrorReason
from partitioner.hosts import assign_hosts, towers_per_host
from partitioner.metrics import imbalance, tower_intra_affinity
from partitioner.refine import Balancer, Constraints, LocalSearchBalancer, lpt_assign, objective
from partitioner.representation import DEFAULT_NEIGHBORS, FeatureRepresentation

CLUSTERERS: dict[str, type[Clusterer]] = {"spectral": SpectralClusterer, "kernighan_lin": KernighanLinClusterer}


class _BasePartitioner(ClusterMixin, BaseEstimator):
    """fit() plumbing shared by every method; subclasses implement ``_partition``."""

    method: ClassVar[str]
    enforces_balance: ClassVar[bool] = True  # False: baselines that only report their balance

    def fit(
        self,
        X: FeatureRepresentation | np.ndarray,
        y: None = None,
        *,
        costs: FeatureCosts | np.ndarray | None = None,
        num_hosts: int = 1,
        host_memory_bytes: float | None = None,
    ) -> _BasePartitioner:
        """Partition the features of ``X`` into ``num_towers`` towers on ``num_hosts`` hosts.

        Args:
            X: the representation, or (F, k) feature vectors.
            y: ignored (scikit-learn API).
            costs: FeatureCosts, an (F,) array of lookup costs, or None (every feature costs 1).
            num_hosts: hosts to spread the towers over.
            host_memory_bytes: memory of one host for tables + optimizer state (None: no limit).
                Each host's memory is split evenly between the towers it runs.

        Returns:
            self.

        Raises:
            PartitionError: with ``reason`` TOO_FEW_FEATURES, BALANCE, MEMORY or INPUT.
        """
        rep = _as_representation(X)
        cost = _as_costs(costs, rep)
        self._check_params(num_hosts)
        cons = self._constraints(rep, cost, num_hosts, host_memory_bytes)
        rng = check_random_state(self.random_state)
        graph = rep.affinity_graph(getattr(self, "num_neighbors", DEFAULT_NEIGHBORS))
        labels = self._partition(rep, graph, cons, rng)
        reason = cons.violation(labels)
        if reason is PartitionErrorReason.MEMORY:
            raise PartitionError(
                f"{self.method}: a tower exceeds its memory share of {cons.max_memory:,.0f} bytes", reason
            )
        if reason is not None and (self.enforces_balance or reason is not PartitionErrorReason.BALANCE):
            raise PartitionError(f"{self.method}: result breaks the {reason.value} constraint", reason)
        self._set_fitted(rep, cost, graph, cons, labels, num_hosts, host_memory_bytes)
        if reason is PartitionErrorReason.BALANCE:
            warnings.warn(
                f"{self.method}: max tower load is {self.imbalance_:.3f}x the mean, above "
                f"1 + balance_tolerance = {1 + self.balance_tolerance:.3f}",
                stacklevel=2,
            )
        return self

    def _partition(self, rep: FeatureRepresentation, graph, cons: Constraints, rng) -> np.ndarray:
        raise NotImplementedError

    # ----------------------------------------------------------------------------- validation
    def _check_params(self, num_hosts: int) -> None:
        k, tol = self.num_towers, self.balance_tolerance
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise PartitionError(f"num_towers={k!r} must be an integer >= 1", PartitionErrorReason.INPUT)
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise PartitionError(f"balance_tolerance={tol!r} must be a number >= 0", PartitionErrorReason.INPUT)
        if isinstance(num_hosts, bool) or not isinstance(num_hosts, (int, np.integer)) or num_hosts < 1:
            raise PartitionError(f"num_hosts={num_hosts!r} must be an integer >= 1", PartitionErrorReason.INPUT)

    def _constraints(
        self, rep: FeatureRepresentation, cost: FeatureCosts, num_hosts: int, host_memory_bytes: float | None
    ) -> Constraints:
        """Build the constraints and reject requests that are infeasible on their face."""
        num, k = rep.num_features, int(self.num_towers)
        if num < k and not self.allow_empty:
            raise PartitionError(
                f"n_samples={num} features cannot fill num_towers={k} towers; use at most {num} "
                "towers or allow empty towers",
                PartitionErrorReason.TOO_FEW_FEATURES,
            )
        mean = float(cost.lookup_cost.sum()) / k
        max_load = (1.0 + self.balance_tolerance) * mean
        top = int(np.argmax(cost.lookup_cost))
        if self.enforces_balance and cost.lookup_cost[top] > max_load * (1 + 1e-12):
            raise PartitionError(
                f"feature {rep.names[top]!r} alone costs {cost.lookup_cost[top]:,.6g}, above the "
                f"max tower load (1 + {self.balance_tolerance}) x mean {mean:,.6g} = {max_load:,.6g}; "
                "raise balance_tolerance or use fewer towers",
                PartitionErrorReason.BALANCE,
            )
        max_memory = math.inf
        if host_memory_bytes is not None:
            max_memory = float(host_memory_bytes) / towers_per_host(k, num_hosts)
            big = int(np.argmax(cost.memory_bytes))
            total = float(cost.memory_bytes.sum())
            if cost.memory_bytes[big] > max_memory or total > max_memory * k:
                raise PartitionError(
                    f"tables need {total:,.0f} bytes ({rep.names[big]!r} alone "
                    f"{cost.memory_bytes[big]:,.0f}), but {k} towers on {num_hosts} hosts of "
                    f"{host_memory_bytes:,.0f} bytes leave {max_memory:,.0f} bytes per tower; "
                    "add hosts or host memory",
                    PartitionErrorReason.MEMORY,
                )
        return Constraints(
            num_towers=k,
            cost=cost.lookup_cost,
            memory=cost.memory_bytes.astype(np.float64),
            max_load=max_load,
            max_memory=max_memory,
            allow_empty=self.allow_empty,
        )

    # ------------------------------------------------------------------------------- results
    def _set_fitted(
        self,
        rep,
        cost: FeatureCosts,
        graph,
        cons: Constraints,
        labels: np.ndarray,
        num_hosts: int,
        host_memory_bytes: float | None,
    ) -> None:
        labels = _canonical(labels)  # empty towers (allow_empty) are dropped: a plan has none
        k = int(labels.max()) + 1
        self.labels_ = labels
        self.features_ = rep.names
        self.tower_loads_ = np.bincount(labels, weights=cost.lookup_cost, minlength=k)
        self.tower_memory_ = np.bincount(labels, weights=cost.memory_bytes, minlength=k).astype(np.int64)
        self.tower_hosts_ = assign_hosts(self.tower_loads_, self.tower_memory_, num_hosts, host_memory_bytes)
        self.host_loads_ = np.bincount(self.tower_hosts_, weights=self.tower_loads_, minlength=num_hosts)
        self.imbalance_ = imbalance(self.tower_loads_, cons.num_towers)
        self.tower_intra_affinity_ = tower_intra_affinity(graph, labels, k)
        self.intra_affinity_ = float(self.tower_intra_affinity_.sum())
        if isinstance(rep.info.get("n_features_in"), int):
            self.n_features_in_ = rep.info["n_features_in"]
        towers = tuple(
            Tower(
                f"tower_{t}",
                tuple(rep.names[i] for i in np.flatnonzero(labels == t)),
                host=int(self.tower_hosts_[t]),
                cost=float(self.tower_loads_[t]),
                memory_bytes=int(self.tower_memory_[t]),
            )
            for t in range(k)
        )
        params = {k_: _jsonable(v) for k_, v in self.get_params().items()}
        params |= {
            "representation": rep.source,
            "num_hosts": num_hosts,
            "host_memory_bytes": host_memory_bytes,
            "stats": {
                "imbalance": self.imbalance_,
                "intra_affinity": self.intra_affinity_,
                "host_loads": self.host_loads_.tolist(),
                **rep.info,
            },
        }
        self.plan_ = TowerPlan(towers=towers, num_hosts=num_hosts, method=self.method, params=params)


class TowerPartitioner(_BasePartitioner):
    """TP: group features that interact, under balance and memory constraints.

    Clusters the affinity graph (spectral by default), then :class:`LocalSearchBalancer` repairs
    balance/memory and improves intra-tower affinity. The search also starts from the LPT
    assignment and keeps the better result, so TP succeeds whenever the greedy baseline does.

    Args:
        num_towers: K, the number of towers.
        balance_tolerance: max tower cost / mean cost must stay <= 1 + this.
        clusterer: "spectral", "kernighan_lin" or a :class:`Clusterer`.
        num_neighbors: links kept per feature when the affinity is sparsified (F > 2000) or
            built from vectors.
        allow_empty: allow towers without features (otherwise every tower gets one).
        random_state: seed or RandomState; a fixed value gives an identical plan.
    """

    method = "tp"

    def __init__(
        self,
        num_towers: int,
        *,
        balance_tolerance: float = 0.1,
        clusterer: str | Clusterer = "spectral",
        num_neighbors: int = DEFAULT_NEIGHBORS,
        allow_empty: bool = False,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.num_towers = num_towers
        self.balance_tolerance = balance_tolerance
        self.clusterer = clusterer
        self.num_neighbors = num_neighbors
        self.allow_empty = allow_empty
        self.random_state = random_state

    def _balancer(self) -> Balancer:
        """The refinement step; override to plug in another Balancer."""
        return LocalSearchBalancer()

    def _partition(self, rep, graph, cons: Constraints, rng) -> np.ndarray:
        if isinstance(self.clusterer, Clusterer):
            clusterer = self.clusterer
        elif self.clusterer in CLUSTERERS:
            clusterer = CLUSTERERS[self.clusterer]()
        else:
            raise PartitionError(
                f"clusterer={self.clusterer!r} is not one of {sorted(CLUSTERERS)} or a Clusterer",
                PartitionErrorReason.INPUT,
            )
        balancer = self._balancer()
        results, errors = [], []
        starts = [lambda: clusterer.cluster(graph, cons.num_towers, rng), lambda: lpt_assign(cons)]
        for start in starts:
            try:
                labels = balancer.balance(start(), graph, cons)
            except PartitionError as e:
                errors.append(e)
                continue
            resolution = getattr(balancer, "resolution", 0.0)
            results.append((objective(graph, labels, cons.num_towers, resolution), labels))
        if not results:
            reasons = {e.reason for e in errors}
            reason = PartitionErrorReason.MEMORY if PartitionErrorReason.MEMORY in reasons else errors[-1].reason
            mean = float(cons.cost.sum()) / cons.num_towers
            memory = "" if math.isinf(cons.max_memory) else f" and tower memory <= {cons.max_memory:,.0f} bytes"
            raise PartitionError(
                f"no assignment found with max tower cost <= {cons.max_load:,.6g} ((1 + {self.balance_tolerance}) "
                f"x mean {mean:,.6g}; costliest feature {cons.cost.max():,.6g}){memory}; raise "
                "balance_tolerance, use fewer towers or add memory",
                reason,
            )
        return max(results, key=lambda r: r[0])[1]


class _BaselinePartitioner(_BasePartitioner):
    enforces_balance = False

    def __init__(
        self,
        num_towers: int,
        *,
        balance_tolerance: float = 0.1,
        allow_empty: bool = False,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.num_towers = num_towers
        self.balance_tolerance = balance_tolerance  # only reported: baselines warn, never repair
        self.allow_empty = allow_empty
        self.random_state = random_state


class RandomPartitioner(_BaselinePartitioner):
    """Baseline: shuffle the features, deal them out like cards (equal counts, costs ignored)."""

    method = "random"

    def _partition(self, rep, graph, cons: Constraints, rng) -> np.ndarray:
        labels = np.empty(rep.num_features, dtype=np.int64)
        labels[rng.permutation(rep.num_features)] = np.arange(rep.num_features) % cons.num_towers
        return labels


class RoundRobinPartitioner(_BaselinePartitioner):
    """Baseline: feature i goes to tower i mod K, in the given feature order."""

    method = "round_robin"

    def _partition(self, rep, graph, cons: Constraints, rng) -> np.ndarray:
        return np.arange(rep.num_features) % cons.num_towers


class GreedyPartitioner(_BaselinePartitioner):
    """Baseline: LPT cost balance (costliest feature to the least-loaded tower), affinity ignored."""

    method = "greedy"

    def _partition(self, rep, graph, cons: Constraints, rng) -> np.ndarray:
        return lpt_assign(cons)


METHODS: dict[str, type[_BasePartitioner]] = {
    "tp": TowerPartitioner,
    "random": RandomPartitioner,
    "round_robin": RoundRobinPartitioner,
    "greedy": GreedyPartitioner,
}


# ---------------------------------------------------------------------------------- helpers
def _as_representation(X: Any) -> FeatureRepresentation:
    if isinstance(X, FeatureRepresentation):
        return X
    from sklearn.utils.validation import check_array

    vectors = check_array(X, ensure_min_samples=1)
    names = tuple(f"feature_{i}" for i in range(len(vectors)))
    return FeatureRepresentation(
        names=names, vectors=vectors, source="vectors", info={"n_features_in": int(vectors.shape[1])}
    )


def _as_costs(costs: FeatureCosts | np.ndarray | None, rep: FeatureRepresentation) -> FeatureCosts:
    if costs is None:
        return FeatureCosts.uniform(rep.names)
    if not isinstance(costs, FeatureCosts):
        costs = FeatureCosts.from_lookup_cost(rep.names, np.asarray(costs, dtype=np.float64))
    if costs.names != rep.names:
        if set(costs.names) != set(rep.names) or len(costs.names) != len(rep.names):
            missing = sorted(set(rep.names) - set(costs.names))[:5]
            extra = sorted(set(costs.names) - set(rep.names))[:5]
            raise PartitionError(
                f"costs and representation name different features (no cost for {missing}, cost for unknown {extra})",
                PartitionErrorReason.INPUT,
            )
        pos = {n: i for i, n in enumerate(costs.names)}
        costs = costs.subset(np.array([pos[n] for n in rep.names]))
    return costs


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber towers 0.. in order of their first feature, so equal partitions get equal labels."""
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    mapping = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    return mapping[labels]


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return repr(v)  # RandomState, Clusterer instances: recorded, not round-tripped
