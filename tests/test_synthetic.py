"""The synthetic generator: exact Criteo format, determinism, truth, and the planted signal."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from dmt.data.criteo import NUM_SPARSE, SPARSE_NAMES, read_criteo
from dmt.data.synthetic import _CHUNK_ROWS, SyntheticSpec, _mix32, _Model, generate_criteo
from dmt.errors import DmtError

TINY = SyntheticSpec.tiny()


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = y.sum()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def test_round_trip_matches_generator_values(tmp_path):
    path = tmp_path / "d.txt"
    generate_criteo(path, rows=3000, seed=11, spec=TINY)
    got, report = read_criteo(path)
    # The generator's first chunk, redrawn from the same stream, is exactly what was written.
    d = _Model(TINY, 11).sample(np.random.default_rng([11, 2, 0]), _CHUNK_ROWS, keep=3000)
    assert report.rows == 3000 and report.bad_rows_skipped == 0
    np.testing.assert_array_equal(got.labels, d["labels"].astype(np.float32))
    want_dense = np.where(d["dense_missing"], 0.0, np.log1p(np.maximum(d["dense"], 0))).astype(np.float32)
    np.testing.assert_array_equal(got.dense, want_dense)
    np.testing.assert_array_equal(got.sparse, np.where(d["sparse_missing"], -1, d["hashed"].astype(np.int64)))
    assert (d["dense"][:, 1] < 0).any(), "int_1 should exercise negative values"


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.txt", "b.txt", "c.txt"))
    ta = generate_criteo(a, rows=2000, seed=5, spec=TINY)
    tb = generate_criteo(b, rows=2000, seed=5, spec=TINY)
    tc = generate_criteo(c, rows=2000, seed=6, spec=TINY)
    assert a.read_bytes() == b.read_bytes() and ta == tb
    assert a.read_bytes() != c.read_bytes() and ta["groups"] != tc["groups"]


def test_prefix_does_not_depend_on_row_count(tmp_path):
    # One random stream per fixed-size chunk: a longer file starts with the shorter one's rows.
    short, long = tmp_path / "s.txt", tmp_path / "l.txt"
    generate_criteo(short, rows=20_000, seed=1, spec=TINY)
    generate_criteo(long, rows=20_100, seed=1, spec=TINY)
    assert long.read_bytes().startswith(short.read_bytes())


def test_gzip_output_is_deterministic_and_same_rows(tmp_path):
    plain, gz1, gz2 = tmp_path / "d.txt", tmp_path / "d1.txt.gz", tmp_path / "d2.txt.gz"
    for p in (plain, gz1, gz2):
        generate_criteo(p, rows=1500, seed=2, spec=TINY)
    assert gz1.read_bytes() == gz2.read_bytes()  # no name or clock in the gzip header
    assert gzip.decompress(gz1.read_bytes()) == plain.read_bytes()


def test_truth_structure(tmp_path):
    spec = SyntheticSpec.tiny(num_groups=3)
    truth = generate_criteo(tmp_path / "d.txt", rows=4000, seed=0, spec=spec)
    assert json.loads(json.dumps(truth)) == truth  # JSON-serialisable as is
    assert truth["version"] == 1 and truth["seed"] == 0 and truth["rows"] == 4000
    groups = truth["groups"]
    assert len(groups) == 3
    flat = [f for g in groups for f in g]
    assert sorted(flat) == sorted(SPARSE_NAMES)  # a partition: every feature exactly once
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert truth["cardinalities"] == dict(zip(SPARSE_NAMES, spec.cardinalities))
    assert set(truth["missing_rate"]) == set(SPARSE_NAMES) | {f"int_{i}" for i in range(13)}
    assert truth["spec"]["num_groups"] == 3 and len(truth["spec"]["cardinalities"]) == NUM_SPARSE
    labels = read_criteo(tmp_path / "d.txt")[0].labels
    assert truth["click_rate"] == pytest.approx(float(labels.mean()))


@pytest.mark.parametrize("spec", [TINY, SyntheticSpec()], ids=["tiny", "default"])
def test_click_rate_missing_rates_and_ids(tmp_path, spec):
    truth = generate_criteo(tmp_path / "d.txt", rows=20_000, seed=3, spec=spec)
    arrays = read_criteo(tmp_path / "d.txt")[0]
    assert truth["click_rate"] == pytest.approx(spec.click_rate, abs=0.02)
    missing = (arrays.sparse < 0).mean(axis=0)
    np.testing.assert_allclose(missing, spec.sparse_missing_rate, atol=0.02)
    never = np.array(spec.sparse_missing_rate) == 0
    assert never.any() and (missing[never] == 0).all()
    for f in range(NUM_SPARSE):  # at most `cardinality` distinct ids, popular ones recur
        values, counts = np.unique(arrays.sparse[arrays.sparse[:, f] >= 0, f], return_counts=True)
        assert len(values) <= spec.cardinalities[f]
        assert counts.max() > 1 or spec.sparse_missing_rate[f] > 0.5
    assert arrays.sparse.max() < 2**32
    assert (arrays.dense[:, 7] > 0).mean() > 0.5  # integer counts, mostly present


def test_id_hash_is_a_bijection():
    x = np.arange(1 << 16, dtype=np.uint32)
    assert len(np.unique(_mix32(x))) == len(x)
    assert len(np.unique(_mix32(x + np.uint32(2**32 - 1000)))) == len(x)  # wraps, still distinct


def test_bad_arguments(tmp_path):
    with pytest.raises(DmtError, match="rows=0"):
        generate_criteo(tmp_path / "d.txt", rows=0, seed=0)
    with pytest.raises(DmtError, match="seed=-1"):
        generate_criteo(tmp_path / "d.txt", rows=10, seed=-1)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="num_groups=27"):
        SyntheticSpec(num_groups=27)
    with pytest.raises(ValueError, match="cardinalities needs 26"):
        SyntheticSpec(cardinalities=(10,) * 25)
    with pytest.raises(ValueError, match="click_rate"):
        SyntheticSpec(click_rate=1.0)


def test_within_group_interactions_carry_the_signal(tmp_path):
    """A factorisation machine on within-group pairs beats one on cross-group pairs + main effects."""
    spec = SyntheticSpec.tiny(cardinalities=(16,) * NUM_SPARSE)  # every id recurs: learns in seconds
    truth = generate_criteo(tmp_path / "d.txt", rows=8000, seed=3, spec=spec)
    arrays = read_criteo(tmp_path / "d.txt")[0]
    ids = np.stack([np.unique(c, return_inverse=True)[1] for c in arrays.sparse.T], axis=1)
    sizes = ids.max(axis=0) + 1
    x = torch.tensor(ids + np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    y = torch.tensor(arrays.labels)
    member = torch.zeros(NUM_SPARSE, len(truth["groups"]))  # (26, G) one-hot group of each feature
    for g, fs in enumerate(truth["groups"]):
        member[[SPARSE_NAMES.index(f) for f in fs], g] = 1.0

    def fit_auc(pairs: str, ntrain: int = 6000) -> float:
        torch.manual_seed(0)
        emb = torch.nn.Parameter(0.01 * torch.randn(int(sizes.sum()), 4))
        lin = torch.nn.Parameter(torch.zeros(int(sizes.sum())))
        bias = torch.nn.Parameter(torch.zeros(()))
        opt = torch.optim.Adam([emb, lin, bias], lr=0.1)

        def logit(rows: torch.Tensor) -> torch.Tensor:
            e = emb[rows]  # (B, 26, 4)
            per_group = torch.einsum("bfd,fg->bgd", e, member).square().sum((1, 2))
            if pairs == "within":  # sum over i<j in one group of <e_i, e_j>
                inter = per_group - e.square().sum((1, 2))
            else:  # sum over i<j in different groups
                inter = e.sum(1).square().sum(1) - per_group
            return bias + lin[rows].sum(1) + inter / 2

        for _ in range(40):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit(x[:ntrain]), y[:ntrain])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return _auc(logit(x[ntrain:]).numpy(), arrays.labels[ntrain:])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead
    try:
        auc_within, auc_cross = fit_auc("within"), fit_auc("cross")
    finally:
        torch.set_num_threads(threads)
    assert auc_within > 0.65, auc_within
    assert auc_within > auc_cross + 0.1, (auc_within, auc_cross)
