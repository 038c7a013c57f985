"""Learning curves of flat DLRM vs DMT (AUC vs samples), several seeds, one JSON per run.

Each run is what ``dmt train`` does in one process (same build recipe ``dmt.train.build``, same
shuffled global batches ``dmt.data.iter_batches``, same loop ``dmt.train.loop.train``), run here
in-process so the data is read once and model knobs the CLI does not expose (``embedding_init``)
can be compared. The curve points are scored on the first ``--curve-rows`` held-out rows; the
epoch-end AUCs of the table on the whole held-out split (the last 20 % of rows, as ``dmt train``).

    python -m benchmarks.learning_curves --suite demo --workdir runs/learning
    python -m benchmarks.learning_curves --suite demo --recipes default,adagrad,init0.1 --epochs 3
    python -m benchmarks.learning_curves --suite demo --variants kinds --recipes init0.1 --epochs 1
    python -m benchmarks.learning_curves --suite criteo --epochs 3   # ../shared/data/criteo sample

Recipes (overrides of ``ModelConfig.preset("small")`` / ``OptimConfig()``): ``default`` (before
issue 18: torchrec's table init, tower lr 0.005), ``init0.1`` (tables uniform in +-0.1, tower lr
0.005), ``init0.1_tlr0.02`` (today's defaults), ``adagrad`` (per-coordinate Adagrad tables),
``init0.1_adagrad``, ``small_data`` (init 0.1, D=8), and a few tower-lr and init sweeps. Besides
AUC the table shows each run's embedding effective rank after its first step and at the end
(:func:`embedding_rank`, issue 18's mechanism) and checks issue 18's targets (DMT TP c=4 >=
flat - 0.002, TP >= random + 0.005) for linear and dot towers.

Suites: ``demo`` (``dmt gen-data --rows 300000 --seed 0``, the demo's data; global batch 512 as
the demo's 2x2 ranks x 128), ``gen1m`` (1M generated rows), ``criteo`` (the real Kaggle sample;
trains on its first 80 %, plans from those rows only via ``dmt partition --max-rows``, batch 128,
plus a logistic-regression baseline). Data and plans are made with the ``dmt`` CLI under
``--workdir`` when absent. Finished runs are skipped (resumable); ``--report-only`` redraws.
Writes ``<out>/<suite>/table.md``, ``curves.png`` and ``runs.json`` (every run's curve).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.learning_setups import GOAL_PAIRS, RECIPES, VARIANT_SETS, VARIANTS
from dmt.atomic import atomic_write_text
from dmt.errors import DmtError

REPO = Path(__file__).resolve().parents[1]
CRITEO_SAMPLE = Path(
    os.environ.get("DMT_CRITEO_SAMPLE", REPO.parent / "shared/data/criteo/criteo_kaggle_sample_10000.txt")
)
EVAL_FRACTION = 0.2  # dmt train's default: the last 20 % of rows are held out
SUITES = {
    "demo": {"rows": 300_000, "batch_size": 512, "curve_every": 39},  # 468 steps/epoch = 12 x 39
    "gen1m": {"rows": 1_000_000, "batch_size": 512, "curve_every": 125},
    "criteo": {"rows": 0, "batch_size": 128, "curve_every": 62},  # 8,000 rows: 62 steps/epoch
}


# ----------------------------------------------------------------------------------- data, plans
def _dmt(*args: str) -> None:
    """One `dmt` command, as a user types it; its error (one line) becomes ours."""
    done = subprocess.run([sys.executable, "-m", "dmt.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DmtError(f"`dmt {' '.join(args)}` failed: {last}")


def prepare(suite: str, workdir: Path) -> tuple[Path, dict[str, Path]]:
    """The suite's data file and its TP / random plans (4 towers on 2 hosts), made once."""
    work = workdir / suite
    work.mkdir(parents=True, exist_ok=True)
    if suite == "criteo":
        if not CRITEO_SAMPLE.is_file():
            raise DmtError(f"the real Criteo sample is not at {CRITEO_SAMPLE}; set DMT_CRITEO_SAMPLE=path")
        data = CRITEO_SAMPLE
        with data.open() as f:
            rows = sum(1 for _ in f)
    else:
        data, rows = work / "data.tsv", SUITES[suite]["rows"]
        if not data.is_file():
            _dmt("gen-data", f"--rows={rows}", f"--out={data}", f"--truth={work / 'truth.json'}", "--seed=0")
    train_rows = round(rows * (1 - EVAL_FRACTION))  # plans see the training rows only
    plans = {}
    for method in ("tp", "random"):
        plans[method] = work / f"plan_{method}.json"
        if not plans[method].is_file():
            _dmt(
                "partition",
                f"--data={data}",
                f"--out={plans[method]}",
                "--num-towers=4",
                "--hosts=2",
                f"--method={method}",
                "--seed=0",
                f"--max-rows={train_rows}",
                "--no-progress",
            )
    return data, plans


