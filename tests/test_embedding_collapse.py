"""Issue 18: the first optimizer step must not collapse the embeddings onto one direction.

The mechanism behind "DMT (and flat) often stall at AUC 0.575": torchrec's default table init
(uniform in +-sqrt(1/rows), 0.0045 for 50k rows) leaves a fresh embedding with a norm of ~0.01,
while row-wise Adagrad's first update moves each looked-up row by ~lr*sqrt(D) = 0.2 whatever the
gradient's size, in the gradient's direction. At init the only non-tiny partner of an embedding in
the dot interaction is the dense vector, so every row's gradient points along it: after one step
all embeddings lie near one line (effective rank 2.0-2.6 of 16 flat, 1.6-2.4 DMT TP c=4) and the dots
that carry the feature interactions start from a rank-one saddle. The fix: start the tables at
uniform(+-0.1) (the first step's norm lr*sqrt(D) is then no larger than the init's a*sqrt(D/3),
for any D), or per-coordinate Adagrad. Measured runs: benchmarks/results/learning/README.md.
"""

from __future__ import annotations

import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dmt.data import iter_batches, read_criteo
from dmt.data.synthetic import generate_criteo
from dmt.model.flat import ModelConfig
from dmt.plan import TowerPlan
from dmt.train.build import TowerSpec, build_model
from dmt.train.optim import OptimConfig
from towers import TowerModuleConfig


def _effective_rank(vectors: torch.Tensor) -> float:
    """exp(entropy of the normalised squared singular values): D if spread, 1 if on one line."""
    energy = torch.linalg.svdvals(vectors) ** 2
    p = energy / energy.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def _looked_up_vectors(model: torch.nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                v
                for m in model.modules()
                if isinstance(m, EmbeddingBagCollection)
                for v in m(batch.sparse_features).to_dict().values()
            ]
        )


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("collapse") / "rows.tsv"
    truth = generate_criteo(path, rows=1024, seed=0)
    return read_criteo(path)[0], truth["groups"]


@pytest.mark.parametrize("init", [pytest.param(None, id="default_init"), pytest.param(0.1, id="init0.1")])
@pytest.mark.parametrize("towers", ["flat", "dmt_tp_linear_c4"])
def test_first_step_keeps_the_embeddings_spread(planted, towers, init):
    arrays, groups = planted
    cfg = ModelConfig.preset("small") if init is None else ModelConfig.preset("small", embedding_init=init)
    spec = None
    if towers != "flat":  # the planted groups are what TP finds on this data
        plan = TowerPlan.from_groups(groups, num_hosts=2)
        spec = TowerSpec(plan=plan, module=TowerModuleConfig(kind="linear", compression=4))
    model, optimizer = build_model(cfg, OptimConfig(), seed=0, towers=spec)
    batch = next(iter(iter_batches(arrays, batch_size=512, num_embeddings=cfg.num_embeddings, shuffle=False)))
    before = _effective_rank(_looked_up_vectors(model, batch))
    optimizer.zero_grad()
    model(batch)[0].backward()
    optimizer.step()
    after = _effective_rank(_looked_up_vectors(model, batch))
    # A random init fills all D directions (rank ~D); half of them must survive the first step.
    assert before > 0.8 * cfg.embedding_dim
    assert after >= cfg.embedding_dim / 2, f"embeddings collapsed to rank {after:.1f} of {cfg.embedding_dim}"


def _loss_after_one_step(cfg: ModelConfig, optim: OptimConfig, batch) -> float:
    model, optimizer = build_model(cfg, optim, seed=0, towers=None)
    optimizer.zero_grad()
    model(batch)[0].backward()
    optimizer.step()
    with torch.no_grad():
        return float(model(batch)[0])


def test_wide_preset_rates_keep_the_first_step_in_range(planted):
    """The "criteo" preset's wide MLPs: Adagrad's first step moves every weight by ~lr, so at the
    small preset's dense rate (0.05) the logits jump to thousands and the ReLUs die (an epoch then
    learns nothing); the preset's own rates keep the first step's loss near log(2)."""
    arrays, _ = planted
    cfg = ModelConfig.preset("criteo", row_cap=1000)
    batch = next(iter(iter_batches(arrays, batch_size=512, num_embeddings=cfg.num_embeddings, shuffle=False)))
    own = _loss_after_one_step(cfg, OptimConfig.for_preset("criteo"), batch)
    small_rates = _loss_after_one_step(cfg, OptimConfig.for_preset("small"), batch)
    assert own < 1.5, f"loss {own:.1f} after one step at the preset's rates"
    assert small_rates > 10 * own  # the overshoot the preset's rates avoid
