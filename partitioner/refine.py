"""Balance constraints, the LPT baseline, and the local search that enforces balance.

The objective is the *intra-tower affinity*: the sum of ``w_ij`` over pairs i < j in the same
tower (equivalently, the affinity lost between towers is minimised), less a modularity penalty
(``resolution``) so that a loose tolerance does not fill towers with features that merely add
links. The constraints:

* **balance**: every tower's lookup cost <= ``max_load`` = (1 + tolerance) x total / num_towers;
* **memory**: every tower's table bytes <= ``max_memory``;
* **no empty tower** unless ``allow_empty``.

:class:`LocalSearchBalancer` first *repairs* (moves features out of over-full towers and into empty
ones, losing as little affinity as possible), then *improves* (moves and pairwise swaps that gain
affinity and keep every constraint). It keeps ``A = W @ onehot(labels)``, the (F, K) affinity of
every feature to every tower, up to date in O(degree) per move, so each pass scores all F x K
moves with numpy and only the accepted ones run in Python.

Shapes: F = features, K = towers.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> w = sp.csr_array(np.kron(np.eye(2), np.ones((2, 2))) - np.eye(4))  # pairs (0,1) and (2,3)
    >>> cons = Constraints(num_towers=2, cost=np.ones(4), memory=np.zeros(4), max_load=2.0)
    >>> labels = LocalSearchBalancer().balance(np.array([0, 1, 0, 1]), w, cons)  # one swap
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_random_state

from partitioner.errors import PartitionError, PartitionErrorReason


@dataclass(frozen=True)
class Constraints:
    """What every tower must satisfy.

    Args:
        num_towers: K.
        cost: (F,) lookup cost per feature.
        memory: (F,) table bytes per feature.
        max_load: the largest tower cost allowed.
        max_memory: the largest tower memory allowed (inf: no limit).
        allow_empty: whether a tower may end up with no feature.
        balanced: (F,) a feasible assignment, the most balanced known (``partitioner.balance``);
            searches may start from it. None: not known.
    """

    num_towers: int
    cost: np.ndarray
    memory: np.ndarray
    max_load: float
    max_memory: float = math.inf
    allow_empty: bool = False
    balanced: np.ndarray | None = None

    def loads(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(K,) cost, memory and feature count of every tower."""
        k = self.num_towers
        return (
            np.bincount(labels, weights=self.cost, minlength=k),
            np.bincount(labels, weights=self.memory, minlength=k),
            np.bincount(labels, minlength=k),
        )

    def violation(self, labels: np.ndarray) -> PartitionErrorReason | None:
        """The first constraint ``labels`` break, or None."""
        load, mem, count = self.loads(labels)
        if mem.max() > self.max_memory * (1 + 1e-12):
            return PartitionErrorReason.MEMORY
        if load.max() > self.max_load * (1 + 1e-12):
            return PartitionErrorReason.BALANCE
        if not self.allow_empty and (count == 0).any():
            return PartitionErrorReason.TOO_FEW_FEATURES
        return None


def lpt_assign(cons: Constraints, order: np.ndarray | None = None) -> np.ndarray:
    """Longest-processing-time greedy: each feature, costliest first, to the least-loaded tower.

    Ties go to the tower with fewer features, so zero-cost features still fill empty towers. A
    tower whose memory would overflow is skipped. List scheduling guarantees a max load of at most
    ``mean + max_cost``, so balance holds whenever every feature costs <= tolerance x mean.

    Args:
        cons: the constraints (only ``max_memory`` is enforced here).
        order: the order to place features in; default costliest first.

    Returns:
        (F,) labels.

    Raises:
        PartitionError: MEMORY if some feature fits in no tower.
    """
    if order is None:
        order = np.argsort(-cons.cost, kind="stable")

    def no_fit(i: int, used: np.ndarray) -> PartitionError:
        return PartitionError(
            f"feature #{i} ({cons.memory[i]:,.0f} bytes) fits in no tower: the emptiest has "
            f"{cons.max_memory - used.min():,.0f} bytes left; add hosts or host memory",
            PartitionErrorReason.MEMORY,
        )

    return least_loaded(cons.cost, cons.memory, cons.num_towers, order, max_memory=cons.max_memory, no_fit=no_fit)


