"""Tower modules (TM): a tower's pooled embeddings -> k_t vectors of dim D, before the cross-host exchange.

Every tower module takes the tower's ``KeyedTensor`` (keys = the tower's F features, each of dim D)
and returns ``[B, k*D]``: k "virtual feature" vectors, so the global DLRM dot interaction can treat
them like sparse features. ``IdentityTower`` (k = F) is the flat model's input, the reference the
others are compared with; the rest compress to ``k = num_tower_outputs(F, c)``.

Shapes: B = batch, F = the tower's features, D = embedding dim, k = outputs, P = F(F-1)/2 pairs.

Example:
    >>> from torchrec.sparse.jagged_tensor import KeyedTensor
    >>> kt = KeyedTensor.from_tensor_list(["a", "b", "c", "d"], [torch.ones(2, 8)] * 4)
    >>> tower = DotTower(num_features=4, embedding_dim=8, compression=2.0)
    >>> tower.num_outputs, tower.output_dim, tuple(tower(kt).shape)
    (2, 16, (2, 16))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.sparse.jagged_tensor import KeyedTensor

from towers.config import DOT_WEIGHT_INIT, TowerConfigError, num_tower_outputs
from towers.projection import Projection


class TowerModule(nn.Module):
    """Base of all tower modules: sizes, ``init_weights`` and the FLOP count.

    Subclasses allocate parameters in ``__init__`` (which works under ``torch.device("meta")``)
    and fill them in ``init_weights``; ``__init__`` calls ``init_weights`` itself unless on meta,
    so after meta construction call ``to_empty(device=...)`` then ``init_weights()``.

    Args:
        num_features: F, the tower's features.
        embedding_dim: D, the pooled embedding dim of every feature.
        num_outputs: k, the output vectors of dim D.
    """

    def __init__(self, num_features: int, embedding_dim: int, num_outputs: int) -> None:
        super().__init__()
        if num_features < 1 or embedding_dim < 1:
            raise TowerConfigError(f"num_features={num_features} and embedding_dim={embedding_dim} must be >= 1")
        self.num_features: int = num_features
        self.embedding_dim: int = embedding_dim
        self.num_outputs: int = num_outputs

    @property
    def output_dim(self) -> int:
        """k*D, the width of ``forward``'s output."""
        return self.num_outputs * self.embedding_dim

    def init_weights(self) -> None:
        """(Re)initialise parameters and buffers in place; safe after ``to_empty``."""

    def flops_per_sample(self) -> int:
        """FLOPs of one sample's forward: 2 x multiply-adds of matmuls and dot products.

        Bias adds, activations and elementwise products are O(width) and not counted.
        """
        return 0

    def _maybe_init(self) -> None:
        # Meta tensors hold no data; the caller re-runs init_weights after to_empty.
        if not any(t.is_meta for t in [*self.parameters(), *self.buffers()]):
            self.init_weights()

    def _embeddings(self, kt: KeyedTensor) -> torch.Tensor:
        """The tower's embeddings as [B, F*D], features in ``kt.keys()`` order."""
        values = kt.values()
        if values.shape[1] != self.num_features * self.embedding_dim:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_features} features of dim {self.embedding_dim} "
                f"(width {self.num_features * self.embedding_dim}), got keys {kt.keys()} with dims "
                f"{kt.length_per_key()}"
            )
        return values


class IdentityTower(TowerModule):
    """Concatenation of the tower's embeddings in key order: k = F, no parameters.

    This is exactly what the flat DLRM's sparse path feeds its interaction, so DMT with identity
    towers (and outputs reordered to flat feature order) computes the flat model.

    Args:
        num_features: F.
        embedding_dim: D.
    """

    def __init__(self, num_features: int, embedding_dim: int) -> None:
        super().__init__(num_features, embedding_dim, num_outputs=num_features)

    def forward(self, kt: KeyedTensor) -> torch.Tensor:
        """Args: kt: F keys of dim D, batch B. Returns: [B, F*D]."""
        return self._embeddings(kt)


class ProjectionTower(TowerModule):
    """Linear projection (``hidden=()``) or linear + residual MLP projection of the embeddings.

    Starts as the near-isometry of :class:`towers.projection.Projection` (identity at c=1).

    Args:
        num_features: F.
        embedding_dim: D.
        compression: c >= 1; k = ``num_tower_outputs(F, c)``.
        hidden: widths of the residual MLP branch; () for the plain linear projection.
    """

    def __init__(
        self, num_features: int, embedding_dim: int, compression: float = 1.0, hidden: Sequence[int] = ()
    ) -> None:
        super().__init__(num_features, embedding_dim, num_tower_outputs(num_features, compression))
        self.projection: Projection = Projection(num_features, embedding_dim, self.num_outputs, hidden=hidden)
        self._maybe_init()

    def init_weights(self) -> None:
        self.projection.init_weights()

    def flops_per_sample(self) -> int:
        return self.projection.flops_per_sample()

    def forward(self, kt: KeyedTensor) -> torch.Tensor:
        """Args: kt: F keys of dim D, batch B. Returns: [B, k*D]."""
        return self.projection(self._embeddings(kt))


