"""TowerPlan: which sparse features form which tower, and which host runs each tower.

A plan is plain, versioned data. The partitioner writes it, the transform and the sharder read it,
and it round-trips through JSON so that a plan made by ``dmt partition`` on one machine drives
training on another. Nothing here imports torch.

Example:
    >>> plan = TowerPlan(
    ...     towers=(Tower("tower_0", ("cat_0", "cat_2"), host=1), Tower("tower_1", ("cat_1",), host=0)),
    ...     num_hosts=2, method="manual")
    >>> plan.tower_of("cat_2")
    0
    >>> TowerPlan.from_json(plan.to_json()) == plan
    True
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dmt.atomic import atomic_write_text
from dmt.errors import DmtError

SCHEMA_VERSION = 1


class PlanError(DmtError):
    """A plan that is malformed or does not match the model or topology it is used with."""


@dataclass(frozen=True)
class Tower:
    """One tower: a group of sparse features looked up and interacted together on one host.

    Args:
        name: unique tower name, used in module paths and reports.
        features: names of the sparse features (KJT keys) of this tower, in lookup order.
        host: index of the host that runs this tower.
        cost: relative lookup cost of the tower (any unit; the partitioner's cost model).
        memory_bytes: bytes of embedding tables (+ optimizer state) the tower puts on its host.
    """

    name: str
    features: tuple[str, ...]
    host: int
    cost: float = 0.0
    memory_bytes: int = 0

    def __post_init__(self) -> None:
        # Accept lists from callers and JSON, keep the dataclass hashable and immutable.
        where = f"tower {self.name!r}"
        if not isinstance(self.name, str):
            raise PlanError(f"tower name {self.name!r} must be a string")
        if isinstance(self.features, str):
            raise PlanError(f"{where}: 'features' must be a list of feature names, got one string")
        object.__setattr__(self, "features", tuple(self.features))
        if not all(isinstance(f, str) for f in self.features):
            raise PlanError(f"{where}: 'features' must be a list of feature names")
        # numpy integers and floats (the partitioner's) are numbers too; bools and strings are not.
        object.__setattr__(self, "host", _integer(self.host, f"{where}: 'host'"))
        object.__setattr__(self, "memory_bytes", _integer(self.memory_bytes, f"{where}: 'memory_bytes'", minimum=0))
        object.__setattr__(self, "cost", _real(self.cost, f"{where}: 'cost'"))


@dataclass(frozen=True)
class TowerPlan:
    """Towers -> features, tower -> host, per-tower load, and how the plan was made.

    Args:
        towers: the towers in *logical* order: the order in which tower outputs are concatenated
            before the global interaction. Logical order need not equal host order.
        num_hosts: number of hosts the plan was made for.
        method: the partitioning method that produced the plan (e.g. "tp", "random", "manual").
        params: the method's parameters (JSON-serialisable), kept for reproducibility.
        version: schema version; ``from_dict`` refuses versions it does not know.
    """

    towers: tuple[Tower, ...]
    num_hosts: int
    method: str = "manual"
    params: Mapping[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "towers", tuple(self.towers))
        object.__setattr__(self, "num_hosts", _integer(self.num_hosts, "plan field 'num_hosts'"))
        object.__setattr__(self, "version", _integer(self.version, "plan field 'version'"))
        if not isinstance(self.method, str):
            raise PlanError(f"plan field 'method' must be a string, got {self.method!r}")
        if not isinstance(self.params, Mapping):
            raise PlanError(f"plan field 'params' must be an object, got {self.params!r}")
        if not all(isinstance(t, Tower) for t in self.towers):
            raise PlanError("plan towers must be Tower objects")
        self._check_consistent()

    # ------------------------------------------------------------------ queries
    @property
    def num_towers(self) -> int:
        return len(self.towers)

    @property
    def features(self) -> tuple[str, ...]:
        """All features, tower by tower in logical order."""
        return tuple(f for t in self.towers for f in t.features)

    @property
    def feature_to_tower(self) -> dict[str, int]:
        return {f: i for i, t in enumerate(self.towers) for f in t.features}

    def tower_of(self, feature: str) -> int:
        try:
            return self.feature_to_tower[feature]
        except KeyError:
            raise PlanError(f"feature {feature!r} is in no tower of this plan") from None

    def towers_on_host(self, host: int) -> list[int]:
        """Indices of the towers that run on ``host``, in logical order."""
        return [i for i, t in enumerate(self.towers) if t.host == host]

    # --------------------------------------------------------------- validation
    def _check_consistent(self) -> None:
        if self.version != SCHEMA_VERSION:
            raise PlanError(
                f"plan schema version {self.version} is not supported (this DMT reads version "
                f"{SCHEMA_VERSION}); re-create the plan with `dmt partition`"
            )
        if self.num_hosts < 1:
            raise PlanError(f"num_hosts={self.num_hosts} must be >= 1")
        if not self.towers:
            raise PlanError("a plan needs at least one tower")
        names = [t.name for t in self.towers]
        dup_names = sorted({n for n in names if names.count(n) > 1})
        if dup_names:
            raise PlanError(f"duplicate tower names {dup_names}; give every tower a unique name")
        seen: dict[str, str] = {}
        for t in self.towers:
            if not t.features:
                raise PlanError(f"tower {t.name!r} has no features; drop it or give it features")
            if not 0 <= t.host < self.num_hosts:
                raise PlanError(f"tower {t.name!r} is on host {t.host}, but the plan has num_hosts={self.num_hosts}")
            for f in t.features:
                if f in seen:
                    raise PlanError(
                        f"feature {f!r} is in towers {seen[f]!r} and {t.name!r}; "
                        "each feature must be in exactly one tower"
                    )
                seen[f] = t.name

    def validate_features(self, model_features: Sequence[str]) -> None:
        """Raise PlanError unless the plan covers exactly ``model_features``, each once."""
        model_set = set(model_features)
        plan_set = set(self.features)
        unknown = sorted(plan_set - model_set)
        missing = sorted(model_set - plan_set)
        problems = []
        if unknown:
            problems.append(f"unknown features {unknown} (not in the model)")
        if missing:
            problems.append(f"missing features {missing} (in the model, in no tower)")
        if problems:
            raise PlanError(
                "plan does not match the model: "
                + "; ".join(problems)
                + ". Re-create the plan for this model's features with `dmt partition`"
            )

    def validate_hosts(self, num_hosts: int) -> None:
        """Raise PlanError if the plan needs more hosts than the topology has."""
        used = max(t.host for t in self.towers) + 1
        if used > num_hosts:
            raise PlanError(
                f"plan places towers on {used} hosts but the topology has {num_hosts}; "
                f"launch with at least {used} hosts or re-partition with --hosts {num_hosts}"
            )

    # --------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "num_hosts": self.num_hosts,
            "method": self.method,
            "params": dict(self.params),
            "towers": [
                {
                    "name": t.name,
                    "host": t.host,
                    "features": list(t.features),
                    "cost": t.cost,
                    "memory_bytes": t.memory_bytes,
                }
                for t in self.towers
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TowerPlan:
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(d).__name__}")
        if "version" not in d:
            raise PlanError("plan has no 'version' field; is this a DMT TowerPlan?")
        if d["version"] != SCHEMA_VERSION:
            raise PlanError(
                f"plan schema version {d['version']!r} is not supported (this DMT reads version "
                f"{SCHEMA_VERSION}); re-create the plan with `dmt partition`"
            )
        for key in ("num_hosts", "towers"):
            if key not in d:
                raise PlanError(f"plan is missing the required field {key!r}")
        if not isinstance(d["towers"], list):
            raise PlanError("plan field 'towers' must be a list")
        return cls(
            towers=tuple(_tower_from_dict(i, t) for i, t in enumerate(d["towers"])),
            num_hosts=_integer(d["num_hosts"], "plan field 'num_hosts'", strict=True),
            method=d.get("method", "manual"),
            params=d.get("params", {}),
            version=d["version"],
        )

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Return the plan as JSON; with ``path``, also write it atomically (no half-written file)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> TowerPlan:
        """Parse a plan from a JSON string or a file path."""
        s = os.fspath(text_or_path)
        source = "plan"
        if not s.lstrip().startswith("{"):
            source = f"plan file {s}"
            try:
                with open(s) as f:
                    s = f.read()
            except OSError as e:
                raise PlanError(f"cannot read plan file {s!r}: {e.strerror}") from None
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise PlanError(
                f"{source} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                "write it with `dmt partition` or fix the JSON"
            ) from None
        return cls.from_dict(d)

    @classmethod
    def from_groups(
        cls,
        groups: Iterable[Sequence[str]],
        num_hosts: int,
        *,
        method: str = "manual",
        params: Mapping[str, Any] | None = None,
    ) -> TowerPlan:
        """Build a plan from feature groups, placing tower i on host i % num_hosts."""
        towers = tuple(Tower(f"tower_{i}", tuple(g), host=i % num_hosts) for i, g in enumerate(groups))
        return cls(towers=towers, num_hosts=num_hosts, method=method, params=dict(params or {}))


def _tower_from_dict(i: int, t: Any) -> Tower:
    """Tower #``i`` of a plan's JSON: every field of the right JSON type, nothing converted silently."""
    if not isinstance(t, Mapping) or "features" not in t or "host" not in t:
        raise PlanError(f"plan tower #{i} needs at least 'features' and 'host'")
    if not isinstance(t["features"], list) or not all(isinstance(f, str) for f in t["features"]):
        raise PlanError(f"plan tower #{i}: 'features' must be a list of feature names")
    name = t.get("name", f"tower_{i}")
    if not isinstance(name, str):
        raise PlanError(f"plan tower #{i}: 'name' must be a string, got {name!r}")
    return Tower(
        name=name,
        features=tuple(t["features"]),
        host=_integer(t["host"], f"plan tower #{i}: 'host'", strict=True),
        cost=_real(t.get("cost", 0.0), f"plan tower #{i}: 'cost'", strict=True),
        memory_bytes=_integer(t.get("memory_bytes", 0), f"plan tower #{i}: 'memory_bytes'", minimum=0, strict=True),
    )


def _integer(value: Any, what: str, *, minimum: int | None = None, strict: bool = False) -> int:
    """``value`` as an int. JSON (``strict``) must hold a JSON integer: ``"2"`` and ``2.7`` are refused, not
    converted; Python callers may pass any integral number (numpy's too). Bools are never integers here."""
    integral = isinstance(value, int) if strict else isinstance(value, numbers.Integral)
    if isinstance(value, bool) or not integral:
        raise PlanError(f"{what} must be an integer, got {value!r}; fix the plan or re-create it with `dmt partition`")
    if minimum is not None and value < minimum:
        raise PlanError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _real(value: Any, what: str, *, strict: bool = False) -> float:
    """``value`` as a finite float (JSON: an int or float; Python: any real number)."""
    real = isinstance(value, int | float) if strict else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not real or not math.isfinite(value):
        raise PlanError(
            f"{what} must be a finite number, got {value!r}; fix the plan or re-create it with `dmt partition`"
        )
    return float(value)


def contiguous_sizes(num_items: int, num_parts: int) -> tuple[int, ...]:
    """Sizes of ``num_parts`` contiguous parts of ``num_items`` items, within one of each other, larger first.

    The split of features into towers that needs no learning (``dmt bench``'s default towers, the
    cost model's towers when none are given).

    Example:
        >>> contiguous_sizes(26, 4)
        (7, 7, 6, 6)
    """
    if not 1 <= num_parts <= num_items:
        raise DmtError(f"{num_parts} parts of {num_items} items: give between 1 and {num_items} parts")
    size, extra = divmod(num_items, num_parts)
    return tuple(size + (i < extra) for i in range(num_parts))
