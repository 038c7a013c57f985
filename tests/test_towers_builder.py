"""Builder and reports (hand-computed numbers), meta-device construction, and config validation."""

from __future__ import annotations

import json

import pytest
import torch
from torchrec.models.dlrm import InteractionArch
from torchrec.sparse.jagged_tensor import KeyedTensor

from dmt.plan import TowerPlan
from towers import (
    GlobalInteractionConfig,
    TowerConfigError,
    TowerModuleConfig,
    build_global_interaction,
    build_tower_modules,
    format_tower_report,
    tower_reports,
)

# A 4-feature tower and a 2-feature tower of dim 4: small enough to count by hand.
PLAN = TowerPlan.from_groups([["a", "b", "c", "d"], ["e", "f"]], num_hosts=2)
D = 4


# Each case: config -> per tower (outputs, params, FLOPs/sample, output bytes/sample at fp32).
HAND_COUNTS = {
    # F=4: Linear(16 -> 8): 16*8 + 8 params, 2*16*8 FLOPs. F=2: Linear(8 -> 4): 8*4 + 4, 2*8*4.
    "linear": (TowerModuleConfig(kind="linear", compression=2), [(2, 136, 256, 32), (1, 36, 64, 16)]),
    # F=4: 6 dots -> z of 16 + 6 = 22. Skip Linear(22 -> 8) 184 params; MLP 22->8->8: 184 + 72.
    #   FLOPs: bmm 2*4*4*4 = 128, skip 2*22*8 = 352, MLP 2*22*8 + 2*8*8 = 480 -> 960.
    # F=2: 1 dot -> z of 9. Skip Linear(9 -> 4) 40; MLP 9->8->4: 80 + 36 -> 156 params.
    #   FLOPs: bmm 2*2*2*4 = 32, skip 2*9*4 = 72, MLP 2*9*8 + 2*8*4 = 208 -> 312.
    "dot": (
        TowerModuleConfig(kind="dot", compression=2, hidden=(8,)),
        [(2, 440, 960, 32), (1, 156, 312, 16)],
    ),
    # F=2, N=8, 2 full-rank layers: 2*(8*8 + 8) = 144 params, 2*2*64 = 256 FLOPs; projection 8 -> 4.
    # F=4, N=16: 2*(256 + 16) = 544 params, 2*2*256 = 1024 FLOPs; projection 16 -> 8.
    "dcn": (
        TowerModuleConfig(kind="dcn", compression=2, num_cross_layers=2),
        [(2, 544 + 136, 1024 + 256, 32), (1, 144 + 36, 256 + 64, 16)],
    ),
    # Low rank 3, N=16: W 16x3 + V 3x16 + bias 16 = 112 params, 2*(16*3 + 3*16) = 192 FLOPs.
    # N=8: 24 + 24 + 8 = 56 params, 2*(8*3 + 3*8) = 96 FLOPs.
    "dcn_lowrank": (
        TowerModuleConfig(kind="dcn", compression=2, cross_rank=3),
        [(2, 112 + 136, 192 + 256, 32), (1, 56 + 36, 96 + 64, 16)],
    ),
    "identity": (TowerModuleConfig(), [(4, 0, 0, 64), (2, 0, 0, 32)]),
}


@pytest.mark.parametrize("name", list(HAND_COUNTS))
def test_reports_match_hand_counts(name: str) -> None:
    config, expected = HAND_COUNTS[name]
    reports = tower_reports(PLAN, build_tower_modules(PLAN, config, embedding_dim=D))
    got = [(r.num_outputs, r.num_params, r.flops_per_sample, r.output_bytes_per_sample) for r in reports]
    assert got == expected
    assert [r.input_bytes_per_sample for r in reports] == [64, 32]
    assert [r.name for r in reports] == ["tower_0", "tower_1"]


def test_report_element_size_and_table() -> None:
    modules = build_tower_modules(PLAN, TowerModuleConfig(kind="linear", compression=4), embedding_dim=D)
    reports = tower_reports(PLAN, modules, element_size=2)  # bf16
    assert [r.output_bytes_per_sample for r in reports] == [8, 8]  # k = 1 and 1 (2/4 rounds to 1)
    assert [r.compression for r in reports] == [4.0, 2.0]
    table = format_tower_report(reports)
    assert table.splitlines()[2] == "| tower_0 | ProjectionTower | 4 | 1 | 68 | 128 | 32 | 8 | 4.00 |"
    assert table.splitlines()[-1] == "| total | | 6 | 2 | 104 | 192 | 48 | 16 | 3.00 |"
    with pytest.raises(ValueError, match="2 towers"):
        tower_reports(PLAN, modules[:1])


