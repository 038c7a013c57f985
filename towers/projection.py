"""The compressing projection shared by every non-identity tower, and its near-isometric init.

Shapes: B = batch, F = the tower's features, D = embedding dim, k = the tower's output vectors,
E = extra input columns after the F*D embedding columns (e.g. in-tower dot products).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def group_isometry(num_features: int, num_outputs: int, embedding_dim: int) -> torch.Tensor:
    """The [k*D, F*D] matrix that sums contiguous feature groups, scaled to orthonormal rows.

    Features are split into k contiguous groups of sizes differing by at most one (the first
    F mod k groups get the extra feature). Output vector j, dimension d, is
    ``sum(x[f, d] for f in group j) / sqrt(|group j|)``.

    Why this init: its rows are orthonormal (W W^T = I), so the map is a partial isometry that
    loses no more than the compression forces; it acts per embedding dimension, so a global dot
    product between two output vectors is (up to the scale) a sum of the flat model's pairwise
    feature dots, exactly what the flat DLRM interaction computes; the 1/sqrt(|group|) scale keeps
    each output vector at the variance of one embedding; and for k == F it is the identity.

    Args:
        num_features: F.
        num_outputs: k, 1 <= k <= F.
        embedding_dim: D.

    Returns:
        Tensor of shape [k*D, F*D] on the default device.

    Example:
        >>> group_isometry(3, 2, 1)
        tensor([[0.7071, 0.7071, 0.0000],
                [0.0000, 0.0000, 1.0000]])
    """
    assert 1 <= num_outputs <= num_features, (num_outputs, num_features)
    base, extra = divmod(num_features, num_outputs)
    sizes = [base + 1] * extra + [base] * (num_outputs - extra)
    groups = torch.zeros(num_outputs, num_features)
    start = 0
    for j, size in enumerate(sizes):
        groups[j, start : start + size] = size**-0.5
        start += size
    return torch.kron(groups, torch.eye(embedding_dim))


class Projection(nn.Module):
    """``y = W z + b + MLP(z)``: a linear map to k*D plus an optional residual MLP branch.

    ``z`` is [B, F*D + E]: the tower's F embeddings, then E extra columns. ``init_weights`` sets
    W to :func:`group_isometry` on the embedding columns, b to 0 and the MLP's last layer to 0, so
    on the embeddings the projection starts as the isometry (the identity for k == F). The extra
    columns start at 0 (``extra_init=0``: a DMT model with c=1 and no extra columns starts *exactly*
    as its flat model) or normal with std ``extra_init / sqrt(E)`` (see :class:`towers.DotTower`).
    Every zeroed piece still gets a gradient (the MLP's hidden layers from the second step on, once
    the last layer moved), the same idea as zero-init residual branches (Fixup, ReZero); but what
    feeds a zeroed piece gets none through it at first. Hidden layers are orthogonal with gain
    sqrt(2), which keeps activation norms through ReLU.

    Args:
        num_features: F.
        embedding_dim: D.
        num_outputs: k.
        num_extra: E, extra input columns after the embeddings.
        hidden: widths of the MLP branch; () for a plain linear projection.
        extra_init: the extra columns' initial weights: 0, or normal with std ``extra_init / sqrt(E)``
            (a unit-variance extra input then adds variance ``extra_init**2`` to each output).
    """

    def __init__(
        self,
        num_features: int,
        embedding_dim: int,
        num_outputs: int,
        num_extra: int = 0,
        hidden: Sequence[int] = (),
        extra_init: float = 0.0,
    ) -> None:
        super().__init__()
        self._num_features = num_features
        self._extra_init = extra_init
        self._embedding_dim = embedding_dim
        self._num_outputs = num_outputs
        in_features = num_features * embedding_dim + num_extra
        out_features = num_outputs * embedding_dim
        self.linear: nn.Linear = nn.Linear(in_features, out_features)
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        # No branch at all (not a zero one) for the plain linear projection: fewer params, no FLOPs.
        self.mlp: nn.Sequential | None = nn.Sequential(*layers) if hidden else None

    def init_weights(self) -> None:
        """Near-isometric init (see the class docstring); call after ``to_empty``."""
        with torch.no_grad():
            w = self.linear.weight
            w.zero_()
            iso = group_isometry(self._num_features, self._num_outputs, self._embedding_dim)
            w[:, : iso.shape[1]].copy_(iso.to(device=w.device, dtype=w.dtype))
            num_extra = w.shape[1] - iso.shape[1]
            if num_extra and self._extra_init:
                w[:, iso.shape[1] :].normal_(std=self._extra_init / num_extra**0.5)
            self.linear.bias.zero_()
            if self.mlp is not None:
                linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
                for m in linears[:-1]:
                    nn.init.orthogonal_(m.weight, gain=2**0.5)
                    m.bias.zero_()
                linears[-1].weight.zero_()
                linears[-1].bias.zero_()

    def flops_per_sample(self) -> int:
        """2 x multiply-adds of every matmul; bias adds and ReLUs are not counted."""
        linears = [self.linear]
        if self.mlp is not None:
            linears += [m for m in self.mlp if isinstance(m, nn.Linear)]
        return sum(2 * m.in_features * m.out_features for m in linears)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Args: z: [B, F*D + E]. Returns: [B, k*D]."""
        y = self.linear(z)
        if self.mlp is not None:
            y = y + self.mlp(z)
        return y
