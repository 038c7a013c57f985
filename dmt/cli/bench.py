"""`dmt bench`: flat vs DMT training step time and bytes on synthetic Criteo batches, one table.

Launches itself on ``--hosts H --ranks-per-host L`` emulated hosts (torchrun agents on this
machine, as `dmt train` does), or runs as is under an outer torchrun on real hosts. See
:mod:`dmt.perf.bench` for what is measured, :mod:`dmt.distributed.links` for ``--link`` (GPU:
NVLink, NVLink inside a host + sockets between hosts, or sockets) and :mod:`dmt.perf.netns` for
``--shaped-link`` (CPU).
"""

from __future__ import annotations

import argparse
import os

from dmt.cli.args import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SEED,
    add_flat_sharding_argument,
    add_link_arguments,
    add_tower_compression_argument,
    add_tower_sharding_argument,
    emulated_link,
)
from dmt.cli.outputs import check_output_file
from dmt.errors import DmtError

DEFAULT_VARIANTS = "flat,dmt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time flat vs DMT training steps side by side (synthetic Criteo batches)",
        description="Train the flat DLRM and its DMT transform on the same random Criteo-shaped batches "
        "and print step time, samples/s and cross-/intra-host bytes per sample side by side, with the "
        "DMT/flat ratios. A step is forward + backward (fused sparse optimizer) + dense optimizer step.",
    )
    _add_model_arguments(p)
    _add_tower_arguments(p)
    _add_run_arguments(p)
    _add_topology_arguments(p)
    p.add_argument("--out", help="write every figure to this JSON file")
    p.add_argument("--tf32", action="store_true", help="CUDA matmuls in TF32 (tensor cores)")
    p.add_argument("--profile", metavar="DIR", help="also profile 5 steps per variant (torch.profiler) into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_command)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model (26 Criteo-shaped tables)")
    model.add_argument("--model", choices=["dlrm", "dlrm_dcn"], default="dlrm")
    model.add_argument("--num-embeddings", type=POSITIVE_INT, default=100_000, help="rows per table (100000)")
    model.add_argument("--embedding-dim", type=POSITIVE_INT, default=64, help="(64)")
    model.add_argument("--batch-size", type=POSITIVE_INT, default=1024, help="per rank (1024; e.g. 8192 on GPU)")
    model.add_argument("--pooling", type=POSITIVE_INT, default=1, help="ids per sample and feature (1)")


def _add_tower_arguments(p: argparse.ArgumentParser) -> None:
    tw = p.add_argument_group("towers (DMT)")
    plan = tw.add_mutually_exclusive_group()
    plan.add_argument("--plan", help="TowerPlan JSON (from `dmt partition`)")
    plan.add_argument(
        "--towers", type=POSITIVE_INT, help="N towers of contiguous features, round-robin on hosts (default: H)"
    )
    tw.add_argument(
        "--tower-module",
        choices=["identity", "linear", "mlp", "dot", "dcn"],
        default="linear",
        help="module per tower (linear)",
    )
    add_tower_compression_argument(tw, default=4.0)
    add_tower_sharding_argument(tw)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to run")
    what.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="comma-separated <base>[:<layout>][+comm]: base flat, dmt or stock (torchrec's tower sharder "
        "without DMT's fixes); flat layouts table_wise, table_row_wise, row_wise, planner (torchrec's own "
        "plan), 2d (torchrec's DMPCollection, GPU); dmt/stock layouts a --tower-sharding value; +comm: with "
        "--comm-compression. E.g. flat:table_wise,flat:planner,dmt:table_wise (default: flat,dmt); the table "
        "compares every DMT variant with the fastest flat one of its precision",
    )
    what.add_argument(
        "--2d-sync-every",
        dest="sync_every_2d",
        type=POSITIVE_INT,
        default=1,
        help="flat:2d: average the replicas (DMPCollection.sync) after every N steps (1)",
    )
    add_flat_sharding_argument(what)
    what.add_argument("--warmup", type=NON_NEGATIVE_INT, default=5, help="untimed steps first (5)")
    what.add_argument("--steps", type=POSITIVE_INT, default=20, help="timed steps; the median is reported (20)")
    what.add_argument("--count-steps", type=POSITIVE_INT, default=2, help="extra steps whose bytes are counted (2)")
    what.add_argument(
        "--comm-compression",
        metavar="SPEC",
        help="codec of the +comm variants (flat+comm, dmt+comm), as `dmt train --comm-compression`",
    )
    what.add_argument(
        "--pipeline",
        action="store_true",
        help="step through torchrec's TrainPipelineSparseDist, as dmt train does; "
        "on GPU its steps are timed back to back (plain steps each start at a barrier)",
    )
    what.add_argument("--sparse-optimizer", choices=["sgd", "adagrad", "rowwise_adagrad"], default="rowwise_adagrad")
    what.add_argument("--dense-optimizer", choices=["sgd", "adagrad", "adam"], default="adagrad")
    what.add_argument("--seed", type=SEED, default=0)


def _add_topology_arguments(p: argparse.ArgumentParser) -> None:
    topo = p.add_argument_group("distribution")
    topo.add_argument("--hosts", type=POSITIVE_INT, default=2, help="emulated hosts on this machine (2)")
    topo.add_argument("--ranks-per-host", type=POSITIVE_INT, default=1, help="ranks per emulated host (1)")
    add_link_arguments(topo)
    topo.add_argument(
        "--slow-link",
        action="store_true",
        help="old spelling of --link sockets",
    )
    topo.add_argument(
        "--shaped-link",
        metavar="RATE[,DELAY]",
        help="CPU, root: each emulated host in its own network namespace behind a tc-shaped "
        "link, e.g. 1gbit,0.5ms (see dmt/netns.py)",
    )


