"""Global interactions: combine the dense vector with all towers' outputs (hierarchical interaction).

Each takes ``dense_features`` [B, D] and ``tower_outputs`` [B, K*D] (the towers' outputs
concatenated, K = sum of the towers' k_t) and returns [B, output_dim]. They wrap torchrec's DLRM
arches so that DMT with identity towers computes exactly the flat DLRM / DLRM-DCN interaction.

Shapes: B = batch, D = embedding dim, K = total tower output vectors, F = flat model's features.

Example:
    >>> inter = GlobalDotInteraction(num_tower_outputs=3, embedding_dim=4)
    >>> inter.output_dim, tuple(inter(torch.ones(2, 4), torch.ones(2, 12)).shape)
    (10, (2, 10))
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torchrec.models.dlrm import InteractionArch, InteractionDCNArch
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.modules.mlp import MLP

from towers.config import GlobalInteractionConfig


def feature_order_permutation(plan_features: Sequence[str], flat_features: Sequence[str], dim: int) -> torch.Tensor:
    """Column indices that reorder identity-tower outputs from plan order to flat order.

    ``tower_outputs[:, perm]`` lays feature ``flat_features[i]`` at columns ``[i*dim, (i+1)*dim)``.

    Args:
        plan_features: features in plan (tower by tower) order, e.g. ``TowerPlan.features``.
        flat_features: the same features in the flat model's order.
        dim: D, columns per feature.

    Returns:
        Long tensor of shape [F*D].

    Raises:
        ValueError: the two lists are not the same features, each once.

    Example:
        >>> feature_order_permutation(["b", "a"], ["a", "b"], 2)
        tensor([2, 3, 0, 1])
    """
    position = {f: i for i, f in enumerate(plan_features)}
    if len(position) != len(plan_features) or sorted(plan_features) != sorted(flat_features):
        raise ValueError(
            f"plan features {list(plan_features)} and flat features {list(flat_features)} "
            "must be the same features, each once"
        )
    starts = torch.tensor([position[f] * dim for f in flat_features], dtype=torch.long)
    return (starts[:, None] + torch.arange(dim)).reshape(-1)


class GlobalDotInteraction(nn.Module):
    """DLRM dot interaction: [dense, all pairwise dots of {dense, K tower vectors}], plus options.

    With both options off it is a thin wrapper of torchrec's ``InteractionArch(num_sparse_features=K)``
    (same output, same order), which is what makes identity-tower DMT compute the flat model.

    The options are for *compressed* towers (the hierarchical interaction). A flat DLRM sees every
    feature pair as an explicit dot; a compressing tower folds its F features into k < F vectors,
    and the pairs *inside* the tower then live only in each vector's squared norm
    (``|sum x_i|^2 = sum |x_i|^2 + 2 sum_{i<j} x_i.x_j``), which ``InteractionArch`` drops (it keeps
    off-diagonal pairs only). So:

    - ``self_dots``: also emit each tower vector's self-dot (the diagonal), K more columns;
    - ``raw_towers``: also pass the tower vectors themselves (K*D columns) to the over-arch, so
      what a tower module computed inside the tower (e.g. its in-tower dots, projected) reaches the
      over-arch directly rather than only through dots with other towers.

    Output order: ``[dense, raw tower vectors?, dots]``; the dots are the upper triangle of the
    (K+1)x(K+1) Gram matrix of ``[dense, towers]`` row by row, diagonal included when ``self_dots``
    (the dense vector's self-dot then comes first).

    Args:
        num_tower_outputs: K.
        embedding_dim: D (the dense vector's width too).
        self_dots: add the K+1 diagonal dots.
        raw_towers: add the K*D tower columns.
    """

    def __init__(
        self, num_tower_outputs: int, embedding_dim: int, *, self_dots: bool = False, raw_towers: bool = False
    ) -> None:
        super().__init__()
        self.num_tower_outputs: int = num_tower_outputs
        self.embedding_dim: int = embedding_dim
        self.self_dots: bool = self_dots
        self.raw_towers: bool = raw_towers
        self.arch: InteractionArch = InteractionArch(num_sparse_features=num_tower_outputs)
        if self_dots:  # reuse the arch's (non-persistent) pair-index buffer, diagonal included
            k = num_tower_outputs
            self.arch.triu_indices = torch.triu_indices(k + 1, k + 1, offset=0, device=self.arch.triu_indices.device)

    @property
    def output_dim(self) -> int:
        """D + K + K(K-1)/2, + (K+1) with self_dots, + K*D with raw_towers."""
        return GlobalInteractionConfig(kind="dot", self_dots=self.self_dots, raw_towers=self.raw_towers).output_dim(
            self.num_tower_outputs, self.embedding_dim
        )

    def init_weights(self) -> None:
        """Rebuild the pair-index buffer, which ``to_empty`` leaves uninitialised."""
        k, old = self.num_tower_outputs, self.arch.triu_indices
        self.arch.triu_indices = torch.triu_indices(k + 1, k + 1, offset=0 if self.self_dots else 1, device=old.device)

    def flops_per_sample(self) -> int:
        """The bmm's (K+1)^2 dots of length D, x2."""
        return 2 * (self.num_tower_outputs + 1) ** 2 * self.embedding_dim

    def forward(self, dense_features: torch.Tensor, tower_outputs: torch.Tensor) -> torch.Tensor:
        """Args: dense_features: [B, D]; tower_outputs: [B, K*D]. Returns: [B, output_dim]."""
        b = dense_features.shape[0]
        towers = tower_outputs.reshape(b, self.num_tower_outputs, self.embedding_dim)
        if not (self.self_dots or self.raw_towers):
            return self.arch(dense_features, towers)
        # InteractionArch has no diagonal option; the same Gram-matrix computation, kept by hand.
        combined = torch.cat([dense_features.unsqueeze(1), towers], dim=1)  # [B, K+1, D]
        gram = torch.bmm(combined, combined.transpose(1, 2))
        dots = gram[:, self.arch.triu_indices[0], self.arch.triu_indices[1]]
        parts = [dense_features, tower_outputs, dots] if self.raw_towers else [dense_features, dots]
        return torch.cat(parts, dim=1)


class GlobalDCNInteraction(nn.Module):
    """Cross network over [dense, tower outputs], as torchrec's ``InteractionDCNArch``.

    ``init_weights`` re-applies torchrec's own init (xavier-normal kernels, zero bias), so a DMT
    model initialises its global DCN like the flat ``DLRM_DCN``.

    Args:
        num_tower_outputs: K.
        embedding_dim: D.
        num_cross_layers: cross layers.
        cross_rank: 0 for a full-rank ``CrossNet``, r > 0 for ``LowRankCrossNet(low_rank=r)``.
    """

    def __init__(
        self, num_tower_outputs: int, embedding_dim: int, num_cross_layers: int = 1, cross_rank: int = 0
    ) -> None:
        super().__init__()
        self.num_tower_outputs: int = num_tower_outputs
        self.embedding_dim: int = embedding_dim
        self.num_cross_layers: int = num_cross_layers
        self.cross_rank: int = cross_rank
        width = (num_tower_outputs + 1) * embedding_dim
        crossnet = (
            LowRankCrossNet(width, num_cross_layers, low_rank=cross_rank)
            if cross_rank > 0
            else CrossNet(width, num_cross_layers)
        )
        self.arch: InteractionDCNArch = InteractionDCNArch(num_tower_outputs, crossnet)

    @property
    def output_dim(self) -> int:
        """(K+1)*D."""
        return (self.num_tower_outputs + 1) * self.embedding_dim

    def init_weights(self) -> None:
        with torch.no_grad():
            for name, p in self.arch.named_parameters():  # crossnet.{kernels,W_kernels,V_kernels,bias}.i
                if name.split(".")[-2] == "bias":
                    p.zero_()
                else:
                    nn.init.xavier_normal_(p)

    def flops_per_sample(self) -> int:
        n, r = self.output_dim, self.cross_rank
        return self.num_cross_layers * 2 * (2 * n * r if r > 0 else n * n)

    def forward(self, dense_features: torch.Tensor, tower_outputs: torch.Tensor) -> torch.Tensor:
        """Args: dense_features: [B, D]; tower_outputs: [B, K*D]. Returns: [B, (K+1)*D]."""
        b = dense_features.shape[0]
        return self.arch(dense_features, tower_outputs.reshape(b, self.num_tower_outputs, self.embedding_dim))


class GlobalConcatInteraction(nn.Module):
    """[dense, tower outputs] concatenated, then an optional torchrec ``MLP`` (ReLU after each layer).

    Args:
        num_tower_outputs: K.
        embedding_dim: D.
        hidden: MLP widths; () returns the concatenation itself.
    """

    def __init__(self, num_tower_outputs: int, embedding_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.num_tower_outputs: int = num_tower_outputs
        self.embedding_dim: int = embedding_dim
        self.hidden: tuple[int, ...] = tuple(hidden)
        in_size = (num_tower_outputs + 1) * embedding_dim
        self.mlp: MLP | None = MLP(in_size, list(hidden)) if hidden else None

    @property
    def output_dim(self) -> int:
        """hidden[-1], or (K+1)*D without hidden layers."""
        return self.hidden[-1] if self.hidden else (self.num_tower_outputs + 1) * self.embedding_dim

    def init_weights(self) -> None:
        """PyTorch's default ``nn.Linear`` init, as torchrec's ``MLP`` gets at construction."""
        if self.mlp is not None:
            for m in self.mlp.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()

    def flops_per_sample(self) -> int:
        widths = [(self.num_tower_outputs + 1) * self.embedding_dim, *self.hidden]
        return sum(2 * a * b for a, b in itertools.pairwise(widths))

    def forward(self, dense_features: torch.Tensor, tower_outputs: torch.Tensor) -> torch.Tensor:
        """Args: dense_features: [B, D]; tower_outputs: [B, K*D]. Returns: [B, output_dim]."""
        x = torch.cat([dense_features, tower_outputs], dim=1)
        return self.mlp(x) if self.mlp is not None else x


GlobalInteraction = GlobalDotInteraction | GlobalDCNInteraction | GlobalConcatInteraction


def build_global_interaction(
    config: GlobalInteractionConfig, *, num_tower_outputs: int, embedding_dim: int
) -> GlobalInteraction:
    """Build the global interaction of ``config`` over K tower vectors of dim D.

    Works under ``torch.device("meta")``; then call ``to_empty`` and ``init_weights``.
    """
    k, d = num_tower_outputs, embedding_dim
    if config.kind == "dot":
        return GlobalDotInteraction(k, d, self_dots=config.self_dots, raw_towers=config.raw_towers)
    if config.kind == "dcn":
        return GlobalDCNInteraction(k, d, config.num_cross_layers, config.cross_rank)
    return GlobalConcatInteraction(k, d, config.hidden)
