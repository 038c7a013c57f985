"""The probe: a flat DLRM trained briefly on the data, only to learn how features interact.

It is dmt's flat model (``dmt.build_model``: torchrec ``DLRM`` with the pairwise dot interaction)
with dmt's optimizers (row-wise Adagrad in backward for the tables, here Adam for the dense part)
and batches, in one process. What differs from a model trained for accuracy, and why:

* **Linear over-arch** (FwFM, Pan et al. 2018): the logit is ``w . [dense, z] + b``, so pair (i, j)
  adds exactly ``w_ij z_ij``. An MLP mixes pairs, which makes attributions noisier and, on
  generated data, needed more steps to find the planted groups.
* **Vocabulary.** Each feature keeps its ids seen at least ``min_count`` times in the training
  rows (at most ``max_vocabulary``, most frequent first); every other id shares one "rare" row.
  Rare ids are what a small probe memorises rows by; without them it must learn the shared
  structure, which is what interactions are. Tables are also far smaller, so steps are fast.
* **No dense inputs** (zeroed): 13 continuous values identify a row too, and the partitioner
  only groups sparse features.
* **Initial scale.** Embeddings start in +-``init_scale``, not torchrec's +-1/sqrt(rows): with tiny
  embeddings every dot product and its gradient start near zero, a saddle the probe would spend
  its budget leaving.
* **Held-out rows.** The last rows are never trained on; they drive early stopping on AUC (best
  weights restored) and are the rows the pair scores are computed on.
* **When to stop.** Held-out AUC alone stops a probe on small data too early: it peaks within a
  pass or two, while the pairs it relies on are still moving (30k rows: stopped at step 88 of
  154, AUC 0.60). So the probe stops only when all three hold: the AUC has not improved for
  ``patience`` evaluations, it has seen ``min_samples`` training samples, and its pair scores
  have settled (1 - correlation between two evaluations' pair scores below ``stable_change``,
  on the first ``STABILITY_ROWS`` held-out rows). ``steps`` caps it regardless.

Example:
    >>> import numpy as np
    >>> ids = np.array([[5, -1], [5, 7], [9, 7], [5, 8]])
    >>> vocab = build_vocabulary(ids, min_count=2, max_vocabulary=10)
    >>> [v.tolist() for v in vocab], encode(ids, vocab).tolist()  # 0 = rare, -1 = missing
    ([[5], [7]], [[1, -1], [1, 1], [0, 1], [1, 0]])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dmt import DmtError, ModelConfig, OptimConfig, apply_sparse_optimizer, build_model, build_optimizer
from dmt.data import SPARSE_NAMES, CriteoArrays, iter_batches


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """The probe model and how long it trains.

    Args:
        steps: most training steps (one batch each); early stopping usually ends sooner.
        batch_size: rows per step.
        embedding_dim: D of the probe's tables.
        min_count: ids seen fewer times in the training rows share one "rare" row. High on
            purpose: rare ids are what a probe memorises small data by (planted groups, 30k
            rows, 4 towers, 2-3 probes averaged, seeds 0-2: ARI 0.41-0.63 at 5, 0.77-1.0 at
            100-200; at 100k rows 1.0 with 50 or 100).
        max_vocabulary: most ids a feature keeps (the most frequent).
        lr: learning rate of the embeddings (row-wise Adagrad).
        dense_lr: learning rate of the dense part (Adam).
        init_scale: embeddings start uniform in [-init_scale, init_scale].
        sample_rows: rows held out (the end of the data, at most 20 %).
        eval_every: steps between held-out evaluations.
        patience: evaluations without improvement before training may stop.
        min_samples: training samples seen before training may stop (repeated passes over small data).
        stable_change: pair scores count as settled once 1 - their correlation between two
            evaluations falls below this (100k planted rows: 0.85 at step 44, 0.05 by step 264).
        seed: weights and batch order.
    """

    steps: int = 1000
    batch_size: int = 512
    embedding_dim: int = 16
    min_count: int = 100
    max_vocabulary: int = 10_000
    lr: float = 0.15  # fast: one pass over the data must find the interactions
    dense_lr: float = 0.01
    init_scale: float = 0.1
    sample_rows: int = 8192
    eval_every: int = 50
    patience: int = 6  # x eval_every = 300 steps: longer than the plateau before interactions are learned
    min_samples: int = 100_000  # ~4 passes over 30k rows; under one pass from 150k rows on
    stable_change: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "embedding_dim",
            "min_count",
            "max_vocabulary",
            "sample_rows",
            "eval_every",
            "patience",
            "min_samples",
        ):
            if getattr(self, name) < 1:
                raise DmtError(f"probe {name}={getattr(self, name)} must be >= 1")
        if not self.stable_change > 0:
            raise DmtError(f"probe stable_change={self.stable_change} must be > 0")
        if not (self.lr > 0 and self.dense_lr > 0 and self.init_scale > 0):
            raise DmtError(f"probe lr={self.lr}, dense_lr={self.dense_lr} and init_scale={self.init_scale} must be > 0")

    @staticmethod
    def debug() -> ProbeConfig:
        """Tiny and fast: doctests and unit tests."""
        return ProbeConfig(
            steps=4, batch_size=64, embedding_dim=4, min_count=1, sample_rows=128, eval_every=2, min_samples=1
        )


# ----------------------------------------------------------------------------------- vocabulary
def build_vocabulary(ids: np.ndarray, *, min_count: int, max_vocabulary: int) -> list[np.ndarray]:
    """Per feature, the sorted ids seen >= ``min_count`` times (the ``max_vocabulary`` most frequent)."""
    vocab = []
    for j in range(ids.shape[1]):
        col = ids[:, j]
        values, counts = np.unique(col[col >= 0], return_counts=True)
        keep = counts >= min_count
        values, counts = values[keep], counts[keep]
        if len(values) > max_vocabulary:
            values = values[np.argsort(-counts, kind="stable")[:max_vocabulary]]
        vocab.append(np.sort(values))
    return vocab


def encode(ids: np.ndarray, vocab: Sequence[np.ndarray]) -> np.ndarray:
    """Raw ids -> table rows: 1 + position in the vocabulary, 0 for any other id, -1 stays missing."""
    out = np.empty_like(ids)
    for j, v in enumerate(vocab):
        col = ids[:, j]
        pos = np.searchsorted(v, col)
        found = (pos < len(v)) & (v[np.minimum(pos, max(len(v) - 1, 0))] == col) if len(v) else np.zeros(len(col), bool)
        out[:, j] = np.where(col < 0, -1, np.where(found, pos + 1, 0))
    return out


def _with_ids(arrays: CriteoArrays, ids: np.ndarray) -> CriteoArrays:
    # Dense inputs are zeroed: the probe is about sparse interactions, and 13 continuous values
    # identify a row, a second way to memorise small data.
    return CriteoArrays(arrays.labels, np.zeros_like(arrays.dense), ids)


def prepare(data: CriteoArrays, cfg: ProbeConfig) -> tuple[CriteoArrays, CriteoArrays, tuple[int, ...]]:
    """Split off the held-out rows, build the vocabulary on the rest, encode both.

    Returns:
        Train rows, held-out rows (ids encoded) and the table size of every feature.

    Raises:
        DmtError: too few rows for one batch after holding out 20 %.
    """
    num_hold = min(cfg.sample_rows, len(data) // 5)
    train, hold = data.slice(0, len(data) - num_hold), data.slice(len(data) - num_hold, len(data))
    if len(train) < cfg.batch_size or num_hold < 1:
        raise DmtError(
            f"{len(data)} rows are too few to train the probe with batch size {cfg.batch_size} "
            f"and hold out 20 % ({num_hold} rows); use more data or a smaller --batch-size"
        )
    vocab = build_vocabulary(train.sparse, min_count=cfg.min_count, max_vocabulary=cfg.max_vocabulary)
    sizes = tuple(len(v) + 1 for v in vocab)
    return _with_ids(train, encode(train.sparse, vocab)), _with_ids(hold, encode(hold.sparse, vocab)), sizes


# ------------------------------------------------------------------------------------- training
def _forever(arrays: CriteoArrays, cfg: ProbeConfig, sizes: Sequence[int]) -> Iterator:
    epoch = 0
    while True:
        yield from iter_batches(arrays, batch_size=cfg.batch_size, num_embeddings=sizes, seed=cfg.seed, epoch=epoch)
        epoch += 1


def heldout_metrics(model: torch.nn.Module, holdout: CriteoArrays, cfg: ProbeConfig, sizes: Sequence[int]) -> dict:
    """Log loss and AUC of the probe over ``holdout`` (one process: not ``dmt.train.loop.evaluate``,
    which gathers over ranks and reports NE too)."""
    from sklearn.metrics import roc_auc_score

    losses, logits, labels = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in iter_batches(
            holdout, batch_size=min(cfg.batch_size, len(holdout)), num_embeddings=sizes, shuffle=False
        ):
            loss, (_, logit, label) = model(batch)
            losses.append(float(loss) * len(label))
            logits.append(logit.reshape(-1))
            labels.append(label.reshape(-1))
    model.train()
    y = torch.cat(labels).numpy()
    auc = float(roc_auc_score(y, torch.cat(logits).numpy())) if 0 < y.sum() < len(y) else 0.5
    return {"loss": sum(losses) / len(y), "auc": auc}


def build_probe(sizes: Sequence[int], cfg: ProbeConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The probe and its optimizer: dmt's recipe for a seeded flat DLRM in one process
    (``dmt.build_model``), then the one step dmt has no model option for (see the module docstring).

    The step swaps torchrec's MLP over-arch for a linear one (FwFM, Pan et al. 2018: the logit is
    ``w . [dense, z] + b``, so pair (i, j) adds exactly ``w_ij z_ij``; an MLP mixes pairs, which
    makes attributions noisier and the probe slower) and re-draws the tables in
    +-``cfg.init_scale``. The optimizer is then built again, over the new over-arch; the tables
    step inside backward, as in sharded dmt training.
    """
    num, d = len(sizes), cfg.embedding_dim
    mcfg = ModelConfig(
        arch="dlrm",
        embedding_dim=d,
        num_embeddings=tuple(sizes),
        sparse_features=tuple(SPARSE_NAMES[:num]),
        dense_arch=(64, d),
        over_arch=(2, 1),  # replaced below
    )
    ocfg = OptimConfig(sparse="rowwise_adagrad", sparse_lr=cfg.lr, dense="adam", dense_lr=cfg.dense_lr)
    model, _ = build_model(mcfg, ocfg, seed=cfg.seed, towers=None)  # its optimizer predates the swap
    model.model.over_arch = torch.nn.Linear(d + num * (num + 1) // 2, 1)
    with torch.no_grad():
        for table in model.model.sparse_arch.embedding_bag_collection.embedding_bags.values():
            table.weight.uniform_(-cfg.init_scale, cfg.init_scale)
    apply_sparse_optimizer(model, ocfg)
    return model, build_optimizer(model, ocfg)


def train_probe(
    train: CriteoArrays,
    holdout: CriteoArrays,
    sizes: Sequence[int],
    cfg: ProbeConfig,
    progress: bool = True,
    desc: str = "probe",
) -> tuple[torch.nn.Module, dict]:
    """Train for at most ``cfg.steps`` steps; stop early as the module docstring says.

    Every ``cfg.eval_every`` steps (more often if one pass over ``train`` is shorter than four
    intervals) the held-out AUC and the pair scores are measured. The best-AUC weights are
    restored at the end. AUC, not log loss: once the probe starts a second pass over small data
    its log loss rises from over-confidence while the pairs it relies on keep sharpening.

    Returns:
        The probe (best weights) and a summary: steps run, samples seen, best step, held-out AUC
        and loss, why it stopped.
    """
    model, optimizer = build_probe(sizes, cfg)
    batches = _forever(train, cfg, sizes)
    # At least four evaluations per pass over the data: small data is learnt (and then
    # memorised) within one pass, and the best moment must not fall between two evaluations.
    eval_every = max(1, min(cfg.eval_every, len(train) // cfg.batch_size // 4))
    monitor = _Monitor(model, holdout, cfg, sizes)
    step, reason = 0, "steps"
    model.train()
    with tqdm(total=cfg.steps, desc=desc, unit="step", disable=not progress) as bar:
        for step in range(1, cfg.steps + 1):
            optimizer.zero_grad()
            loss, _ = model(next(batches))
            loss.backward()
            optimizer.step()
            bar.update(1)
            loss = float(loss.detach())
            if not np.isfinite(loss):
                raise DmtError(f"the probe diverged (loss {loss} at step {step}); lower the probe lr")
            if step % eval_every and step != cfg.steps:
                continue
            monitor.evaluate(step)
            bar.set_postfix(
                train_loss=f"{loss:.4f}", heldout_auc=f"{monitor.last_auc:.4f}", change=f"{monitor.change:.3f}"
            )
            if monitor.settled(step * cfg.batch_size):
                reason = "converged"
                break
    model.load_state_dict(monitor.best["state"])
    summary = {
        "steps_run": step,
        "samples_seen": step * cfg.batch_size,
        "stop_reason": reason,
        "best_step": monitor.best["step"],
        "heldout_auc": monitor.best["auc"],
        "heldout_loss": monitor.best["loss"],
        "initial_heldout_auc": monitor.initial["auc"],
        "score_change": monitor.change,
        "table_rows": list(sizes),
    }
    return model, summary


# Held-out rows whose pair scores are compared between evaluations: enough for stable
# estimates (8 scoring batches), few enough to cost about one training step each time.
STABILITY_ROWS = 1024


class _Monitor:
    """Held-out AUC (best weights kept) and how much the pair scores moved since the last evaluation."""

    def __init__(self, model: torch.nn.Module, holdout: CriteoArrays, cfg: ProbeConfig, sizes: Sequence[int]) -> None:
        self.model, self.holdout, self.cfg, self.sizes = model, holdout, cfg, sizes
        self.probe_rows = holdout.slice(0, min(STABILITY_ROWS, len(holdout)))
        self.initial = heldout_metrics(model, holdout, cfg, sizes)
        self.best = {**self.initial, "step": 0, "state": _snapshot(model)}
        self.last_auc = self.initial["auc"]
        self.stale = 0
        self.change = float("inf")
        self.scores = self._scores()

    def _scores(self) -> np.ndarray:
        from partitioner.learned import pair_scores, relative_affinity  # learned imports this module

        return relative_affinity(pair_scores(self.model, self.probe_rows, self.sizes, self.cfg, "attribution"))

    def settled(self, samples_seen: int) -> bool:
        """No AUC gain for ``patience`` evaluations, ``min_samples`` seen, pair scores settled."""
        cfg = self.cfg
        return self.stale >= cfg.patience and samples_seen >= cfg.min_samples and self.change < cfg.stable_change

    def evaluate(self, step: int) -> None:
        val = heldout_metrics(self.model, self.holdout, self.cfg, self.sizes)
        self.last_auc = val["auc"]
        if val["auc"] > self.best["auc"] + 1e-4:
            self.best, self.stale = {**val, "step": step, "state": _snapshot(self.model)}, 0
        else:
            self.stale += 1
        scores = self._scores()
        self.change = score_change(self.scores, scores)
        self.scores = scores


def score_change(before: np.ndarray, after: np.ndarray) -> float:
    """1 - Pearson correlation of two (F, F) pair-score matrices' upper triangles: 0 = same shape.

    A correlation, not a difference: an over-fitting probe keeps scaling its scores up while
    their pattern, which is what the towers follow, has settled. Not a rank correlation either:
    most pairs score near zero, and their order is noise that never settles.
    """
    iu = np.triu_indices(len(before), k=1)
    a, b = before[iu], after[iu]
    if a.std() == 0 or b.std() == 0:
        return 1.0
    return 1.0 - float(np.corrcoef(a, b)[0, 1])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the probe's ops are tiny, and on a shared 2-core machine two
    threads spin-wait on each other (150 steps: 5 s on one thread, 32 s on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
