"""SPTT, the Semantic-preserving Tower Transform: a flat torchrec DLRM -> a DMT model.

The flat model looks up every table in one ``EmbeddingBagCollection`` and interacts all pooled
embeddings at once. The transform splits the tables into the plan's towers and groups the towers
by host: each host that holds towers gets one ``EmbeddingTower(EmbeddingBagCollection of its
towers' tables, TowerGroup of their tower modules)`` inside one ``EmbeddingTowerCollection`` (so
torchrec's tower sharder places it on that host and does one lookup there), then a global
interaction over the dense vector and the tower outputs, then the over-arch.

With identity tower modules and the flat model's interaction kind, the transformed model computes
*exactly* the flat model: same tables, same dense/interaction/over weights, and the tower outputs
reordered into the flat feature order. Anything else changes the model on purpose (that is what
tower modules are for) and starts the new dense parts from their own init.

Example:
    >>> from dmt.model.flat import ModelConfig, build_flat_model
    >>> cfg = ModelConfig.preset("debug", sparse_features=("a", "b", "c"), num_embeddings=(10,) * 3)
    >>> flat = build_flat_model(cfg)
    >>> plan = TowerPlan.from_groups([["c", "a"], ["b"]], num_hosts=2)
    >>> dmt_model = transform(flat, plan)
    >>> [[c.name for c in t.embedding.embedding_bag_configs()] for t in dmt_model.model.tower_arch.towers]
    [['t_c', 't_a'], ['t_b']]
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRMTrain, InteractionArch, InteractionDCNArch, OverArch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection

from dmt.errors import DmtError
from dmt.model.dmt import ColumnBlocks, DMTModel, DMTTrain, index_to_blocks
from dmt.plan import PlanError, TowerPlan
from towers import (
    GlobalInteractionConfig,
    TowerGroup,
    TowerModuleConfig,
    build_global_interaction,
    build_tower_modules,
    feature_order_permutation,
)

__all__ = ["flat_global_interaction", "tables_in_lookup_order", "transform"]


def transform(
    model: DLRMTrain | DLRM,
    plan: TowerPlan,
    *,
    tower_module: TowerModuleConfig = TowerModuleConfig(),
    global_interaction: GlobalInteractionConfig | None = None,
) -> DMTTrain | DMTModel:
    """Rewrite a flat torchrec ``DLRMTrain`` / ``DLRM`` / ``DLRM_DCN`` into a DMT model.

    Does **not** mutate ``model``: every module of the result is new or a deep copy, and tables
    are copied, so training one never changes the other. Works on models whose tables (or all
    parameters) are on the meta device: new tables are created on the flat tables' device and new
    dense modules on the flat dense arch's device; nothing is copied from meta tensors (after
    ``to_empty``, call the result's ``init_weights()``).

    What is copied:
        * every embedding table, into its tower's ``EmbeddingBagCollection`` (same name and config);
        * the dense arch, always (it is unchanged by towers);
        * the interaction weights (DCN) and the over-arch, when the tower modules are identities
          and ``global_interaction`` is the flat model's own (``None`` or equal to
          :func:`flat_global_interaction`). Then the tower outputs are reordered into the flat
          feature order and the result computes exactly the flat model. Otherwise the global
          interaction and the over-arch (same hidden sizes, new input width) are freshly built.

    Apply the in-backward (fused) embedding optimizer to the *result*, not to ``model``.

    Args:
        model: ``DLRMTrain`` wrapping ``DLRM``/``DLRM_DCN``, or the bare ``DLRM``/``DLRM_DCN``.
        plan: towers (features in lookup order) and their hosts; must cover exactly the model's
            sparse features.
        tower_module: how each tower's module is built (``towers.build_tower_modules``).
        global_interaction: the interaction over ``[dense, tower outputs]``; ``None`` uses the
            flat model's kind (dot for DLRM, the same cross network for DLRM_DCN), also for
            compressing towers: :meth:`GlobalInteractionConfig.hierarchical` (self-dots + raw
            tower vectors) is an option, but measured on 1M planted-group rows (2x1, linear
            c=4) plain dots did better (AUC 0.860 vs 0.839).

    Returns:
        ``DMTTrain`` for a ``DLRMTrain`` input, ``DMTModel`` for a bare ``DLRM``.

    Raises:
        PlanError: the plan's features differ from the model's, or a table shared by several
            features would be split across towers.
        DmtError: the model is not a supported torchrec DLRM, or its tables are weighted or of
            different widths.
    """
    dlrm = _unwrap_dlrm(model)
    ebc: EmbeddingBagCollection = dlrm.sparse_arch.embedding_bag_collection
    dim = _embedding_dim(ebc)
    flat_features = list(dlrm.sparse_arch.sparse_feature_names)
    plan.validate_features(flat_features)

    flat_inter = flat_global_interaction(dlrm)
    global_cfg = global_interaction if global_interaction is not None else flat_inter
    if global_cfg is None:
        raise DmtError(
            f"cannot derive a global interaction from {type(dlrm.inter_arch).__name__}; "
            "pass global_interaction=GlobalInteractionConfig(...)"
        )
    exact = tower_module.kind == "identity" and global_cfg == flat_inter

    table_device = next(ebc.parameters()).device
    dense_device = next(dlrm.dense_arch.parameters()).device

    towers, tower_features = _build_towers(plan, ebc, tower_module, dim, table_device, dense_device)
    num_outputs = sum(t.interaction.num_outputs for t in towers)
    inter_arch, over_arch = _build_head(dlrm, global_cfg, num_outputs, dim, dense_device, copy_flat=exact)
    dmt_model = DMTModel(
        dense_arch=copy.deepcopy(dlrm.dense_arch),
        tower_arch=EmbeddingTowerCollection(towers),
        inter_arch=inter_arch,
        over_arch=over_arch,
        plan=plan,
        column_blocks=_flat_order_blocks(tower_module, tower_features, flat_features, dim),
    )
    if isinstance(model, DLRMTrain):
        return DMTTrain(dmt_model, loss_fn=copy.deepcopy(model.loss_fn))
    return dmt_model


def _unwrap_dlrm(model: DLRMTrain | DLRM) -> DLRM:
    """The ``DLRM`` (or ``DLRM_DCN``) itself, inside a ``DLRMTrain`` or bare; DmtError for anything else."""
    dlrm = model.model if isinstance(model, DLRMTrain) else model
    if not isinstance(dlrm, DLRM):
        raise DmtError(
            f"transform expects a torchrec DLRMTrain, DLRM or DLRM_DCN, got {type(model).__name__}"
            + (f" wrapping {type(dlrm).__name__}" if dlrm is not model else "")
        )
    return dlrm


def _embedding_dim(ebc: EmbeddingBagCollection) -> int:
    """The one width of all of ``ebc``'s tables; DmtError if they differ or the EBC is weighted."""
    if ebc.is_weighted():
        raise DmtError("transform does not support weighted EmbeddingBagCollections (id scores) yet")
    dims = sorted({c.embedding_dim for c in ebc.embedding_bag_configs()})
    if len(dims) != 1:
        raise DmtError(f"every table must have the same embedding_dim for DLRM, got dims {dims}")
    return dims[0]