@pytest.mark.parametrize("name", list(HAND_COUNTS))
def test_meta_construction_then_to_empty_and_init(name: str) -> None:
    config, _ = HAND_COUNTS[name]
    if config.compression != 1:
        config = TowerModuleConfig(**{**config.to_dict(), "compression": 1})
    with torch.device("meta"):
        towers = build_tower_modules(PLAN, config, embedding_dim=D)
        inter = build_global_interaction(GlobalInteractionConfig(), num_tower_outputs=6, embedding_dim=D)
    assert all(p.is_meta for p in towers.parameters())
    # Reports need no data, so they work on meta and agree with a real build.
    real = tower_reports(PLAN, build_tower_modules(PLAN, config, embedding_dim=D))
    assert tower_reports(PLAN, towers) == real

    towers.to_empty(device="cpu")
    inter.to_empty(device="cpu")
    for m in [*towers, inter]:
        m.init_weights()
    # Initialised for real: at c=1 every kind is the identity, and the global dot is torchrec's.
    kts = [
        KeyedTensor.from_tensor_list(list(t.features), list(torch.randn(len(t.features), 3, D))) for t in PLAN.towers
    ]
    outs = torch.cat([m(kt) for m, kt in zip(towers, kts)], dim=1)
    torch.testing.assert_close(outs, torch.cat([kt.values() for kt in kts], dim=1), rtol=0, atol=0)
    dense = torch.randn(3, D)
    expected = InteractionArch(num_sparse_features=6)(dense, outs.view(3, 6, D))
    torch.testing.assert_close(inter(dense, outs), expected, rtol=0, atol=0)


def test_config_json_round_trip() -> None:
    for cfg in [
        TowerModuleConfig(),
        TowerModuleConfig(kind="mlp", compression=2.5, hidden=(64, 32)),
        TowerModuleConfig(kind="dcn", compression=16, num_cross_layers=3, cross_rank=8),
    ]:
        assert TowerModuleConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    g = GlobalInteractionConfig(kind="concat", hidden=(128,))
    assert GlobalInteractionConfig.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    # CLI strings and JSON lists land on the same config.
    assert TowerModuleConfig(kind="mlp", hidden="64,32") == TowerModuleConfig(kind="mlp", hidden=[64, 32])
    assert TowerModuleConfig(kind="linear", compression=4).compression == 4.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "transformer"}, "kind='transformer'"),
        ({"kind": "linear", "compression": 0.5}, "compression=0.5"),
        ({"kind": "linear", "compression": float("nan")}, "compression=nan"),
        ({"kind": "linear", "compression": True}, "compression=True"),
        ({"kind": "identity", "compression": 2}, "compression=2"),
        ({"kind": "linear", "hidden": (8,)}, r"hidden=\[8\]"),
        ({"kind": "mlp"}, "needs hidden"),
        ({"kind": "mlp", "hidden": (8, 0)}, "hidden width.*=0"),
        ({"kind": "mlp", "hidden": "8,x"}, "hidden='8,x'"),
        ({"kind": "dot", "cross_rank": 4}, "cross_rank=4"),
        ({"kind": "dcn", "num_cross_layers": 0}, "num_cross_layers=0"),
        ({"kind": "dcn", "cross_rank": -1}, "cross_rank=-1"),
        ({"kind": "dot", "dot_init": -0.1}, "dot_init=-0.1"),
        ({"kind": "dot", "dot_init": float("inf")}, "dot_init=inf"),
        ({"kind": "linear", "compression": 2, "dot_init": 0.3}, "dot_init=0.3 only applies to kind='dot'"),
    ],
)
def test_bad_tower_config_names_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TowerModuleConfig(**kwargs)


def test_bad_dicts_and_global_configs() -> None:
    with pytest.raises(TowerConfigError, match=r"unknown TowerModuleConfig keys \['ratio'\]"):
        TowerModuleConfig.from_dict({"kind": "linear", "ratio": 2})
    with pytest.raises(ValueError, match="kind='dlrm'"):
        GlobalInteractionConfig(kind="dlrm")
    with pytest.raises(ValueError, match=r"hidden=\[8\] only applies"):
        GlobalInteractionConfig(kind="dot", hidden=(8,))
    with pytest.raises(ValueError, match="embedding_dim=0"):
        build_tower_modules(PLAN, TowerModuleConfig(), embedding_dim=0)