def least_loaded(
    cost: np.ndarray,
    memory: np.ndarray,
    num_bins: int,
    order: np.ndarray,
    *,
    max_memory: float = math.inf,
    max_count: float = math.inf,
    no_fit: Callable[[int, np.ndarray], PartitionError],
) -> np.ndarray:
    """List scheduling: each item in ``order`` to the least-loaded bin it fits, ties to fewer items.

    The one greedy behind :func:`lpt_assign` (features -> towers) and
    :func:`partitioner.hosts.assign_hosts` (towers -> hosts).

    Args:
        cost: (N,) load of every item.
        memory: (N,) bytes of every item.
        num_bins: B.
        order: the items to place, in placement order.
        max_memory: bytes a bin holds at most.
        max_count: items a bin holds at most.
        no_fit: the error to raise for item ``i`` that fits in no bin, given the bins' (B,) bytes used.

    Returns:
        (N,) bin of every item (placed items only; others are undefined).

    Raises:
        PartitionError: ``no_fit``'s.
    """
    load, used, count = np.zeros(num_bins), np.zeros(num_bins), np.zeros(num_bins, dtype=np.int64)
    bins = np.empty(len(cost), dtype=np.int64)
    for i in order.tolist():
        fits = (count < max_count) & (used + memory[i] <= max_memory)
        if not fits.any():
            raise no_fit(i, used)
        key = np.where(fits, load, np.inf)
        tied = np.flatnonzero(key == key.min())
        b = int(tied[np.argmin(count[tied])])
        bins[i] = b
        load[b] += cost[i]
        used[b] += memory[i]
        count[b] += 1
    return bins


def objective(graph: sp.csr_array, labels: np.ndarray, num_towers: int, resolution: float) -> float:
    """What :class:`LocalSearchBalancer` maximises: intra-tower affinity - g * sum_t vol_t^2 / (4 m)."""
    degree = np.asarray(graph.sum(axis=1)).ravel()
    same = labels[:, None] == np.arange(num_towers)[None, :]
    intra = 0.5 * float(((graph @ same.astype(np.float64)) * same).sum())
    vol = np.bincount(labels, weights=degree, minlength=num_towers)
    return intra - resolution * float((vol**2).sum()) / (2.0 * max(float(degree.sum()), 1e-300))


class Balancer(abc.ABC):
    """Turns initial labels into labels that satisfy the constraints, keeping affinity high."""

    @abc.abstractmethod
    def balance(self, labels: np.ndarray, graph: sp.csr_array, cons: Constraints) -> np.ndarray:
        """Return feasible (F,) labels or raise PartitionError naming the constraint it cannot meet."""


