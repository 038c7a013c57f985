"""What balance is achievable: the most even split of the costs into K towers, and a bound on it.

A tolerance relative to the *mean* load cannot always be met: 26 equal features in 8 towers put
4 in some tower, 4 / 3.25 = 1.23x the mean, so a 1.1x limit refuses every plan. The partitioner
therefore measures the tolerance from the best max load that is achievable for these costs:
``max_load = (1 + tolerance) * best_max_load``, where ``best_max_load`` is the max load of the most
balanced assignment :func:`best_balance` finds. That assignment meets the limit by construction,
so every tower count from 1 to F can be planned (memory limits aside).

Finding the most balanced assignment is multiprocessor scheduling (NP-hard), so
:func:`best_balance` returns an assignment (LPT, then moves and swaps off the fullest tower, as in
Graham's and Finn & Horowitz's improvement schemes) together with a lower bound no assignment
can beat. For equal costs the two always meet (the optimum); when they differ, both go into the
plan, and the best found is what the tolerance is measured from.

Example:
    >>> import numpy as np
    >>> b = best_balance(np.ones(26), 8)
    >>> b.best_max_load, b.lower_bound, round(b.best_imbalance, 3)
    (4.0, 4.0, 1.231)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from partitioner.refine import Constraints, lpt_assign

# Above this many features, swap partners come from the _SWAP_TOWERS least-loaded towers only: a
# swap that lowers the fullest tower most pairs it with an emptier one, and all pairs would cost
# 10^8 candidates a round for 10,000 features. Below it every pair is tried (small F: it matters).
_ALL_SWAPS_LIMIT = 500
_SWAP_TOWERS = 4
# Up to this many features, and when LPT + improvement leaves a gap to the lower bound, an exact
# branch and bound runs (at most _EXACT_NODES nodes: well under a second in Python). Criteo has 26.
_EXACT_LIMIT = 40
_EXACT_NODES = 50_000
# Within this of the lower bound the search stops: 0.1 % of a tower's load is nothing next to any
# tolerance, and proving the last digits can take the whole node budget.
_NEAR_OPTIMAL = 1e-3
# Stop improving once the fullest tower is this close to the lower bound: closer is float noise
# next to any tolerance a user sets, and large inputs would spend thousands of rounds on it.
_CLOSE_ENOUGH = 1e-6


@dataclass(frozen=True)
class BalanceBound:
    """The most balanced assignment found for given costs, and how good any can be.

    Args:
        best_max_load: max tower load of ``labels``.
        lower_bound: no assignment has a smaller max load.
        mean_load: total cost / number of towers.
        labels: (F,) the assignment that reaches ``best_max_load`` (meets the memory limit).
    """

    best_max_load: float
    lower_bound: float
    mean_load: float
    labels: np.ndarray

    @property
    def best_imbalance(self) -> float:
        """best max load / mean load: 1.0 when the costs split evenly."""
        return self.best_max_load / self.mean_load if self.mean_load > 0 else 1.0

    def max_load(self, tolerance: float) -> float:
        """The cap a tower's load must stay under: ``(1 + tolerance) * best_max_load``."""
        return (1.0 + tolerance) * self.best_max_load


def load_lower_bound(cost: np.ndarray, num_towers: int) -> float:
    """A max load no assignment of ``cost`` to ``num_towers`` towers can beat.

    The largest of: the mean, the costliest feature, and for every m >= 1 the m + 1 cheapest of
    the m K + 1 costliest features (pigeonhole: some tower holds m + 1 of them). For equal costs
    the last is ceil(F / K) features, which is exact.
    """
    cost = np.sort(np.asarray(cost, dtype=np.float64))[::-1]
    num = len(cost)
    bound = max(float(cost.sum()) / num_towers, float(cost[0]) if num else 0.0)
    for m in range(1, math.ceil(num / num_towers)):
        top = m * num_towers + 1  # features 0 .. top - 1; the m + 1 cheapest of them are the last
        bound = max(bound, float(cost[top - m - 1 : top].sum()))
    return bound


def best_balance(
    cost: np.ndarray,
    num_towers: int,
    *,
    memory: np.ndarray | None = None,
    max_memory: float = math.inf,
    allow_empty: bool = False,
    max_rounds: int | None = None,
) -> BalanceBound:
    """The most balanced assignment found (LPT, then improved), and the lower bound.

    Args:
        cost: (F,) lookup cost per feature.
        num_towers: K.
        memory: (F,) bytes per feature (None: zeros).
        max_memory: bytes a tower holds at most.
        allow_empty: towers may stay empty (else a move never empties one).
        max_rounds: improvement rounds at most (default 4 F: each round lowers the fullest tower).

    Returns:
        The :class:`BalanceBound`.

    Raises:
        PartitionError: MEMORY if LPT cannot place some feature within ``max_memory``.
    """
    cost = np.asarray(cost, dtype=np.float64)
    memory = np.zeros(len(cost)) if memory is None else np.asarray(memory, dtype=np.float64)
    cons = Constraints(num_towers=num_towers, cost=cost, memory=memory, max_load=math.inf, max_memory=max_memory)
    labels = lpt_assign(cons)
    bound = load_lower_bound(cost, num_towers)
    labels = _improve(labels, cons, bound, allow_empty, max_rounds or 4 * len(cost) + 8)
    best = float(np.bincount(labels, weights=cost, minlength=num_towers).max()) if len(cost) else 0.0
    if best > bound * (1 + _NEAR_OPTIMAL) and len(cost) <= _EXACT_LIMIT:
        exact, exhausted = _branch_and_bound(cons, best, bound)
        if exact is not None and (allow_empty or len(np.unique(exact)) == min(num_towers, len(cost))):
            labels = exact
            best = float(np.bincount(labels, weights=cost, minlength=num_towers).max())
        if exhausted:
            bound = best  # the search saw every assignment: the best is the optimum
    mean = float(cost.sum()) / num_towers
    return BalanceBound(best_max_load=best, lower_bound=min(bound, best), mean_load=mean, labels=labels)


