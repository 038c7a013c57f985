"""SPTT in one process: the transformed model keeps the flat model's meaning (and leaves it alone)."""

from __future__ import annotations

import pytest
import torch
from torchrec.models.dlrm import DLRMTrain
from torchrec.sparse.jagged_tensor import KeyedTensor

from dmt.data import random_batch
from dmt.errors import DmtError
from dmt.model.dmt import DMTModel, DMTTrain, index_to_blocks, permute_columns
from dmt.model.flat import ModelConfig, build_flat_model
from dmt.model.transform import flat_global_interaction, transform
from dmt.plan import PlanError, Tower, TowerPlan
from towers import GlobalInteractionConfig, TowerModuleConfig

FEATURES = tuple(f"f{i}" for i in range(6))
ROWS = (40, 30, 50, 20, 40, 30)
# Tower order and in-tower order both differ from the flat feature order.
PLAN = TowerPlan(
    towers=(Tower("a", ("f3", "f0"), host=1), Tower("b", ("f5", "f1", "f2"), host=0), Tower("c", ("f4",), host=0)),
    num_hosts=2,
)


def _cfg(arch: str = "dlrm") -> ModelConfig:
    return ModelConfig.preset("debug", arch=arch, sparse_features=FEATURES, num_embeddings=ROWS)


def _flat(arch: str = "dlrm", seed: int = 0, device=None) -> DLRMTrain:
    torch.manual_seed(seed)
    return build_flat_model(_cfg(arch), device=device)


def _batch(seed: int = 1, batch_size: int = 16):
    return random_batch(batch_size, ROWS, features=FEATURES, pooling=range(4), seed=seed)  # 0..3 ids per bag


@pytest.mark.parametrize("arch", ["dlrm", "dlrm_dcn"])
def test_identity_towers_compute_the_flat_model_exactly(arch):
    flat = _flat(arch)
    dmt = transform(flat, PLAN)
    assert isinstance(dmt, DMTTrain) and dmt.model.column_blocks is not None
    batch = _batch()
    with torch.no_grad():
        loss_f, (_, logits_f, labels_f) = flat(batch)
        loss_d, (_, logits_d, labels_d) = dmt(batch)
    torch.testing.assert_close(logits_d, logits_f, rtol=0, atol=0)
    torch.testing.assert_close(loss_d, loss_f, rtol=0, atol=0)
    assert torch.equal(labels_d, labels_f)


@pytest.mark.parametrize("arch", ["dlrm", "dlrm_dcn"])
def test_identity_towers_train_like_the_flat_model(arch):
    flat = _flat(arch)
    dmt = transform(flat, PLAN)
    for model in (flat, dmt):
        opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            loss, _ = model(_batch(seed=10 + step))
            loss.backward()
            opt.step()
    with torch.no_grad():
        torch.testing.assert_close(dmt(_batch(seed=3))[1][1], flat(_batch(seed=3))[1][1], rtol=1e-6, atol=1e-6)
    flat_tables = flat.model.sparse_arch.embedding_bag_collection.embedding_bags
    for tower in dmt.model.tower_arch.towers:
        for name, bag in tower.embedding.embedding_bags.items():
            torch.testing.assert_close(bag.weight, flat_tables[name].weight, rtol=1e-6, atol=1e-6)


def test_transform_does_not_mutate_or_share_with_the_flat_model():
    flat = _flat()
    before = {k: v.clone() for k, v in flat.state_dict().items()}
    modules_before = [type(m) for m in flat.modules()]
    dmt = transform(flat, PLAN)
    flat_params = {id(p) for p in flat.parameters()}
    assert not flat_params & {id(p) for p in dmt.parameters()}
    with torch.no_grad():
        for p in dmt.parameters():
            p.add_(1.0)
    for k, v in flat.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [type(m) for m in flat.modules()] == modules_before


def test_one_tower_group_per_host_in_host_order():
    dmt = transform(_flat(), PLAN, tower_module=TowerModuleConfig(kind="linear", compression=2))
    keys = set(dmt.state_dict())
    # Group 0 = host 0 (plan towers b, c), group 1 = host 1 (plan tower a).
    assert "model.tower_arch.towers.0.embedding.embedding_bags.t_f1.weight" in keys
    assert "model.tower_arch.towers.1.embedding.embedding_bags.t_f3.weight" in keys
    assert "model.tower_arch.towers.0.interaction.plan_towers.2.projection.linear.weight" in keys
    assert "model.tower_arch.towers.1.interaction.plan_towers.0.projection.linear.weight" in keys
    assert "model.over_arch.model.1.weight" in keys
    # Tables tower after tower, each in the plan's in-tower order (the EBC's output order).
    names = [c.name for c in dmt.model.tower_arch.towers[0].embedding.embedding_bag_configs()]
    assert names == ["t_f5", "t_f1", "t_f2", "t_f4"]
    assert [g.interaction.tower_indices for g in dmt.model.tower_arch.towers] == [[1, 2], [0]]


def test_grouped_towers_compute_each_tower_module_on_its_own_features():
    """A group's output is, tower by tower, the tower module applied to that tower's embeddings."""
    flat = _flat()
    dmt = transform(flat, PLAN, tower_module=TowerModuleConfig(kind="dot", compression=2))
    b = _batch()
    group = dmt.model.tower_arch.towers[0]
    kt = group.embedding(b.sparse_features)
    with torch.no_grad():
        for p in group.interaction.parameters():
            p.uniform_(-0.5, 0.5)  # nothing at its (isometric) init, so a wrong split would show
        expected = torch.cat(
            [
                group.interaction.plan_towers[str(t)](KeyedTensor.from_tensor_list(list(fs), [kt[f] for f in fs]))
                for t, fs in group.interaction.tower_features.items()
            ],
            dim=1,
        )
        torch.testing.assert_close(group.interaction(kt), expected, rtol=0, atol=0)
        # Keys out of order are put back in the group's order first.
        shuffled = KeyedTensor.from_tensor_list(kt.keys()[::-1], [kt[f] for f in kt.keys()[::-1]])
        torch.testing.assert_close(group.interaction(shuffled), expected, rtol=0, atol=0)