def _build_head(
    dlrm: DLRM,
    global_cfg: GlobalInteractionConfig,
    num_tower_outputs: int,
    dim: int,
    device: torch.device,
    *,
    copy_flat: bool,
) -> tuple[nn.Module, nn.Module]:
    """The global interaction and the over-arch on ``device``: copies of the flat model's
    (``copy_flat``: the DCN weights and the over-arch) or freshly built with the flat hidden sizes."""
    with torch.device(device):
        inter_arch = build_global_interaction(global_cfg, num_tower_outputs=num_tower_outputs, embedding_dim=dim)
        if copy_flat:
            over_arch = copy.deepcopy(dlrm.over_arch)
            if isinstance(dlrm.inter_arch, InteractionDCNArch):
                _copy_params(dlrm.inter_arch.crossnet, inter_arch.arch.crossnet)
        else:
            over_arch = OverArch(inter_arch.output_dim, _layer_sizes(dlrm.over_arch), device=device)
    return inter_arch, over_arch


def _flat_order_blocks(
    tower_module: TowerModuleConfig, tower_features: list[str], flat_features: list[str], dim: int
) -> ColumnBlocks | None:
    """``DMTModel.column_blocks`` putting identity towers' outputs back in flat order; None if no reorder."""
    if tower_module.kind != "identity":
        return None
    # Identity towers emit their features' embeddings; put them back in flat order so the
    # global interaction pairs (and the over-arch's input columns) line up with the flat model.
    index = feature_order_permutation(tower_features, flat_features, dim).tolist()
    column_blocks = index_to_blocks(index)
    return None if column_blocks == ((0, len(index)),) else column_blocks


