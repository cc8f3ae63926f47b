"""Ablation results: the finished runs of a grid, read back, and the statistics and report on them.

Owns ``RunResult`` (one run's accuracy and per-question correctness, ``result.json``), reading a grid
folder's results (``load_results``), the per-variant summary, the comparisons between two variants
and the Markdown/JSON/figure summary. It knows nothing of how the runs were made (``vlekit.ablation.grid``
runs the grid), so results from another machine are summarised the same way.

Statistics (on the grid's task, which the summary names): mean and sample standard deviation over
seeds; between two variants, everything on the seeds both ran and the questions both were evaluated
on, so the difference, its interval and its tests describe the same (seed, question) pairs:

- the accuracy difference with a 95% interval and p-value from a paired bootstrap over questions with
  seeds nested (each resample draws questions and, independently, seeds, the same draws for both
  variants), so it accounts for a question being scored by every seed and for seed-to-seed spread;
- McNemar's exact test on the questions, only with a single seed (with several, the outcomes of one
  question under different seeds are not independent pairs);
- Welch's t-test over the per-seed accuracies (at least two seeds), which ignores the questions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlekit.evaluation.evaluate import CHANCE
from vlekit.tables import METRIC_NAMES, format_results_table

REFERENCE = "vle"
NO_OBJECT_TOKENS = "no-object-tokens"
RESULT_FILE = "result.json"
CHANCE_LOSS = math.log(4)  # cross-entropy of a uniform guess over the 4 choices


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    """One finished run: its accuracy and which val questions it got right (in val order)."""

    variant: str
    seed: int
    task: str
    accuracy: float
    annot_ids: tuple[str, ...]
    correct: tuple[bool, ...]
    steps: int
    seconds: float
    folder: str
    final_loss: float = float("nan")  # mean training loss of the last log window (ln 4 = 1.386: nothing learnt)

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        """The result in ``path``; its ``folder`` is where the file is now (a grid folder may have moved)."""
        raw = json.loads(Path(path).read_text())
        raw.pop("config", None)
        return cls(**{**raw, "annot_ids": tuple(raw["annot_ids"]), "correct": tuple(raw["correct"]),
                      "folder": str(Path(path).parent)})


def load_results(out: str | Path) -> list[RunResult]:
    """Every finished run under ``out/runs`` (e.g. a grid that ran on another machine)."""
    return [RunResult.load(p) for p in sorted(Path(out).glob(f"runs/*/seed-*/{RESULT_FILE}"))]


# -- statistics -----------------------------------------------------------------------------------
def _by_variant(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.variant, []).append(result)
    return grouped


def grid_task(results: Sequence[RunResult]) -> str:
    """The one task (``q2a``, ``qa2r``) that every run of ``results`` was trained and evaluated on."""
    tasks = sorted({r.task for r in results})
    if len(tasks) != 1:
        raise ValueError(f"an ablation summary covers one task; these results have {tasks or 'none'}")
    return tasks[0]


def summarize(results: Sequence[RunResult], *, reference: str = REFERENCE) -> list[dict[str, Any]]:
    """One row per variant (grid order): the task, seeds, mean, std (sample, NaN for one seed), min,
    max, the difference of the mean to the reference's, and the mean final training loss."""
    task = grid_task(results)
    grouped = _by_variant(results)
    ref_mean = float(np.mean([r.accuracy for r in grouped[reference]])) if reference in grouped else float("nan")
    rows = []
    for variant, runs in grouped.items():
        accuracies = np.array([r.accuracy for r in runs])
        rows.append({
            "variant": variant, "task": task, "seeds": len(runs), "mean": float(accuracies.mean()),
            "std": float(accuracies.std(ddof=1)) if len(runs) > 1 else float("nan"),
            "min": float(accuracies.min()), "max": float(accuracies.max()),
            "delta": float(accuracies.mean()) - ref_mean,
            "train_loss": float(np.mean([r.final_loss for r in runs])),
        })
    return rows


def best_variant(rows: Sequence[Mapping[str, Any]], *, exclude: str | None = None) -> str:
    """The variant with the highest mean accuracy (other than ``exclude``)."""
    candidates = [row for row in rows if row["variant"] != exclude]
    if not candidates:
        raise ValueError("no variant to choose from")
    return max(candidates, key=lambda row: row["mean"])["variant"]


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (binomial test on discordant pairs)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


BOOTSTRAP_TEST = "paired bootstrap over questions with seeds nested"


