"""benchmarks/learning_curves.py's summaries: the target check and cutting runs to fewer epochs."""

from __future__ import annotations

from benchmarks.learning_curves import _first_epochs, goal_check, table


def _run(recipe: str, variant: str, seed: int, aucs: list[float]) -> dict:
    epochs = [{"epoch": i + 1, "step": 10 * (i + 1), "auc": a, "embedding_rank": 8.0} for i, a in enumerate(aucs)]
    curve = [{"step": e["step"], "samples": e["step"] * 4, "auc": e["auc"]} for e in epochs]
    return {
        "recipe": recipe,
        "variant": variant,
        "seed": seed,
        "epochs": epochs,
        "curve": curve,
        "rank_after_step_1": 2.0,
    }


def _results(tp_auc: float) -> list[dict]:
    runs = []
    for seed in range(3):
        runs.append(_run("r", "flat", seed, [0.80, 0.81]))
        runs.append(_run("r", "dmt_tp_c4", seed, [tp_auc, 0.81]))
        runs.append(_run("r", "dmt_random_c4", seed, [0.70, 0.70]))
    return runs


def test_goal_check_compares_seed_means_at_epoch_one_and_the_end():
    text = goal_check(_results(tp_auc=0.799))
    assert "| r | linear | 3 | 1 | -0.0010 (meets) | +0.0990 (meets) |" in text
    assert "| r | linear | 3 | 2 | +0.0000 (meets) | +0.1100 (meets) |" in text
    assert "| r | linear | 3 | 1 | -0.0100 (misses)" in goal_check(_results(tp_auc=0.79))
    assert "| dot |" not in text  # no dot-tower runs: no dot row


def test_goal_check_uses_the_seeds_every_variant_ran():
    runs = [*_results(tp_auc=0.799), _run("r", "flat", 3, [0.5, 0.5])]  # flat's extra seed is not compared
    assert "| r | linear | 3 | 1 | -0.0010 (meets)" in goal_check(runs)


def test_a_longer_run_answers_a_shorter_request():
    run = _run("r", "flat", 0, [0.7, 0.8, 0.9])
    cut = _first_epochs(run, 2)
    assert [e["epoch"] for e in cut["epochs"]] == [1, 2] and [p["step"] for p in cut["curve"]] == [10, 20]
    assert "| r | flat | 1 | 2 | 0.7000" in table([cut])
