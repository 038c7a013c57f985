"""TowerPartitioner and baselines: toy cases computed by hand, invariants, infeasible requests."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from dmt.plan import TowerPlan
from partitioner import (
    METHODS,
    FeatureCosts,
    FeatureRepresentation,
    GreedyPartitioner,
    PartitionError,
    PartitionErrorReason,
    RandomPartitioner,
    RoundRobinPartitioner,
    TowerPartitioner,
    measure_costs,
)
from partitioner.balance import best_balance
from partitioner.hosts import assign_hosts
from partitioner.metrics import ari_vs_groups

# a-b and c-d interact strongly, a-c and b-d weakly; total affinity 20.
TOY_AFFINITY = np.array([[0, 9, 1, 0], [9, 0, 0, 1], [1, 0, 0, 9], [0, 1, 9, 0]], dtype=float)
TOY = FeatureRepresentation(names=("a", "b", "c", "d"), affinity=TOY_AFFINITY)


def planted(num_groups: int, size: int, seed: int, noise: float = 0.1) -> tuple[FeatureRepresentation, np.ndarray]:
    """Affinity with dense blocks on the diagonal and weak random links elsewhere; shuffled order."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(num_groups), size)
    perm = rng.permutation(len(truth))
    truth = truth[perm]
    w = rng.uniform(0, noise, (len(truth), len(truth)))
    w = np.where(truth[:, None] == truth[None, :], rng.uniform(0.5, 1.0, w.shape), w)
    w = np.triu(w, 1)
    names = tuple(f"f{i}" for i in range(len(truth)))
    return FeatureRepresentation(names=names, affinity=w + w.T), truth


# ---------------------------------------------------------------------------- toy, by hand
def test_toy_affinity_decides_when_costs_are_equal():
    tp = TowerPartitioner(2, random_state=0).fit(TOY)
    assert tp.labels_.tolist() == [0, 0, 1, 1]
    assert [t.features for t in tp.plan_.towers] == [("a", "b"), ("c", "d")]
    assert tp.tower_loads_.tolist() == [2.0, 2.0]
    assert tp.imbalance_ == 1.0
    assert tp.intra_affinity_ == pytest.approx(18 / 20)


def test_toy_balance_overrides_affinity():
    # Costs 3, 2, 2, 1: mean 4, cap 4.4. {a,b} costs 5, so the only feasible split is {a,d} | {b,c}
    # (every 1-3 split puts >= 5 on one side), even though it keeps no affinity at all.
    tp = TowerPartitioner(2, balance_tolerance=0.1, random_state=0).fit(TOY, costs=np.array([3.0, 2, 2, 1]))
    assert tp.labels_.tolist() == [0, 1, 1, 0]
    assert tp.tower_loads_.tolist() == [4.0, 4.0]
    assert tp.intra_affinity_ == 0.0


def test_toy_baselines():
    costs = np.array([3.0, 2, 2, 1])
    with pytest.warns(UserWarning, match="round_robin: max tower load is 1.250x"):
        assert RoundRobinPartitioner(2).fit(TOY, costs=costs).labels_.tolist() == [0, 1, 0, 1]
    # LPT: a(3) -> t0, b(2) -> t1, c(2) -> t1 (2 < 3), d(1) -> t0 (3 < 4).
    greedy = GreedyPartitioner(2).fit(TOY, costs=costs)
    assert greedy.labels_.tolist() == [0, 1, 1, 0]
    assert greedy.tower_loads_.tolist() == [4.0, 4.0]
    rnd = RandomPartitioner(2, random_state=0).fit(TOY)
    assert sorted(np.bincount(rnd.labels_).tolist()) == [2, 2]


def test_plan_has_hosts_costs_and_round_trips():
    rep, _ = planted(4, 5, seed=0)
    tp = TowerPartitioner(4, random_state=0).fit(rep, num_hosts=2)
    plan = tp.plan_
    assert plan.method == "tp" and plan.num_hosts == 2 and plan.params["num_towers"] == 4
    assert sorted(t.host for t in plan.towers) == [0, 0, 1, 1]
    assert [t.cost for t in plan.towers] == tp.tower_loads_.tolist()
    assert TowerPlan.from_json(plan.to_json()) == plan


