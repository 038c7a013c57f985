"""`dmt train`: train a model on Criteo-format data, in one process or on emulated/real hosts."""

from __future__ import annotations

import argparse
import os
import sys

from dmt.choices import TableInit
from dmt.cli.args import (
    FRACTION,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    add_flat_sharding_argument,
    add_link_arguments,
    add_tower_compression_argument,
    add_tower_sharding_argument,
    auto_or_positive_int,
    emulated_link,
)
from dmt.cli.outputs import check_output_dir
from dmt.errors import DmtError

# Plain names here (not imported from the modules that define them): `dmt --help` must not import torch.
PRESETS = ("debug", "small", "criteo", "mlperf_dcnv2")
SPLIT_CHOICES = ("tail", "kaggle", "terabyte")
MULTI_HOT_METHODS = ("hash", "table")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a flat DLRM / DLRM_DCN (one process, or sharded over hosts x ranks)",
        description="Train on Criteo-format TSV data and write <out>/metrics.json. With "
        "--hosts H --ranks-per-host L on one machine, H torchrun agents emulate H hosts (gloo); "
        "under torchrun on real hosts the same command runs sharded across them.",
    )
    add_train_arguments(p)
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of `dmt train`: what is trained, then how the run goes."""
    _add_data_arguments(p)
    _add_model_arguments(p)
    _add_run_arguments(p)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """What is read, how it is split, how batches are built."""
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        help="Criteo TSV file (.gz ok; small files), or a `dmt preprocess` directory / day .npy (memory-mapped)",
    )
    data.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default="tail",
        help="train / evaluation cut of --data: tail (the last --eval-fraction of rows), kaggle (7 days "
        "of rows: 0-5 train, day 6's first half evaluates), terabyte (days 0-22 train, day 23's first half)",
    )
    data.add_argument("--eval-fraction", type=FRACTION, default=0.2, help="--split tail: rows held out (0.2)")
    data.add_argument("--eval-data", help="evaluate on this input (file, day or directory); train on all of --data")
    data.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of failing")
    data.add_argument(
        "--data-workers",
        type=auto_or_positive_int,
        default="auto",
        help="threads building the next batches per rank; auto (default): 1, more while the step outruns them",
    )
    data.add_argument("--prefetch", type=POSITIVE_INT, default=4, help="batches built ahead of the step (4)")


def _add_table_start_arguments(model: argparse._ArgumentGroup) -> None:
    """How the tables start: their values, and where they are drawn."""
    model.add_argument(
        "--embedding-init",
        type=NON_NEGATIVE_FLOAT,
        metavar="A",
        help="tables start uniform in [-A, A] (preset default 0.1, about 2x --lr; 0: torchrec's sqrt(1/rows))",
    )
    model.add_argument(
        "--table-init",
        choices=TableInit.names(),
        default=TableInit.AUTO.value,
        help="a sharded run's first tables: seeded (the one-process run's, copied in: every rank builds them "
        "whole once), local (each rank draws its own shards), auto (seeded up to 1 GiB of tables)",
    )


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Model, towers and the embedding exchange."""
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=["dlrm", "dlrm_dcn"], help="architecture (default: the preset's)")
    model.add_argument(
        "--preset",
        choices=PRESETS,
        default="small",
        help="model shape (small); mlperf_dcnv2: MLPerf DLRM-DCNv2 (multi-hot, dim 128, 40M-row cap)",
    )
    model.add_argument("--embedding-dim", type=POSITIVE_INT, help="override the preset's embedding dim")
    model.add_argument("--num-embeddings", type=POSITIVE_INT, help="rows per table; ids are hashed modulo this")
    model.add_argument("--row-cap", type=POSITIVE_INT, help="cap every table of the preset at this many rows")
    _add_table_start_arguments(model)
    model.add_argument(
        "--multi-hot-method",
        choices=MULTI_HOT_METHODS,
        default="hash",
        help="how multi-hot presets make their extra ids: hash (no memory) or table (torchrec_dlrm's exact tables)",
    )
    tw = p.add_argument_group("towers (DMT)")
    tw.add_argument(
        "--plan",
        help="TowerPlan JSON (from `dmt partition`): train DMT over these towers; 'auto': the cost model "
        "picks flat or DMT (towers, c, sharding) for this job's hosts, link and batch, and says why",
    )
    tw.add_argument(
        "--cluster",
        help="--plan auto: cluster preset or JSON the cost model predicts for (default: the calibrated "
        "preset of this machine and --link)",
    )
    tw.add_argument(
        "--tower-module",
        choices=["identity", "linear", "mlp", "dot", "dcn"],
        default="identity",
        help="module per tower (identity: exactly the flat model)",
    )
    add_tower_compression_argument(tw, default=1.0)
    tw.add_argument("--tower-hidden", default="", help="hidden widths of the tower MLP, e.g. 64,32 (mlp: required)")
    tw.add_argument(
        "--global-interaction",
        choices=GLOBAL_CHOICES,
        default="auto",
        help="interaction over the tower outputs (auto: the flat model's; hierarchical: "
        "dots + self-dots + raw tower vectors)",
    )
    add_tower_sharding_argument(tw)
    comm = p.add_argument_group("communication")
    comm.add_argument(
        "--comm-compression",
        metavar="SPEC",
        help="compress the embedding exchange: fp16, bf16, int8, lossy or FWD:BWD (e.g. fp16:bf16), "
        "then options, e.g. 'lossy:bf16,lossy_eb=0.01,lossy_warmup_iters=5000' (see dmt/distributed/qcomm/config.py)",
    )


