"""What the probes measured, as statistics, tables and a plot (``vlekit diagnose``).

Per probe (the questions of the split, each scored under ``full`` and under the probe):

- accuracy with a 95% percentile bootstrap interval over questions (``vlekit.evaluation.evaluate``);
- the paired difference from ``full`` (``delta``), its 95% interval and two-sided p-value from the
  paired bootstrap over questions, and McNemar's exact test on the questions
  (``vlekit.ablation.stats``: ``paired_bootstrap``, ``mcnemar_exact``);
- whether the accuracy's interval contains chance (``includes_chance``), and the probe's own figures.

Per question type (the question's first word: why, what, how, where, who, ...) where a type has at
least ``min_questions`` questions; the rest are pooled as ``other``. VQA: per answer type (yes/no, number,
other), and the accuracy is the official VQA accuracy (McNemar's test needs 0 / 1 scores: ``n/a``).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlekit.ablation.stats import mcnemar_exact, paired_bootstrap
from vlekit.diagnose.probes import ProbeOutcome
from vlekit.evaluation.evaluate import bootstrap_interval
from vlekit.tables import METRIC_NAMES, markdown_table, text_table

REFERENCE = "full"
OTHER_TYPE = "other"
# Keys every probe row has; a probe's own figures may not reuse them.
ROW_KEYS = ("accuracy", "ci95", "delta", "delta_ci95", "p_bootstrap", "p_mcnemar", "chance", "includes_chance", "n")


def probe_row(outcome: ProbeOutcome, reference: ProbeOutcome, *, chance: float, resamples: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """One probe's statistics against the reference (``full``) on the same questions (see the module)."""
    scores, base = np.asarray(outcome.scores, dtype=float), np.asarray(reference.scores, dtype=float)
    if scores.shape != base.shape:
        raise ValueError(f"a probe scored {scores.shape[0]} questions, the reference {base.shape[0]}: "
                         f"probes are paired with full question for question")
    low, high = bootstrap_interval(scores, resamples=resamples, seed=seed)
    if outcome is reference:
        delta_ci, p_bootstrap, p_mcnemar = (0.0, 0.0), 1.0, 1.0
    else:
        delta_ci, p_bootstrap = paired_bootstrap(scores, base, resamples=resamples, seed=seed)
        # McNemar needs a right / wrong per question: not VQA's shares (0.3, 0.6, 0.9 for 1-3 matching answers)
        p_mcnemar = mcnemar_exact(outcome.outcomes, reference.outcomes) if outcome.binary and reference.binary else None
    clash = sorted(set(outcome.details) & set(ROW_KEYS))
    if clash:
        raise ValueError(f"a probe's details reuse the row keys {clash}; name its own figures otherwise")
    return {"accuracy": float(scores.mean()), "ci95": [low, high], "delta": float(scores.mean() - base.mean()),
            "delta_ci95": [float(delta_ci[0]), float(delta_ci[1])], "p_bootstrap": float(p_bootstrap),
            "p_mcnemar": None if p_mcnemar is None else float(p_mcnemar), "chance": chance, "includes_chance": bool(low <= chance <= high),
            "n": int(len(scores)), **outcome.details}


def question_types(records: Sequence[Mapping[str, Any]], *, min_questions: int = 30) -> list[str]:
    """Per record, its question type: the question's first word, lower-cased (``other`` when it starts
    with an object reference, or when fewer than ``min_questions`` questions share the word)."""
    first = [str(r["question"][0]).lower() if r["question"] and isinstance(r["question"][0], str) else OTHER_TYPE
             for r in records]
    counts = Counter(first)
    return [word if counts[word] >= min_questions else OTHER_TYPE for word in first]


def type_order(types: Sequence[str]) -> list[str]:
    """The distinct question types, largest first (ties by name), ``other`` last."""
    counts = Counter(types)
    return sorted(counts, key=lambda t: (t == OTHER_TYPE, -counts[t], t))