# ------------------------------------------------------------------------------ recovery
@pytest.mark.parametrize("clusterer", ["spectral", "kernighan_lin"])
def test_tp_recovers_planted_groups_baselines_do_not(clusterer):
    rep, truth = planted(4, 6, seed=1)
    groups = [[n for n, t in zip(rep.names, truth) if t == g] for g in range(4)]
    tp = TowerPartitioner(4, clusterer=clusterer, random_state=0).fit(rep)
    assert ari_vs_groups(tp.features_, tp.labels_, groups) == 1.0
    for cls in (RandomPartitioner, RoundRobinPartitioner, GreedyPartitioner):
        base = cls(4, random_state=0).fit(rep)
        assert ari_vs_groups(base.features_, base.labels_, groups) < 0.5
        assert base.intra_affinity_ < tp.intra_affinity_


def test_vectors_only_builds_knn_graph():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, (3, 5))
    x = np.repeat(centers, 20, axis=0) + rng.normal(0, 0.5, (60, 5))
    tp = TowerPartitioner(3, random_state=0).fit(x)
    assert (
        ari_vs_groups(
            tp.features_, tp.labels_, [[f"feature_{i}" for i in range(g * 20, g * 20 + 20)] for g in range(3)]
        )
        == 1.0
    )


# ---------------------------------------------------------------------------- invariants
def _feasible_case(data, num_towers: int, tol: float) -> tuple[FeatureRepresentation, np.ndarray]:
    """Costs in [1, 3] and enough features that every one costs <= tol x mean: LPT (and so TP)
    then provably meets the balance (list scheduling: max load <= mean + max cost)."""
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    num = max(data.draw(st.integers(num_towers, 40)), math.ceil(3 * num_towers / tol))
    costs = rng.uniform(1, 3, num)
    w = rng.exponential(1.0, (num, num)) * (rng.random((num, num)) < 0.3)
    w = np.triu(w, 1)
    return FeatureRepresentation(names=tuple(f"f{i}" for i in range(num)), affinity=w + w.T), costs


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    num_towers=st.integers(1, 6),
    tol=st.sampled_from([0.1, 0.2, 0.5]),
    method=st.sampled_from(["tp", "greedy"]),
)
def test_every_feature_once_no_empty_tower_balanced(data, num_towers, tol, method):
    rep, costs = _feasible_case(data, num_towers, tol)
    est = METHODS[method](num_towers, balance_tolerance=tol, random_state=0).fit(rep, costs=costs)
    plan = est.plan_
    assert sorted(plan.features) == sorted(rep.names)  # each feature in exactly one tower
    assert len(plan.towers) == num_towers and all(t.features for t in plan.towers)
    assert est.tower_loads_.max() <= (1 + tol) * best_balance(costs, num_towers).best_max_load * (1 + 1e-9)
    assert est.tower_loads_.sum() == pytest.approx(costs.sum())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), num_towers=st.integers(2, 5), method=st.sampled_from(["tp", "random"]))
def test_fixed_random_state_gives_identical_plan(seed, num_towers, method):
    rep, _ = planted(num_towers, 4, seed=seed, noise=0.5)
    first = METHODS[method](num_towers, random_state=seed).fit(rep).plan_
    again = METHODS[method](num_towers, random_state=seed).fit(rep).plan_
    assert first.to_dict() == again.to_dict()


@settings(max_examples=15, deadline=None)
@given(num=st.integers(1, 8), extra=st.integers(1, 4))
def test_too_few_features(num, extra):
    rep = FeatureRepresentation(names=tuple(f"f{i}" for i in range(num)), vectors=np.eye(num))
    with pytest.raises(PartitionError) as e:
        TowerPartitioner(num + extra).fit(rep)
    assert e.value.reason is PartitionErrorReason.TOO_FEW_FEATURES


