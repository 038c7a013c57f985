"""``dmt train --plan auto``: flat or DMT for this job, chosen by the calibrated cost model before training.

DMT changes the model and only pays off where the inter-host link is the bottleneck; on an
all-NVLink box it is slower than flat (benchmarks/results/gpu_h200x4_hier). So the user can ask
the cost model (``dmt.perf.planning.choose_layout``) instead of guessing: it predicts the best flat
baseline and the best DMT configuration for the job's hosts, GPUs, link, batch and codec, picks DMT
only when it is clearly faster, and says why in one line. A DMT choice trains contiguous towers
(``dmt partition`` makes learned ones) with the chosen compression and intra-host sharding.
"""

from __future__ import annotations

import argparse
import os
import sys

from dmt.errors import DmtError


def _job_shape(args: argparse.Namespace) -> tuple[int, int]:
    """Hosts and ranks per host of this job: the emulated ones, or torchrun's on real hosts."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        return int(os.environ["WORLD_SIZE"]) // local, local
    return args.hosts, args.ranks_per_host


def _codec(spec: str | None) -> str:
    """The cost model's codec for a --comm-compression spec (fp32 without one)."""
    if not spec:
        return "fp32"
    forward = spec.split(",")[0].split(":")[0]
    if forward in ("fp16", "bf16"):
        return "fp16"  # same bytes
    if forward == "lossy":
        return "lossy8"
    raise DmtError(f"--plan auto has no cost model for --comm-compression {spec!r}; use fp16/bf16/lossy or a plan file")


def auto_towers(args: argparse.Namespace, model, *, announce: bool):
    """The TowerSpec the cost model picks for this job, or None for the flat model.

    Raises:
        DmtError: flags that --plan auto decides itself, or a job the cost model cannot describe.
    """
    import torch

    from dmt.cli.train import optim_config  # train imports this module only when --plan auto
    from dmt.perf.cluster import load_cluster
    from dmt.perf.cost_model import ModelShape
    from dmt.perf.planning import auto_plan, choose_layout, cluster_for_job
    from dmt.train.build import TowerSpec
    from towers import TowerModuleConfig

    if args.tower_module != "identity" or args.tower_compression != 1.0:
        raise DmtError(
            "--plan auto chooses the tower module and compression itself; drop --tower-module/"
            "--tower-compression, or give a plan file to choose them yourself"
        )
    hosts, local = _job_shape(args)
    if hosts < 2:
        if announce:
            print(
                "[dmt] --plan auto: flat: DMT needs at least 2 hosts and this job has one", file=sys.stderr, flush=True
            )
        return None
    if args.cluster:
        cluster = load_cluster(args.cluster).with_hosts(hosts)
    else:
        cluster = cluster_for_job(
            hosts=hosts, ranks_per_host=local, link=args.link or "default", cuda=torch.cuda.is_available()
        )
    shape = ModelShape(
        num_tables=len(model.sparse_features),
        num_embeddings=max(model.num_embeddings),
        embedding_dim=model.embedding_dim,
        pooling=sum(model.multi_hot_sizes) / len(model.multi_hot_sizes) if model.multi_hot_sizes else 1.0,
        dense_arch=model.dense_arch,
        over_arch=model.over_arch,
    )
    choice = choose_layout(
        shape,
        cluster,
        args.batch_size,
        codec=_codec(args.comm_compression),
        rowwise_optimizer=optim_config(args).sparse == "rowwise_adagrad",
    )
    if announce:
        print(f"[dmt] --plan auto: {choice.reason}", file=sys.stderr, flush=True)
    plan = auto_plan(choice, tuple(model.sparse_features), hosts)
    if plan is None:
        return None
    setup = choice.dmt.setup
    # Dot towers (in-tower dots, then projection) learn as fast as flat at c=4, linear ones do not
    # (benchmarks/results/learning); at c=1 the identity is the flat model itself.
    kind = "dot" if setup.compression > 1 else "identity"
    module = TowerModuleConfig(kind=kind, compression=setup.compression)
    return TowerSpec(plan=plan, module=module, sharding=setup.intra_sharding, global_interaction=None)
