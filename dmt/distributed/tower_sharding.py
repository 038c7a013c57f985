"""Shard a DMT model: every tower on its plan host, with torchrec's tower sharding made safe.

torchrec's ``EmbeddingTowerCollectionSharder`` already implements SPTT's communication: a
cross-host all-to-all of each tower's ids to the tower's host (peers only), an intra-host sharded
lookup, the tower module under intra-host DDP, and a cross-host all-to-all of the tower outputs.
Used as is, it has traps (each shown by a test in tests/test_tower_sharding.py); this module fixes each with a
small subclass rather than a fork:

(a) outputs come back in *host* order, not the collection's tower order -> the collections
    ``dmt.transform`` builds hold one tower per host, in host order, where the two agree;
    :class:`ShardedTowerCollection` refuses a collection whose towers are not in host order;
(b) the sharding plan is mutated in place (TWRW -> RW, global -> local ranks) -> the sharder and
    :func:`shard` deep-copy the plan; :attr:`DmtModelParallel.sharding_plan` stays the global one;
(c) ``load_state_dict`` of the sharded collection fails, and with ``strict=False`` (as well as
    through DMP's own ``load_state_dict``, which never raises) restores nothing, silently ->
    :meth:`ShardedTowerCollection.load_state_dict` maps ``towers.{i}.*`` keys onto the local shards
    and :class:`DmtModelParallel` raises on missing/unexpected keys and bad shapes;
(d) intra-host DDP with CPU ``device_ids`` crashes, and so does DDP around a tower module without
    parameters (identity towers) -> fixed in :mod:`dmt.distributed.torchrec_fixes`, swapped in
    only while torchrec constructs the collection (:func:`~dmt.distributed.torchrec_fixes.safe_tower_sharding`);
(e) the batch size is cached at the first call; a smaller batch aborts the process on a host
    without towers -> a changed batch size raises :class:`dmt.errors.DmtError` before any
    collective;
(f) the CPU planner refuses row-wise types -> not used: plans are built by hand, from the
    :class:`dmt.plan.TowerPlan`, in plan order (:func:`dmt.distributed.sharding_plan.build_sharding_plan`).
(g) torchrec's train pipelines overlap only the cross-host input dist; each tower's intra-host
    input dist ran in ``compute`` on the default stream, where its host sync emptied the GPU once
    per step -> :mod:`dmt.distributed.tower_input_dist` chains it into the awaitables the pipeline
    waits on its data-dist stream.

Two more things needed fixing on the way. A sharded EBC orders its output keys by sharding
group, not by its tables, so :meth:`ShardedTowerCollection.compute` (a 25-line fork of
torchrec's) hands each tower module its features in the unsharded order. And torchrec sizes its
intra-host groups from environment variables (``LOCAL_WORLD_SIZE`` times
``TORCHREC_RESOLVED_POD_SIZE`` in 1.8, ``TOPOLOGY_DOMAIN_MULTIPLE`` in 1.6, both counted in hosts
per pod) and caches the groups for the life of the process: :func:`shard` pins them to the
topology while it shards and checks the groups it got (both in :mod:`dmt.distributed.torchrec_fixes`).

Shapes: B = local batch, H = hosts, L = ranks per host, D_t = tower t's output width.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from torchrec.distributed.embedding_tower_sharding import (
    EmbeddingTowerCollectionSharder,
    EmbeddingTowerSharder,
    ShardedEmbeddingTowerCollection,
)
from torchrec.distributed.model_parallel import get_unwrapped_module
from torchrec.distributed.types import Awaitable, ParameterSharding, ShardingEnv
from torchrec.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt.distributed.env import DistEnv
from dmt.distributed.qcomm import CommCompression, comm_codecs_registry, largest_table_rows
from dmt.distributed.sharding_plan import build_sharding_plan, find_tower_collection, tower_feature_names
from dmt.distributed.state_dict import DmtModelParallel, StateDictError, copy_into, key_report
from dmt.distributed.topology import Topology
from dmt.distributed.torchrec_fixes import (
    exact_resume_ddp_wrapper,
    safe_tower_sharding,
    torchrec_host_size,
    tower_process_groups,
)
from dmt.distributed.tower_input_dist import TowerInputs, chain_intra_host_input_dist
from dmt.errors import DmtError, TopologyError
from dmt.plan import PlanError, TowerPlan


class ShardedTowerCollection(ShardedEmbeddingTowerCollection):
    """torchrec's ``ShardedEmbeddingTowerCollection`` with traps (a)-(e) fixed and (g) pipelined (module docstring).

    Its forward returns ``[B, sum_t D_t]`` in logical tower order, like the unsharded
    ``EmbeddingTowerCollection``; its state dict keys are the unsharded ones
    (``towers.{t}.embedding.*`` as ShardedTensors, ``towers.{t}.interaction.*``) for the towers on
    this rank's host, and :meth:`load_state_dict` accepts them back (or full unsharded tensors).
    Built by :class:`TowerCollectionSharder`; arguments as torchrec's class, whose plan entries
    it never mutates.
    """

    # Stock DMP.load_state_dict then calls our load_state_dict instead of walking our children.
    _FORCE_STATE_DICT_LOAD = True

    def __init__(
        self,
        module: EmbeddingTowerCollection,
        table_name_to_parameter_sharding: dict[str, ParameterSharding],
        tower_sharder: Any,
        env: ShardingEnv,
        fused_params: dict[str, Any] | None = None,
        device: torch.device | None = None,
        qcomm_codecs_registry: dict[str, Any] | None = None,
    ) -> None:
        towers: list[EmbeddingTower] = list(module.towers)  # type: ignore[arg-type]  # ModuleList
        tower_keys = {str(i): tower_feature_names(t) for i, t in enumerate(towers)}
        # Every key any rank's state dict can hold, to tell other hosts' keys from unknown ones.
        all_keys = set()
        for i, t in enumerate(towers):
            all_keys |= {f"towers.{i}.embedding.{k}" for k in t.embedding.state_dict()}
            all_keys |= {f"towers.{i}.interaction.{k}" for k in t.interaction.state_dict()}
        params = copy.deepcopy(dict(table_name_to_parameter_sharding))  # (b): torchrec rewrites it
        with safe_tower_sharding():  # (d), and group creation in step on every rank
            super().__init__(module, params, tower_sharder, env, fused_params, device, qcomm_codecs_registry)
        local_size = self._intra_pg_world_size
        hosts = []
        for i, t in enumerate(towers):
            tables = [c.name for c in t.embedding.embedding_bag_configs()]
            tower_hosts = {table_name_to_parameter_sharding[n].ranks[0] // local_size for n in tables}
            assert len(tower_hosts) == 1, (i, tower_hosts)  # torchrec asserted it already
            hosts.append(tower_hosts.pop())
        # (a) torchrec concatenates tower outputs host by host: only collections whose towers are
        # in host order (what dmt.transform builds: one tower per host) return them in tower order.
        if hosts != sorted(hosts):
            raise DmtError(
                f"the collection's towers are on hosts {hosts}: order them by host (dmt.transform does), "
                "else torchrec returns their outputs in host order, not the collection's"
            )
        self._tower_keys: dict[str, list[str]] = tower_keys
        self._all_state_keys: frozenset[str] = frozenset(all_keys)
        self._local_batch_size: int | None = None

    # -------------------------------------------------------------------------------- (e)
    def input_dist(
        self,
        ctx: Any,
        kjt_features: KeyedJaggedTensor | None = None,
        wkjt_features: KeyedJaggedTensor | None = None,
    ) -> Awaitable[Any]:
        features = kjt_features if kjt_features is not None else wkjt_features
        assert features is not None
        batch_size = features.stride()
        if self._local_batch_size is None:
            self._local_batch_size = batch_size
        elif batch_size != self._local_batch_size:
            # torchrec sized its buffers for the first batch; a host without towers would abort
            # the process inside gloo/NCCL. Fail here, before this rank enters any collective.
            raise DmtError(
                f"the local batch size changed from {self._local_batch_size} to {batch_size}; sharded "
                "DMT towers need the same batch size on every rank at every step: drop the last "
                "partial batch (drop_last) or pad it"
            )
        cross = super().input_dist(ctx, kjt_features, wkjt_features)
        if not self.embeddings:
            return cross  # a host without towers looks nothing up
        # (g) the towers' intra-host input dist rides on the pipeline's data-dist stage
        return chain_intra_host_input_dist(cross, ctx, list(self.embeddings.values()), self.input_dist_params)

    def compute(self, ctx: Any, dist_input: Any) -> torch.Tensor:
        # Forked from torchrec (about 25 lines): the lookups start from ids already distributed
        # inside the host (g), and each tower module gets its features in the unsharded EBC's key
        # order (a sharded EBC orders its output keys by sharding group).
        if not self.embeddings:
            return super().compute(ctx, dist_input)  # a host without towers: [H*B, 0]
        inputs = dist_input[0]
        assert isinstance(inputs, TowerInputs), type(inputs)
        outputs = []
        for (i, interaction), embedding, (lookup_ctx, ids) in zip(
            self.interactions.items(), self.embeddings.values(), inputs.parts
        ):
            kt = embedding.compute_and_output_dist(lookup_ctx, ids).wait()
            outputs.append(interaction(self._in_tower_order(i, kt)))
        return torch.cat(outputs, dim=1)

    def _in_tower_order(self, tower: str, kt: KeyedTensor) -> KeyedTensor:
        keys = self._tower_keys[tower]
        if kt.keys() == keys:
            return kt
        by_key = kt.to_dict()
        return KeyedTensor.from_tensor_list(keys, [by_key[k] for k in keys])

    # -------------------------------------------------------------------------------- (c)
    def load_state_dict(  # type: ignore[override]  # torchrec's signature, strict kept
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """Load ``towers.{t}.*`` entries into the towers on this rank's host.

        Sharded entries take a ShardedTensor with this rank's shards (a state dict of the same
        plan) or the full unsharded tensor (e.g. an unsharded DMT model's). Entries of towers on
        other hosts are skipped; unknown keys are unexpected.

        Raises:
            StateDictError: a value that does not fit, or (``strict``) missing/unexpected keys.
        """
        if assign:
            raise StateDictError("assign=True is not supported for sharded towers; load by copy")
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._all_state_keys]
        errors: list[str] = []
        with torch.no_grad():
            for key, target in own.items():
                if key in state_dict:
                    copy_into(key, target, state_dict[key], errors)
        if errors:
            raise StateDictError("cannot load the state dict into the sharded towers:\n  " + "\n  ".join(errors))
        if strict and (missing or unexpected):
            raise StateDictError(key_report(missing, unexpected))
        return _IncompatibleKeys(missing, unexpected)


class TowerCollectionSharder(EmbeddingTowerCollectionSharder):
    """``EmbeddingTowerCollectionSharder`` that builds a :class:`ShardedTowerCollection`.

    Never mutates the plan it is given (torchrec's does, see trap (b)).

    ``qcomm_codecs_registry`` compresses the cross-host exchange of tower outputs and, unless
    ``intra_host_qcomm`` is False, the intra-host comms of the towers' sharded lookups too (torchrec's
    behaviour: its tower sharder hands the registry to every table sharder it builds).
    """

    def __init__(
        self,
        fused_params: dict[str, Any] | None = None,
        qcomm_codecs_registry: dict[str, Any] | None = None,
        intra_host_qcomm: bool = True,
    ) -> None:
        super().__init__(fused_params=fused_params, qcomm_codecs_registry=qcomm_codecs_registry)
        if not intra_host_qcomm:
            self._tower_sharder = EmbeddingTowerSharder(self.fused_params, qcomm_codecs_registry=None)

    def shard(
        self,
        module: EmbeddingTowerCollection,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedTowerCollection:
        return ShardedTowerCollection(
            module=module,
            table_name_to_parameter_sharding=params,
            tower_sharder=self._tower_sharder,
            env=env,
            fused_params=self.fused_params,
            device=device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
        )


def _resolve(env: DistEnv | Topology | None, device: torch.device | None) -> tuple[Topology, torch.device]:
    if isinstance(env, DistEnv):
        return env.topology, device or env.device
    topology = env if isinstance(env, Topology) else Topology.from_env()
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", topology.local_rank % torch.cuda.device_count())
        else:
            device = torch.device("cpu")
    return topology, device


def shard(
    model: nn.Module,
    plan: TowerPlan,
    env: DistEnv | Topology | None = None,
    *,
    sharding: str | Mapping[str, str] = "auto",
    device: torch.device | None = None,
    fused_params: dict[str, Any] | None = None,
    qcomm_codecs_registry: dict[str, Any] | None = None,
    comm_compression: CommCompression | None = None,
) -> DmtModelParallel:
    """Shard a DMT model over the job: each tower on its plan host, the rest data-parallel.

    Collective: every rank calls it with the same arguments. Each tower's tables are sharded
    inside its host (see :func:`build_sharding_plan`), its tower module is replicated on the
    host's ranks under intra-host DDP, and the dense, global-interaction and over arches are
    replicated on all ranks under DMP's DDP. The result's forward matches the unsharded model's
    on the same samples (tower outputs in the same order), its gradients are averaged over all
    ranks, and its ``state_dict``/``load_state_dict`` round-trip.

    Like DMP, this *consumes* ``model``: its tower collection is replaced by the sharded one, so
    don't use ``model`` afterwards. Tables that are materialised in ``model`` (not meta) are
    copied into the shards, so a sharded model starts from the unsharded one's weights; tables on
    the meta device are initialised by torchrec. Dense parts must be materialised. Attach the
    in-backward embedding optimizer (``apply_sparse_optimizer``) before calling this.

    Args:
        model: a DMT model (``dmt.transform``'s result) with its dense parts materialised.
        plan: the plan the model was transformed with; its hosts decide the placement.
        env: ``DistEnv`` (from ``dmt.distributed.env.init_distributed``), a ``Topology``, or None to read
            torchrun's environment.
        sharding: tower sharding inside a host: "auto", "table_row_wise" or "table_column_wise",
            for all towers or by tower name.
        device: compute device; default: the env's, else ``cuda:<local rank>`` or CPU.
        fused_params: extra fbgemm fused-kernel parameters for every table.
        qcomm_codecs_registry: torchrec quantized-comms codecs for the all-to-alls.
        comm_compression: compress the cross-host exchange (and, with ``intra_host``, the towers'
            intra-host comms) with :func:`dmt.distributed.qcomm.comm_codecs_registry`; not with
            ``qcomm_codecs_registry``.

    Raises:
        TopologyError: the process group, the topology and the plan's hosts don't agree.
        PlanError: the model's towers are not the plan's.
        DmtError: no process group, or meta dense parameters.
    """
    if not dist.is_initialized():
        raise DmtError("shard needs torch.distributed: call dmt.distributed.env.init_distributed() first")
    topology, device = _resolve(env, device)
    if (topology.world_size, topology.rank) != (dist.get_world_size(), dist.get_rank()):
        raise TopologyError(
            f"the topology says rank {topology.rank} of {topology.world_size}, but this process is rank "
            f"{dist.get_rank()} of {dist.get_world_size()}"
        )
    try:
        plan.validate_hosts(topology.num_hosts)
    except PlanError as e:
        raise TopologyError(str(e)) from None
    fqn, collection = find_tower_collection(model)
    meta_dense = [n for n, p in model.named_parameters() if p.is_meta and not _is_table(n, fqn)]
    if meta_dense:
        raise DmtError(
            f"dense parameters {meta_dense[:3]}{'...' if len(meta_dense) > 3 else ''} are on the meta device; "
            "build the flat model with only its tables on meta (build_flat_model(cfg, device='meta')), or "
            "call to_empty() and init_weights() on the dense parts first"
        )
    sharding_plan = build_sharding_plan(model, plan, topology, sharding=sharding, device_type=device.type)
    prefix = f"{fqn}."
    tables = {
        k[len(prefix) :]: v
        for k, v in model.state_dict().items()
        if k.startswith(prefix) and _is_table(k, fqn) and not v.is_meta
    }
    tower_process_groups(topology, device)
    intra_host_qcomm = True
    if comm_compression is not None:
        if qcomm_codecs_registry is not None:
            raise DmtError("pass qcomm_codecs_registry or comm_compression to shard, not both")
        qcomm_codecs_registry = comm_codecs_registry(
            comm_compression, device=device, rows=largest_table_rows(collection)
        )
        intra_host_qcomm = comm_compression.intra_host
    sharder = TowerCollectionSharder(
        fused_params=fused_params, qcomm_codecs_registry=qcomm_codecs_registry, intra_host_qcomm=intra_host_qcomm
    )
    with torchrec_host_size(topology.local_world_size):
        dmp = DmtModelParallel(
            module=model,
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=device,
            plan=copy.deepcopy(sharding_plan),
            sharders=[sharder],
            data_parallel_wrapper=exact_resume_ddp_wrapper(),
        )
    if tables:
        sharded = get_unwrapped_module(dmp).get_submodule(fqn)
        assert isinstance(sharded, ShardedTowerCollection), type(sharded)
        sharded.load_state_dict(tables, strict=False)
    return dmp


def _is_table(name: str, collection_fqn: str) -> bool:
    """Whether a parameter/state name is an embedding table of the tower collection."""
    return name.startswith(f"{collection_fqn}.towers.") and ".embedding." in name