def load_split(data: Path):
    """(train, held-out) arrays, split as ``dmt train`` splits them."""
    from dmt.data import read_criteo
    from dmt.train.job import split_train_eval

    arrays, _ = read_criteo(data)
    return split_train_eval(arrays, EVAL_FRACTION)


# ----------------------------------------------------------------------------------------- runs
def build(variant: str, recipe: str, plans: dict[str, Path], seed: int):
    """The model and optimizer ``dmt train`` would build for this variant and recipe."""
    from dmt.model.flat import ModelConfig
    from dmt.plan import TowerPlan
    from dmt.train.build import TowerSpec, build_model
    from dmt.train.optim import OptimConfig
    from towers import GlobalInteractionConfig, TowerModuleConfig

    plan, module, interaction = VARIANTS[variant]
    spec = RECIPES[recipe]
    towers = None
    if plan is not None:
        inter = GlobalInteractionConfig(kind="dot", **interaction) if interaction else None
        towers = TowerSpec(
            plan=TowerPlan.from_json(plans[plan]), module=TowerModuleConfig(**module), global_interaction=inter
        )
    model_cfg = ModelConfig.preset("small", **spec.get("model", {}))
    model, optimizer = build_model(model_cfg, OptimConfig(**spec.get("optim", {})), seed=seed, towers=towers)
    return model, optimizer, model_cfg


def embedding_rank(model, batch) -> float:
    """Effective rank of one batch's looked-up embedding vectors, all features stacked ([B*F, D]).

    exp(entropy of the normalised squared singular values): D when the vectors fill every
    direction, 1 when they all lie on one line. Low values are the collapse that stalls training:
    a scale-free table update (row-wise Adagrad moves a row by about lr*sqrt(D) whatever its
    gradient's size) points every row along the dense vector, the only non-tiny partner of a
    fresh embedding in the dot interaction, and a tiny init cannot pull them apart again.
    """
    import torch
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    with torch.no_grad():
        vectors = torch.cat(
            [
                v
                for m in model.modules()
                if isinstance(m, EmbeddingBagCollection)
                for v in m(batch.sparse_features).to_dict().values()
            ]
        )
        energy = torch.linalg.svdvals(vectors.float()) ** 2
        p = energy / energy.sum()
        return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def score(model, arrays, num_embeddings, batch_size: int = 4096) -> dict:
    """AUC and log loss of ``model`` on every row of ``arrays`` (dmt.train.metrics), and the
    embeddings' effective rank on its first batch (:func:`embedding_rank`)."""
    import torch

    from dmt.data import iter_batches
    from dmt.data.batching import PAD_LABEL
    from dmt.train.metrics import binary_metrics

    logits, labels, rank = [], [], None
    model.eval()
    with torch.no_grad():
        batches = iter_batches(
            arrays, batch_size=batch_size, num_embeddings=num_embeddings, shuffle=False, pad_last=True
        )
        for batch in batches:
            rank = embedding_rank(model, batch) if rank is None else rank
            _, (_, logit, label) = model(batch)
            logits.append(logit.reshape(-1))
            labels.append(label.reshape(-1).float())
    model.train()
    logit, label = torch.cat(logits), torch.cat(labels)
    keep = label != PAD_LABEL
    metrics = binary_metrics(logit[keep], label[keep])
    return {"auc": metrics["auc"], "logloss": metrics["logloss"], "embedding_rank": rank}


