"""The checks every rank of a tower-sharding test runs (tests/test_tower_sharding.py), and their worker.

A check builds the sharded DMT model and its unsharded reference (the flat DLRM on the global
batch; each rank holds its slice of it) and raises on any difference; :func:`_worker` runs a list
of checks by name and reports None or a traceback per check.
"""

from __future__ import annotations

import copy
import traceback

import pytest
import torch

from dmt.data import random_batch

FEATURES = tuple(f"f{i}" for i in range(6))
ROWS = (40, 30, 52, 20, 40, 30)
NUM_DENSE = 13
LOCAL_BATCH = 4


# ----------------------------------------------------------------------------------- helpers
def _cfg(arch):
    from dmt.model.flat import ModelConfig

    return ModelConfig.preset("debug", arch=arch, sparse_features=FEATURES, num_embeddings=ROWS)


def _plan(groups_hosts, num_hosts):
    from dmt.plan import Tower, TowerPlan

    return TowerPlan(
        towers=tuple(Tower(f"tower_{i}", tuple(g), host=h) for i, (g, h) in enumerate(groups_hosts)),
        num_hosts=num_hosts,
    )


def _batch(rank, world, seed, local=LOCAL_BATCH):  # rank's share of the global batch (None: all of it)
    share = slice(None) if rank is None else slice(rank * local, (rank + 1) * local)
    return random_batch(local * world, ROWS, features=FEATURES, pooling=range(4), seed=seed, samples=share)


def _flat(arch, seed=0):
    from dmt.model.flat import build_flat_model

    torch.manual_seed(seed)
    return build_flat_model(_cfg(arch))


LR = 0.5  # plain SGD everywhere: fused EXACT_SGD for the shards, torch SGD for the rest


def _transformed(flat, plan, tower_module=None):
    """``transform`` under a fixed seed, so fresh dense parts are the same on every call."""
    from dmt.model.transform import transform
    from towers import TowerModuleConfig

    torch.manual_seed(1)
    return transform(flat, plan, tower_module=TowerModuleConfig(**(tower_module or {})))


def _sharded(arch, plan, sharding, seed=0, flat=None, tower_module=None, device="cpu"):
    """The flat model (or a fresh one of ``seed``), transformed and sharded with fused SGD tables."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from dmt.distributed.topology import Topology
    from dmt.distributed.tower_sharding import shard

    dmt = _transformed(flat if flat is not None else _flat(arch, seed), plan, tower_module)
    for m in dmt.modules():
        if isinstance(m, EmbeddingBagCollection):
            apply_optimizer_in_backward(torch.optim.SGD, m.parameters(), {"lr": LR})
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (see _dist)
    return shard(dmt, plan, Topology.from_env(), sharding=sharding, device=device)


def _sharded_optimizer(sharded):
    """Dense SGD over the non-table parameters; the tables update inside backward."""
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(sharded.named_parameters())), lambda ps: torch.optim.SGD(ps, lr=LR)
    )
    return CombinedOptimizer([sharded.fused_optimizer, dense])


def _table_key(state_key):
    """'model.tower_arch.towers.1.embedding.embedding_bags.t_f2.weight' -> flat model's key."""
    table = state_key.split(".embedding_bags.")[1]
    return f"model.sparse_arch.embedding_bag_collection.embedding_bags.{table}"


