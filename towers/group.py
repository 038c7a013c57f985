"""The tower modules of one host, run as one module on the host's one pooled lookup.

SPTT gives every host that holds towers one ``EmbeddingTower``: one ``EmbeddingBagCollection``
with the tables of all its towers and one :class:`TowerGroup` holding their tower modules. Why
not one ``EmbeddingTower`` per plan tower: torchrec shards each ``EmbeddingTower`` as its own
sharded EBC (its own intra-host input and output all-to-alls, its own kernel launches) under its
own intra-host DDP, so a host with several towers paid that fixed cost once per tower (measured on
2x H200, 4 towers on 2 hosts: 12.3 ms/step against 7.4 ms with 2 towers). Grouped, the host does
one lookup whatever its number of towers; what the towers compute is unchanged.

Shapes: B = batch, F_t / k_t = tower t's features / output vectors, D = embedding dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

__all__ = ["TowerGroup"]


class TowerGroup(nn.Module):
    """Runs each tower module on its features of the host's pooled embeddings; concatenates outputs.

    Args:
        tower_modules: plan tower index -> its tower module (anything taking the tower's
            ``KeyedTensor`` and returning ``[B, output_dim]``), in the order the host's
            EmbeddingBagCollection lists their features.
        tower_features: plan tower index -> the tower's features, in its module's key order.

    ``forward(kt)`` takes the host EBC's ``KeyedTensor`` (keys = the towers' features, tower after
    tower) and returns ``[B, sum_t k_t*D]``, towers in the order given. Parameter names keep the
    plan tower index: ``plan_towers.<t>.<module parameter>``.

    Example:
        >>> from towers.modules import IdentityTower
        >>> group = TowerGroup({2: IdentityTower(1, 4), 0: IdentityTower(2, 4)}, {2: ["c"], 0: ["a", "b"]})
        >>> kt = KeyedTensor.from_tensor_list(["c", "a", "b"], [torch.full((1, 4), float(i)) for i in range(3)])
        >>> group(kt).tolist()
        [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]]
    """

    def __init__(self, tower_modules: Mapping[int, nn.Module], tower_features: Mapping[int, Sequence[str]]) -> None:
        super().__init__()
        if list(tower_modules) != list(tower_features):
            raise ValueError(
                f"tower_modules {list(tower_modules)} and tower_features {list(tower_features)} must name the "
                "same plan towers in the same order"
            )
        self.plan_towers = nn.ModuleDict({str(t): m for t, m in tower_modules.items()})
        self.tower_features: dict[int, tuple[str, ...]] = {t: tuple(f) for t, f in tower_features.items()}
        self.keys: list[str] = [f for fs in self.tower_features.values() for f in fs]

    @property
    def tower_indices(self) -> list[int]:
        """The plan tower indices of this group, in output order."""
        return list(self.tower_features)

    @property
    def output_dims(self) -> dict[int, int]:
        """Plan tower index -> its module's output width k_t*D."""
        return {int(t): int(m.output_dim) for t, m in self.plan_towers.items()}

    @property
    def output_dim(self) -> int:
        return sum(self.output_dims.values())

    @property
    def num_outputs(self) -> int:
        return sum(int(m.num_outputs) for m in self.plan_towers.values())

    def flops_per_sample(self) -> int:
        return sum(m.flops_per_sample() for m in self.plan_towers.values() if hasattr(m, "flops_per_sample"))

    def init_weights(self) -> None:
        for m in self.plan_towers.values():
            if hasattr(m, "init_weights"):
                m.init_weights()

    def forward(self, kt: KeyedTensor) -> torch.Tensor:
        """Args: kt: the host's pooled embeddings [B, sum_t F_t*D]. Returns [B, sum_t k_t*D]."""
        modules = list(self.plan_towers.values())
        if len(modules) == 1:
            return modules[0](kt)
        if kt.keys() != self.keys:
            kt = KeyedTensor.from_tensor_list(self.keys, [kt[k] for k in self.keys])
        values, widths = kt.values(), kt.length_per_key()
        outputs, start, key = [], 0, 0
        for module, features in zip(modules, self.tower_features.values()):
            n = len(features)
            width = sum(widths[key : key + n])
            # A view of the tower's columns: no copy, and its gradient lands in the host's lookup.
            part = KeyedTensor(
                keys=list(features), length_per_key=widths[key : key + n], values=values[:, start : start + width]
            )
            outputs.append(module(part))
            start, key = start + width, key + n
        return torch.cat(outputs, dim=1)