def paired_bootstrap(scores_a: np.ndarray, scores_b: np.ndarray, *, resamples: int = 10000,
                     seed: int = 0) -> tuple[tuple[float, float], float]:
    """95% interval of ``mean(a) - mean(b)`` and a two-sided p-value from a paired, nested bootstrap.

    ``scores_*``: ``[seeds, questions]`` 0/1 correctness (row ``i`` of both from the same seed, column
    ``j`` the same question), or ``[questions]`` for one seed. Each resample draws the questions with
    replacement and, independently, the seeds, the same draws for ``a`` and ``b``, and takes the mean
    difference over the drawn (seed, question) cells. The p-value is twice the share of resampled
    differences on the other side of zero (so p < 0.05 exactly when the interval excludes 0).
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    a, b = (a[None] if a.ndim == 1 else a), (b[None] if b.ndim == 1 else b)  # one seed
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired scores need two equal-shape [seeds, questions] (or [questions]) arrays, "
                         f"got {np.shape(scores_a)} and {np.shape(scores_b)}")
    seeds, questions = a.shape
    cells = a - b  # [seeds, questions]
    rng = np.random.default_rng(seed)
    differences = []
    for chunk in np.array_split(np.arange(resamples), max(1, resamples // 1000)):  # bounded memory
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=len(chunk))  # [R, seeds]
        question_counts = rng.multinomial(questions, np.full(questions, 1 / questions), size=len(chunk))  # [R, questions]
        differences.append(((seed_counts @ cells) * question_counts).sum(axis=1) / (seeds * questions))
    differences = np.concatenate(differences)
    low, high = np.percentile(differences, [2.5, 97.5])
    observed = float(cells.mean())
    if observed == 0:
        p = 1.0
    else:
        other_side = np.mean(differences <= 0) if observed > 0 else np.mean(differences >= 0)
        p = min(1.0, 2 * float(other_side))
    return (float(low), float(high)), p


def welch_t_test(values_a: Sequence[float], values_b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value over per-seed accuracies (NaN with fewer than 2 seeds a side);
    unpaired: it sees the seeds' spread, not the questions."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy import stats

    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    with warnings.catch_warnings():  # seeds at nearly the same accuracy: scipy warns of precision, the p is still right
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class Comparison:
    """Variant ``a`` against variant ``b``, every figure on the same (seed, question) pairs: the
    ``paired_seeds`` seeds both ran x the ``questions`` both were evaluated on.

    seeds_a, seeds_b: how many seeds each variant ran in all (the table's means use those).
    mean_a, mean_b, difference: accuracies on the paired seeds; ``difference = mean_a - mean_b``.
    ci95, p_bootstrap: ``test`` (the paired bootstrap, seeds nested) on those pairs.
    p_mcnemar: exact McNemar over the questions; NaN with more than one paired seed.
    p_welch: Welch's t-test over the paired seeds' accuracies; NaN with fewer than two.
    """

    a: str
    b: str
    task: str
    seeds_a: int
    seeds_b: int
    paired_seeds: int
    questions: int
    mean_a: float
    mean_b: float
    difference: float
    ci95: tuple[float, float]
    p_bootstrap: float
    p_mcnemar: float
    p_welch: float
    test: str = BOOTSTRAP_TEST
    resamples: int = 10000

    def describe(self) -> str:
        """One sentence, in accuracy points, naming the task, the pairs and the tests."""
        def p(value: float, missing: str) -> str:
            return f"n/a ({missing})" if math.isnan(value) else f"{value:.2g}"

        others = "" if self.paired_seeds == max(self.seeds_a, self.seeds_b) else (
            f"; {self.a} ran {self.seeds_a} seeds, {self.b} {self.seeds_b}: only the common ones count here")
        return (f"{METRIC_NAMES[self.task]}: {self.a} {100 * self.mean_a:.1f}% vs {self.b} {100 * self.mean_b:.1f}% "
                f"on the same {self.paired_seeds} seed(s) x {self.questions} questions{others}: difference "
                f"{100 * self.difference:+.1f} points, 95% CI [{100 * self.ci95[0]:+.1f}, {100 * self.ci95[1]:+.1f}] "
                f"and p = {p(self.p_bootstrap, '')} ({self.test}, {self.resamples} resamples, two-sided); "
                f"McNemar exact p = {p(self.p_mcnemar, 'one seed only: a question scored by several seeds is not independent pairs')}; "
                f"Welch t-test over seeds p = {p(self.p_welch, 'needs 2+ seeds')}")


def compare(results: Sequence[RunResult], a: str, b: str, *, resamples: int = 10000, seed: int = 0) -> Comparison:
    """Paired comparison of variants ``a`` and ``b`` on the seeds both ran (see ``Comparison``)."""
    task = grid_task(results)
    grouped = _by_variant(results)
    for name in (a, b):
        if name not in grouped:
            raise ValueError(f"no results for variant {name!r}; have {sorted(grouped)}")
    runs_a, runs_b = {r.seed: r for r in grouped[a]}, {r.seed: r for r in grouped[b]}
    paired = sorted(set(runs_a) & set(runs_b))
    if not paired:
        raise ValueError(f"variants {a!r} and {b!r} share no seed: a paired test needs runs with the same seeds")
    ids = runs_a[paired[0]].annot_ids
    for run in [*runs_a.values(), *runs_b.values()]:
        if run.annot_ids != ids:
            raise ValueError(f"run {run.variant} seed {run.seed} was evaluated on other questions than "
                             f"{a} seed {paired[0]}: compare runs of one grid")
    matrix_a = np.array([runs_a[s].correct for s in paired], dtype=float)  # [seeds, questions]
    matrix_b = np.array([runs_b[s].correct for s in paired], dtype=float)
    ci95, p_bootstrap = paired_bootstrap(matrix_a, matrix_b, resamples=resamples, seed=seed)
    p_mcnemar = mcnemar_exact(matrix_a[0] > 0.5, matrix_b[0] > 0.5) if len(paired) == 1 else float("nan")
    return Comparison(
        a=a, b=b, task=task, seeds_a=len(runs_a), seeds_b=len(runs_b), paired_seeds=len(paired), questions=len(ids),
        mean_a=float(matrix_a.mean()), mean_b=float(matrix_b.mean()),
        difference=float(matrix_a.mean() - matrix_b.mean()), ci95=ci95, p_bootstrap=p_bootstrap,
        p_mcnemar=p_mcnemar, p_welch=welch_t_test(matrix_a.mean(axis=1), matrix_b.mean(axis=1)),
        resamples=resamples,
    )


def breakdown_by(groups: Sequence[str], **correct: Sequence[bool]) -> dict[str, dict[str, Any]]:
    """Per group (e.g. question type): count and accuracy of each named 0/1 outcome, plus the four
    joint outcomes of the first two (``"q2a"``, ``"qa2r"`` -> right/right, right/wrong, ...).

    ``breakdown_by(types, q2a=[...], qa2r=[...])`` -> ``{type: {"n", "q2a", "qa2r", "joint": {...}}}``.
    """
    names = list(correct)
    arrays = {name: np.asarray(values, dtype=bool) for name, values in correct.items()}
    for name, values in arrays.items():
        if len(values) != len(groups):
            raise ValueError(f"{name} has {len(values)} outcomes for {len(groups)} groups; give one per question")
    labels = np.asarray(groups)
    table: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(list(groups) + ["all"]):
        rows = labels == group if group != "all" else np.ones(len(labels), dtype=bool)
        entry: dict[str, Any] = {"n": int(rows.sum())}
        for name in names:
            entry[name] = float(arrays[name][rows].mean()) if rows.any() else float("nan")
        if len(names) >= 2:
            first, second = arrays[names[0]][rows], arrays[names[1]][rows]
            mark = {True: "right", False: "wrong"}
            entry["joint"] = {f"{names[0]} {mark[x]}, {names[1]} {mark[y]}": int(((first == x) & (second == y)).sum())
                              for x in (True, False) for y in (True, False)}
        table[group] = entry
    return table


# -- what the grid supports ----------------------------------------------------------------------
def not_learnt_reason(results: Sequence[RunResult], variant: str, *, resamples: int = 2000) -> str | None:
    """Why ``variant``'s runs did not learn, or ``None`` when they did: their mean final training loss is
    still at chance (ln 4), or their accuracy's 95% interval (questions and seeds resampled, as in
    :func:`paired_bootstrap`) contains chance. Such runs measure the budget, not the variant."""
    runs = [r for r in results if r.variant == variant]
    loss = float(np.mean([r.final_loss for r in runs]))
    if loss > CHANCE_LOSS - 0.02:
        return f"final training loss {loss:.3f}, at chance (ln 4 = {CHANCE_LOSS:.3f})"
    chance = CHANCE[grid_task(results)]
    matrix = np.array([r.correct for r in runs], dtype=float)
    (low, high), _ = paired_bootstrap(matrix, np.full_like(matrix, chance), resamples=resamples)
    if low <= 0 <= high:
        return (f"accuracy {100 * matrix.mean():.1f}% is within chance's interval (95% CI "
                f"[{100 * (chance + low):.1f}, {100 * (chance + high):.1f}]% against {100 * chance:g}%)")
    return None


@dataclass(frozen=True)
class Findings:
    """What a grid supports, decided once for the report and the notebook: the variants that did not
    learn (excluded from every comparison and claim), the best learnt variant against the reference, and
    the headline (reference vs baseline), each ``None`` when a run it needs did not learn."""

    reference: str
    not_learnt: dict[str, str]  # variant -> why
    best: Comparison | None
    headline: Comparison | None
    headline_points: float

    @property
    def headline_holds(self) -> bool | None:
        return None if self.headline is None else self.headline.difference * 100 >= self.headline_points

    def note(self) -> str | None:
        """The one statement on the runs that did not learn (``None`` when all did)."""
        if not self.not_learnt:
            return None
        listed = "; ".join(f"{variant} ({why})" for variant, why in self.not_learnt.items())
        text = f"**Did not learn**, so excluded from every comparison and claim below: {listed}."
        if self.reference in self.not_learnt:
            text += (f" The reference {self.reference} is among them: this grid supports no claim. Train longer "
                     f"(more epochs or data) before reading it.")
        return text


def findings(results: Sequence[RunResult], *, reference: str = REFERENCE, baseline: str = NO_OBJECT_TOKENS,
             headline_points: float = 15.0) -> Findings:
    """The comparisons a grid supports (see :class:`Findings`)."""
    variants = list(_by_variant(results))
    not_learnt = {v: why for v in variants if (why := not_learnt_reason(results, v)) is not None}
    learnt = [v for v in variants if v not in not_learnt]
    best = headline = None
    if reference in learnt:
        others = [row for row in summarize(results, reference=reference) if row["variant"] in learnt]
        if len(others) > 1:
            best = compare(results, best_variant(others, exclude=reference), reference)
        if baseline in learnt:
            headline = compare(results, reference, baseline)
    return Findings(reference=reference, not_learnt=not_learnt, best=best, headline=headline,
                    headline_points=headline_points)


# -- reporting ------------------------------------------------------------------------------------
def report(results: Sequence[RunResult], *, reference: str = REFERENCE, baseline: str = NO_OBJECT_TOKENS,
           headline_points: float = 15.0) -> str:
    """Markdown on the grid's task: the results table, best vs reference, the headline (reference vs
    ``baseline``) and which tests the comparisons are."""
    rows = summarize(results, reference=reference)
    metric = METRIC_NAMES[grid_task(results)]
    parts = [f"## Ablation ({metric}, val accuracy, mean and std over seeds)", "",
             format_results_table(rows, markdown=True, metric=metric), ""]
    found = findings(results, reference=reference, baseline=baseline, headline_points=headline_points)
    if found.note():
        parts += [found.note(), ""]
    if found.best is not None:
        parts += [f"**Best other variant vs the reference**: {found.best.describe()}", ""]
    if found.headline is not None:
        verdict = "holds" if found.headline_holds else "does NOT hold"
        parts += [f"**Headline** (the VLE adaptation beats {baseline} by >= {headline_points:g} points): "
                  f"{verdict}. {found.headline.describe()}", ""]
    if found.best is not None or found.headline is not None:
        parts += [f"Comparisons use the seeds both variants ran and the same val questions. The interval and "
                  f"its p-value are a {BOOTSTRAP_TEST}: each resample draws questions and seeds with replacement, "
                  f"the same for both variants. McNemar's exact test is given only for a single seed; Welch's "
                  f"t-test compares the per-seed accuracies and ignores the questions.", ""]
    return "\n".join(parts)


def write_summary(results: Sequence[RunResult], out: str | Path, *, reference: str = REFERENCE,
                  baseline: str = NO_OBJECT_TOKENS) -> Path:
    """``out/summary.md``, ``out/summary.json`` and ``out/accuracy.png``; returns the Markdown path."""
    from vlekit.evaluation.plots import plot_accuracy_bars

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results, reference=reference)
    (out / "summary.md").write_text(report(results, reference=reference, baseline=baseline))
    found = findings(results, reference=reference, baseline=baseline)
    comparisons = {name: dataclasses.asdict(comparison) for name, comparison in
                   (("best", found.best), ("headline", found.headline)) if comparison is not None}
    task = grid_task(results)
    (out / "summary.json").write_text(json.dumps({"task": task, "rows": rows, "not_learnt": found.not_learnt,
                                                  "comparisons": comparisons}, indent=2))
    metric = METRIC_NAMES[task]
    figure = plot_accuracy_bars({row["variant"]: {metric: row["mean"]} for row in rows}, out / "accuracy.png",
                                errors={row["variant"]: {metric: 0.0 if math.isnan(row["std"]) else row["std"]} for row in rows},
                                chance={metric: CHANCE[task]}, title=f"ablation: {metric} val accuracy (mean ± std over seeds)")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return out / "summary.md"