class LocalSearchBalancer(Balancer):
    """Repair by least-loss moves, then improve by gaining moves and swaps (see module docstring).

    Moves and swaps stop at a local optimum that can still hold a feature in the wrong tower: when
    its own tower is full, putting it back takes a chain (i: a -> b, j: b -> c, l: c -> a) that no
    single move or swap gains. So the search then *kicks* (iterated local search, Lourenco et al.
    2003): it moves a few random features to random towers, repairs and improves again, and keeps
    the result when the objective rose. A kick costs one local search; with ``kicks`` of them
    only on inputs of at most ``kick_features`` features, where a local search takes milliseconds.

    Args:
        resolution: weight g of the modularity penalty. The search maximises
            ``intra - g * sum_t vol_t^2 / (4 m)`` (vol_t: summed affinity degree of tower t, m: total
            affinity). With g = 0 that is plain intra-tower affinity, which a loose tolerance lets
            grow by filling towers to the cap with features that belong elsewhere; g = 1 is
            Newman's modularity, which only keeps links stronger than chance.
        max_passes: improvement passes; each scores all moves once. Stops early at a local optimum.
        swap_tries: swap partners tried per feature in a pass (swaps matter when towers are full).
        kicks: random restarts from the best labels after the first local optimum.
        random_state: seed or RandomState of the kicks.
    """

    kick_features = 1000  # above this many features no kicks: each would cost a full local search

    def __init__(
        self,
        resolution: float = 1.0,
        max_passes: int = 30,
        swap_tries: int = 8,
        kicks: int = 40,
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.resolution = resolution
        self.max_passes = max_passes
        self.swap_tries = swap_tries
        self.kicks = kicks
        self.random_state = random_state

    def balance(self, labels: np.ndarray, graph: sp.csr_array, cons: Constraints) -> np.ndarray:
        best = self._descend(labels, graph, cons)
        if self.kicks < 1 or len(best) > self.kick_features or cons.num_towers < 2:
            return best
        rng = check_random_state(self.random_state)
        best_value = objective(graph, best, cons.num_towers, self.resolution)
        eps = 1e-9 * max(1.0, abs(best_value))
        for _ in range(self.kicks):
            kicked = best.copy()
            chosen = rng.choice(len(kicked), size=min(len(kicked), int(rng.randint(2, 5))), replace=False)
            kicked[chosen] = (kicked[chosen] + rng.randint(1, cons.num_towers, len(chosen))) % cons.num_towers
            try:
                kicked = self._descend(kicked, graph, cons)
            except PartitionError:
                continue  # this kick could not be repaired; the best so far stands
            value = objective(graph, kicked, cons.num_towers, self.resolution)
            if value > best_value + eps:
                best, best_value = kicked, value
        return best

    def _descend(self, labels: np.ndarray, graph: sp.csr_array, cons: Constraints) -> np.ndarray:
        """Repair, then moves and swaps until none gains: one local optimum."""
        state = _SearchState(labels, graph, cons, self.resolution)
        state.repair()
        reason = cons.violation(state.labels)
        if reason is not None:
            raise PartitionError(f"local search could not satisfy the {reason.value} constraint", reason)
        for _ in range(self.max_passes):
            if state.move_pass() + state.swap_pass(self.swap_tries) == 0:
                break
        assert cons.violation(state.labels) is None
        return state.labels


class _SearchState:
    """Labels plus everything a move needs in O(degree): A, loads, memory, counts."""

    def __init__(self, labels: np.ndarray, graph: sp.csr_array, cons: Constraints, resolution: float) -> None:
        self.labels = np.asarray(labels, dtype=np.int64).copy()
        self.cons = cons
        self.indptr, self.indices, self.data = graph.indptr, graph.indices, graph.data
        num, k = len(self.labels), cons.num_towers
        onehot = sp.csr_array((np.ones(num), (np.arange(num), self.labels)), shape=(num, k))
        self.aff = np.asarray((graph @ onehot).toarray())  # A: (F, K)
        self.load, self.mem, self.count = cons.loads(self.labels)
        self.degree = np.asarray(graph.sum(axis=1)).ravel()  # d: (F,)
        self.vol = np.bincount(self.labels, weights=self.degree, minlength=k)  # (K,)
        # Penalty factor g / 2m: moving i from a to b costs g d_i (vol_b - vol_a + d_i) / 2m.
        self.penalty = resolution / max(float(self.degree.sum()), 1e-300)
        # Gains below this are float noise; requiring more guarantees the search terminates.
        self.eps = 1e-12 * max(1.0, float(self.data.sum()))
        self.load_cap = cons.max_load * (1 + 1e-12)
        self.mem_cap = cons.max_memory * (1 + 1e-12)

    # ----------------------------------------------------------------------------- primitives
    def _neighbours(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.data[lo:hi]

    def weight(self, i: int, j: int) -> float:
        nb, w = self._neighbours(i)
        pos = np.searchsorted(nb, j)
        return float(w[pos]) if pos < len(nb) and nb[pos] == j else 0.0

    def move(self, i: int, b: int) -> None:
        a = int(self.labels[i])
        nb, w = self._neighbours(i)
        self.aff[nb, a] -= w
        self.aff[nb, b] += w
        c, m = self.cons.cost[i], self.cons.memory[i]
        self.load[a] -= c
        self.load[b] += c
        self.mem[a] -= m
        self.mem[b] += m
        self.count[a] -= 1
        self.count[b] += 1
        self.vol[a] -= self.degree[i]
        self.vol[b] += self.degree[i]
        self.labels[i] = b

    def gain(self, i: int, b: int) -> float:
        """Objective change of moving feature i to tower b (current state)."""
        a, d = self.labels[i], self.degree[i]
        return float(self.aff[i, b] - self.aff[i, a] - self.penalty * d * (self.vol[b] - self.vol[a] + d))

    def _fits(self, i: int, b: int, freed_cost: float = 0.0, freed_mem: float = 0.0) -> bool:
        return (
            self.load[b] - freed_cost + self.cons.cost[i] <= self.load_cap
            and self.mem[b] - freed_mem + self.cons.memory[i] <= self.mem_cap
        )

    def _target_mask(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), K): towers each feature may move to without breaking a cap."""
        c, m = self.cons.cost[rows, None], self.cons.memory[rows, None]
        ok = (self.load[None, :] + c <= self.load_cap) & (self.mem[None, :] + m <= self.mem_cap)
        ok[np.arange(len(rows)), self.labels[rows]] = False
        return ok

    def _gains(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), K): objective gained by moving each feature to each tower."""
        a = self.labels[rows]
        d = self.degree[rows, None]
        vol_change = self.vol[None, :] - self.vol[a][:, None] + d
        return self.aff[rows] - self.aff[rows, a][:, None] - self.penalty * d * vol_change

    # --------------------------------------------------------------------------------- repair
    def repair(self) -> None:
        """Move features out of over-full towers, then into empty ones, at least affinity loss."""
        while True:
            over = (self.load > self.load_cap) | (self.mem > self.mem_cap)
            if not over.any() or not self._relieve(over):
                break
        if not self.cons.allow_empty:
            self._fill_empty()

    def _relieve(self, over: np.ndarray) -> bool:
        # Only features that carry the overflowing resource help (a zero-cost one frees no load).
        load_over = self.load > self.load_cap
        mem_over = self.mem > self.mem_cap
        helps = (load_over[self.labels] & (self.cons.cost > 0)) | (mem_over[self.labels] & (self.cons.memory > 0))
        rows = np.flatnonzero(helps & (self.count[self.labels] > 1))
        if len(rows) == 0:
            return False
        gains = np.where(self._target_mask(rows), self._gains(rows), -np.inf)
        best = gains.argmax(axis=1)
        best_gain = gains[np.arange(len(rows)), best]
        moved = False
        for r in np.argsort(-best_gain, kind="stable").tolist():
            if not np.isfinite(best_gain[r]):
                break
            i, b = int(rows[r]), int(best[r])
            a = self.labels[i]
            still_over = self.load[a] > self.load_cap or self.mem[a] > self.mem_cap
            if still_over and self.count[a] > 1 and self._fits(i, b):
                self.move(i, b)
                moved = True
        return moved

    def _fill_empty(self) -> None:
        for b in np.flatnonzero(self.count == 0).tolist():
            rows = np.flatnonzero(self.count[self.labels] > 1)
            if len(rows) == 0:
                return
            ok = self._target_mask(rows)[:, b]
            if not ok.any():
                return
            gain = np.where(ok, self._gains(rows)[:, b], -np.inf)
            self.move(int(rows[gain.argmax()]), b)

    # -------------------------------------------------------------------------------- improve
    def _may_leave(self, rows: np.ndarray) -> np.ndarray:
        return np.ones(len(rows), bool) if self.cons.allow_empty else self.count[self.labels[rows]] > 1

    def move_pass(self) -> int:
        """Apply every feasible move with positive gain, best first; return how many."""
        rows = np.arange(len(self.labels))
        gains = np.where(self._target_mask(rows), self._gains(rows), -np.inf)
        best = gains.argmax(axis=1)
        best_gain = gains[rows, best]
        cand = np.flatnonzero((best_gain > self.eps) & self._may_leave(rows))
        moved = 0
        for i in cand[np.argsort(-best_gain[cand], kind="stable")].tolist():
            b, a = int(best[i]), int(self.labels[i])
            # Earlier moves in this pass changed A and the loads: re-check with current values.
            if self.gain(i, b) > self.eps and self._fits(i, b) and (self.cons.allow_empty or self.count[a] > 1):
                self.move(i, b)
                moved += 1
        return moved

    def swap_pass(self, tries: int) -> int:
        """Swap pairs (i in a -> b, j in b -> a) that gain affinity and keep the caps; return how many.

        Each feature proposes its best tower regardless of capacity; proposals a -> b and b -> a
        are paired best-first. Swaps keep counts, so they never empty a tower.
        """
        rows = np.arange(len(self.labels))
        gains = self._gains(rows)
        gains[rows, self.labels] = -np.inf
        best = gains.argmax(axis=1)
        best_gain = gains[rows, best]
        cand = np.flatnonzero(best_gain > self.eps)
        if len(cand) < 2:
            return 0
        buckets: dict[tuple[int, int], list[int]] = {}
        for i in cand[np.argsort(-best_gain[cand], kind="stable")].tolist():
            buckets.setdefault((int(self.labels[i]), int(best[i])), []).append(i)
        swapped = 0
        used: set[int] = set()
        for (a, b), forward in buckets.items():
            backward = buckets.get((b, a))
            if a > b or not backward:
                continue  # each unordered pair once
            for i in forward:
                for j in backward[:tries]:
                    if i in used or j in used or self.labels[i] != a or self.labels[j] != b:
                        continue
                    shift = self.degree[i] - self.degree[j]  # vol moves a -> b
                    penalty = self.penalty * shift * (self.vol[b] - self.vol[a] + shift)
                    gain = (
                        self.aff[i, b]
                        - self.aff[i, a]
                        + self.aff[j, a]
                        - self.aff[j, b]
                        - 2.0 * self.weight(i, j)
                        - penalty
                    )
                    ci, cj = self.cons.cost[i], self.cons.cost[j]
                    mi, mj = self.cons.memory[i], self.cons.memory[j]
                    if gain > self.eps and self._fits(i, b, cj, mj) and self._fits(j, a, ci, mi):
                        self.move(i, b)
                        self.move(j, a)
                        used.update((i, j))
                        swapped += 1
                        break
        return swapped
