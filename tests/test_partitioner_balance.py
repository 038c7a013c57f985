"""Balance relative to what is achievable, and a refinement that does not get stuck."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioner import FeatureCosts, FeatureRepresentation, PartitionError, PartitionErrorReason, TowerPartitioner
from partitioner.balance import best_balance, load_lower_bound
from partitioner.refine import Constraints, LocalSearchBalancer, objective


def _brute_force_max_load(costs: np.ndarray, num_towers: int) -> float:
    return min(
        np.bincount(np.array(a), weights=costs, minlength=num_towers).max()
        for a in itertools.product(range(num_towers), repeat=len(costs))
    )


@pytest.mark.parametrize("num_towers", range(1, 27))
def test_equal_costs_best_is_ceil_and_proven(num_towers):
    b = best_balance(np.ones(26), num_towers)
    assert b.best_max_load == math.ceil(26 / num_towers) == b.lower_bound
    assert np.bincount(b.labels, minlength=num_towers).max() == math.ceil(26 / num_towers)
    assert (np.bincount(b.labels, minlength=num_towers) > 0).all()  # no empty tower


@settings(max_examples=40, deadline=None)
@given(costs=st.lists(st.integers(1, 40), min_size=3, max_size=8), num_towers=st.integers(2, 3))
def test_best_balance_is_the_optimum_on_small_inputs(costs, num_towers):
    costs = np.array(costs, dtype=float)
    optimum = _brute_force_max_load(costs, num_towers)
    b = best_balance(costs, num_towers)
    assert b.lower_bound <= optimum + 1e-9
    assert b.best_max_load == pytest.approx(optimum, rel=1e-3)  # exact search stops within 0.1 %
    assert np.bincount(b.labels, weights=costs, minlength=num_towers).max() == pytest.approx(b.best_max_load)


def test_lower_bound_by_hand():
    # 5 features, 2 towers: the 3 costliest (5, 4, 4) put two in one tower: >= 4 + 4 = 8 > mean 7.
    assert load_lower_bound(np.array([5.0, 4, 4, 1, 0]), 2) == 8.0
    assert load_lower_bound(np.array([9.0, 1, 1]), 2) == 9.0  # one feature above the mean


def test_best_balance_respects_memory():
    # Balance alone pairs 3+1 and 2+2; memory forbids the two heavy tables together.
    b = best_balance(np.array([3.0, 2, 2, 1]), 2, memory=np.array([10.0, 10, 1, 1]), max_memory=12)
    mem = np.bincount(b.labels, weights=[10, 10, 1, 1], minlength=2)
    assert mem.max() <= 12 and b.best_max_load == 4.0


@settings(max_examples=30, deadline=None)
@given(
    num=st.integers(2, 30),
    num_towers=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    equal=st.booleans(),
)
def test_any_tower_count_works_at_the_default_tolerance(num, num_towers, seed, equal):
    num_towers = min(num_towers, num)
    rng = np.random.default_rng(seed)
    costs = np.ones(num) if equal else rng.lognormal(0, 0.7, num)
    w = rng.random((num, num))
    rep = FeatureRepresentation(names=tuple(f"f{i}" for i in range(num)), affinity=np.triu(w, 1) + np.triu(w, 1).T)
    tp = TowerPartitioner(num_towers, random_state=0).fit(rep, costs=costs)
    best = best_balance(costs, num_towers).best_max_load
    assert len(tp.plan_.towers) == num_towers
    assert tp.tower_loads_.max() <= 1.1 * best * (1 + 1e-9)
    assert tp.max_imbalance_ == pytest.approx(1.1 * tp.best_imbalance_)


def _planted_blocks(sizes: list[int], seed: int) -> tuple[FeatureRepresentation, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    w = np.where(truth[:, None] == truth[None, :], rng.uniform(0.5, 1.0, (len(truth),) * 2), rng.uniform(0, 0.1))
    w = np.triu(w, 1)
    return FeatureRepresentation(names=tuple(f"f{i}" for i in range(len(truth))), affinity=w + w.T), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eight_towers_of_26_equal_features_each_inside_one_group(seed):
    # The case: 4 planted groups (7, 7, 6, 6) of equal-cost features into 8 towers. The
    # mean (3.25 features) is out of reach; the best is 4, and every group splits into towers of
    # at most 4 (7 = 4 + 3, 6 = 3 + 3), so every tower can lie inside one group.
    rep, truth = _planted_blocks([7, 7, 6, 6], seed)
    tp = TowerPartitioner(8, random_state=0).fit(rep, costs=FeatureCosts.uniform(rep.names))
    assert tp.best_imbalance_ == pytest.approx(4 / 3.25)
    assert len(tp.plan_.towers) == 8 and np.bincount(tp.labels_).max() <= 4
    for t in range(8):
        assert len(set(truth[tp.labels_ == t])) == 1, f"tower {t} mixes groups"


def test_kicks_repair_a_cycle_that_moves_and_swaps_cannot():
    # Three groups of three equal features, towers full (tolerance 0): a -> tower B, b -> tower C,
    # c -> tower A is a 3-cycle. No move fits; no pair of features wants each other's tower
    # (a wants A, where c sits, but c wants C), so swaps are stuck too.
    truth = np.repeat(np.arange(3), 3)
    w = (truth[:, None] == truth[None, :]).astype(float) - np.eye(9)
    graph = sp.csr_array(w)
    start = truth.copy()
    start[[0, 3, 6]] = [1, 2, 0]
    cons = Constraints(num_towers=3, cost=np.ones(9), memory=np.zeros(9), max_load=3.0)
    stuck = LocalSearchBalancer(kicks=0).balance(start, graph, cons)
    assert (stuck == start).all()
    fixed = LocalSearchBalancer(kicks=40, random_state=0).balance(start, graph, cons)
    assert (fixed == truth).all()
    assert objective(graph, fixed, 3, 1.0) > objective(graph, stuck, 3, 1.0)


def test_memory_error_says_how_many_hosts():
    rep, _ = _planted_blocks([2, 2], 0)
    costs = FeatureCosts.uniform(rep.names, memory_bytes=100)
    with pytest.raises(PartitionError, match="add hosts \\(at least 3\\)") as e:
        TowerPartitioner(2).fit(rep, costs=costs, num_hosts=1, host_memory_bytes=150)
    assert e.value.reason is PartitionErrorReason.MEMORY
