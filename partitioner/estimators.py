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
    best_imbalance_: the lowest max / mean any assignment reaches (``partitioner.balance``).
    max_imbalance_: the limit, (1 + balance_tolerance) x best_imbalance_.
    tower_intra_affinity_: (K,) each tower's share of the total affinity.
    tower_internal_share_: (K,) share of its features' affinity that stays inside each tower.
    tower_stability_: (K,) stability over ``X.affinity_samples`` (None without them, or for a
        baseline); confidence_: all of it (``partitioner.confidence.Confidence``).
    plan_: the :class:`dmt.plan.TowerPlan`; ``params["confidence"]`` records the confidence.

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
from partitioner.balance import BalanceBound, best_balance
from partitioner.cluster import Clusterer, KernighanLinClusterer, SpectralClusterer
from partitioner.confidence import Confidence, assess
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
    uses_affinity: ClassVar[bool] = False  # True: towers follow the affinity (stability is measured)

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
        cons, bound = self._constraints(rep, cost, num_hosts, host_memory_bytes)
        rng = check_random_state(self.random_state)
        graph = rep.affinity_graph(getattr(self, "num_neighbors", DEFAULT_NEIGHBORS))
        labels = _canonical(self._partition(rep, graph, cons, rng))
        reason = cons.violation(labels)
        if reason is PartitionErrorReason.MEMORY:
            raise PartitionError(
                f"{self.method}: a tower exceeds its memory share of {cons.max_memory:,.0f} bytes", reason
            )
        if reason is not None and (self.enforces_balance or reason is not PartitionErrorReason.BALANCE):
            raise PartitionError(f"{self.method}: result breaks the {reason.value} constraint", reason)
        self.confidence_ = self._confidence(rep, graph, cons, labels, rng)
        self._set_fitted(rep, cost, graph, cons, bound, labels, num_hosts, host_memory_bytes)
        if reason is PartitionErrorReason.BALANCE:
            warnings.warn(
                f"{self.method}: max tower load is {self.imbalance_:.3f}x the mean, above the limit "
                f"{self.max_imbalance_:.3f}x ((1 + balance_tolerance {self.balance_tolerance}) x the best "
                f"achievable {self.best_imbalance_:.3f}x)",
                stacklevel=2,
            )
        return self

    def _partition(self, rep: FeatureRepresentation, graph, cons: Constraints, rng) -> np.ndarray:
        raise NotImplementedError

    def _confidence(self, rep: FeatureRepresentation, graph, cons: Constraints, labels, rng) -> Confidence:
        """Internal share per tower; stability and regret over ``rep.affinity_samples`` (methods
        that read the affinity only: a baseline's towers do not depend on it)."""
        samples = rep.affinity_samples if self.uses_affinity else None
        resolution = getattr(self._balancer(rng), "resolution", 0.0) if samples is not None else 0.0

        def resample(affinity: np.ndarray):
            again = FeatureRepresentation(names=rep.names, affinity=affinity)
            again_graph = again.affinity_graph(getattr(self, "num_neighbors", DEFAULT_NEIGHBORS))
            return _canonical(self._partition(again, again_graph, cons, rng)), again_graph

        def value(g, towers: np.ndarray) -> float:
            return objective(g, towers, cons.num_towers, resolution)

        return assess(graph, labels, samples, resample, value)

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
    ) -> tuple[Constraints, BalanceBound]:
        """Build the constraints and reject requests that are infeasible on their face.

        The load cap is ``(1 + balance_tolerance)`` x the best max load achievable for these costs
        and this many towers (``partitioner.balance``), not x the mean: the mean is out of reach
        whenever the costs do not split evenly (26 equal features in 8 towers: 1.23x at best).
        """
        num, k = rep.num_features, int(self.num_towers)
        if num < k and not self.allow_empty:
            raise PartitionError(
                f"n_samples={num} features cannot fill num_towers={k} towers; use at most {num} "
                "towers or allow empty towers",
                PartitionErrorReason.TOO_FEW_FEATURES,
            )
        max_memory = math.inf
        if host_memory_bytes is not None:
            max_memory = float(host_memory_bytes) / towers_per_host(k, num_hosts)
            big = int(np.argmax(cost.memory_bytes))
            total = float(cost.memory_bytes.sum())
            if cost.memory_bytes[big] > max_memory or total > max_memory * k:
                hosts = max(num_hosts + 1, math.ceil(total / float(host_memory_bytes)))
                raise PartitionError(
                    f"tables need {total:,.0f} bytes ({rep.names[big]!r} alone "
                    f"{cost.memory_bytes[big]:,.0f}), but {k} towers on {num_hosts} hosts of "
                    f"{host_memory_bytes:,.0f} bytes leave {max_memory:,.0f} bytes per tower; "
                    f"add hosts (at least {hosts}) or host memory",
                    PartitionErrorReason.MEMORY,
                )
        bound = best_balance(
            cost.lookup_cost,
            k,
            memory=cost.memory_bytes.astype(np.float64),
            max_memory=max_memory,
            allow_empty=self.allow_empty,
        )
        cons = Constraints(
            num_towers=k,
            cost=cost.lookup_cost,
            memory=cost.memory_bytes.astype(np.float64),
            max_load=bound.max_load(self.balance_tolerance),
            max_memory=max_memory,
            allow_empty=self.allow_empty,
            balanced=bound.labels,
        )
        return cons, bound

    # ------------------------------------------------------------------------------- results
    def _set_fitted(
        self,
        rep,
        cost: FeatureCosts,
        graph,
        cons: Constraints,
        bound: BalanceBound,
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
        self.best_imbalance_ = bound.best_imbalance
        self.max_imbalance_ = cons.max_load / bound.mean_load if bound.mean_load > 0 else 1.0
        self.tower_intra_affinity_ = tower_intra_affinity(graph, labels, k)
        self.intra_affinity_ = float(self.tower_intra_affinity_.sum())
        self.tower_internal_share_ = self.confidence_.internal_share
        self.tower_stability_ = self.confidence_.stability
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
                "best_imbalance": self.best_imbalance_,
                "imbalance_lower_bound": bound.lower_bound / bound.mean_load if bound.mean_load > 0 else 1.0,
                "max_imbalance": self.max_imbalance_,
                "intra_affinity": self.intra_affinity_,
                "host_loads": self.host_loads_.tolist(),
                **rep.info,
            },
            "confidence": self.confidence_.to_dict([t.name for t in towers], rep.names),
        }
        self.plan_ = TowerPlan(towers=towers, num_hosts=num_hosts, method=self.method, params=params)