def rank_after_first_step(key: dict, split, plans: dict[str, Path]) -> float:
    """:func:`embedding_rank` on held-out rows after one optimizer step of a fresh model (same
    seed and first batch as the run): where the collapse shows up, before anything is learned."""
    from dmt.data import iter_batches

    train_rows, held_out = split
    model, optimizer, model_cfg = build(key["variant"], key["recipe"], plans, key["seed"])
    emb = model_cfg.num_embeddings
    batches = iter_batches(train_rows, batch_size=key["batch_size"], num_embeddings=emb, shuffle=True, seed=key["seed"])
    optimizer.zero_grad()
    model(next(iter(batches)))[0].backward()
    optimizer.step()
    probe = iter_batches(held_out.slice(0, 4096), batch_size=4096, num_embeddings=emb, shuffle=False, pad_last=True)
    return embedding_rank(model, next(iter(probe)))


def run_one(key: dict, split, plans: dict[str, Path], curve_rows: int) -> dict:
    """Train one (variant, recipe, seed) for ``key['epochs']`` epochs; curve + epoch-end scores."""
    from dmt.data import iter_batches, num_global_batches
    from dmt.train.loop import LoopConfig, LoopResult, train

    train_rows, held_out = split
    model, optimizer, model_cfg = build(key["variant"], key["recipe"], plans, key["seed"])
    batch, emb = key["batch_size"], model_cfg.num_embeddings
    per_epoch = num_global_batches(len(train_rows), batch, 1)
    curve_set = held_out.slice(0, min(curve_rows, len(held_out)))

    def curve_batches():
        return iter_batches(curve_set, batch_size=4096, num_embeddings=emb, shuffle=False, pad_last=True)

    result, epochs, start = LoopResult(), [], time.perf_counter()
    for epoch in range(key["epochs_run"]):
        batches = iter_batches(
            train_rows, batch_size=batch, num_embeddings=emb, shuffle=True, seed=key["seed"], epoch=epoch
        )
        loop = LoopConfig(steps=(epoch + 1) * per_epoch, eval_every=key["curve_every"], progress=False)
        result = train(model, optimizer, batches, curve_batches, loop, history=result)
        epochs.append({"epoch": epoch + 1, "step": result.steps, **score(model, held_out, emb)})
    curve = [{"step": e["step"], "samples": e["step"] * batch, "auc": e["auc"]} for e in result.evals]
    seconds = time.perf_counter() - start
    first_rank = rank_after_first_step(key, split, plans)
    return {**key, "curve": curve, "epochs": epochs, "rank_after_step_1": first_rank, "seconds": seconds}


def run_all(args: argparse.Namespace, plans: dict[str, Path], data: Path, runs_dir: Path) -> list[dict]:
    """Every (recipe, variant, seed) of the suite; finished ones are read back, not rerun."""
    import torch

    torch.set_num_threads(args.threads)  # one process per core beats oversubscribed threads here
    suite = SUITES[args.suite]
    todo = [(r, v, s) for r in args.recipes for v in args.variants for s in args.seeds]
    split, results = None, []
    for recipe, variant, seed in tqdm(todo, desc=f"{args.suite} runs", unit="run", disable=not args.progress):
        path = runs_dir / recipe / f"{variant}_s{seed}.json"
        done = json.loads(path.read_text()) if path.is_file() else None
        if (done is None or done["epochs_run"] < args.epochs) and not args.report_only:
            split = split or load_split(data)
            key = {"suite": args.suite, "recipe": recipe, "variant": variant, "seed": seed, "epochs_run": args.epochs}
            key |= {"batch_size": suite["batch_size"], "curve_every": suite["curve_every"]}
            done = run_one(key, split, plans, args.curve_rows)
            atomic_write_text(path, json.dumps(done, indent=1) + "\n")
        if done is not None:
            results.append(_first_epochs(done, args.epochs))
    return results


