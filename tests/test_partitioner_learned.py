"""The learned representation: planted groups show up as affinity, and TP recovers them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmt.data.criteo import SPARSE_NAMES, read_criteo
from dmt.data.synthetic import SyntheticSpec, generate_criteo
from partitioner import FeatureRepresentation, GreedyPartitioner, RandomPartitioner, TowerPartitioner, measure_costs
from partitioner.learned import LearnedEmbedder, pair_scores, relative_affinity
from partitioner.metrics import ari_vs_groups
from partitioner.probe import ProbeConfig, prepare, train_probe

# Enough rows of the tiny preset for one pass to find the interactions (~10 s of CPU).
ROWS = 60_000
PROBE = ProbeConfig(steps=400, eval_every=50, patience=3, sample_rows=4096)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "rows.txt"
    truth = generate_criteo(path, rows=ROWS, seed=1, spec=SyntheticSpec.tiny())
    arrays, _ = read_criteo(path)
    return arrays, truth["groups"]


@pytest.fixture(scope="module")
def learned(planted):
    arrays, _ = planted
    return LearnedEmbedder(PROBE, progress=False).embed(arrays)


def test_within_group_affinity_is_clearly_higher(planted, learned):
    _, groups = planted
    group_of = {f: g for g, members in enumerate(groups) for f in members}
    g = np.array([group_of[n] for n in learned.names])
    a = learned.dense_affinity()
    within = a[(g[:, None] == g[None, :]) & ~np.eye(len(g), dtype=bool)]
    cross = a[g[:, None] != g[None, :]]
    assert within.mean() > 3 * cross.mean()
    assert learned.info["heldout_auc"] > learned.info["initial_heldout_auc"] + 0.05


def test_tp_recovers_planted_groups(planted, learned):
    arrays, groups = planted
    costs = measure_costs(arrays.sparse, SPARSE_NAMES, embedding_dim=16, batch_size=512)
    tp = TowerPartitioner(len(groups), random_state=0).fit(learned, costs=costs)
    assert ari_vs_groups(tp.features_, tp.labels_, groups) >= 0.9
    for cls in (RandomPartitioner, GreedyPartitioner):
        base = cls(len(groups), balance_tolerance=1.0, random_state=0).fit(learned, costs=costs)
        assert ari_vs_groups(base.features_, base.labels_, groups) < 0.5


def test_scoring_leaves_the_probe_untouched(planted):
    arrays, _ = planted
    cfg = ProbeConfig.debug()
    train, holdout, sizes = prepare(arrays.slice(0, 2000), cfg)
    model, _ = train_probe(train, holdout, sizes, cfg, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = pair_scores(model, holdout, sizes, cfg, "attribution")
    assert scores.shape == (26, 26) and np.allclose(scores, scores.T) and (np.diag(scores) == 0).all()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])  # autograd.grad: no in-backward optimizer step


def test_relative_affinity_lifts_weak_features():
    # Feature 2 is weak (small scores with everyone) but prefers 3; relative affinity shows it.
    s = np.array([[0, 8, 0.1, 0.1], [8, 0, 0.1, 0.1], [0.1, 0.1, 0, 0.4], [0.1, 0.1, 0.4, 0]])
    r = relative_affinity(s)
    assert r[2, 3] > r[2, 0] and r[2, 3] > r[0, 2]


def test_representation_save_load(tmp_path, learned):
    path = tmp_path / "rep.npz"
    learned.save(path)
    back = FeatureRepresentation.load(path)
    assert back.names == learned.names and back.source == learned.source
    np.testing.assert_allclose(back.dense_affinity(), learned.dense_affinity())
    assert back.info["best_step"] == learned.info["best_step"]
