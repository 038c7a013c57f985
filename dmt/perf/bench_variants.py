"""The variants ``dmt bench`` can time, by name: ``<base>[:<layout>][+comm]``.

* base ``flat``: the flat DLRM; layout a :class:`dmt.choices.FlatBaseline` (``table_wise``,
  ``table_row_wise``, ``row_wise``, ``planner``, ``2d``) or any other torchrec sharding type of
  :class:`dmt.choices.FlatSharding`; without one, ``--flat-sharding``;
* base ``dmt``: the DMT transform, sharded by ``dmt.shard``; layout a
  :class:`dmt.choices.TowerSharding` (how a host shards its tower tables); without one,
  ``--tower-sharding``;
* base ``stock``: the DMT model sharded by torchrec's own tower sharder (layout as ``dmt``);
* ``+comm``: with ``--comm-compression`` on the embedding exchange.

So one invocation can time every baseline a user would pick next to every DMT layout, on the same
batches: ``flat:table_wise,flat:row_wise,flat:planner,dmt:table_row_wise,dmt:table_wise+comm``.

Example:
    >>> v = parse_variant("flat:row_wise+comm")
    >>> v.base, v.layout, v.comm, v.is_flat
    ('flat', 'row_wise', True, True)
    >>> parse_variant("dmt").resolved_layout(flat_sharding="table_wise", tower_sharding="auto")
    'auto'
"""

from __future__ import annotations

from dataclasses import dataclass

from dmt.choices import FLAT_LAYOUTS, TowerSharding
from dmt.errors import DmtError

BASES = ("flat", "dmt", "stock")
TOWER_LAYOUTS = TowerSharding.names()
COMM_SUFFIX = "+comm"


@dataclass(frozen=True)
class Variant:
    """One parsed variant name (see the module docstring)."""

    name: str
    base: str
    layout: str | None  # None: the run's --flat-sharding / --tower-sharding
    comm: bool

    @property
    def is_flat(self) -> bool:
        return self.base == "flat"

    def resolved_layout(self, *, flat_sharding: str, tower_sharding: str) -> str:
        """The layout this variant runs with, its own or the run's default."""
        if self.layout is not None:
            return self.layout
        return flat_sharding if self.is_flat else tower_sharding


def parse_variant(name: str) -> Variant:
    """``name`` as a :class:`Variant`; DmtError naming the valid forms otherwise."""
    body, comm = (name[: -len(COMM_SUFFIX)], True) if name.endswith(COMM_SUFFIX) else (name, False)
    base, _, layout = body.partition(":")
    allowed = FLAT_LAYOUTS if base == "flat" else TOWER_LAYOUTS
    if base not in BASES or (layout and layout not in allowed):
        raise DmtError(
            f"--variants: {name!r} is not <base>[:<layout>][+comm] with base in {list(BASES)}, a flat layout in "
            f"{list(FLAT_LAYOUTS)} or a tower layout in {list(TOWER_LAYOUTS)}"
        )
    return Variant(name=name, base=base, layout=layout or None, comm=comm)


def parse_variants(names: tuple[str, ...]) -> tuple[Variant, ...]:
    """Every name parsed; DmtError for none, a repeat, or a bad name."""
    if not names or len(set(names)) != len(names):
        raise DmtError(
            f"--variants {','.join(names)}: give distinct names, e.g. flat,dmt or flat:planner,dmt:table_wise"
        )
    return tuple(parse_variant(n) for n in names)
