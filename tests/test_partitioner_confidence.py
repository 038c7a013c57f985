"""Confidence of a plan: internal share per tower, stability over resampled affinities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from dmt.plan import TowerPlan
from partitioner import FeatureRepresentation, GreedyPartitioner, PartitionError, TowerPartitioner
from partitioner.confidence import MAX_REGRET, MIN_STABILITY, feature_stability, internal_share, tower_stability


def _planted(seed: int, noise: float = 0.1) -> tuple[FeatureRepresentation, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(4), [7, 7, 6, 6]))
    w = np.where(truth[:, None] == truth[None, :], rng.uniform(0.5, 1.0, (26, 26)), rng.uniform(0, noise, (26, 26)))
    w = np.triu(w, 1)
    return FeatureRepresentation(names=tuple(f"f{i}" for i in range(26)), affinity=w + w.T), truth


def _symmetric(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    w = rng.random(shape)
    w = np.triu(w, 1)
    return w + np.swapaxes(w, -1, -2)


def test_internal_share_by_hand():
    # a-b 9, c-d 9, a-c 1, b-d 1: each tower keeps 18 of its 20 units of degree.
    w = sp.csr_array(np.array([[0, 9, 1, 0], [9, 0, 0, 1], [1, 0, 0, 9], [0, 1, 9, 0]], float))
    assert internal_share(w, np.array([0, 0, 1, 1]), 2).tolist() == pytest.approx([0.9, 0.9])
    assert internal_share(w, np.array([0, 1, 0, 1]), 2).tolist() == pytest.approx([0.1, 0.1])


def test_stability_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    same = [labels.copy(), np.array([1, 1, 1, 0, 0, 0])]  # renumbered: the same towers
    assert tower_stability(labels, same).tolist() == [1.0, 1.0]
    moved = [np.array([0, 0, 1, 1, 1, 1])]  # feature 2 changed tower
    assert tower_stability(labels, moved).tolist() == pytest.approx([2 / 3, 3 / 4])
    assert feature_stability(labels, moved).tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 6, 3 / 4, 3 / 4, 3 / 4])


def test_consistent_resamples_give_a_trusted_plan_and_it_is_recorded():
    rep, _ = _planted(0)
    rng = np.random.default_rng(1)
    a = rep.dense_affinity()
    samples = np.stack([a * (1 + 0.05 * _symmetric(rng, a.shape)) for _ in range(8)])
    tp = TowerPartitioner(4, random_state=0).fit(dataclasses.replace(rep, affinity_samples=samples))
    assert tp.tower_stability_.tolist() == [1.0] * 4
    assert (tp.tower_internal_share_ > 0.6).all()  # random towers of 6-7 features keep about 0.25
    conf = TowerPlan.from_json(tp.plan_.to_json()).params["confidence"]
    assert conf["trusted"] is True and conf["warning"] is None and conf["num_resamples"] == 8
    assert conf["regret"] == 0.0  # every resample gives this plan
    assert conf["stability"] == [1.0] * 4 and set(conf["feature_stability"]) == set(rep.names)


def test_noise_resamples_give_a_low_confidence_warning():
    rep, _ = _planted(0)
    rng = np.random.default_rng(2)
    samples = _symmetric(rng, (12, 26, 26))  # resamples that share no structure with the fit
    tp = TowerPartitioner(4, random_state=0).fit(dataclasses.replace(rep, affinity_samples=samples))
    assert tp.tower_stability_.min() < MIN_STABILITY
    conf = tp.plan_.params["confidence"]
    assert conf["trusted"] is False and conf["regret"] > MAX_REGRET
    assert conf["warning"].startswith("low confidence: on 12 resamples of the affinity the plan loses")
    assert "unstable towers: tower_" in conf["warning"] and "least stable features: f" in conf["warning"]


def test_an_arbitrary_split_is_unstable_but_trusted():
    # Two groups of 6 into 4 towers: each group must be halved, and with equal links inside a
    # group any halving is as good. Resamples halve differently (low stability) at no loss.
    truth = np.repeat([0, 1], 6)
    w = (truth[:, None] == truth[None, :]).astype(float) - np.eye(12)
    rng = np.random.default_rng(0)
    samples = np.stack([w * (1 + 0.01 * _symmetric(rng, w.shape)) for _ in range(10)])
    rep = FeatureRepresentation(names=tuple(f"f{i}" for i in range(12)), affinity=w, affinity_samples=samples)
    tp = TowerPartitioner(4, random_state=0).fit(rep)
    for t in range(4):
        assert len(set(truth[tp.labels_ == t])) == 1
    assert tp.tower_stability_.min() < MIN_STABILITY
    assert tp.confidence_.regret < 0.01 and tp.confidence_.trusted is True


def test_without_resamples_stability_is_unknown_and_baselines_ignore_them():
    rep, _ = _planted(0)
    tp = TowerPartitioner(4, random_state=0).fit(rep)
    assert tp.tower_stability_ is None and tp.plan_.params["confidence"]["trusted"] is None
    noisy = dataclasses.replace(rep, affinity_samples=_symmetric(np.random.default_rng(0), (4, 26, 26)))
    greedy = GreedyPartitioner(4).fit(noisy)
    assert greedy.tower_stability_ is None  # a baseline's towers do not follow the affinity


def test_samples_are_validated_and_saved(tmp_path):
    rep, _ = _planted(0)
    with pytest.raises(PartitionError, match="affinity_samples have shape"):
        dataclasses.replace(rep, affinity_samples=np.ones((2, 26, 25)))
    with pytest.raises(PartitionError, match="finite and >= 0"):
        dataclasses.replace(rep, affinity_samples=-np.ones((2, 26, 26)))
    samples = _symmetric(np.random.default_rng(0), (3, 26, 26))
    dataclasses.replace(rep, affinity_samples=samples).save(tmp_path / "rep.npz")
    np.testing.assert_allclose(FeatureRepresentation.load(tmp_path / "rep.npz").affinity_samples, samples)