def by_question_type(outcomes: Mapping[str, ProbeOutcome], types: Sequence[str], *, resamples: int = 1000,
                     seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{type: {"n", "probes": {name: {"accuracy", "ci95", "delta"}}}}``, types by size (``other`` last)."""
    labels = np.asarray(types)
    order = type_order(types)
    reference = np.asarray(outcomes[REFERENCE].scores, dtype=float)
    table: dict[str, dict[str, Any]] = {}
    for group in order:
        rows = labels == group
        entry: dict[str, Any] = {}
        for name, outcome in outcomes.items():
            scores = np.asarray(outcome.scores, dtype=float)[rows]
            low, high = bootstrap_interval(scores, resamples=resamples, seed=seed)
            entry[name] = {"accuracy": float(scores.mean()), "ci95": [low, high],
                           "delta": float(scores.mean() - reference[rows].mean())}
        table[group] = {"n": int(rows.sum()), "probes": entry}
    return table


def format_p(value: float | None, *, resamples: int | None = None) -> str:
    """A p-value for a table: ``-`` at 1, ``<1/resamples`` for a bootstrap that saw no resample across 0,
    ``<1e-300`` for an exact test below what a float holds, ``n/a`` for none (McNemar on soft scores)."""
    if value is None:
        return "n/a"
    if value >= 1.0:
        return "-"
    if value == 0:
        return f"<{1 / resamples:.2g}" if resamples else "<1e-300"
    return f"{value:.2g}"


def _detail(row: Mapping[str, Any]) -> str:
    """A probe's own figures in a few words (choice-permutation, name-swap, box-swap)."""
    parts = []
    if "by_gold_position" in row:
        parts.append("by gold position " + " / ".join(f"{100 * v:.0f}" for v in row["by_gold_position"].values()))
    if "follows_content" in row:
        parts.append(f"same choice in every order {100 * row['follows_content']:.0f}%")
    if "changed_predictions" in row:
        parts.append(f"prediction changed on {100 * row['changed_predictions']:.0f}% of {row['questions_with_persons']} "
                     f"questions with persons")
    if row.get("questions_moved"):
        parts.append(f"on the {row['questions_moved']} questions whose named objects moved: {100 * row['accuracy_moved']:.1f}% "
                     f"(full {100 * row['full_accuracy_moved']:.1f}%), prediction changed on "
                     f"{100 * row['changed_predictions_moved']:.0f}%")
    elif "questions_moved" in row:
        parts.append("no question names an object that shares its class with another: nothing moved")
    return "; ".join(parts)


def probes_table(result: Mapping[str, Any], *, markdown: bool = False) -> str:
    """The probes as a table: accuracy with its interval, the paired difference from full and its tests."""
    rows = []
    for name, row in result["probes"].items():
        rows.append({
            "probe": name, "accuracy %": f"{100 * row['accuracy']:.1f}",
            "95% CI": f"[{100 * row['ci95'][0]:.1f}, {100 * row['ci95'][1]:.1f}]",
            "vs full": "-" if name == REFERENCE else f"{100 * row['delta']:+.1f}",
            "diff 95% CI": "-" if name == REFERENCE else f"[{100 * row['delta_ci95'][0]:+.1f}, {100 * row['delta_ci95'][1]:+.1f}]",
            "p bootstrap": "-" if name == REFERENCE else format_p(row["p_bootstrap"], resamples=result.get("resamples")),
            "p McNemar": "-" if name == REFERENCE else format_p(row["p_mcnemar"]),
            "at chance": "yes" if row["includes_chance"] else "no",
            "notes": _detail(row),
        })
    columns = ["probe", "accuracy %", "95% CI", "vs full", "diff 95% CI", "p bootstrap", "p McNemar", "at chance", "notes"]
    if markdown:
        return markdown_table(rows, columns)
    return text_table(rows, columns, align="lrrrrrrll")


def type_kind(result: Mapping[str, Any]) -> str:
    """What the result's types are: ``question type`` (VCR: the first word) or ``answer type`` (VQA)."""
    return result.get("type_kind", "question type")


def result_chance(result: Mapping[str, Any]) -> float:
    """The chance level the result's probes were held against (VCR: 1 / C; VQA: the majority answer's)."""
    return float(result["probes"][REFERENCE]["chance"])


def types_table(result: Mapping[str, Any], *, markdown: bool = False) -> str:
    """Accuracy (%) per question type (VQA: answer type) (rows) and probe (columns)."""
    types = result.get("by_question_type") or {}
    probes = list(result["probes"])
    kind = type_kind(result)
    rows = [{kind: group, "n": entry["n"],
             **{name: f"{100 * entry['probes'][name]['accuracy']:.1f}" for name in probes}}
            for group, entry in types.items()]
    columns = [kind, "n", *probes]
    return markdown_table(rows, columns) if markdown else text_table(rows, columns)


def summary_markdown(result: Mapping[str, Any]) -> str:
    """``diagnose.md``: what was tested, the probes table, the per-type table and how to read them."""
    metric = METRIC_NAMES[result["task"]]
    chance = result_chance(result)
    return "\n".join([
        f"# Does the model look? {metric} run {result['run']}", "",
        f"{result['n']} questions of {result['annotations']}; "
        f"{'the majority answer' if result['task'] == 'vqa' else 'chance'} {100 * chance:.3g}%.", "",
        probes_table(result, markdown=True), "",
        "Intervals: 95% percentile bootstrap over questions. `vs full`: the paired difference from the run as "
        "trained, its interval and p-value from a paired bootstrap over questions, and McNemar's exact test "
        "(choice-permutation: on its first order; n/a on VQA's soft scores). `at chance`: the accuracy's interval "
        "contains chance (VQA: the majority answer's accuracy).", "",
        f"## Per {type_kind(result)} (accuracy %)", "", types_table(result, markdown=True), "",
    ])


def plot_probes(result: Mapping[str, Any], png: str | Path | None = None):
    """Horizontal bars: each probe's accuracy with its 95% interval, chance (dashed) and full (dotted)."""
    import matplotlib.pyplot as plt  # the caller (CLI: Agg; a notebook: inline) has chosen the backend

    names = list(result["probes"])
    rows = [result["probes"][name] for name in names]
    accuracy = np.array([row["accuracy"] for row in rows])
    errors = np.array([[a - row["ci95"][0], row["ci95"][1] - a] for a, row in zip(accuracy, rows)]).T
    colours = ["C0" if name == REFERENCE else ("C3" if row["includes_chance"] else "C1") for name, row in zip(names, rows)]
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(names) + 1.6))
    positions = np.arange(len(names))[::-1]
    axis.barh(positions, accuracy, xerr=errors, color=colours, capsize=3)
    axis.set_yticks(positions, names)
    axis.axvline(result_chance(result), color="grey", ls="--", lw=1, label="chance")
    axis.axvline(result["probes"][REFERENCE]["accuracy"], color="C0", ls=":", lw=1, label="full")
    axis.set_xlim(0, 1)
    axis.set_xlabel(f"{METRIC_NAMES[result['task']]} accuracy (95% CI)")
    axis.set_title(f"does the model look? {result['n']} questions; red: at chance")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    if png is not None:
        figure.savefig(png, dpi=120)
    return figure