def _assert_matches(sharded, reference, atol=1e-6):
    """Every local parameter of ``sharded`` equals the unsharded ``reference``'s (shards vs slices).

    ``reference`` is the flat model (tables and the DCN renamed) or an unsharded DMT model.
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    ref = reference.state_dict()

    def ref_value(key):
        if key in ref:
            return ref[key]
        if ".embedding_bags." in key:
            return ref[_table_key(key)]
        return ref[key.replace("model.inter_arch.arch.crossnet", "model.inter_arch.crossnet")]

    checked = 0
    for key, value in sharded.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = ref_value(key)
            for s in value.local_shards():
                index = tuple(slice(o, o + n) for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes))
                torch.testing.assert_close(s.tensor.cpu(), full[index], rtol=1e-5, atol=atol, msg=key)
                checked += 1
        elif not key.endswith("triu_indices"):
            torch.testing.assert_close(value.cpu(), ref_value(key), rtol=1e-5, atol=atol, msg=key)
            checked += 1
    assert checked, "nothing compared"


def _train_step(model, optimizer, batch):
    optimizer.zero_grad()
    loss, (_, logits, _) = model(batch)
    loss.backward()
    optimizer.step()
    return logits.detach()


# ------------------------------------------------------------------------------------ checks
def check_parity(rank, world, *, arch, plan, sharding, steps=2, pipeline=False, tower_module=None, device="cpu"):
    """Forward logits, then parameters and logits after each SGD step, equal the unsharded model's:
    the flat DLRM for identity towers, else the unsharded DMT model."""
    tol = 1e-6 if device == "cpu" else 2e-5  # CUDA kernels sum in another order
    plan_before = copy.deepcopy(plan)
    flat = _flat(arch)
    sharded = _sharded(arch, plan, sharding, flat=flat, tower_module=tower_module, device=device)
    assert plan == plan_before  # the caller's TowerPlan
    reference = flat if tower_module is None else _transformed(flat, plan, tower_module)
    flat_opt = torch.optim.SGD(reference.parameters(), lr=LR)
    opt = _sharded_optimizer(sharded)
    # Tables copied from the (unsharded) model handed to shard(): same start as the reference.
    _assert_matches(sharded, reference, atol=0)
    if pipeline:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        pipe = TrainPipelineSparseDist(sharded, opt, torch.device(device))
        local_batches = iter([_batch(rank, world, seed=100 + s) for s in range(steps)])
    for step in range(steps):
        expected = _train_step(reference, flat_opt, _batch(None, world, seed=100 + step))
        if pipeline:
            _, logits, _ = pipe.progress(local_batches)
        else:
            logits = _train_step(sharded, opt, _batch(rank, world, seed=100 + step).to(torch.device(device)))
        torch.testing.assert_close(
            logits.cpu(), expected[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH], rtol=1e-5, atol=tol
        )
        _assert_matches(sharded, reference, atol=tol)
    sharding_plan = sharded.sharding_plan.plan["model.tower_arch"]
    from dmt.distributed.topology import Topology

    topo = Topology.from_env()
    for tower in plan.towers:  # (b): still the global plan, tables on their tower's host
        for f in tower.features:
            ps = sharding_plan[f"t_{f}"]
            assert ps.sharding_type in ("table_row_wise", "table_column_wise"), ps
            assert set(ps.ranks) <= set(topo.host_ranks(tower.host)), (f, ps.ranks, tower.host)


def check_state_dict_round_trip(rank, world, *, arch, plan, sharding):
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torchrec.distributed.model_parallel import DistributedModelParallel

    from dmt.distributed.state_dict import DmtModelParallel, StateDictError
    from dmt.model.transform import transform

    a = _sharded(arch, plan, sharding, seed=1)
    b = _sharded(arch, plan, sharding, seed=2)
    sd_a = a.state_dict()
    keys_before = list(sd_a)

    def snapshot(sd):
        return {
            k: [s.tensor.clone() for s in v.local_shards()] if isinstance(v, ShardedTensor) else v.clone()
            for k, v in sd.items()
        }

    def assert_same(x, y):
        assert x.keys() == y.keys()
        for k in x:
            xs, ys = (x[k], y[k]) if isinstance(x[k], list) else ([x[k]], [y[k]])
            for u, v in zip(xs, ys):
                assert torch.equal(u, v), k

    want = snapshot(sd_a)
    result = b.load_state_dict(sd_a)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(sd_a) == keys_before  # the caller's dict is not rewritten
    assert_same(snapshot(b.state_dict()), want)
    # The stock DMP entry point reaches the same loader for the towers.
    c = _sharded(arch, plan, sharding, seed=3)
    DistributedModelParallel.load_state_dict(c, a.state_dict())
    got_c = snapshot(c.state_dict())
    assert all(torch.equal(u, v) for k in want if isinstance(want[k], list) for u, v in zip(got_c[k], want[k]))

    # An unsharded DMT model's state dict (full tensors) loads into the shards.
    unsharded = transform(_flat(arch, seed=4), plan)
    b.load_state_dict(unsharded.state_dict())
    _assert_matches(b, unsharded, atol=0)

    # Wrong keys and shapes fail loudly, whichever rank holds them.
    bad = dict(sd_a)
    bad["model.tower_arch.towers.0.embedding.embedding_bags.t_nope.weight"] = torch.zeros(1)
    with pytest.raises(StateDictError, match=r"unexpected keys.*t_nope"):
        b.load_state_dict(bad)
    bad = dict(sd_a)
    bad["model.over_arch.model.1.weight"] = torch.zeros(3, 3)
    with pytest.raises(StateDictError, match=r"over_arch\.model\.1\.weight"):
        b.load_state_dict(bad)
    table_keys = [k for k, v in sd_a.items() if isinstance(v, ShardedTensor)]
    if table_keys:
        bad = {k: v for k, v in sd_a.items() if k != table_keys[0]}
        with pytest.raises(StateDictError, match="missing keys"):
            b.load_state_dict(bad)
        assert table_keys[0] in b.load_state_dict(bad, strict=False).missing_keys
        bad = dict(sd_a)
        bad[table_keys[0]] = torch.zeros(3, 8)
        with pytest.raises(StateDictError, match="global shape"):
            b.load_state_dict(bad)
    assert isinstance(b, DmtModelParallel)


def check_batch_size_change(rank, world, *, arch, plan, sharding):
    from dmt.errors import DmtError

    sharded = _sharded(arch, plan, sharding)
    opt = _sharded_optimizer(sharded)
    _train_step(sharded, opt, _batch(rank, world, seed=7))
    with pytest.raises(DmtError, match="batch size changed from 4 to 2"):
        sharded(_batch(rank, world, seed=8, local=2))
    _train_step(sharded, opt, _batch(rank, world, seed=9))  # still usable


def check_sharder_keeps_plan(rank, world, *, arch, plan, sharding):
    """torchrec's own DMP with our sharder and a caller's ShardingPlan: the plan is not mutated."""
    import torch.distributed as dist
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    from dmt.distributed.sharding_plan import build_sharding_plan
    from dmt.distributed.topology import Topology
    from dmt.distributed.tower_sharding import TowerCollectionSharder
    from dmt.model.transform import transform

    dmt = transform(_flat(arch), plan)
    sharding_plan = build_sharding_plan(dmt, plan, Topology.from_env(), sharding=sharding)
    before = str(sharding_plan)
    DistributedModelParallel(
        dmt,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=torch.device("cpu"),
        plan=sharding_plan,
        sharders=[TowerCollectionSharder()],
    )
    assert str(sharding_plan) == before


def check_errors(rank, world, *, arch, plan):
    """Bad arguments fail on every rank alike, before any collective."""
    from dmt.distributed.topology import Topology
    from dmt.distributed.tower_sharding import shard
    from dmt.errors import DmtError, TopologyError
    from dmt.plan import PlanError

    topo = Topology.from_env()
    dmt = _transformed(_flat(arch), plan)
    too_many_hosts = _plan([(t.features, 2) for t in plan.towers], 3)
    with pytest.raises(TopologyError, match="topology has 2"):
        shard(dmt, too_many_hosts, topo, device=torch.device("cpu"))
    with pytest.raises(TopologyError, match="this process is rank"):
        shard(
            dmt,
            plan,
            Topology(world_size=world, local_world_size=1, rank=(rank + 1) % world),
            device=torch.device("cpu"),
        )
    regrouped = _plan([(FEATURES[:3], 0), (FEATURES[3:], 1)], 2)
    with pytest.raises(PlanError, match="shard with the plan the model was transformed with"):
        shard(dmt, regrouped, topo, device=torch.device("cpu"))
    with pytest.raises(DmtError, match="is not one of"):
        shard(dmt, plan, topo, sharding="row_wise", device=torch.device("cpu"))


def check_one_lookup_per_host(rank, world, *, arch, plan, sharding):
    """Several towers on a host share one sharded lookup and one tower-module wrapper; intra-host
    DDP only where the host has more than one rank (on one rank it would all-reduce with itself)."""
    from torch.nn.parallel import DistributedDataParallel

    from dmt.distributed.topology import Topology
    from dmt.distributed.torchrec_fixes import ParameterFreeTower
    from dmt.distributed.tower_sharding import ShardedTowerCollection

    topo = Topology.from_env()
    sharded = _sharded(arch, plan, sharding, tower_module=dict(kind="linear", compression=2))
    collection = next(m for m in sharded.modules() if isinstance(m, ShardedTowerCollection))
    local_towers = plan.towers_on_host(topo.host)
    assert len(collection.embeddings) == (1 if local_towers else 0), list(collection.embeddings)
    assert len(collection.interactions) == len(collection.embeddings)
    for wrapper in collection.interactions.values():
        assert wrapper.module.tower_indices == local_towers
        expected = DistributedDataParallel if topo.local_world_size > 1 else ParameterFreeTower
        assert isinstance(wrapper, expected), type(wrapper)


def check_intra_host_ids_before_compute(rank, world, *, arch, plan, sharding):
    """The towers' intra-host id all-to-alls run while the input dist is waited (the pipeline's
    data-dist stream), none in ``compute``: the forward starts at the lookup."""
    from dmt.distributed.topology import Topology
    from dmt.distributed.tower_sharding import ShardedTowerCollection
    from dmt.perf.comm_counter import CommCounter

    topo = Topology.from_env()
    sharded = _sharded(arch, plan, sharding)
    collection = next(m for m in sharded.modules() if isinstance(m, ShardedTowerCollection))
    sharded(_batch(rank, world, seed=6))  # the first call sets up the output dist (an all-gather)
    ctx = collection.create_context()
    with CommCounter(topo) as staged:
        dist_input = collection.input_dist(ctx, _batch(rank, world, seed=7).sparse_features).wait().wait()
    with CommCounter(topo) as computed:
        collection.compute_and_output_dist(ctx, dist_input).wait()

    def id_calls(counter, group):
        return counter.summary().total(group=group, payload="int").calls

    assert id_calls(staged, "cross_host") > 0
    if plan.towers_on_host(topo.host):
        assert id_calls(staged, "intra_host") > 0
    assert id_calls(computed, "intra_host") == id_calls(computed, "cross_host") == 0, computed.summary().to_markdown()
    assert computed.summary().total(group="cross_host", payload="float").calls > 0  # the tower outputs


def check_rowwise_adagrad_parity(rank, world, *, arch, plan, sharding, steps=3, device="cpu"):
    """Fused row-wise Adagrad tables (one accumulator per row) train like the unsharded flat model
    with torchrec's RowWiseAdagrad: exact for shardings that keep whole rows on one rank."""
    from dmt.distributed.topology import Topology
    from dmt.distributed.tower_sharding import shard
    from dmt.train.optim import OptimConfig, apply_sparse_optimizer, build_optimizer

    tol = 1e-6 if device == "cpu" else 2e-5  # CUDA kernels sum in another order
    cfg = OptimConfig(sparse="rowwise_adagrad", sparse_lr=LR, dense="sgd", dense_lr=LR)
    flat = _flat(arch)
    dmt = _transformed(flat, plan)
    apply_sparse_optimizer(dmt, cfg)
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (see _dist)
    sharded = shard(dmt, plan, Topology.from_env(), sharding=sharding, device=dev)
    opt, flat_opt = build_optimizer(sharded, cfg), build_optimizer(flat, cfg)
    for step in range(steps):
        expected = _train_step(flat, flat_opt, _batch(None, world, seed=200 + step))
        logits = _train_step(sharded, opt, _batch(rank, world, seed=200 + step).to(dev))
        local = expected[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
        torch.testing.assert_close(logits.cpu(), local, rtol=1e-5, atol=tol)
        _assert_matches(sharded, flat, atol=tol)


def check_whole_tables_on_one_rank(rank, world, *, arch, plan):
    """table_wise inside a host: every local table shard is a whole table (all rows, all columns)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    sharded = _sharded(arch, plan, "table_wise")
    held = 0
    for key, value in sharded.state_dict().items():
        if isinstance(value, ShardedTensor):
            for s in value.local_shards():
                assert list(s.metadata.shard_sizes) == list(value.size()), (key, s.metadata)
                held += 1
    assert held >= 1, "a rank of a host with towers holds at least one whole table"


def _worker(rank, world, checks):
    """Run ``checks`` [(name, function name, kwargs)] in order; report None or a traceback each."""
    import os

    os.environ.setdefault("TORCHREC_RESOLVED_POD_SIZE", os.environ["LOCAL_WORLD_SIZE"])  # as init_distributed
    report = {}
    for name, fn, kwargs in checks:
        try:
            globals()[fn](rank, world, **kwargs)
            report[name] = None
        except Exception:
            report[name] = traceback.format_exc()
    return report


def _failures(reports, name):
    return {rank: r[name] for rank, r in enumerate(reports) if r[name] is not None}


def _assert_ok(reports, name):
    failures = _failures(reports, name)
    assert not failures, "\n".join(f"rank {r}:\n{tb}" for r, tb in failures.items())