def _first_epochs(run: dict, epochs: int) -> dict:
    """``run`` cut to its first ``epochs`` epochs: a longer run answers a shorter request."""
    kept = run["epochs"][:epochs]
    last_step = kept[-1]["step"]
    return {**run, "epochs": kept, "curve": [p for p in run["curve"] if p["step"] <= last_step]}


# -------------------------------------------------------------------------------------- summary
def _stats(values: list[float]) -> str:
    """'mean (sd s, min..max)' over seeds."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} (sd {sd:.4f}, {min(values):.4f}..{max(values):.4f})"


def table(results: list[dict]) -> str:
    """Markdown: per recipe and variant, AUC at epoch 1, at the end and at the best epoch, over seeds."""
    lines = [
        "| recipe | variant | seeds | epochs | AUC after 1 epoch | AUC at the end | best epoch's AUC (epoch) "
        "| embedding rank after step 1 / at the end, per seed |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["recipe"], r["variant"]), []).append(r)
    for (recipe, variant), runs in groups.items():
        first = [r["epochs"][0]["auc"] for r in runs]
        last = [r["epochs"][-1]["auc"] for r in runs]
        best = [max(r["epochs"], key=lambda e: e["auc"]) for r in runs]
        best_epochs = ",".join(str(b["epoch"]) for b in best)
        ranks = [(r.get("rank_after_step_1"), r["epochs"][-1].get("embedding_rank")) for r in runs]
        rank_text = " ".join(f"{a:.1f}/{b:.1f}" if a and b else "-" for a, b in ranks)
        lines.append(
            f"| {recipe} | {variant} | {len(runs)} | {max(len(r['epochs']) for r in runs)} | "
            f"{_stats(first)} | {_stats(last)} | "
            f"{_stats([b['auc'] for b in best])} ({best_epochs}) | {rank_text} |"
        )
    return "\n".join(lines)


def goal_check(results: list[dict]) -> str:
    """Issue 18's targets per recipe, tower module and epoch, on seed means: TP c=4 >= flat - 0.002,
    TP >= random + 0.005 (seeds: those every variant of the comparison ran)."""
    lines = [
        "| recipe | towers | seeds | epoch | TP c=4 - flat | TP c=4 - random c=4 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        for module, (tp, random) in GOAL_PAIRS.items():
            mine = {
                v: [r for r in results if r["recipe"] == recipe and r["variant"] == v] for v in ("flat", tp, random)
            }
            seeds = set.intersection(*({r["seed"] for r in runs} for runs in mine.values()))
            if not seeds:
                continue
            mine = {v: [r for r in runs if r["seed"] in seeds] for v, runs in mine.items()}
            epochs = min(len(r["epochs"]) for runs in mine.values() for r in runs)
            for epoch in range(1, epochs + 1):
                mean = {v: statistics.mean(r["epochs"][epoch - 1]["auc"] for r in runs) for v, runs in mine.items()}
                tp_flat, tp_random = mean[tp] - mean["flat"], mean[tp] - mean[random]
                ok = ("meets" if tp_flat >= -0.002 else "misses", "meets" if tp_random >= 0.005 else "misses")
                lines.append(
                    f"| {recipe} | {module} | {len(seeds)} | {epoch} | {tp_flat:+.4f} ({ok[0]}) "
                    f"| {tp_random:+.4f} ({ok[1]}) |"
                )
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    """AUC vs samples: mean over seeds (line) and min..max (band), one panel per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r["recipe"] for r in results))
    fig, axes = plt.subplots(1, len(recipes), figsize=(6.5 * len(recipes), 4.5), sharey=True, squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        for variant in dict.fromkeys(r["variant"] for r in results):
            runs = [r for r in results if r["recipe"] == recipe and r["variant"] == variant]
            if not runs:
                continue
            n = min(len(r["curve"]) for r in runs)
            x = [p["samples"] for p in runs[0]["curve"][:n]]
            ys = [[r["curve"][i]["auc"] for r in runs] for i in range(n)]
            line = ax.plot(x, [statistics.mean(y) for y in ys], label=f"{variant} ({len(runs)} seeds)")[0]
            ax.fill_between(x, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
        ax.set_title(f"{title}: recipe {recipe}")
        ax.set_xlabel("training samples")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out AUC (curve rows)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def logistic_regression_baseline(data: Path) -> dict:
    """Hashed one-hot logistic regression on the training rows, C by 5-fold CV, scored on the held-out rows."""
    import numpy as np
    from sklearn.feature_extraction import FeatureHasher
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV

    rows = [line.rstrip("\n").split("\t") for line in data.open()]
    labels = np.array([int(r[0]) for r in rows])

    def tokens(r: list[str]) -> list[str]:
        # Categoricals as they are; integer features binned on a log scale (as Criteo winners did).
        dense = [f"I{i}={int(math.log1p(max(int(v), 0)) ** 2) if v else 'na'}" for i, v in enumerate(r[1:14])]
        return dense + [f"C{i}={v}" for i, v in enumerate(r[14:40])]

    x = FeatureHasher(n_features=2**18, input_type="string", alternate_sign=False).transform(map(tokens, rows))
    cut = round(len(rows) * (1 - EVAL_FRACTION))
    grid = {"C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]}
    search = GridSearchCV(LogisticRegression(max_iter=2000, solver="liblinear"), grid, scoring="roc_auc", cv=5)
    search.fit(x[:cut], labels[:cut])
    auc = roc_auc_score(labels[cut:], search.predict_proba(x[cut:])[:, 1])
    return {"C": search.best_params_["C"], "cv_auc": float(search.best_score_), "heldout_auc": float(auc)}


def write_outputs(args: argparse.Namespace, results: list[dict], data: Path, out: Path) -> str:
    """table.md (+ the LR baseline for criteo), curves.png and runs.json under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    text = f"## {args.suite}: AUC over seeds (mean, sd, min..max)\n\n{table(results)}\n"
    text += f"\nIssue 18's targets (seed means):\n\n{goal_check(results)}\n"
    if args.suite == "criteo":
        baseline = out / "logistic_regression.json"
        if not baseline.is_file():
            atomic_write_text(baseline, json.dumps(logistic_regression_baseline(data), indent=1) + "\n")
        lr = json.loads(baseline.read_text())
        text += (
            f"\nLogistic regression on hashed one-hot features (C={lr['C']:g} by 5-fold CV on the training "
            f"rows, CV AUC {lr['cv_auc']:.4f}): held-out AUC **{lr['heldout_auc']:.4f}**.\n"
        )
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "runs.json", json.dumps(results, indent=1) + "\n")
    plot(results, out / "curves.png", args.suite)
    return text


# ------------------------------------------------------------------------------------------ CLI
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} needs at least one integer >= 0")
    return values


def _names(choices: dict, sets: dict | None = None):
    def parse(text: str) -> list[str]:
        if sets and text in sets:
            return sets[text]
        names = [v for v in text.split(",") if v]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            known = sorted(choices) + sorted(sets or {})
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {known}")
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="demo")
    p.add_argument("--workdir", type=Path, default=Path("runs/learning"), help="data, plans and run JSONs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/learning", help="tables and plots")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (>= 1)")
    p.add_argument("--variants", type=_names(VARIANTS, VARIANT_SETS), default=VARIANT_SETS["table"])
    p.add_argument("--recipes", type=_names(RECIPES), default=["default", "init0.1"])
    p.add_argument("--curve-rows", type=int, default=20_000, help="held-out rows scored for each curve point")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--report-only", action="store_true", help="only redraw from the runs already done")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.curve_rows < 1 or args.threads < 1:
        p.error(f"--epochs={args.epochs}, --curve-rows={args.curve_rows} and --threads={args.threads} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data, plans = prepare(args.suite, args.workdir)
        results = run_all(args, plans, data, args.workdir / args.suite / "runs")
        if not results:
            raise DmtError(f"no finished runs under {args.workdir / args.suite / 'runs'}; run without --report-only")
        print(write_outputs(args, results, data, args.out / args.suite))
    except DmtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / args.suite}/table.md, curves.png, runs.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