def flat_global_interaction(dlrm: DLRM) -> GlobalInteractionConfig | None:
    """The global interaction config equivalent to ``dlrm``'s interaction, or None if there is none.

    ``InteractionArch`` -> ``kind="dot"``; ``InteractionDCNArch`` over a ``CrossNet`` /
    ``LowRankCrossNet`` -> ``kind="dcn"`` with the same layers and rank.
    """
    inter = dlrm.inter_arch
    if isinstance(inter, InteractionArch):
        return GlobalInteractionConfig(kind="dot")
    if isinstance(inter, InteractionDCNArch):
        crossnet = inter.crossnet
        if isinstance(crossnet, LowRankCrossNet):
            return GlobalInteractionConfig(
                kind="dcn", num_cross_layers=len(crossnet.bias), cross_rank=crossnet.W_kernels[0].shape[1]
            )
        if isinstance(crossnet, CrossNet):
            return GlobalInteractionConfig(kind="dcn", num_cross_layers=len(crossnet.bias), cross_rank=0)
    return None


def _build_towers(
    plan: TowerPlan,
    ebc: EmbeddingBagCollection,
    tower_module: TowerModuleConfig,
    dim: int,
    table_device: torch.device,
    dense_device: torch.device,
) -> tuple[list[EmbeddingTower], list[str]]:
    """One EmbeddingTower per host that holds towers (hosts in order): the EBC of all its towers'
    tables and a :class:`towers.TowerGroup` of their modules (see towers/group.py for why one per
    host). Returns the towers and their output feature order (host by host, plan order inside)."""
    configs = ebc.embedding_bag_configs()
    table_of = {f: c for c in configs for f in c.feature_names}
    feature_to_tower = plan.feature_to_tower
    for c in configs:
        owners = sorted({plan.towers[feature_to_tower[f]].name for f in c.feature_names})
        if len(owners) > 1:
            raise PlanError(
                f"table {c.name!r} is shared by features {list(c.feature_names)}, which the plan puts in "
                f"towers {owners}; a table cannot be split across towers: put these features in one tower"
            )
    with torch.device(dense_device):
        modules = build_tower_modules(plan, tower_module, dim)
    towers, output_order = [], []
    for host in sorted({t.host for t in plan.towers}):
        tables: list[EmbeddingBagConfig] = []
        group_modules, group_features = {}, {}
        for t in plan.towers_on_host(host):
            tower_tables = tables_in_lookup_order(plan.towers[t].features, table_of)
            tables += tower_tables
            # The EBC's output key order; the same features as the tower's, so the module fits.
            group_features[t] = [f for c in tower_tables for f in c.feature_names]
            group_modules[t] = modules[t]
        host_ebc = EmbeddingBagCollection(
            tables=[dataclasses.replace(c) for c in tables], is_weighted=False, device=table_device
        )
        if table_device.type != "meta":
            for c in tables:
                _copy_params(ebc.embedding_bags[c.name], host_ebc.embedding_bags[c.name])
        towers.append(EmbeddingTower(host_ebc, TowerGroup(group_modules, group_features)))
        output_order += [f for fs in group_features.values() for f in fs]
    return towers, output_order


def tables_in_lookup_order(
    features: Sequence[str], table_of: Mapping[str, EmbeddingBagConfig]
) -> list[EmbeddingBagConfig]:
    """The tables of ``features`` in the order the features first use them, each once.

    Example:
        >>> c1, c2 = (EmbeddingBagConfig(name=n, embedding_dim=4, num_embeddings=5, feature_names=fs)
        ...           for n, fs in (("t1", ["x", "y"]), ("t2", ["z"])))
        >>> [c.name for c in tables_in_lookup_order(["z", "x", "y"], {"x": c1, "y": c1, "z": c2})]
        ['t2', 't1']
    """
    tables: list[EmbeddingBagConfig] = []
    for f in features:
        if table_of[f] not in tables:
            tables.append(table_of[f])
    return tables


@torch.no_grad()
def _copy_params(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s parameters into ``target``'s (same names and shapes); meta sources are skipped."""
    target_params = dict(target.named_parameters())
    for name, p in source.named_parameters():
        if not p.is_meta and not target_params[name].is_meta:
            target_params[name].copy_(p)


def _layer_sizes(over_arch: nn.Module) -> list[int]:
    """Output widths of the over-arch's linear layers, e.g. [16, 1]."""
    return [m.out_features for m in over_arch.modules() if isinstance(m, nn.Linear)]
