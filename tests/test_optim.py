"""Optimizer groups: tables, dense parts and tower modules each get their own rate."""

from __future__ import annotations

import pytest
import torch

from dmt.errors import DmtError
from dmt.model.flat import ModelConfig, build_flat_model
from dmt.model.transform import transform
from dmt.plan import TowerPlan
from dmt.train.optim import OptimConfig, build_optimizer, is_tower_module_parameter
from towers import TowerModuleConfig

FEATURES = [f"cat_{i}" for i in range(26)]


def _dmt(kind: str = "linear"):
    torch.manual_seed(0)
    plan = TowerPlan.from_groups([FEATURES[:13], FEATURES[13:]], num_hosts=2)
    compression = 2.0 if kind != "identity" else 1.0
    return transform(
        build_flat_model(ModelConfig.preset("debug")),
        plan,
        tower_module=TowerModuleConfig(kind=kind, compression=compression),
    )


def test_tower_module_parameters_are_recognised_sharded_and_unsharded():
    assert is_tower_module_parameter("model.tower_arch.towers.3.interaction.projection.linear.weight")
    assert is_tower_module_parameter(
        "_dmp_wrapped_module.model.tower_arch.interactions.1.module.projection.linear.bias"
    )
    assert not is_tower_module_parameter("model.tower_arch.towers.3.embedding.embedding_bags.t_cat_0.weight")
    assert not is_tower_module_parameter("model.over_arch.model.0._mlp.0._linear.weight")


def test_tower_modules_step_at_the_tower_rate():
    model = _dmt()
    cfg = OptimConfig(sparse="sgd", dense="sgd", sparse_lr=0.1, dense_lr=0.1, tower_lr=0.01)
    optimizer = build_optimizer(model, cfg)
    named = dict(model.named_parameters())
    tower_names = {n for n in named if is_tower_module_parameter(n)}
    assert tower_names, "the linear towers have parameters"
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in named.values():
        p.grad = torch.ones_like(p)
    optimizer.step()
    for name, p in named.items():
        expected = 0.01 if name in tower_names else 0.1  # SGD: each entry moves by exactly lr * 1
        torch.testing.assert_close(before[name] - p.detach(), torch.full_like(p, expected), msg=name)


def test_flat_models_have_no_tower_group():
    """An empty tower optimizer would still be a key in every flat checkpoint; DMT models get one."""
    flat = build_optimizer(build_flat_model(ModelConfig.preset("debug")), OptimConfig())
    dmt = build_optimizer(_dmt(), OptimConfig())
    assert [name for name, _ in flat.optimizers] == ["sparse", "dense"]
    assert [name for name, _ in dmt.optimizers] == ["sparse", "dense", "towers"]


def test_bad_tower_rate_is_refused():
    with pytest.raises(DmtError, match="tower_lr"):
        OptimConfig(tower_lr=0.0)


def test_presets_bring_their_rates_and_flags_override_them():
    assert OptimConfig.for_preset("small") == OptimConfig(sparse="adagrad")  # tables: see PRESET_RATES
    assert OptimConfig.for_preset("debug") == OptimConfig()
    wide = OptimConfig.for_preset("criteo")
    assert (wide.dense_lr, wide.tower_lr, wide.sparse_lr) == (0.005, 0.002, OptimConfig().sparse_lr)
    assert OptimConfig.for_preset("mlperf_dcnv2", dense_lr=0.01, tower_lr=None).dense_lr == 0.01
    assert OptimConfig.for_preset("mlperf_dcnv2", dense_lr=0.01, tower_lr=None).tower_lr == 0.002
    mlperf = OptimConfig.for_preset("mlperf_dcnv2")  # the tables as MLPerf's reference trains them
    assert (mlperf.sparse, mlperf.sparse_lr) == ("adagrad", 0.005)


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], ("adagrad", 0.005, 0.005)),
        (["--sparse-optimizer", "rowwise_adagrad", "--lr", "0.05"], ("rowwise_adagrad", 0.05, 0.005)),
    ],
)
def test_train_cli_takes_the_presets_table_optimizer_unless_told(tmp_path, flags, expected):
    from dmt.cli.main import build_parser
    from dmt.cli.train import job_config

    argv = ["train", "--data", str(tmp_path / "d.tsv"), "--out", str(tmp_path / "o"), "--preset", "mlperf_dcnv2"]
    optim = job_config(build_parser().parse_args([*argv, "--row-cap", "100", *flags])).optim
    assert (optim.sparse, optim.sparse_lr, optim.dense_lr) == expected
