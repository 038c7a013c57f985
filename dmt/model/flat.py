"""Flat baseline models: torchrec's DLRM and DLRM_DCN over one global EmbeddingBagCollection.

These are the models users arrive with and the reference every DMT model is compared against.
We build torchrec's own classes rather than our own so that ``dmt.transform`` rewrites exactly
what a torchrec user has.

Example:
    >>> cfg = ModelConfig.preset("debug")
    >>> model = build_flat_model(cfg)
    >>> type(model.model).__name__, len(model.model.sparse_arch.embedding_bag_collection.embedding_bag_configs())
    ('DLRM', 26)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torchrec.datasets.criteo import DEFAULT_CAT_NAMES
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dmt.data.multi_hot import MLPERF_MULTI_HOT_SIZES
from dmt.errors import DmtError

ARCHS = ("dlrm", "dlrm_dcn")
PRESETS = ("debug", "small", "criteo", "mlperf_dcnv2")
# Distinct values per feature of Criteo 1TB (torchrec_dlrm's "Full Size" run); MLPerf caps them at 40M.
CRITEO_1TB_CARDINALITIES = (
    227605432,
    39060,
    17295,
    7424,
    20265,
    3,
    7122,
    1543,
    63,
    130229467,
    3067956,
    405282,
    10,
    2209,
    11938,
    155,
    4,
    976,
    14,
    292775614,
    40790948,
    187188510,
    590152,
    12973,
    108,
    36,
)
MLPERF_ROW_CAP = 40_000_000


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a flat DLRM / DLRM_DCN.

    Args:
        arch: "dlrm" (pairwise dot interaction) or "dlrm_dcn" (low-rank cross network).
        embedding_dim: width D of every embedding table; the dense arch ends in D too.
        num_embeddings: rows per table, one per sparse feature (hashed ids are taken modulo this).
        sparse_features: KJT keys, one table each, in the model's feature order.
        num_dense: number of dense input features.
        dense_arch: bottom MLP widths; the last must equal ``embedding_dim`` (DLRM requires it).
        over_arch: top MLP widths; the last must be 1 (one logit).
        dcn_num_layers, dcn_low_rank: cross network shape for ``arch="dlrm_dcn"``.
        embedding_init: tables start uniform in [-a, a] with this a; None keeps torchrec's
            a = sqrt(1 / rows). Default 0.1, about 2 x the default sparse learning rate: row-wise
            Adagrad's first step moves a looked-up row by ~lr * sqrt(D) whatever the gradient's
            size, and from torchrec's tiny init (0.0045 at 50k rows) that step points every row
            along the dense vector, its only non-tiny partner in the dot interaction: the
            embeddings collapse onto one line (effective rank 2 of 16) and flat and DMT runs
            then stall at the base rate for a seed-dependent time (issue 18; measured in
            benchmarks/results/learning/README.md, tested in tests/test_embedding_collapse.py).
        multi_hot_sizes: ids per sample of each feature, made from the one-hot Criteo id by
            ``dmt.data.MultiHot`` (MLPerf DLRM-DCNv2's inputs); empty: one-hot. The tables pool
            the bag (sum), so the model itself is unchanged.
    """

    arch: str = "dlrm"
    embedding_dim: int = 16
    num_embeddings: tuple[int, ...] = (100_000,) * 26
    sparse_features: tuple[str, ...] = tuple(DEFAULT_CAT_NAMES)
    num_dense: int = 13
    dense_arch: tuple[int, ...] = (64, 16)
    over_arch: tuple[int, ...] = (128, 64, 1)
    dcn_num_layers: int = 2
    dcn_low_rank: int = 16
    embedding_init: float | None = 0.1
    multi_hot_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "multi_hot_sizes", tuple(int(s) for s in self.multi_hot_sizes))
        object.__setattr__(self, "num_embeddings", tuple(int(n) for n in self.num_embeddings))
        object.__setattr__(self, "sparse_features", tuple(self.sparse_features))
        object.__setattr__(self, "dense_arch", tuple(self.dense_arch))
        object.__setattr__(self, "over_arch", tuple(self.over_arch))
        if self.arch not in ARCHS:
            raise DmtError(f"arch={self.arch!r} is not one of {ARCHS}")
        if len(self.num_embeddings) != len(self.sparse_features):
            raise DmtError(
                f"num_embeddings has {len(self.num_embeddings)} entries but there are "
                f"{len(self.sparse_features)} sparse features; give one table size per feature"
            )
        if min(self.num_embeddings) < 1:
            raise DmtError(f"every table needs >= 1 row, got num_embeddings={self.num_embeddings}")
        if not self.dense_arch or self.dense_arch[-1] != self.embedding_dim:
            raise DmtError(
                f"dense_arch={list(self.dense_arch)} must end in embedding_dim={self.embedding_dim} "
                "(DLRM interacts the dense output with the embeddings)"
            )
        if not self.over_arch or self.over_arch[-1] != 1:
            raise DmtError(f"over_arch={list(self.over_arch)} must end in 1 (one logit)")
        if self.multi_hot_sizes and (
            len(self.multi_hot_sizes) != len(self.sparse_features) or min(self.multi_hot_sizes) < 1
        ):
            raise DmtError(
                f"multi_hot_sizes={list(self.multi_hot_sizes)} needs one size >= 1 per sparse feature "
                f"({len(self.sparse_features)}), or none for one-hot inputs"
            )

    @staticmethod
    def preset(name: str, *, row_cap: int | None = None, **overrides: object) -> ModelConfig:
        """Named shapes: "debug" (tests, seconds on CPU), "small" (demo), "criteo" (Kaggle-sized),
        "mlperf_dcnv2" (MLPerf Training's DLRM-DCNv2 on Criteo 1TB).

        ``row_cap`` caps every table at that many rows (ids are hashed modulo the size).
        "mlperf_dcnv2" is the reference model of MLPerf DLRM-DCNv2 (torchrec_dlrm's flags:
        embedding dim 128, bottom MLP 512-256-128, top MLP 1024-1024-512-256-1, DCN-v2 with 3
        layers of low rank 512, multi-hot inputs ``MLPERF_MULTI_HOT_SIZES``) over Criteo 1TB's
        real cardinalities, capped at MLPerf's 40M rows per table unless ``row_cap`` says
        otherwise: ``row_cap=1000`` gives the same model small enough for a CPU.
        """
        presets = {
            "debug": dict(
                embedding_dim=8, num_embeddings=(1000,) * 26, dense_arch=(16, 8), over_arch=(16, 1), dcn_low_rank=4
            ),
            "small": dict(embedding_dim=16, num_embeddings=(50_000,) * 26, dense_arch=(64, 16), over_arch=(128, 64, 1)),
            "criteo": dict(
                embedding_dim=64,
                num_embeddings=(1_000_000,) * 26,
                dense_arch=(512, 256, 64),
                over_arch=(512, 256, 1),
                dcn_low_rank=64,
            ),
            "mlperf_dcnv2": dict(
                arch="dlrm_dcn",
                embedding_dim=128,
                num_embeddings=CRITEO_1TB_CARDINALITIES,
                dense_arch=(512, 256, 128),
                over_arch=(1024, 1024, 512, 256, 1),
                dcn_num_layers=3,
                dcn_low_rank=512,
                multi_hot_sizes=MLPERF_MULTI_HOT_SIZES,
                embedding_init=None,  # the reference's (torchrec's) init, with its own learning rates
            ),
        }
        if name not in presets:
            raise DmtError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
        if name == "mlperf_dcnv2" and row_cap is None:
            row_cap = MLPERF_ROW_CAP
        cfg = {**presets[name], **overrides}
        if row_cap is not None:
            if row_cap < 1:
                raise DmtError(f"row_cap={row_cap} must be >= 1")
            cfg["num_embeddings"] = tuple(min(int(n), row_cap) for n in cfg["num_embeddings"])
        return ModelConfig(**cfg)

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> ModelConfig:
        return ModelConfig(**d)