@settings(max_examples=15, deadline=None)
@given(num=st.integers(4, 30), num_towers=st.integers(2, 4), tol=st.sampled_from([0.0, 0.1, 0.3]))
def test_a_feature_costlier_than_the_mean_gets_a_tower_of_its_own(num, num_towers, tol):
    # Above (1 + tol) x the mean: a mean-relative limit refused this; the limit is now relative
    # to the best achievable max load, which this one feature sets.
    costs = np.ones(num)
    big = num // 2
    costs[big] = 2 * (1 + tol) * (num - 1) / (num_towers - 1 - tol)
    rep = FeatureRepresentation(names=tuple(f"f{i}" for i in range(num)), vectors=np.eye(num))
    tp = TowerPartitioner(num_towers, balance_tolerance=tol, random_state=0).fit(rep, costs=costs)
    assert tp.best_imbalance_ == pytest.approx(costs[big] * num_towers / costs.sum())
    assert tp.tower_loads_.max() <= (1 + tol) * costs[big] * (1 + 1e-9)
    if tol == 0:  # no room for anything next to it
        assert (tp.labels_ == tp.labels_[big]).sum() == 1


def test_three_equal_features_in_two_towers_now_succeed():
    # Every split puts two features in one tower (1.33x the mean): the best achievable, so no error.
    rep = FeatureRepresentation(names=("a", "b", "c"), vectors=np.eye(3))
    tp = TowerPartitioner(2, balance_tolerance=0.1).fit(rep)
    assert sorted(np.bincount(tp.labels_).tolist()) == [1, 2]
    assert tp.imbalance_ == pytest.approx(4 / 3) and tp.best_imbalance_ == pytest.approx(4 / 3)
    assert tp.plan_.params["stats"]["max_imbalance"] == pytest.approx(1.1 * 4 / 3)
    with pytest.warns(UserWarning, match="above the limit 1.100x"):  # baselines are held to the same limit
        RoundRobinPartitioner(2, balance_tolerance=0.1).fit(rep, costs=np.array([2.0, 1.0, 1.0]))


def test_memory():
    rep, _ = planted(2, 4, seed=0)
    costs = FeatureCosts.uniform(rep.names, memory_bytes=100)
    # 2 hosts x 450 bytes, 4 towers -> 2 towers a host -> 225 bytes a tower: 2 features each fit.
    tp = TowerPartitioner(4, random_state=0).fit(rep, costs=costs, num_hosts=2, host_memory_bytes=450)
    assert tp.tower_memory_.max() <= 225
    with pytest.raises(PartitionError) as e:  # 800 bytes of tables, 4 x 175 = 700 available
        TowerPartitioner(4).fit(rep, costs=costs, num_hosts=2, host_memory_bytes=350)
    assert e.value.reason is PartitionErrorReason.MEMORY
    with pytest.raises(PartitionError) as e:  # one table alone exceeds a tower's share
        TowerPartitioner(2).fit(rep, costs=costs, num_hosts=1, host_memory_bytes=150)
    assert e.value.reason is PartitionErrorReason.MEMORY


def test_allow_empty_towers():
    # 6 features into 8 towers; the cap (1.5 x 6 / 8 = 1.125) allows one feature a tower.
    rep = FeatureRepresentation(names=tuple("abcdef"), vectors=np.eye(6))
    tp = TowerPartitioner(8, balance_tolerance=0.5, allow_empty=True, random_state=0).fit(rep)
    assert [len(t.features) for t in tp.plan_.towers] == [1] * 6  # empty towers are not in the plan


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_towers": 0}, "num_towers=0"),
        ({"num_towers": 2, "balance_tolerance": -1}, "balance_tolerance"),
        ({"num_towers": 2, "clusterer": "nope"}, "clusterer='nope'"),
    ],
)
def test_bad_parameters_raise_in_fit_not_init(kwargs, match):
    num_towers = kwargs.pop("num_towers")
    est = TowerPartitioner(num_towers, **kwargs)  # __init__ only stores
    with pytest.raises(PartitionError, match=match) as e:
        est.fit(TOY)
    assert e.value.reason is PartitionErrorReason.INPUT


def test_costs_are_aligned_by_name():
    costs = FeatureCosts.from_lookup_cost(("d", "c", "b", "a"), np.array([1.0, 2, 2, 3]))
    tp = TowerPartitioner(2, random_state=0).fit(TOY, costs=costs)
    assert tp.labels_.tolist() == [0, 1, 1, 0]  # the same answer as costs [3, 2, 2, 1] for a..d
    with pytest.raises(PartitionError, match="different features"):
        TowerPartitioner(2).fit(TOY, costs=FeatureCosts.uniform(("a", "b", "c", "x")))