class TowerPartitioner(_BasePartitioner):
    """TP: group features that interact, under balance and memory constraints.

    Clusters the affinity graph (spectral by default), then :class:`LocalSearchBalancer` repairs
    balance/memory and improves intra-tower affinity. The search also starts from the most
    balanced assignment (``partitioner.balance``) and keeps the better result, so TP succeeds for
    every tower count whenever the tables fit in memory.

    Args:
        num_towers: K, the number of towers.
        balance_tolerance: a tower's cost must stay <= (1 + this) x the best max tower cost
            achievable for these costs and K (the mean, when the costs split evenly).
        clusterer: "spectral", "kernighan_lin" or a :class:`Clusterer`.
        num_neighbors: links kept per feature when the affinity is sparsified (F > 2000) or
            built from vectors.
        allow_empty: allow towers without features (otherwise every tower gets one).
        random_state: seed or RandomState; a fixed value gives an identical plan.
    """

    method = "tp"
    uses_affinity = True

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

    def _balancer(self, rng: np.random.RandomState) -> Balancer:
        """The refinement step; override to plug in another Balancer."""
        return LocalSearchBalancer(random_state=rng)

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
        balancer = self._balancer(rng)
        results, errors = [], []
        # The most balanced assignment is feasible by construction: a start that always succeeds.
        balanced = cons.balanced if cons.balanced is not None else lpt_assign(cons)
        starts = [lambda: clusterer.cluster(graph, cons.num_towers, rng), lambda: balanced]
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
            memory = "" if math.isinf(cons.max_memory) else f" and tower memory <= {cons.max_memory:,.0f} bytes"
            raise PartitionError(
                f"no assignment found with max tower cost <= {cons.max_load:,.6g}{memory}: "
                f"{type(balancer).__name__} failed ({errors[-1]}); add hosts or host memory",
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
