"""Global interactions, and exact equivalence of identity towers with the flat torchrec DLRM."""

from __future__ import annotations

import pytest
import torch
from torchrec.models.dlrm import InteractionArch, InteractionDCNArch, SparseArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt.plan import TowerPlan
from towers import (
    GlobalInteractionConfig,
    TowerConfigError,
    TowerModuleConfig,
    build_global_interaction,
    build_tower_modules,
    feature_order_permutation,
)
from towers.interaction import GlobalDotInteraction

B, D = 4, 8
FLAT_FEATURES = [f"cat_{i}" for i in range(6)]
# Towers deliberately out of flat order, across two hosts.
PLAN = TowerPlan.from_groups([["cat_4", "cat_0", "cat_2"], ["cat_5"], ["cat_1", "cat_3"]], num_hosts=2)


def _flat_sparse_arch() -> tuple[SparseArch, KeyedJaggedTensor]:
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t_{f}", embedding_dim=D, num_embeddings=10, feature_names=[f])
            for f in FLAT_FEATURES
        ]
    )
    lengths = torch.randint(0, 3, (len(FLAT_FEATURES) * B,))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=FLAT_FEATURES, values=torch.randint(0, 10, (int(lengths.sum()),)), lengths=lengths
    )
    return SparseArch(ebc), kjt


def _tower_inputs(kt: KeyedTensor) -> list[KeyedTensor]:
    """Split the flat KeyedTensor into one KeyedTensor per tower, keys in tower order."""
    return [KeyedTensor.from_tensor_list(list(t.features), [kt[f] for f in t.features]) for t in PLAN.towers]


def _identity_outputs_in_flat_order() -> tuple[torch.Tensor, torch.Tensor]:
    """(identity towers' outputs reordered to flat order [B, F*D], flat SparseArch output [B, F, D])."""
    sparse_arch, kjt = _flat_sparse_arch()
    flat = sparse_arch(kjt)
    towers = build_tower_modules(PLAN, TowerModuleConfig(kind="identity"), embedding_dim=D)
    kt = sparse_arch.embedding_bag_collection(kjt)
    outputs = torch.cat([m(x) for m, x in zip(towers, _tower_inputs(kt))], dim=1)  # plan order
    return outputs[:, feature_order_permutation(PLAN.features, FLAT_FEATURES, D)], flat


def test_identity_towers_reproduce_the_flat_interaction_input() -> None:
    ordered, flat = _identity_outputs_in_flat_order()
    torch.testing.assert_close(ordered, flat.reshape(B, -1), rtol=0, atol=0)


def test_global_dot_on_identity_towers_equals_torchrec_interaction_arch() -> None:
    ordered, flat = _identity_outputs_in_flat_order()
    dense = torch.randn(B, D)
    expected = InteractionArch(num_sparse_features=len(FLAT_FEATURES))(dense, flat)
    inter = build_global_interaction(GlobalInteractionConfig(), num_tower_outputs=6, embedding_dim=D)
    got = inter(dense, ordered)
    assert got.shape == (B, inter.output_dim) == (B, D + 6 + 15)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_feature_order_permutation() -> None:
    perm = feature_order_permutation(["b", "c", "a"], ["a", "b", "c"], 2)
    assert perm.tolist() == [4, 5, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="same features"):
        feature_order_permutation(["a", "b"], ["a", "c"], 2)
    with pytest.raises(ValueError, match="same features"):
        feature_order_permutation(["a", "a"], ["a", "a"], 2)


GLOBAL_CONFIGS = [
    GlobalInteractionConfig(kind="dot"),
    GlobalInteractionConfig(kind="dcn", num_cross_layers=2),
    GlobalInteractionConfig(kind="dcn", cross_rank=3),
    GlobalInteractionConfig(kind="concat"),
    GlobalInteractionConfig(kind="concat", hidden=(16, 5)),
]


@pytest.mark.parametrize("config", GLOBAL_CONFIGS, ids=lambda c: f"{c.kind}-{c.cross_rank}-{len(c.hidden)}")
def test_global_interaction_shapes_and_gradients(config: GlobalInteractionConfig) -> None:
    k = 5
    inter = build_global_interaction(config, num_tower_outputs=k, embedding_dim=D)
    assert inter.output_dim == config.output_dim(k, D)
    dense = torch.randn(B, D, requires_grad=True)
    towers = torch.randn(B, k * D, requires_grad=True)
    out = inter(dense, towers)
    assert out.shape == (B, inter.output_dim)
    (out * torch.randn_like(out)).sum().backward()
    for t in (dense, towers, *inter.parameters()):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_global_output_dims_by_hand() -> None:
    k, d = 5, 8
    assert GlobalInteractionConfig(kind="dot").output_dim(k, d) == 8 + 5 + 10
    assert GlobalInteractionConfig(kind="dcn").output_dim(k, d) == 48
    assert GlobalInteractionConfig(kind="concat").output_dim(k, d) == 48
    assert GlobalInteractionConfig(kind="concat", hidden=(16, 5)).output_dim(k, d) == 5


