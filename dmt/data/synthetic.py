"""Synthetic rows in the exact Criteo TSV format, with planted groups of interacting features.

The 26 categorical features are split into ``num_groups`` hidden groups. The click logit is

    bias + a * sum_g sum_{i<j in g} <v_i[type(id_i)], v_j[type(id_j)]>     (within-group pairs)
         + b * sum_i m_i[type(id_i)]                                        (small main effects)
         + c * sum_d w_d * z_d                                              (weak dense signal)

where each of the three terms is first scaled to unit standard deviation (so a, b, c are the
spec's ``*_strength`` settings and the bias is calibrated to the target click rate), every id of
feature i has one of ``num_types`` latent "types" (a hash of the id), ``v_i`` holds one latent
vector per type, and a missing value contributes nothing. Features in different groups never interact, so the pairwise
dot products a DLRM learns between embeddings are large only inside a group: the groups are the
ground truth the tower partitioner is checked against. Latent vectors are centred under the id
distribution, so the interactions carry no main effect of their own.

Ids follow a Zipf-like law per feature (popular ids recur, the tail of a million-id feature is
rarely seen) and are written as a fixed bijective 32-bit hash of (feature, id) in 8 hex digits,
like Criteo's. Everything is generated and formatted in numpy, chunk by chunk, with one random
stream per fixed-size chunk: a fixed seed gives the same bytes, and the first N rows of a file
are the same whatever the total row count.

Example:
    >>> import os, tempfile
    >>> from dmt.data.criteo import read_criteo
    >>> path = os.path.join(tempfile.mkdtemp(), "synthetic.txt")
    >>> truth = generate_criteo(path, rows=1000, seed=0, spec=SyntheticSpec.tiny())
    >>> len(truth["groups"]), truth["rows"], read_criteo(path)[1].rows
    (4, 1000, 1000)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from dmt.atomic import atomic_open
from dmt.data.criteo import DENSE_NAMES, NUM_DENSE, NUM_SPARSE, SPARSE_NAMES
from dmt.errors import DmtError

TRUTH_VERSION = 1
_CHUNK_ROWS = 8192  # rows per random stream; fixed, so the output depends on nothing else
CHUNK_ROWS = _CHUNK_ROWS
_CALIBRATION_ROWS = 65536  # sample used to centre the latent vectors and calibrate the bias

# Shaped like Criteo Kaggle: a few features with millions of ids, most with hundreds or thousands.
DEFAULT_CARDINALITIES = (
    1460,
    583,
    2_000_000,
    800_000,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    3_000_000,
    3194,
    27,
    14992,
    1_500_000,
    10,
    5652,
    2173,
    4,
    1_200_000,
    18,
    15,
    286181,
    105,
    142572,
)
# Missing rates measured on Criteo Kaggle rows: many never missing, a few mostly missing.
DEFAULT_SPARSE_MISSING = (
    0.0,
    0.0,
    0.036,
    0.036,
    0.0,
    0.133,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.036,
    0.0,
    0.0,
    0.0,
    0.036,
    0.0,
    0.0,
    0.45,
    0.45,
    0.036,
    0.818,
    0.0,
    0.036,
    0.45,
    0.45,
)
DEFAULT_DENSE_MISSING = (
    0.448,
    0.0,
    0.204,
    0.198,
    0.049,
    0.251,
    0.049,
    0.001,
    0.049,
    0.448,
    0.049,
    0.773,
    0.198,
)
TINY_CARDINALITIES = (
    50,
    20,
    1000,
    500,
    30,
    10,
    200,
    60,
    3,
    400,
    100,
    1000,
    80,
    12,
    150,
    800,
    8,
    90,
    70,
    4,
    600,
    9,
    7,
    300,
    25,
    250,
)


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """How synthetic Criteo rows are generated. ``SyntheticSpec.tiny()`` is the preset for tests.

    Args:
        num_groups: hidden groups the 26 categorical features are split into (sizes differ by <= 1).
        cardinalities: number of ids per categorical feature (26 values, each in [1, 2**32)).
        sparse_missing_rate: probability that a categorical value is empty (26 values in [0, 1)).
        dense_missing_rate: probability that an integer value is empty (13 values in [0, 1)).
        zipf_exponent: ids are drawn with P(rank r) ~ (r + 1) ** -zipf_exponent.
        num_types: latent types per feature; ids of one type interact alike.
        latent_dim: size of the per-type latent vectors.
        interaction_strength: std of the logit part from within-group pairwise interactions.
        main_effect_strength: std of the logit part from per-feature main effects.
        dense_strength: std of the logit part from the integer features.
        click_rate: target fraction of positive labels; the bias is calibrated to it.
    """

    num_groups: int = 4
    cardinalities: tuple[int, ...] = DEFAULT_CARDINALITIES
    sparse_missing_rate: tuple[float, ...] = DEFAULT_SPARSE_MISSING
    dense_missing_rate: tuple[float, ...] = DEFAULT_DENSE_MISSING
    # Heavy heads: popular ids recur often enough for a DLRM to learn them from ~200k rows
    # (1.05 left a small DLRM at ~0.63 AUC on 300k rows, 1.3 gives ~0.8).
    zipf_exponent: float = 1.3
    num_types: int = 8
    latent_dim: int = 2  # a 16-dim embedding holds 4 groups x 2 dims with room to spare
    # Interactions dominate: a DLRM must learn them to do well, and they reveal the groups.
    interaction_strength: float = 2.5
    main_effect_strength: float = 0.5
    dense_strength: float = 0.3
    click_rate: float = 0.25

    def __post_init__(self) -> None:
        for name, n in (
            ("cardinalities", NUM_SPARSE),
            ("sparse_missing_rate", NUM_SPARSE),
            ("dense_missing_rate", NUM_DENSE),
        ):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)  # accept lists (JSON), stay hashable
            if len(value) != n:
                raise ValueError(f"{name} needs {n} values, got {len(value)}")
        if not 1 <= self.num_groups <= NUM_SPARSE:
            raise ValueError(f"num_groups={self.num_groups} must be in [1, {NUM_SPARSE}]")
        bad = [c for c in self.cardinalities if not 1 <= int(c) < 2**32]
        if bad:
            raise ValueError(f"cardinalities {bad} must be in [1, 2**32)")
        bad_rates = [r for r in self.sparse_missing_rate + self.dense_missing_rate if not 0 <= r < 1]
        if bad_rates:
            raise ValueError(f"missing rates {bad_rates} must be in [0, 1)")
        if self.zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent={self.zipf_exponent} must be > 0")
        if self.num_types < 1 or self.latent_dim < 1:
            raise ValueError(f"num_types={self.num_types} and latent_dim={self.latent_dim} must be >= 1")
        if min(self.interaction_strength, self.main_effect_strength, self.dense_strength) < 0:
            raise ValueError("interaction_strength, main_effect_strength and dense_strength must be >= 0")
        if not 0 < self.click_rate < 1:
            raise ValueError(f"click_rate={self.click_rate} must be in (0, 1)")

    @classmethod
    def tiny(cls, **overrides: Any) -> SyntheticSpec:
        """Small id spaces (<= 1000 ids a feature) and fewer types: fast tests, learnable from 10k rows."""
        return cls(**{"cardinalities": TINY_CARDINALITIES, "num_types": 4, **overrides})


PRESETS = {"default": SyntheticSpec, "tiny": SyntheticSpec.tiny}


def generate_criteo(
    path: str | os.PathLike[str],
    *,
    rows: int,
    seed: int,
    spec: SyntheticSpec = SyntheticSpec(),
    progress: bool = False,
    first_chunk: int = 0,
) -> dict[str, Any]:
    """Write ``rows`` synthetic rows as Criteo TSV (atomically; gzip if ``path`` ends in .gz).

    Args:
        path: output file.
        rows: number of rows, >= 1.
        seed: non-negative seed; the same seed and spec give the same bytes.
        spec: the generator's settings.
        progress: show a tqdm progress bar.
        first_chunk: start the row stream at this chunk of ``CHUNK_ROWS`` rows, so files written
            with consecutive ranges (in parallel) are the pieces of one long file, same bytes.

    Returns:
        The ground truth: ``{"version", "seed", "rows", "groups", "cardinalities", "missing_rate",
        "click_rate", "spec"}``, JSON-serialisable; ``groups`` lists feature names per group.

    Raises:
        DmtError: ``rows`` < 1 or a negative seed.
    """
    if rows < 1:
        raise DmtError(f"rows={rows} must be >= 1")
    if seed < 0:
        raise DmtError(f"seed={seed} must be >= 0")
    model = _Model(spec, seed)
    positives = 0
    path = os.fspath(path)
    with atomic_open(path, "wb") as raw, tqdm(total=rows, unit="rows", disable=not progress) as bar:
        # filename="" and mtime=0 keep the temp file's name and the clock out of the gzip header.
        # Level 1: compressing at the default level 9 would take longer than generating.
        gz = path.endswith(".gz")
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) if gz else raw
        for chunk, start in enumerate(range(0, rows, _CHUNK_ROWS), start=first_chunk):
            n = min(_CHUNK_ROWS, rows - start)
            # Always draw a whole chunk: the first N rows are then the same for any row count.
            data = model.sample(np.random.default_rng([seed, 2, chunk]), _CHUNK_ROWS, keep=n)
            positives += int(data["labels"].sum())
            out.write(_format_rows(data))
            bar.update(n)
        if out is not raw:
            out.close()  # writes the gzip trailer; leaves ``raw`` open for atomic_open
    return {
        "version": TRUTH_VERSION,
        "seed": seed,
        "rows": rows,
        "groups": [[SPARSE_NAMES[f] for f in g] for g in model.groups],
        "cardinalities": dict(zip(SPARSE_NAMES, map(int, spec.cardinalities))),
        "missing_rate": dict(zip(SPARSE_NAMES + DENSE_NAMES, spec.sparse_missing_rate + spec.dense_missing_rate)),
        "click_rate": positives / rows,
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()},
    }


def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijective 32-bit integer hash (lowbias32): distinct inputs give distinct outputs."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


# Fixed per-feature offsets: the hex of id r of feature f is mix32(r + salt_f), the same for every seed.
_FEATURE_SALT = _mix32(np.arange(1, NUM_SPARSE + 1, dtype=np.uint32) * np.uint32(0x9E3779B9))


class _Model:
    """The planted click model: structure drawn from the seed, then centred and calibrated."""

    def __init__(self, spec: SyntheticSpec, seed: int) -> None:
        self.spec = spec
        rng = np.random.default_rng([seed, 0])
        perm = rng.permutation(NUM_SPARSE)
        self.groups = [sorted(g.tolist()) for g in np.array_split(perm, spec.num_groups)]
        self.order = np.concatenate(self.groups)  # features sorted by group
        self.group_starts = np.cumsum([0] + [len(g) for g in self.groups[:-1]])
        self.card = np.asarray(spec.cardinalities, np.float64)
        self.type_salt = rng.integers(0, 2**32, NUM_SPARSE, dtype=np.uint32)
        self.latent = rng.standard_normal((NUM_SPARSE, spec.num_types, spec.latent_dim)).astype(np.float32)
        self.main = rng.standard_normal((NUM_SPARSE, spec.num_types)).astype(np.float32)
        self.dense_mu = rng.uniform(0.5, 4.0, NUM_DENSE)  # log1p of a typical count
        self.dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self.dense_w = rng.standard_normal(NUM_DENSE)
        self.scale = np.ones(3)
        self.bias = 0.0
        self._calibrate(np.random.default_rng([seed, 1]))

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Centre latent and main effects under the id distribution; unit-scale terms; fit the bias."""
        d = self._draw(rng, _CALIBRATION_ROWS)
        types, present = d["types"], ~d["sparse_missing"]
        for f in range(NUM_SPARSE):
            counts = np.bincount(types[present[:, f], f], minlength=self.spec.num_types)
            if counts.sum():
                w = counts / counts.sum()
                self.latent[f] -= (w @ self.latent[f]).astype(np.float32)
                self.main[f] -= np.float32(w @ self.main[f])
        terms = self._terms(d)
        self.scale = np.array(
            [
                s / max(float(t.std()), 1e-9)
                for s, t in zip(
                    (self.spec.interaction_strength, self.spec.main_effect_strength, self.spec.dense_strength), terms
                )
            ]
        )
        logit = sum(s * t for s, t in zip(self.scale, terms))
        lo, hi = -30.0, 30.0  # bisection: mean sigmoid(bias + logit) is increasing in bias
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if _sigmoid(mid + logit).mean() > self.spec.click_rate else (mid, hi)
        self.bias = (lo + hi) / 2

    def _draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Ids (Zipf ranks), their types, missingness and the dense Gaussian scores of ``n`` rows."""
        spec = self.spec
        # Inverse CDF of a power law on [1, card + 1): rank = floor(x) - 1.
        u = rng.random((n, NUM_SPARSE))
        a = spec.zipf_exponent
        if abs(a - 1.0) < 1e-9:
            x = np.exp(u * np.log1p(self.card))
        else:
            x = (1.0 - u * (1.0 - (self.card + 1.0) ** (1.0 - a))) ** (1.0 / (1.0 - a))
        ranks = np.minimum(x.astype(np.int64) - 1, self.card.astype(np.int64) - 1)
        types = _mix32(ranks.astype(np.uint32) ^ self.type_salt) % np.uint32(spec.num_types)
        sparse_missing = rng.random((n, NUM_SPARSE)) < np.asarray(spec.sparse_missing_rate)
        z = rng.standard_normal((n, NUM_DENSE))
        dense_missing = rng.random((n, NUM_DENSE)) < np.asarray(spec.dense_missing_rate)
        return {
            "ranks": ranks,
            "types": types.astype(np.int64),
            "sparse_missing": sparse_missing,
            "z": z,
            "dense_missing": dense_missing,
        }

    def _terms(self, d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw (interaction, main, dense) logit terms, each (N,)."""
        nt = self.spec.num_types
        # Type ``nt`` of every feature is "missing": a zero vector and a zero main effect.
        latent = np.zeros((NUM_SPARSE, nt + 1, self.spec.latent_dim), np.float32)
        latent[:, :nt] = self.latent
        main = np.zeros((NUM_SPARSE, nt + 1), np.float32)
        main[:, :nt] = self.main
        types = np.where(d["sparse_missing"], nt, d["types"])
        flat = (np.arange(NUM_SPARSE) * (nt + 1) + types)[:, self.order]  # columns grouped
        v = latent.reshape(-1, self.spec.latent_dim)[flat]  # (N, 26, latent_dim)
        # sum_{i<j in g} <v_i, v_j> = (|sum_{i in g} v_i|^2 - sum_{i in g} |v_i|^2) / 2
        s = np.add.reduceat(v, self.group_starts, axis=1)  # (N, num_groups, latent_dim)
        inter = ((s * s).sum(axis=(1, 2)) - (v * v).sum(axis=(1, 2))) / 2
        main_term = main.reshape(-1)[flat].sum(axis=1)
        dense = (d["z"] * ~d["dense_missing"]) @ self.dense_w
        return inter, main_term, dense

    def sample(self, rng: np.random.Generator, n: int, keep: int | None = None) -> dict[str, np.ndarray]:
        """Draw ``n`` rows, return the first ``keep`` (default all): labels, dense ints, hashed ids."""
        d = self._draw(rng, n)
        u = rng.random(n)  # drawn for all n rows, so dropping rows never shifts the stream
        if keep is not None:
            d, u = {k: v[:keep] for k, v in d.items()}, u[:keep]
        logit = self.bias + sum(s * t for s, t in zip(self.scale, self._terms(d)))
        d["labels"] = u < _sigmoid(logit)
        # At most 7 characters a value (the formatter writes one 8-byte word per field).
        log_count = np.clip(self.dense_mu + self.dense_sigma * d["z"], 0.0, 15.0)
        dense = np.floor(np.expm1(log_count)).astype(np.int64)
        dense[:, 1] -= 1  # like Criteo's int_1, a count that can be -1
        d["dense"] = dense
        d["hashed"] = _mix32(d["ranks"].astype(np.uint32) + _FEATURE_SALT)
        return d


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))  # overflow-free logistic