def table_name(feature: str) -> str:
    """Embedding table name of a sparse feature (one table per feature)."""
    return f"t_{feature}"


def embedding_bag_configs(cfg: ModelConfig) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=table_name(f),
            embedding_dim=cfg.embedding_dim,
            num_embeddings=n,
            feature_names=[f],
            weight_init_max=cfg.embedding_init,
            weight_init_min=None if cfg.embedding_init is None else -cfg.embedding_init,
        )
        for f, n in zip(cfg.sparse_features, cfg.num_embeddings)
    ]


def build_flat_model(cfg: ModelConfig, device: torch.device | str | None = None) -> DLRMTrain:
    """torchrec DLRMTrain(DLRM or DLRM_DCN) over one EmbeddingBagCollection with a table per feature.

    ``device="meta"`` builds the embedding tables without memory, for sharding with
    DistributedModelParallel, which materialises only the local shards.
    """
    device = torch.device(device) if device is not None else None
    ebc = EmbeddingBagCollection(tables=embedding_bag_configs(cfg), device=device)
    # The dense part is small and always materialised: DMP replicates it with DDP.
    dense_device = None if device is None or device.type == "meta" else device
    common = dict(
        embedding_bag_collection=ebc,
        dense_in_features=cfg.num_dense,
        dense_arch_layer_sizes=list(cfg.dense_arch),
        over_arch_layer_sizes=list(cfg.over_arch),
        dense_device=dense_device,
    )
    if cfg.arch == "dlrm":
        model = DLRM(**common)
    else:
        model = DLRM_DCN(**common, dcn_num_layers=cfg.dcn_num_layers, dcn_low_rank_dim=cfg.dcn_low_rank)
    return DLRMTrain(model)
