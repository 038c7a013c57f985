"""Tower modules: output widths, the compression rule, gradients and the identity-at-init property."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from towers import (
    TOWER_KINDS,
    TowerModuleConfig,
    build_tower_module,
    group_isometry,
    num_tower_outputs,
)
from towers.config import DOT_WEIGHT_INIT

B, D = 3, 4

# One config per kind, with the knobs that change the module's structure switched on.
KIND_CONFIGS = {
    "identity": {},
    "linear": {},
    "mlp": {"hidden": (8, 6)},
    "dot": {"hidden": (8,)},
    "dcn": {"num_cross_layers": 2},
    "dcn_lowrank": {"num_cross_layers": 2, "cross_rank": 3, "hidden": (8,)},
}


def _config(name: str, compression: float) -> TowerModuleConfig:
    kind = name.split("_")[0]
    c = 1.0 if kind == "identity" else compression
    return TowerModuleConfig(kind=kind, compression=c, **KIND_CONFIGS[name])


def _kt(num_features: int, requires_grad: bool = False, seed: int = 0) -> KeyedTensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(B, num_features * D, generator=g, requires_grad=requires_grad)
    keys = [f"f{i}" for i in range(num_features)]
    return KeyedTensor(keys=keys, length_per_key=[D] * num_features, values=values)


@pytest.mark.parametrize("c", [1, 2, 4, 8])
@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_output_shape_and_sizes(name: str, c: int) -> None:
    num_features = 8
    tower = build_tower_module(num_features, D, _config(name, c))
    k = num_features if name == "identity" else num_features // c
    assert (tower.num_outputs, tower.embedding_dim, tower.output_dim) == (k, D, k * D)
    assert tower(_kt(num_features)).shape == (B, k * D)


@pytest.mark.parametrize(
    "num_features, c, expected",
    [(8, 1, 8), (8, 3, 3), (5, 2, 3), (3, 2, 2), (6, 4, 2), (5, 4, 1), (5, 8, 1), (1, 16, 1), (7, 1.5, 5)],
)
def test_compression_rule_rounds_half_up_and_keeps_one(num_features: int, c: float, expected: int) -> None:
    assert num_tower_outputs(num_features, c) == expected
    tower = build_tower_module(num_features, D, TowerModuleConfig(kind="linear", compression=c))
    assert tower.output_dim == expected * D


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_gradients_reach_all_parameters_and_inputs(name: str) -> None:
    torch.manual_seed(0)
    tower = build_tower_module(6, D, _config(name, 2))
    kt = _kt(6, requires_grad=True)
    weights = torch.randn(B, tower.output_dim)
    opt = torch.optim.SGD(tower.parameters(), lr=0.1) if list(tower.parameters()) else None
    # Zero-initialised last factors pass gradients to earlier layers from the second step on.
    for _ in range(2):
        if opt is not None:
            opt.zero_grad()
        kt.values().grad = None
        (tower(kt) * weights).sum().backward()
        if opt is not None:
            opt.step()
    assert kt.values().grad is not None and kt.values().grad.abs().sum() > 0
    for pname, p in tower.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


@pytest.mark.parametrize("name", list(KIND_CONFIGS))
def test_every_kind_starts_as_identity_at_c1(name: str) -> None:
    # At c=1 every tower starts exactly as concatenation, so DMT starts exactly as the flat model.
    kt = _kt(5)
    tower = build_tower_module(5, D, _config(name, 1))
    torch.testing.assert_close(tower(kt), kt.values(), rtol=0, atol=0)


@pytest.mark.parametrize("num_features, num_outputs", [(8, 4), (5, 2), (7, 3), (4, 1)])
def test_projection_init_is_a_partial_isometry(num_features: int, num_outputs: int) -> None:
    w = group_isometry(num_features, num_outputs, D)
    assert w.shape == (num_outputs * D, num_features * D)
    torch.testing.assert_close(w @ w.T, torch.eye(num_outputs * D))
    # Per-dimension group sums: output j, dim d only reads dim d of the features of group j.
    groups = group_isometry(num_features, num_outputs, 1)
    torch.testing.assert_close(w, torch.kron(groups, torch.eye(D)))


@pytest.mark.parametrize("kind", ["linear", "mlp", "dcn"])
def test_compressing_tower_starts_at_the_isometry(kind: str) -> None:
    kt = _kt(8)
    hidden = (8,) if kind == "mlp" else ()
    tower = build_tower_module(8, D, TowerModuleConfig(kind=kind, compression=2, hidden=hidden))
    expected = kt.values() @ group_isometry(8, 4, D).T
    torch.testing.assert_close(tower(kt), expected)


def test_dot_tower_starts_at_the_isometry_plus_a_small_random_map_of_the_dots() -> None:
    """The dot columns start random, not 0: otherwise no gradient reaches the embeddings through the
    in-tower dots until their weights have grown (a saddle; towers.modules.DOT_WEIGHT_INIT)."""
    torch.manual_seed(0)
    f, pairs = 8, 8 * 7 // 2
    tower = build_tower_module(f, D, TowerModuleConfig(kind="dot", compression=2, hidden=(8,)))
    weight = tower.projection.linear.weight
    torch.testing.assert_close(weight[:, : f * D], group_isometry(f, 4, D))
    dot_weights = weight[:, f * D :]
    assert dot_weights.shape == (4 * D, pairs)
    assert dot_weights.std().item() == pytest.approx(DOT_WEIGHT_INIT / pairs**0.5, rel=0.2)

    # Swapping two features of one isometry group keeps the group sums but moves their pairs' dots:
    # the output changes, and the embeddings get a gradient through the dots at step 0.
    kt = _kt(f, requires_grad=True)
    x = kt.values().detach().view(B, f, D)
    swapped = x[:, [1, 0, *range(2, f)]].reshape(B, f * D)
    moved = tower(KeyedTensor(keys=kt.keys(), length_per_key=[D] * f, values=swapped))
    assert not torch.allclose(tower(kt), moved)
    upstream = torch.randn(B, 4 * D)
    (tower(kt) * upstream).sum().backward()
    through_dots = kt.values().grad - upstream @ group_isometry(f, 4, D)
    assert through_dots.abs().max().item() > 1e-3


def test_dot_init_zero_starts_the_dot_columns_at_zero() -> None:
    """``dot_init=0`` is the earlier init (benchmarks/learning_setups' "dot0" variants)."""
    tower = build_tower_module(8, D, TowerModuleConfig(kind="dot", compression=2, dot_init=0.0))
    assert tower.projection.linear.weight[:, 8 * D :].abs().max().item() == 0.0
    kt = _kt(8)
    torch.testing.assert_close(tower(kt), kt.values() @ group_isometry(8, 4, D).T)


def test_identity_keeps_key_order() -> None:
    a, b = torch.full((B, D), 1.0), torch.full((B, D), 2.0)
    kt = KeyedTensor.from_tensor_list(["b", "a"], [b, a])
    tower = build_tower_module(2, D, TowerModuleConfig())
    torch.testing.assert_close(tower(kt), torch.cat([b, a], dim=1))


def test_wrong_input_width_names_the_keys() -> None:
    tower = build_tower_module(3, D, TowerModuleConfig(kind="linear", compression=2))
    with pytest.raises(ValueError, match=r"expects 3 features of dim 4.*'f0', 'f1'"):
        tower(_kt(2))


def test_all_kinds_covered() -> None:
    assert {n.split("_")[0] for n in KIND_CONFIGS} == set(TOWER_KINDS)