_U = np.uint64
_TABS = _U(0x0909090909090909)
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)  # low k bytes


def _hex_words(h: np.ndarray) -> np.ndarray:
    """uint32 values -> 8 lowercase hex characters each, as little-endian uint64 words (SWAR)."""
    v = h.astype(np.uint64)
    v = (v | (v << _U(16))) & _U(0x0000FFFF0000FFFF)  # spread: nibble i of h -> byte i of v
    v = (v | (v << _U(8))) & _U(0x00FF00FF00FF00FF)
    v = (v | (v << _U(4))) & _U(0x0F0F0F0F0F0F0F0F)
    v = v.byteswap()  # most significant nibble first in memory
    ge10 = ((v + _U(0x0606060606060606)) >> _U(4)) & _U(0x0101010101010101)
    return v + _U(0x3030303030303030) + ge10 * _U(ord("a") - ord("0") - 10)


def _int_words(x: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers of at most 7 characters -> (words, lengths): characters left-aligned, tab-padded."""
    absval = np.abs(x)
    ndig = np.ones_like(x)
    for p in range(1, 7):
        ndig += absval >= 10**p
    neg = x < 0
    length = np.where(missing, 0, ndig + neg)
    assert int(length.max(initial=0)) <= 7, "dense values must have at most 7 characters"
    # 8 zero-padded decimal digits, most significant in byte 0, by SWAR division: split into
    # 4-digit halves, then 2-digit and 1-digit lanes (multiply-shift = exact division here).
    v = absval.astype(np.uint64)
    hi = v // _U(10000)
    v = hi | ((v - hi * _U(10000)) << _U(32))
    q = ((v * _U(5243)) >> _U(19)) & _U(0x0000007F0000007F)  # lane // 100 for lanes < 10000
    v = q | ((v - q * _U(100)) << _U(16))
    q = ((v * _U(103)) >> _U(10)) & _U(0x000F000F000F000F)  # lane // 10 for lanes < 100
    v = q | ((v - q * _U(10)) << _U(8))
    # Drop the leading zeros, make room for a sign, turn digits into characters.
    v = (v >> (_U(8) * (_U(8) - ndig.astype(np.uint64)))) + _U(0x3030303030303030)
    v = np.where(neg, (v << _U(8)) | _U(ord("-")), v)
    keep = _LOW_BYTES[length]
    return (v & keep) | (_TABS & ~keep), length


def _format_rows(d: dict[str, np.ndarray]) -> bytes:
    """TSV bytes of one chunk, written as one 8-byte word per field into a tab-filled buffer.

    Dense words are left-aligned and tab-padded, so a word may spill tabs over the next fields:
    writing field by field, left to right, lets later fields overwrite the spill.
    """
    n = len(d["labels"])
    dense_words, dense_len = _int_words(d["dense"], d["dense_missing"])
    sparse_present = ~d["sparse_missing"]
    field_len = np.empty((n, 1 + NUM_DENSE + NUM_SPARSE), np.int64)
    field_len[:, 0] = 1
    field_len[:, 1 : 1 + NUM_DENSE] = dense_len
    field_len[:, 1 + NUM_DENSE :] = 8 * sparse_present
    field_len += 1  # the tab (or final newline) after every field
    ends = np.cumsum(field_len.reshape(-1)).reshape(n, -1)  # one past each separator
    starts = ends - field_len
    total = int(ends[-1, -1])
    out = np.full(total + 8, ord("\t"), np.uint8)  # 8 spare bytes: a word may reach past the end
    words = np.ndarray(shape=(total + 1,), dtype="<u8", buffer=out, strides=(1,))
    out[starts[:, 0]] = ord("0") + d["labels"]
    for k in range(NUM_DENSE):  # no two rows overlap within one field: one assignment per field
        words[starts[:, 1 + k]] = dense_words[:, k]
    sparse_starts = starts[:, 1 + NUM_DENSE :]
    words[sparse_starts[sparse_present]] = _hex_words(d["hashed"])[sparse_present]
    out[ends[:, -1] - 1] = ord("\n")
    return out[:total].tobytes()
