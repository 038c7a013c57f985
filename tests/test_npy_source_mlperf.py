"""The MLPerf DLRM-DCNv2 preset and its multi-hot inputs, made from one-hot Criteo as torchrec_dlrm does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmt.data import (
    MLPERF_MULTI_HOT_SIZES,
    MultiHot,
    PreprocessConfig,
    RowSet,
    iter_rank_batches,
    open_preprocessed,
    preprocess_criteo,
    random_batch,
)
from dmt.data.synthetic import generate_criteo
from dmt.errors import DmtError
from dmt.model.flat import ModelConfig, build_flat_model

MLPERF_TABLES = (
    40000000,
    39060,
    17295,
    7424,
    20265,
    3,
    7122,
    1543,
    63,
    40000000,
    3067956,
    405282,
    10,
    2209,
    11938,
    155,
    4,
    976,
    14,
    40000000,
    40000000,
    40000000,
    590152,
    12973,
    108,
    36,
)  # fmt: skip  (MLPerf's list as published)


def _bags(batch) -> list[list[np.ndarray]]:
    """Per feature, per sample: the sample's ids."""
    kjt = batch.sparse_features
    lengths = kjt.lengths().reshape(len(kjt.keys()), -1).numpy()
    values = np.split(kjt.values().numpy(), np.cumsum(lengths.reshape(-1))[:-1])
    return [values[t * lengths.shape[1] : (t + 1) * lengths.shape[1]] for t in range(len(lengths))]


@pytest.mark.parametrize("method", ["hash", "table"])
def test_multi_hot_bags_start_with_the_id_and_are_fixed_per_id(method):
    tables = [50] * 26
    sizes = MLPERF_MULTI_HOT_SIZES
    mh = MultiHot(sizes=sizes, num_embeddings=tables, method=method)
    one_hot = random_batch(400, tables, seed=1)
    one_hot.sparse_features.lengths()[::7] = 0  # some missing categoricals
    kjt = one_hot.sparse_features
    kjt._values = kjt.values()[: int(kjt.lengths().sum())]  # (drop ids of the bags just emptied)
    before, after = _bags(one_hot), _bags(mh.expand(one_hot))
    for t in range(26):
        by_id: dict[int, list[int]] = {}
        for old, new in zip(before[t], after[t]):
            assert len(new) == (sizes[t] if len(old) else 0)  # a missing categorical stays an empty bag
            if len(old):
                assert new[0] == old[0] and new.min() >= 0 and new.max() < 50
                assert by_id.setdefault(int(old[0]), new.tolist()) == new.tolist()
    assert len(np.unique(np.concatenate(after[20]))) > 45  # 100 ids per bag spread over the 50 rows


def test_table_method_is_torchrec_dlrms_uniform_multihot():
    sizes, tables = (3, 1, 5) + (1,) * 23, (40, 7, 30) + (9,) * 23
    state = np.random.get_state()
    np.random.seed(0)  # torchrec_dlrm's Multihot: a global seed, then one randint per table in order
    expected = [
        np.concatenate([np.arange(n)[:, None], np.random.randint(0, n, size=(n, s - 1))], 1)
        for n, s in zip(tables, sizes)
    ]
    np.random.set_state(state)
    mh = MultiHot(sizes=sizes, num_embeddings=tables, method="table")
    batch = random_batch(64, list(tables), seed=2)
    for t, bags in enumerate(_bags(mh.expand(batch))):
        for old, new in zip(_bags(batch)[t], bags):
            np.testing.assert_array_equal(new, expected[t][old[0]])


def test_table_method_refuses_mlperf_sized_tables_and_points_to_hash():
    with pytest.raises(DmtError, match=r"GiB per rank; use method='hash'"):
        MultiHot(sizes=MLPERF_MULTI_HOT_SIZES, num_embeddings=MLPERF_TABLES, method="table")


def test_mlperf_preset_is_the_reference_model_with_a_row_cap():
    cfg = ModelConfig.preset("mlperf_dcnv2")
    assert cfg.num_embeddings == MLPERF_TABLES
    assert (cfg.arch, cfg.embedding_dim, cfg.dcn_num_layers, cfg.dcn_low_rank) == ("dlrm_dcn", 128, 3, 512)
    assert (cfg.dense_arch, cfg.over_arch) == ((512, 256, 128), (1024, 1024, 512, 256, 1))
    assert cfg.multi_hot_sizes == MLPERF_MULTI_HOT_SIZES
    small = ModelConfig.preset("mlperf_dcnv2", row_cap=1000)
    assert small.num_embeddings == tuple(min(n, 1000) for n in MLPERF_TABLES)
    assert ModelConfig.preset("small", row_cap=10).num_embeddings == (10,) * 26
    assert (
        ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "multi_hot_sizes"}).multi_hot_sizes == ()
    )
    with pytest.raises(DmtError, match="multi_hot_sizes"):
        cfg.replace(multi_hot_sizes=(1, 2))


def test_mlperf_preset_trains_on_cpu_at_a_small_row_cap(tmp_path):
    generate_criteo(tmp_path / "day_0", rows=256, seed=4)
    preprocess_criteo(PreprocessConfig(inputs=(tmp_path / "day_0",), out=tmp_path / "npy", workers=1))
    cfg = ModelConfig.preset("mlperf_dcnv2", row_cap=300)
    torch.manual_seed(0)
    model = build_flat_model(cfg)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.005)  # MLPerf DLRM-DCNv2's Adagrad rate
    mh = MultiHot(sizes=cfg.multi_hot_sizes, num_embeddings=cfg.num_embeddings)
    rows = RowSet.from_data(open_preprocessed(tmp_path / "npy"))
    batches = list(iter_rank_batches(rows, batch_size=128, num_embeddings=cfg.num_embeddings, transform=mh.expand))
    assert batches[0].sparse_features.lengths().max() == 100  # cat_20's bags
    with torch.no_grad():
        before = [float(model(b)[0]) for b in batches]
    for _ in range(3):
        for batch in batches:
            loss, _ = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = [float(model(b)[0]) for b in batches]
    assert np.isfinite(after).all() and sum(after) < sum(before)