def comm_compression(spec: str | None):
    from dmt.cli.train import comm_compression as parse  # one parser for both

    return parse(spec)


def bench_config(args: argparse.Namespace, hosts: int):
    """The validated BenchConfig of these arguments on ``hosts`` hosts."""
    from dmt.perf.bench import BenchConfig, contiguous_plan
    from dmt.plan import TowerPlan
    from dmt.train.optim import OptimConfig

    plan = TowerPlan.from_json(args.plan) if args.plan else contiguous_plan(args.towers or hosts, hosts)
    plan.validate_hosts(hosts)
    cfg = BenchConfig(
        plan=plan,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        model=args.model,
        num_embeddings=args.num_embeddings,
        embedding_dim=args.embedding_dim,
        batch_size=args.batch_size,
        pooling=args.pooling,
        warmup=args.warmup,
        steps=args.steps,
        count_steps=args.count_steps,
        tower_module=args.tower_module,
        compression=args.tower_compression,
        tower_sharding=args.tower_sharding,
        flat_sharding=args.flat_sharding,
        pipeline=args.pipeline,
        optim=OptimConfig(sparse=args.sparse_optimizer, dense=args.dense_optimizer),
        seed=args.seed,
        link=_link_label(args),
        link_kind=_link_kind(args),
        sync_every_2d=args.sync_every_2d,
        out=args.out,
        progress=not args.no_progress,
        comm=comm_compression(args.comm_compression),
        profile=args.profile,
        tf32=args.tf32,
    )
    from dmt.perf.bench_variants import parse_variant

    variants = [parse_variant(v) for v in cfg.variants]
    if any(v.base == "stock" and v.comm for v in variants):
        raise DmtError("--variants: torchrec's stock tower sharder takes no codec; drop the +comm of stock")
    if any(v.base == "stock" for v in variants):
        _check_stock(cfg, hosts)
    return cfg


def _check_stock(cfg, hosts: int) -> None:
    """torchrec's stock tower sharder wraps every tower module in DDP (none without parameters) and
    builds a device mesh only on hosts that hold towers (an idle host leaves the others hanging)."""
    if cfg.tower_module == "identity":
        raise DmtError(
            "--variants stock needs a tower module with parameters (torchrec wraps each in DDP); "
            "use --tower-module linear or drop stock"
        )
    idle = sorted(set(range(hosts)) - {t.host for t in cfg.plan.towers})
    if idle:
        raise DmtError(
            f"--variants stock needs a tower on every host, but hosts {idle} have none; "
            "use at least --towers H or drop stock"
        )


def _link_label(args: argparse.Namespace) -> str:
    if args.shaped_link:
        from dmt.perf.netns import LinkShape

        return f"shaped {LinkShape.parse(args.shaped_link)} per host (netns + tc)"
    if args.link is None and not args.slow_link:
        return "default"
    return emulated_link(args).label()


def _link_kind(args: argparse.Namespace) -> str:
    """The link as one word for the JSON: shaped, default (no --link: NCCL's or gloo's own), or a LinkKind."""
    if args.shaped_link:
        return "shaped"
    return "default" if args.link is None and not args.slow_link else emulated_link(args).kind.value


def run_command(args: argparse.Namespace) -> int:
    from dmt.distributed.launch import under_torchrun

    if args.hosts < 1 or args.ranks_per_host < 1:
        raise DmtError(f"--hosts={args.hosts} and --ranks-per-host={args.ranks_per_host} must be >= 1")
    link = emulated_link(args)
    if link.uses_nccl_env and args.shaped_link:
        raise DmtError(f"--link {link.kind.value} (GPU) and --shaped-link (CPU) exclude each other; give one")
    if under_torchrun():
        from dmt.distributed.topology import Topology
        from dmt.perf.bench import run_bench

        topology = Topology.from_env()
        link.check_rank_env(os.environ, topology.host)
        run_bench(bench_config(args, topology.num_hosts))
        return 0
    cfg = bench_config(args, args.hosts)  # validate here, before any process starts
    check_output_file(args.out, "--out")
    import torch

    from dmt.perf.bench_variants import parse_variant

    cuda = torch.cuda.is_available()
    link.check_device(cuda)
    two_d = [v for v in cfg.variants if parse_variant(v).layout == "2d"]
    if two_d and not cuda:
        raise DmtError(f"--variants {','.join(two_d)}: torchrec's DMPCollection (2d) runs on CUDA only; drop it on CPU")
    return _launch(args, link)


def _launch(args: argparse.Namespace, link) -> int:
    """Start the emulated hosts: torchrun agents with the link's NCCL variables, or each in its
    namespace behind a shaped link."""
    from dmt.distributed.launch import launch_local

    if not args.shaped_link:
        return launch_local(
            args.argv, hosts=args.hosts, ranks_per_host=args.ranks_per_host, host_launch=link.host_launch
        )
    import torch

    from dmt.perf.netns import LinkShape, ShapedNetwork, sigterm_as_exit

    if torch.cuda.is_available():
        raise DmtError(
            "--shaped-link shapes gloo's TCP traffic on CPU; NCCL on GPUs may bypass the namespaces "
            "(peer copies, shared memory): use --link hierarchical or sockets there"
        )
    with sigterm_as_exit(), ShapedNetwork(args.hosts, LinkShape.parse(args.shaped_link)) as net:
        return launch_local(
            args.argv,
            hosts=args.hosts,
            ranks_per_host=args.ranks_per_host,
            rdzv_host=net.rendezvous_host,
            host_launch=net.host_launch,
        )
