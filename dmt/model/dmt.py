"""The DMT model: towers of embedding tables + tower modules, a global interaction, the over-arch.

``DMTModel`` is the tower counterpart of torchrec's ``DLRM`` (same ``forward(dense, sparse) ->
logits``) and ``DMTTrain`` the counterpart of ``DLRMTrain`` (same ``forward(batch) -> (loss,
(loss, logits, labels))``), so the training loop and torchrec's pipelines run either unchanged.
Build one from a flat model with :func:`dmt.model.transform.transform`; shard it with
:func:`dmt.distributed.tower_sharding.shard`.

Data flow (B = local batch, D = embedding dim, T = towers, K = sum of the towers' k_t)::

    dense [B, num_dense] --dense_arch--> [B, D] -----------------------------.
    sparse KJT --tower_arch: host h = EBC_h -> TowerGroup_h--> [B, K*D] -----+--inter_arch--> over_arch --> [B, 1]
                 (EmbeddingTowerCollection, one group per host)              (global interaction)

TowerGroup_h runs the tower module of each plan tower on host h on that tower's columns of the
host's pooled embeddings. The tower outputs are concatenated host by host, plan order inside a
host. With identity tower modules the model reorders them into the flat model's feature order
(``column_blocks``), so the global interaction and the over-arch see exactly what the flat DLRM's
interaction sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_tower import EmbeddingTowerCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt.plan import TowerPlan

ColumnBlocks = tuple[tuple[int, int], ...]


def index_to_blocks(index: Sequence[int]) -> ColumnBlocks:
    """Compress a column index list into maximal ``(start, stop)`` runs of consecutive columns.

    ``x[:, index]`` equals ``torch.cat([x[:, a:b] for a, b in blocks], 1)``. Slicing with Python
    ints keeps the model free of index buffers (which ``to_empty`` or DMP's meta init would leave
    as garbage) and traceable by torch.fx, which torchrec's train pipelines use.

    Example:
        >>> index_to_blocks([2, 3, 0, 1, 4])
        ((2, 4), (0, 2), (4, 5))
    """
    blocks: list[list[int]] = []
    for i in index:
        if blocks and blocks[-1][1] == i:
            blocks[-1][1] += 1
        else:
            blocks.append([i, i + 1])
    return tuple((a, b) for a, b in blocks)


def permute_columns(x: torch.Tensor, blocks: ColumnBlocks | None) -> torch.Tensor:
    """``x[:, index]`` for the index ``blocks`` came from; ``None`` or one block is a no-op."""
    if blocks is None or (len(blocks) == 1 and blocks[0] == (0, x.shape[1])):
        return x
    return torch.cat([x[:, a:b] for a, b in blocks], dim=1)


def tower_output_dims(tower_arch: EmbeddingTowerCollection) -> tuple[int, ...]:
    """Output width k_t*D of every plan tower, in plan order, from the host groups' modules.

    Example:
        >>> from dmt.model.flat import ModelConfig, build_flat_model
        >>> from dmt.model.transform import transform
        >>> from towers import TowerModuleConfig
        >>> cfg = ModelConfig.preset("debug", sparse_features=("a", "b", "c"), num_embeddings=(10,) * 3)
        >>> plan = TowerPlan.from_groups([["a"], ["b", "c"]], num_hosts=1)
        >>> model = transform(build_flat_model(cfg), plan, tower_module=TowerModuleConfig(kind="linear", compression=2))
        >>> tower_output_dims(model.model.tower_arch), cfg.embedding_dim
        ((8, 8), 8)
    """
    dims: dict[int, int] = {}
    for group in tower_arch.towers:
        dims.update(group.interaction.output_dims)  # towers.TowerGroup
    return tuple(dims[t] for t in sorted(dims))


class DMTModel(nn.Module):
    """DLRM with the sparse arch replaced by towers (see the module docstring for the data flow).

    Args:
        dense_arch: maps dense features [B, num_dense] to [B, D] (torchrec ``DenseArch``).
        tower_arch: one ``EmbeddingTower(EBC_h, TowerGroup_h)`` per host holding towers, host order.
        inter_arch: global interaction ``(dense [B, D], tower_outputs [B, K*D]) -> [B, out]``.
        over_arch: maps the interaction output to one logit per sample.
        plan: the plan the towers were built from (kept for sharding and reports).
        column_blocks: reorder of the tower outputs applied before ``inter_arch`` (identity towers:
            host-grouped order -> flat feature order), as produced by :func:`index_to_blocks`;
            ``None`` keeps the grouped order.
    """

    def __init__(
        self,
        *,
        dense_arch: nn.Module,
        tower_arch: EmbeddingTowerCollection,
        inter_arch: nn.Module,
        over_arch: nn.Module,
        plan: TowerPlan,
        column_blocks: ColumnBlocks | None = None,
    ) -> None:
        super().__init__()
        self.dense_arch = dense_arch
        self.tower_arch = tower_arch
        self.inter_arch = inter_arch
        self.over_arch = over_arch
        self.plan: TowerPlan = plan
        self.column_blocks: ColumnBlocks | None = column_blocks

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """Args: dense_features [B, num_dense]; sparse_features: KJT of every plan feature. Returns [B, 1]."""
        dense = self.dense_arch(dense_features)  # [B, D]
        towers = self.tower_arch(sparse_features)  # [B, K*D], host by host
        towers = permute_columns(towers, self.column_blocks)
        return self.over_arch(self.inter_arch(dense, towers))

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise the dense parts in place, e.g. after ``to_empty(device=...)`` on a model
        built on the meta device: dense and over arch get PyTorch's default ``nn.Linear`` init, tower
        modules and the global interaction their own ``init_weights``. Embedding tables are left
        alone: sharding initialises them; unsharded, initialise them yourself (torchrec's
        ``EmbeddingBagCollection.reset_parameters`` does nothing for an EBC built on meta).
        """
        for arch in (self.dense_arch, self.over_arch):
            for m in arch.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        for tower in self.tower_arch.towers:
            if hasattr(tower.interaction, "init_weights"):
                tower.interaction.init_weights()
        if hasattr(self.inter_arch, "init_weights"):
            self.inter_arch.init_weights()


class DMTTrain(nn.Module):
    """``DLRMTrain`` for a :class:`DMTModel`: same forward contract, same loss.

    Args:
        model: the DMT network.
        loss_fn: loss on ``(logits [B], labels [B] float)``; ``BCEWithLogitsLoss`` as in ``DLRMTrain``.
    """

    def __init__(self, model: DMTModel, loss_fn: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn: nn.Module = loss_fn if loss_fn is not None else nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Returns ``(loss, (loss.detach(), logits.detach() [B], labels.detach() [B]))``."""
        logits = self.model(batch.dense_features, batch.sparse_features).squeeze(-1)
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())

    def init_weights(self) -> None:
        """See :meth:`DMTModel.init_weights`."""
        self.model.init_weights()