def _add_optimizer_arguments(opt) -> None:
    """Optimizers and rates; unset ones are the preset's (dmt.train.optim.PRESET_RATES)."""
    opt.add_argument(
        "--lr", type=POSITIVE_FLOAT, help="embedding learning rate (the preset's: 0.05; mlperf_dcnv2: 0.005)"
    )
    opt.add_argument(
        "--dense-lr",
        type=POSITIVE_FLOAT,
        help="learning rate of the MLPs (the preset's: 0.05; criteo, mlperf_dcnv2: 0.005)",
    )
    opt.add_argument(
        "--tower-lr",
        type=POSITIVE_FLOAT,
        help="learning rate of the tower modules (the preset's: 0.02; criteo, mlperf_dcnv2: 0.002)",
    )
    opt.add_argument(
        "--sparse-optimizer",
        choices=["sgd", "adagrad", "rowwise_adagrad"],
        help="the tables' optimizer (the preset's: small, mlperf_dcnv2: adagrad; criteo: rowwise_adagrad, one "
        "state value per row instead of per entry)",
    )
    opt.add_argument("--dense-optimizer", choices=["sgd", "adagrad", "adam"], default="adagrad")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Optimisation, distribution, checkpoints and outputs."""
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=POSITIVE_INT, default=256, help="per rank (256)")
    opt.add_argument("--epochs", type=POSITIVE_INT, default=1)
    opt.add_argument(
        "--max-steps", type=NON_NEGATIVE_INT, default=0, help="stop after this many steps (0: full epochs)"
    )
    _add_optimizer_arguments(opt)
    opt.add_argument(
        "--eval-every",
        type=NON_NEGATIVE_INT,
        default=0,
        help="steps between evaluations, besides every epoch end (0: epoch ends only)",
    )
    opt.add_argument(
        "--early-stop",
        type=NON_NEGATIVE_INT,
        default=0,
        metavar="N",
        help="stop after N evaluations without a better AUC (0: never); the best is reported either way",
    )
    opt.add_argument("--seed", type=SEED, default=0)
    dist = p.add_argument_group("distribution")
    dist.add_argument("--hosts", type=POSITIVE_INT, default=1, help="emulated hosts on this machine (1)")
    dist.add_argument("--ranks-per-host", type=POSITIVE_INT, default=1, help="ranks per emulated host (1)")
    add_flat_sharding_argument(dist)
    add_link_arguments(dist)
    ck = p.add_argument_group("checkpoints")
    ck.add_argument("--checkpoint-every", type=NON_NEGATIVE_INT, default=0, help="save every N steps (0: never)")
    ck.add_argument(
        "--max-restarts",
        type=NON_NEGATIVE_INT,
        default=0,
        help="relaunch a failed emulated job this many times, each resuming from the newest checkpoint",
    )
    ck.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in <out>")
    ck.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in <out> (its checkpoints, metrics.json, run.json); without it "
        "or --resume, a used <out> is refused",
    )
    p.add_argument("--out", default="runs/train", help="output directory (runs/train); locked while the run uses it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--profile",
        nargs="?",
        const="",
        metavar="DIR",
        help="record 5 steady-state training steps with torch.profiler: per rank a table of the top ops "
        "and a Chrome trace in DIR (default <out>/profile); those steps are left out of samples/s",
    )


# "auto" leaves the choice to dmt.transform (the flat model's own); "hierarchical" is
# GlobalInteractionConfig.hierarchical(); the rest are global interaction kinds.
GLOBAL_CHOICES = ("auto", "dot", "hierarchical", "dcn", "concat")


def global_interaction_config(name: str):
    from towers import GlobalInteractionConfig

    if name == "auto":
        return None
    return GlobalInteractionConfig.hierarchical() if name == "hierarchical" else GlobalInteractionConfig(kind=name)


def job_config(args: argparse.Namespace):
    from dmt.train.job import JobConfig  # torchrec import only when running

    model = model_config(args)
    return JobConfig(
        data=args.data,
        out=args.out,
        model=model,
        optim=optim_config(args),
        eval_fraction=args.eval_fraction,
        eval_data=args.eval_data,
        split=args.split,
        multi_hot_method=args.multi_hot_method,
        early_stop=args.early_stop,
        data_workers=args.data_workers,
        table_init=args.table_init,
        prefetch=args.prefetch,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        eval_every=args.eval_every,
        flat_sharding=args.flat_sharding,
        seed=args.seed,
        skip_bad_rows=args.skip_bad_rows,
        progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        overwrite=args.overwrite,
        towers=tower_spec(args, model),
        comm=comm_compression(args.comm_compression),
        profile=_profile_dir(args),
    )


def _profile_dir(args: argparse.Namespace) -> str | None:
    if args.profile is None:
        return None
    return args.profile or os.path.join(args.out, "profile")


def optim_config(args: argparse.Namespace):
    """The preset's optimizer settings with the flags' overrides (an unset flag keeps the preset's)."""
    from dmt.train.optim import OptimConfig

    return OptimConfig.for_preset(
        args.preset,
        sparse=args.sparse_optimizer,
        sparse_lr=args.lr,
        dense=args.dense_optimizer,
        dense_lr=args.dense_lr,
        tower_lr=args.tower_lr,
    )


def model_config(args: argparse.Namespace):
    """The preset with the flags' overrides."""
    from dmt.model.flat import ModelConfig

    overrides: dict = {} if args.model is None else {"arch": args.model}
    if args.embedding_dim is not None:
        dense = ModelConfig.preset(args.preset, row_cap=args.row_cap).dense_arch
        overrides |= {"embedding_dim": args.embedding_dim, "dense_arch": (*dense[:-1], args.embedding_dim)}
    if args.num_embeddings is not None:
        overrides["num_embeddings"] = (args.num_embeddings,) * 26
    if args.embedding_init is not None:
        overrides["embedding_init"] = None if args.embedding_init == 0 else args.embedding_init
    return ModelConfig.preset(args.preset, row_cap=args.row_cap, **overrides)


def tower_spec(args: argparse.Namespace, model):
    """The towers to train (a plan file, or the cost model's choice for --plan auto); None: flat."""
    towers = None
    if args.cluster and args.plan != "auto":
        raise DmtError("--cluster describes the cluster for --plan auto; add --plan auto or drop --cluster")
    if args.plan == "auto":
        from dmt.cli.auto_layout import auto_towers
        from dmt.train.run_dir import CLAIMED_ENV

        announce = os.environ.get("RANK", "0") == "0" and CLAIMED_ENV not in os.environ
        towers = auto_towers(args, model, announce=announce)
    elif args.plan:
        from dmt.plan import TowerPlan
        from dmt.train.build import TowerSpec
        from towers import TowerModuleConfig

        try:
            module = TowerModuleConfig(
                kind=args.tower_module, compression=args.tower_compression, hidden=args.tower_hidden
            )
        except ValueError as e:
            raise DmtError(f"bad tower module: {e}") from None
        towers = TowerSpec(
            plan=TowerPlan.from_json(args.plan),
            module=module,
            sharding=args.tower_sharding,
            global_interaction=global_interaction_config(args.global_interaction),
        )
    elif args.tower_module != "identity" or args.tower_compression != 1.0:
        raise DmtError("--tower-module/--tower-compression need --plan (a TowerPlan from `dmt partition`)")
    return towers


def comm_compression(spec: str | None):
    if not spec:
        return None
    from dmt.distributed.qcomm import CommCompression

    try:
        return CommCompression.parse(spec)
    except ValueError as e:  # DmtError is a ValueError too
        raise DmtError(f"bad --comm-compression {spec!r}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from dmt.distributed.launch import under_torchrun

    check_output_dir(args.out, "--out")  # before anything: a bad --out used to fail after a full epoch
    if args.resume and args.overwrite and not under_torchrun():
        raise DmtError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    cfg = job_config(args)  # validate here, before any process starts
    for path in (cfg.data, cfg.eval_data):
        if path and not os.path.exists(path):
            raise FileNotFoundError(2, "no such file or directory", path)
    if cfg.towers is not None and not under_torchrun() and args.hosts * args.ranks_per_host > 1:
        cfg.towers.plan.validate_hosts(args.hosts)
    link = emulated_link(args)
    if under_torchrun():
        from dmt.distributed.topology import Topology
        from dmt.train.job import run_job

        link.check_rank_env(os.environ, Topology.from_env().host)
        run_job(cfg, distributed=True)
        return 0
    if args.link is not None and args.hosts * args.ranks_per_host == 1:
        raise DmtError("--link connects emulated hosts: give --hosts H --ranks-per-host L as well")
    if args.hosts * args.ranks_per_host > 1:
        import torch

        link.check_device(torch.cuda.is_available())
        rc = _launch_emulated(args, cfg, link)
        if rc == 0:
            _print_summary(cfg.out)
        return rc
    from dmt.train.job import run_job

    run_job(cfg, distributed=False)
    _print_summary(cfg.out)
    return 0


def _launch_emulated(args: argparse.Namespace, cfg, link) -> int:
    """Claim the run directory here, then launch: the agents inherit its lock (dmt.train.run_dir),
    and the ranks, told that the launcher holds it, do not claim it again."""
    from dmt.train.run_dir import CLAIMED_ENV, claim_run_dir

    with claim_run_dir(cfg, args.hosts * args.ranks_per_host, overwrite=args.overwrite) as lock:
        rc = _launch_with_restarts(args, lock.fileno(), {CLAIMED_ENV: os.path.abspath(cfg.out)}, link)
        lock.failed = rc != 0
        return rc


def _launch_with_restarts(args: argparse.Namespace, lock_fd: int, env: dict[str, str], link) -> int:
    """Launch the emulated job; after a failure, launch it again with --resume, up to --max-restarts times.

    Why not torchrun's own --max-restarts: measured on 2x2 gloo (torch 2.13), torchrun's restarted
    workers fail to re-form the gloo group ("connectFullMesh ... Connection refused" to the dead
    ranks' addresses), also with a fresh store prefix per attempt. Fresh agents on a fresh
    rendezvous have no such state. Exit code 2 (bad input) is not retried: it would fail again, nor
    is a stop by signal (JobStopped propagates).
    """
    from dmt.distributed.launch import launch_local
    from dmt.train.job import RESTARTS_ENV

    argv = list(args.argv)
    for attempt in range(args.max_restarts + 1):
        rc = launch_local(
            argv,
            hosts=args.hosts,
            ranks_per_host=args.ranks_per_host,
            env={**env, RESTARTS_ENV: str(attempt)},
            pass_fds=(lock_fd,),
            host_launch=link.host_launch,  # the link's NCCL variables per emulated host (dmt.distributed.links)
        )
        if rc in (0, 2) or attempt == args.max_restarts:
            return rc
        print(
            f"[dmt] the job failed (exit {rc}); restart {attempt + 1} of {args.max_restarts} "
            "from the newest checkpoint",
            file=sys.stderr,
            flush=True,
        )
        # The restart continues this run: --overwrite would contradict --resume (the ranks do not claim).
        argv = [a for a in argv if a != "--overwrite"]
        if "--resume" not in argv:
            argv.append("--resume")
    return rc


def _print_summary(out: str) -> None:
    import json

    with open(f"{out}/metrics.json") as f:
        m = json.load(f)
    best = m["best"]
    best_note = "" if best["step"] == m["steps"] else f" (best {best['auc']:.4f} at step {best['step']})"
    stop_note = "  stopped early" if m["stopped_early"] else ""
    print(
        f"auc {m['auc']:.4f}{best_note}  logloss {m['logloss']:.4f}  ne {m['ne']:.4f}  steps {m['steps']}"
        f"{stop_note}  samples/s {m['samples_per_s']:,.0f}  -> {out}/metrics.json"
    )