class DotTower(TowerModule):
    """DLRM-style dot interaction inside the tower, then projection of [embeddings, dots].

    The projection sees the raw embeddings as well as the P = F(F-1)/2 pairwise dots, so it can
    keep the identity's information. On the embeddings it starts as ``ProjectionTower`` (the
    isometry); when it compresses (k < F), its dot columns start small and random (``dot_init``,
    see :data:`towers.config.DOT_WEIGHT_INIT`), not at 0, so the in-tower pairs train the
    embeddings from the first step.

    Args:
        num_features: F.
        embedding_dim: D.
        compression: c >= 1; k = ``num_tower_outputs(F, c)``.
        hidden: widths of the projection's residual MLP branch.
        dot_init: the dot columns' initial scale (Projection's ``extra_init``) when k < F.
    """

    def __init__(
        self,
        num_features: int,
        embedding_dim: int,
        compression: float = 1.0,
        hidden: Sequence[int] = (),
        dot_init: float = DOT_WEIGHT_INIT,
    ) -> None:
        super().__init__(num_features, embedding_dim, num_tower_outputs(num_features, compression))
        num_pairs = num_features * (num_features - 1) // 2
        # Not persistent: derived from F, so checkpoints stay free of it; init_weights rebuilds it.
        triu = torch.triu_indices(num_features, num_features, offset=1)  # [2, P]
        self.register_buffer("triu_indices", triu, persistent=False)
        self.projection: Projection = Projection(
            num_features,
            embedding_dim,
            self.num_outputs,
            num_extra=num_pairs,
            hidden=hidden,
            # Uncompressed (k == F), the global interaction sees every in-tower pair itself: no
            # saddle, and the tower starts exactly as the identity (DMT exactly as flat).
            extra_init=dot_init if self.num_outputs < num_features else 0.0,
        )
        self._maybe_init()

    def init_weights(self) -> None:
        f = self.num_features
        self.triu_indices = torch.triu_indices(f, f, offset=1, device=self.triu_indices.device)
        self.projection.init_weights()

    def flops_per_sample(self) -> int:
        # The bmm computes all F*F dots of length D (the lower triangle is discarded).
        return 2 * self.num_features**2 * self.embedding_dim + self.projection.flops_per_sample()

    def forward(self, kt: KeyedTensor) -> torch.Tensor:
        """Args: kt: F keys of dim D, batch B. Returns: [B, k*D]."""
        x = self._embeddings(kt)  # [B, F*D]
        x3 = x.view(x.shape[0], self.num_features, self.embedding_dim)  # [B, F, D]
        dots = torch.bmm(x3, x3.transpose(1, 2))[:, self.triu_indices[0], self.triu_indices[1]]  # [B, P]
        return self.projection(torch.cat([x, dots], dim=1))


class DCNTower(TowerModule):
    """Cross network over the tower's concatenated embeddings, then projection.

    Reuses torchrec's ``CrossNet`` (``cross_rank=0``) or ``LowRankCrossNet``. ``init_weights``
    zeroes each layer's last kernel (``kernels`` / ``W_kernels``) and bias, so every cross layer
    ``x0 * (W x + b) + x`` starts as the identity and the tower as ``ProjectionTower``; the kernels
    still get gradients (for low rank, ``V_kernels`` keeps torchrec's xavier init).

    Args:
        num_features: F.
        embedding_dim: D.
        compression: c >= 1; k = ``num_tower_outputs(F, c)``.
        hidden: widths of the projection's residual MLP branch.
        num_cross_layers: cross layers.
        cross_rank: 0 for a full-rank ``CrossNet``, r > 0 for ``LowRankCrossNet(low_rank=r)``.
    """

    def __init__(
        self,
        num_features: int,
        embedding_dim: int,
        compression: float = 1.0,
        hidden: Sequence[int] = (),
        *,
        num_cross_layers: int = 1,
        cross_rank: int = 0,
    ) -> None:
        super().__init__(num_features, embedding_dim, num_tower_outputs(num_features, compression))
        width = num_features * embedding_dim
        self.num_cross_layers: int = num_cross_layers
        self.cross_rank: int = cross_rank
        self.crossnet: nn.Module = (
            LowRankCrossNet(width, num_cross_layers, low_rank=cross_rank)
            if cross_rank > 0
            else CrossNet(width, num_cross_layers)
        )
        self.projection: Projection = Projection(num_features, embedding_dim, self.num_outputs, hidden=hidden)
        self._maybe_init()

    def init_weights(self) -> None:
        with torch.no_grad():
            for name, p in self.crossnet.named_parameters():
                if name.startswith("V_kernels"):
                    nn.init.xavier_normal_(p)
                else:  # kernels, W_kernels, bias
                    p.zero_()
        self.projection.init_weights()

    def flops_per_sample(self) -> int:
        n, r = self.num_features * self.embedding_dim, self.cross_rank
        per_layer = 2 * (2 * n * r if r > 0 else n * n)
        return self.num_cross_layers * per_layer + self.projection.flops_per_sample()

    def forward(self, kt: KeyedTensor) -> torch.Tensor:
        """Args: kt: F keys of dim D, batch B. Returns: [B, k*D]."""
        return self.projection(self.crossnet(self._embeddings(kt)))