def test_global_dcn_on_identity_towers_equals_torchrec_dcn_arch() -> None:
    ordered, flat = _identity_outputs_in_flat_order()
    dense = torch.randn(B, D)
    config = GlobalInteractionConfig(kind="dcn", num_cross_layers=2, cross_rank=4)
    inter = build_global_interaction(config, num_tower_outputs=6, embedding_dim=D)
    reference = InteractionDCNArch(6, LowRankCrossNet(7 * D, num_layers=2, low_rank=4))
    reference.load_state_dict(inter.arch.state_dict())  # same parameter names under `arch.`
    torch.testing.assert_close(inter(dense, ordered), reference(dense, flat), rtol=0, atol=0)


def test_global_flops_by_hand() -> None:
    def build(**kw: object) -> torch.nn.Module:
        return build_global_interaction(GlobalInteractionConfig(**kw), num_tower_outputs=3, embedding_dim=4)

    assert build(kind="dot").flops_per_sample() == 2 * 4 * 4 * 4  # (K+1)^2 dots of length D
    assert build(kind="dcn", num_cross_layers=2).flops_per_sample() == 2 * 2 * 16 * 16
    assert build(kind="dcn", cross_rank=2).flops_per_sample() == 2 * (16 * 2 + 2 * 16)
    assert build(kind="concat", hidden=(6, 2)).flops_per_sample() == 2 * (16 * 6 + 6 * 2)


@pytest.mark.parametrize("config", GLOBAL_CONFIGS, ids=lambda c: f"{c.kind}-{c.cross_rank}-{len(c.hidden)}")
def test_global_interaction_meta_construction(config: GlobalInteractionConfig) -> None:
    with torch.device("meta"):
        inter = build_global_interaction(config, num_tower_outputs=3, embedding_dim=D)
    assert all(t.is_meta for t in [*inter.parameters(), *inter.buffers()])
    inter.to_empty(device="cpu")
    inter.init_weights()
    torch.manual_seed(0)
    dense, towers = torch.randn(B, D), torch.randn(B, 3 * D)
    out = inter(dense, towers)
    assert out.shape == (B, config.output_dim(3, D)) and torch.isfinite(out).all()
    if config.kind == "dot":
        expected = InteractionArch(num_sparse_features=3)(dense, towers.view(B, 3, D))
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_dot_options_add_self_dots_and_raw_towers():
    k, d, b = 3, 4, 5
    torch.manual_seed(0)
    dense, towers = torch.randn(b, d), torch.randn(b, k * d)
    plain = GlobalDotInteraction(k, d)
    full = GlobalDotInteraction(k, d, self_dots=True, raw_towers=True)
    out = full(dense, towers)
    assert out.shape == (b, full.output_dim) == (b, plain.output_dim + (k + 1) + k * d)
    assert torch.equal(out[:, :d], dense) and torch.equal(out[:, d : d + k * d], towers)
    vectors = torch.cat([dense.unsqueeze(1), towers.view(b, k, d)], dim=1)
    gram = vectors @ vectors.transpose(1, 2)
    rows, cols = torch.triu_indices(k + 1, k + 1, offset=0)
    torch.testing.assert_close(out[:, d + k * d :], gram[:, rows, cols])
    # The off-diagonal dots are exactly the plain (torchrec InteractionArch) ones, in the same order.
    off = rows != cols
    torch.testing.assert_close(out[:, d + k * d :][:, off], plain(dense, towers)[:, d:])


def test_dot_options_survive_meta_construction():
    with torch.device("meta"):
        inter = GlobalDotInteraction(2, 4, self_dots=True)
    inter.to_empty(device="cpu")
    inter.init_weights()
    assert inter(torch.ones(1, 4), torch.ones(1, 8)).shape == (1, inter.output_dim)


def test_dot_options_only_apply_to_dot():
    with pytest.raises(TowerConfigError, match="self_dots"):
        GlobalInteractionConfig(kind="dcn", self_dots=True)
    with pytest.raises(TowerConfigError, match="raw_towers"):
        GlobalInteractionConfig(kind="dot", raw_towers="yes")
    cfg = GlobalInteractionConfig.hierarchical()
    assert GlobalInteractionConfig.from_dict(cfg.to_dict()) == cfg