def _branch_and_bound(cons, incumbent: float, bound: float) -> tuple[np.ndarray | None, bool]:
    """Depth-first search over assignments, costliest feature first, for a max load below ``incumbent``.

    A branch ends when its fullest tower reaches the best found; towers with equal load and
    memory are interchangeable, so only one of them is tried. Stops at the lower bound (optimal)
    (within :data:`_NEAR_OPTIMAL`) or after :data:`_EXACT_NODES` nodes.

    Returns:
        (labels that beat ``incumbent`` or None, whether the search was exhaustive).
    """
    order = np.argsort(-cons.cost, kind="stable")
    cost, mem = cons.cost[order].tolist(), cons.memory[order].tolist()
    k, num = cons.num_towers, len(order)
    load, used = [0.0] * k, [0.0] * k
    assign = [0] * num
    eps = 1e-12 * max(incumbent, 1e-300)
    state = {"best": incumbent, "labels": None, "nodes": 0}

    def search(i: int, top: float) -> None:
        state["nodes"] += 1
        if i == num:
            state["best"], state["labels"] = top, list(assign)
            return
        seen = set()
        for t in sorted(range(k), key=load.__getitem__):
            new = load[t] + cost[i]
            if new >= state["best"] - eps or state["nodes"] > _EXACT_NODES:
                return  # towers come emptiest first: every later one is at least as full
            key = (load[t], used[t])
            if key in seen or used[t] + mem[i] > cons.max_memory:
                continue
            seen.add(key)
            load[t], used[t], assign[i] = new, used[t] + mem[i], t
            search(i + 1, max(top, new))
            load[t], used[t] = load[t] - cost[i], used[t] - mem[i]
            if state["best"] <= bound * (1 + _NEAR_OPTIMAL):
                return  # optimal, or within 0.1 % of it

    search(0, 0.0)
    exhausted = state["nodes"] <= _EXACT_NODES
    if state["labels"] is None:
        return None, exhausted
    labels = np.empty(num, dtype=np.int64)
    labels[order] = state["labels"]
    return labels, exhausted


def _improve(labels: np.ndarray, cons, bound: float, allow_empty: bool, max_rounds: int) -> np.ndarray:
    """Lower the fullest tower by the best single move or pair swap, until neither helps.

    Each accepted step lowers the fullest tower below its load without lifting another to it,
    so the sorted load vector decreases and the loop ends.
    """
    labels = labels.copy()
    cost, mem, k = cons.cost, cons.memory, cons.num_towers
    load = np.bincount(labels, weights=cost, minlength=k)
    used = np.bincount(labels, weights=mem, minlength=k)
    count = np.bincount(labels, minlength=k)
    for _ in range(max_rounds):
        a = int(np.argmax(load))
        top = load[a]
        if top <= bound * (1 + _CLOSE_ENOUGH):
            break  # optimal, up to float noise
        step = _best_step(labels, a, load, used, count, cons, allow_empty)
        if step is None:
            break
        for i, b in step:
            src = labels[i]
            load[src] -= cost[i]
            load[b] += cost[i]
            used[src] -= mem[i]
            used[b] += mem[i]
            count[src] -= 1
            count[b] += 1
            labels[i] = b
    return labels


def _best_step(labels, a: int, load, used, count, cons, allow_empty: bool) -> list[tuple[int, int]] | None:
    """The move (i -> b) or swap (i <-> j) off tower ``a`` that leaves the pair's higher load lowest."""
    cost, mem = cons.cost, cons.memory
    top = load[a]
    mine = np.flatnonzero(labels == a)
    best_value, best = top * (1 - 1e-12), None
    # Moves: i from a to b; the pair's new max is max(top - c_i, load_b + c_i).
    if allow_empty or count[a] > 1:
        new_b = load[None, :] + cost[mine, None]
        value = np.maximum(top - cost[mine, None], new_b)
        ok = used[None, :] + mem[mine, None] <= cons.max_memory
        ok[:, a] = False
        value = np.where(ok, value, np.inf)
        r, b = np.unravel_index(np.argmin(value), value.shape)
        if value[r, b] < best_value:
            best_value, best = value[r, b], [(int(mine[r]), int(b))]
    # Swaps: i in a with j in b (counts unchanged); new max is max(top - d, load_b + d), d = c_i - c_j.
    if len(labels) <= _ALL_SWAPS_LIMIT:
        others = np.flatnonzero(labels != a)
    else:
        emptiest = np.argsort(load, kind="stable")[:_SWAP_TOWERS]
        others = np.flatnonzero(np.isin(labels, emptiest[emptiest != a]))
    if len(others):
        d = cost[mine, None] - cost[None, others]
        tb = labels[others]
        value = np.maximum(top - d, load[tb][None, :] + d)
        dm = mem[mine, None] - mem[None, others]
        ok = (d > 0) & (used[a] - dm <= cons.max_memory) & (used[tb][None, :] + dm <= cons.max_memory)
        value = np.where(ok, value, np.inf)
        r, c = np.unravel_index(np.argmin(value), value.shape)
        if value[r, c] < best_value:
            best = [(int(mine[r]), int(tb[c])), (int(others[c]), a)]
    return best