# ------------------------------------------------------------------------ scikit-learn API
def _expected_failed_checks(estimator) -> dict[str, str]:
    if isinstance(estimator, TowerPartitioner):
        return {}
    return {"check_clustering": "baselines ignore the data by design, so they cannot recover blobs"}


@parametrize_with_checks(
    [
        TowerPartitioner(3, random_state=0),
        RandomPartitioner(3, random_state=0),
        RoundRobinPartitioner(3),
        GreedyPartitioner(3),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_contract(estimator, check):
    # Rows of X are features (the samples being clustered). The default tolerance works: the
    # checks' 10 equal-cost rows split 4/3/3, and 4 is the best achievable max (a 1.1x-the-mean
    # limit refused it before the limit became relative to the best).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # baselines warn about their balance
        check(estimator)


# -------------------------------------------------------------------------- scale and parts
def _blobs(num: int, num_towers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.arange(num) % num_towers)
    return rng.normal(0, 3, (num_towers, 8))[truth] + rng.normal(0, 1, (num, 8)), truth


def test_large_inputs_take_the_sparse_paths():
    # > 3000 features: sparse kNN graph and ARPACK; a dense affinity above 2000 is cut to top-k.
    x, truth = _blobs(3200, 16)
    costs = np.random.default_rng(0).uniform(1, 2, len(x))
    tp = TowerPartitioner(16, random_state=0).fit(x, costs=costs)
    assert tp.imbalance_ <= 1.1 + 1e-9 and len(tp.plan_.towers) == 16
    assert adjusted_rand_score(truth, tp.labels_) > 0.8
    dense = (truth[:2100, None] == truth[None, :2100]).astype(float)
    graph = FeatureRepresentation(names=tuple(map(str, range(2100))), affinity=dense).affinity_graph(num_neighbors=5)
    assert graph.nnz <= 2 * 5 * 2100 and graph.diagonal().sum() == 0


@pytest.mark.slow
def test_10k_features_into_64_towers_in_30_seconds():
    x, truth = _blobs(10_000, 64)
    costs = np.random.default_rng(0).lognormal(0, 0.5, len(x))
    start = time.perf_counter()
    tp = TowerPartitioner(64, random_state=0).fit(x, costs=costs, num_hosts=8)
    assert time.perf_counter() - start < 30
    assert tp.imbalance_ <= 1.1 + 1e-9 and adjusted_rand_score(truth, tp.labels_) > 0.8
    assert np.bincount(tp.tower_hosts_).tolist() == [8] * 8


def test_hosts_get_equal_tower_counts_and_balanced_cost():
    loads = np.random.default_rng(0).uniform(1, 2, 10)
    hosts = assign_hosts(loads, np.zeros(10), num_hosts=3)
    assert sorted(np.bincount(hosts).tolist()) == [3, 3, 4]
    per_host = np.bincount(hosts, weights=loads)
    assert per_host.max() - per_host.min() <= loads.max()


@pytest.mark.parametrize(("optimizer", "state_bytes"), [("sgd", 0), ("rowwise_adagrad", 4), ("adagrad", 32)])
def test_memory_counts_optimizer_state(optimizer, state_bytes):
    ids = np.array([[1, -1], [2, -1], [3, 5]])
    c = measure_costs(ids, ["a", "b"], embedding_dim=8, batch_size=1, optimizer=optimizer)
    assert c.table_rows.tolist() == [3, 1]  # distinct ids; an (almost) empty feature keeps one row
    assert c.memory_bytes.tolist() == [3 * (32 + state_bytes), 1 * (32 + state_bytes)]
    assert c.pooling_factor.tolist() == pytest.approx([1.0, 1 / 3])


def test_representation_validates_its_input():
    with pytest.raises(PartitionError, match="duplicate feature names"):
        FeatureRepresentation(names=("a", "a"), vectors=np.eye(2))
    with pytest.raises(PartitionError, match="vectors or affinity"):
        FeatureRepresentation(names=("a", "b"))
    with pytest.raises(PartitionError, match=">= 0"):
        FeatureRepresentation(names=("a", "b"), affinity=-np.ones((2, 2)))
