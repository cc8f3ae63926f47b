"""Ablation statistics that say what they computed: the grid's task, one set of (seed, question)
pairs for a difference and its interval, and a bootstrap that nests seeds inside the paired questions."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from vlekit.ablation.stats import (BOOTSTRAP_TEST, CHANCE_LOSS, RunResult, best_variant, breakdown_by, compare, findings,
                                   mcnemar_exact, paired_bootstrap, report, summarize, welch_t_test, write_summary)
from vlekit.tables import format_results_table


def run_result(variant: str, seed: int, correct: list[bool] | np.ndarray, *, task: str = "q2a") -> RunResult:
    correct = [bool(c) for c in correct]
    return RunResult(variant=variant, seed=seed, task=task, accuracy=sum(correct) / len(correct),
                     annot_ids=tuple(f"val-{i}" for i in range(len(correct))), correct=tuple(correct),
                     steps=1, seconds=0.0, folder="", final_loss=1.0)


def test_the_summary_names_the_task_of_the_grid(tmp_path):
    results = [run_result("vle", s, [True] * 70 + [False] * 30, task="qa2r") for s in (0, 1)]
    results += [run_result("no-object-tokens", s, [True] * 45 + [False] * 55, task="qa2r") for s in (0, 1)]
    text = report(results)
    assert text.startswith("## Ablation (QA->R, val accuracy") and "| QA->R mean % |" in text
    assert "Q->A" not in text.replace("QA->R", "")
    assert "QA->R: vle 70.0% vs no-object-tokens 45.0%" in text
    assert format_results_table(summarize(results)).split()[2:4] == ["QA->R", "mean"]
    write_summary(results, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "qa2r" and {row["task"] for row in summary["rows"]} == {"qa2r"}
    assert summary["comparisons"]["headline"]["task"] == "qa2r"
    mixed = results + [run_result("letterbox", 0, [True] * 100, task="q2a")]
    with pytest.raises(ValueError, match=r"an ablation summary covers one task; these results have \['q2a', 'qa2r'\]"):
        report(mixed)


def test_the_difference_and_its_interval_use_the_same_seed_question_pairs():
    """``a`` ran a third seed that ``b`` did not; it would move a difference over all of a's seeds
    outside the interval computed on the seeds both ran."""
    rng = np.random.default_rng(0)
    base = rng.random((2, 60)) < 0.5
    a = [run_result("a", s, base[s] | (rng.random(60) < 0.5)) for s in (0, 1)] + [run_result("a", 2, [False] * 60)]
    b = [run_result("b", s, base[s]) for s in (0, 1)]
    comparison = compare(a + b, "a", "b")
    paired_a = np.array([a[0].correct, a[1].correct], dtype=float)
    paired_b = np.array([b[0].correct, b[1].correct], dtype=float)
    assert (comparison.seeds_a, comparison.seeds_b, comparison.paired_seeds, comparison.questions) == (3, 2, 2, 60)
    assert comparison.mean_a == pytest.approx(paired_a.mean()) and comparison.mean_b == pytest.approx(paired_b.mean())
    assert comparison.difference == pytest.approx(paired_a.mean() - paired_b.mean())
    assert comparison.ci95[0] <= comparison.difference <= comparison.ci95[1]
    all_seeds_difference = np.mean([r.accuracy for r in a]) - paired_b.mean()
    assert not comparison.ci95[0] <= all_seeds_difference <= comparison.ci95[1]  # what the old summary mixed
    assert "a ran 3 seeds, b 2: only the common ones count here" in comparison.describe()


def test_the_bootstrap_nests_seeds_inside_the_paired_questions():
    """Two grids with the same per-question correctness averaged over seeds: in ``steady`` each seed
    gets half the questions right, in ``erratic`` one seed gets all right and the other none. Only a
    test that resamples seeds sees that the erratic difference is far less certain."""
    pattern = np.arange(40) % 2 == 0
    never = np.zeros((2, 40))
    steady = np.array([pattern, ~pattern], dtype=float)
    erratic = np.array([np.ones(40), np.zeros(40)])
    assert (steady.mean(0) == erratic.mean(0)).all()
    (low_s, high_s), _ = paired_bootstrap(steady, never)
    (low_e, high_e), p_erratic = paired_bootstrap(erratic, never)
    assert high_e - low_e > 0.4 and high_e - low_e > 2 * (high_s - low_s)
    assert p_erratic > 0.05  # one lucky seed is not evidence
    assert paired_bootstrap(np.full(30, 1.0), np.full(30, 0.0)) == ((1.0, 1.0), 0.0)  # [questions]: one seed
    with pytest.raises(ValueError, match=r"equal-shape \[seeds, questions\]"):
        paired_bootstrap(np.ones((2, 5)), np.ones((3, 5)))


def test_the_comparison_says_which_tests_it_ran():
    one_seed = [run_result("vle", 0, [True] * 8 + [False] * 2), run_result("none", 0, [True] * 2 + [False] * 8)]
    single = compare(one_seed, "vle", "none")
    assert single.p_mcnemar == pytest.approx(2 / 2**6) and math.isnan(single.p_welch)  # 6 discordant, one way
    two_seeds = one_seed + [run_result("vle", 1, [True] * 9 + [False]), run_result("none", 1, [False] * 10)]
    double = compare(two_seeds, "vle", "none")
    assert math.isnan(double.p_mcnemar) and double.test == BOOTSTRAP_TEST == "paired bootstrap over questions with seeds nested"
    text = double.describe()
    assert f"({BOOTSTRAP_TEST}, 10000 resamples, two-sided)" in text
    assert "McNemar exact p = n/a (one seed only" in text and "on the same 2 seed(s) x 10 questions" in text
    learnt = [run_result(v, s, [True] * n + [False] * (100 - n)) for v, n in (("vle", 80), ("none", 50)) for s in (0, 1)]
    summary = report(learnt, reference="vle", baseline="none")
    assert f"The interval and its p-value are a {BOOTSTRAP_TEST}" in summary


def test_a_grid_whose_runs_learnt_nothing_claims_nothing(tmp_path):
    """Runs at chance (loss ln 4, accuracy near 25%) are flagged once and no comparison or headline is
    claimed over them, however their noise falls (here 'vle' is 14 points "ahead" by luck)."""
    rng = np.random.default_rng(0)
    stuck = {"vle": 0.33, "no-object-tokens": 0.19, "letterbox": 0.25}
    results = [dataclasses.replace(run_result(v, s, rng.random(60) < p), final_loss=CHANCE_LOSS)
               for v, p in stuck.items() for s in (0, 1, 2)]
    text = report(results)
    assert text.count("**Did not learn**") == 1 and "this grid supports no claim" in text
    assert "Headline" not in text and "Best other variant" not in text and "p =" not in text
    found = findings(results)
    assert set(found.not_learnt) == set(stuck) and found.headline is None and found.best is None
    write_summary(results, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["comparisons"] == {} and set(summary["not_learnt"]) == set(stuck)


def test_a_variant_at_chance_accuracy_is_excluded_even_when_its_loss_fell():
    """A loss below ln 4 is not enough: an accuracy whose interval reaches chance is no finding either;
    the learnt variants are still compared."""
    results = [run_result("vle", s, [True] * 80 + [False] * 20) for s in (0, 1)]
    results += [run_result("no-object-tokens", s, [True] * 27 + [False] * 73) for s in (0, 1)]
    results += [run_result("letterbox", s, [True] * 75 + [False] * 25) for s in (0, 1)]
    found = findings(results)
    assert list(found.not_learnt) == ["no-object-tokens"] and "within chance's interval" in found.not_learnt["no-object-tokens"]
    assert found.headline is None and found.best is not None and found.best.a == "letterbox"
    text = report(results)
    assert text.count("no-object-tokens (accuracy 27.0%") == 1 and "Headline" not in text


def test_summary_rows_best_variant_and_the_tests_on_their_own():
    """What the tests above do not pin by hand: the summary's rows, the best other variant, Welch's test,
    a paired bootstrap of identical results, the per-group breakdown, and results that share no seed."""
    ref = [run_result("vle", s, [True] * 8 + [False] * 2) for s in (0, 1)]
    base = [run_result("none", s, [True] * 2 + [False] * 8) for s in (0, 1)]
    rows = summarize(ref + base, reference="vle")
    assert [(r["variant"], r["mean"], r["std"]) for r in rows] == [("vle", 0.8, 0.0), ("none", 0.2, 0.0)]
    assert rows[1]["delta"] == pytest.approx(-0.6)
    assert "| vle | 2 | 80.0 | 0.0 |" in format_results_table(rows, markdown=True)
    assert math.isnan(summarize(ref[:1])[0]["std"])  # one seed: no spread
    assert best_variant(rows, exclude="vle") == "none"
    comparison = compare(ref + base, "vle", "none")
    assert comparison.difference == pytest.approx(0.6) and comparison.ci95[0] > 0 and comparison.p_bootstrap < 0.01
    assert mcnemar_exact([True] * 6, [False] * 6) == pytest.approx(2 / 2**6)  # 6 discordant pairs, all one way
    assert math.isnan(welch_t_test([0.5], [0.4, 0.3]))  # one seed: no test
    assert welch_t_test([0.8, 0.82, 0.79], [0.3, 0.31, 0.28]) < 0.001
    assert paired_bootstrap([1, 0, 1], [1, 0, 1]) == ((0.0, 0.0), 1.0)
    with pytest.raises(ValueError, match="share no seed"):
        compare([ref[0], run_result("none", 5, [True] * 10)], "vle", "none")
    table = breakdown_by(["a", "a", "b"], q2a=[True, False, True], qa2r=[True, True, False])
    assert table["a"]["n"] == 2 and table["a"]["q2a"] == 0.5 and table["all"]["n"] == 3
    assert table["b"]["joint"] == {"q2a right, qa2r right": 0, "q2a right, qa2r wrong": 1,
                                   "q2a wrong, qa2r right": 0, "q2a wrong, qa2r wrong": 0}