def test_bare_dlrm_gives_bare_dmt_model():
    flat = _flat()
    dmt = transform(flat.model, PLAN)
    assert isinstance(dmt, DMTModel)
    b = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            dmt(b.dense_features, b.sparse_features), flat.model(b.dense_features, b.sparse_features), rtol=0, atol=0
        )


def test_plan_in_flat_order_needs_no_reorder():
    plan = TowerPlan.from_groups([FEATURES[:2], FEATURES[2:]], num_hosts=2)
    assert transform(_flat(), plan).model.column_blocks is None


@pytest.mark.parametrize("kind", ["linear", "dot", "dcn"])
def test_compressing_towers_build_a_fresh_over_arch(kind):
    flat = _flat()
    cfg = TowerModuleConfig(kind=kind, compression=2)
    dmt = transform(flat, PLAN, tower_module=cfg)
    assert dmt.model.column_blocks is None
    k = [m.num_outputs for g in dmt.model.tower_arch.towers for m in g.interaction.plan_towers.values()]
    assert k == [2, 1, 1]  # plan towers b, c (host 0), a (host 1): round-half-up of 3/2, 1/2, 2/2
    linears = [m for m in dmt.model.over_arch.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [16, 1]  # the flat hidden sizes
    assert linears[0].in_features == dmt.model.inter_arch.output_dim == 8 + 4 + 6
    loss, (_, logits, _) = dmt(_batch())
    loss.backward()
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    # Tables are still the flat model's.
    flat_tables = flat.model.sparse_arch.embedding_bag_collection.embedding_bags
    assert torch.equal(
        dmt.model.tower_arch.towers[1].embedding.embedding_bags["t_f3"].weight, flat_tables["t_f3"].weight
    )


def test_other_global_interaction_builds_a_fresh_over_arch():
    flat = _flat()
    dmt = transform(flat, PLAN, global_interaction=GlobalInteractionConfig(kind="concat"))
    first = next(m for m in dmt.model.over_arch.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == (6 + 1) * 8
    assert torch.isfinite(dmt(_batch())[0])


def test_flat_global_interaction():
    assert flat_global_interaction(_flat("dlrm").model) == GlobalInteractionConfig(kind="dot")
    assert flat_global_interaction(_flat("dlrm_dcn").model) == GlobalInteractionConfig(
        kind="dcn", num_cross_layers=2, cross_rank=4
    )


@pytest.mark.parametrize(
    "groups, match",
    [
        ([FEATURES[:3], FEATURES[3:5]], r"missing features \['f5'\]"),
        ([FEATURES[:3], (*FEATURES[3:], "zz")], r"unknown features \['zz'\]"),
    ],
    ids=["missing", "unknown"],
)
def test_mismatched_plan_is_a_plan_error(groups, match):
    with pytest.raises(PlanError, match=match):
        transform(_flat(), TowerPlan.from_groups(groups, num_hosts=2))


def test_shared_table_cannot_be_split():
    from torchrec.models.dlrm import DLRM
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="shared", embedding_dim=8, num_embeddings=10, feature_names=["x", "y"]),
            EmbeddingBagConfig(name="t_z", embedding_dim=8, num_embeddings=10, feature_names=["z"]),
        ]
    )
    flat = DLRMTrain(
        DLRM(
            embedding_bag_collection=ebc, dense_in_features=4, dense_arch_layer_sizes=[8], over_arch_layer_sizes=[4, 1]
        )
    )
    with pytest.raises(PlanError, match="shared"):
        transform(flat, TowerPlan.from_groups([["x", "z"], ["y"]], num_hosts=2))
    # Together in one tower it works; the shared table keeps its features' order.
    dmt = transform(flat, TowerPlan.from_groups([["z"], ["y", "x"]], num_hosts=2))
    assert [c.name for c in dmt.model.tower_arch.towers[1].embedding.embedding_bag_configs()] == ["shared"]


def test_not_a_dlrm_is_a_dmt_error():
    with pytest.raises(DmtError, match="DLRMTrain, DLRM or DLRM_DCN"):
        transform(torch.nn.Linear(2, 2), PLAN)


def test_meta_tables():
    dmt = transform(_flat(device="meta"), PLAN)
    assert all(p.is_meta for t in dmt.model.tower_arch.towers for p in t.embedding.parameters())
    assert not any(p.is_meta for p in dmt.model.over_arch.parameters())


def test_fully_meta_model_then_to_empty_and_init_weights():
    with torch.device("meta"):
        flat = _flat("dlrm_dcn")
    dmt = transform(flat, PLAN, tower_module=TowerModuleConfig(kind="dot", compression=2))
    assert all(p.is_meta for p in dmt.parameters())
    dmt = dmt.to_empty(device="cpu")
    dmt.init_weights()
    with torch.no_grad():  # (EBC.reset_parameters is a no-op for an EBC built on meta)
        for p in dmt.model.tower_arch.parameters():
            p.uniform_(-0.1, 0.1)
    loss, (_, logits, _) = dmt(_batch())
    assert torch.isfinite(loss) and torch.isfinite(logits).all()


def test_index_to_blocks_round_trip():
    x = torch.arange(20.0).reshape(2, 10)
    index = [4, 5, 6, 0, 1, 9, 2, 3, 7, 8]
    assert torch.equal(permute_columns(x, index_to_blocks(index)), x[:, index])
    assert permute_columns(x, None) is x
