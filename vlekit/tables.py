"""Tables for people: the one place that turns rows into a text or Markdown table.

``text_table`` (for a terminal) and ``markdown_table`` (for ``results.md`` files and notebooks, where
``IPython.display.Markdown`` renders it) share one cell formatter, so a number looks the same in
both. The evaluation metrics and the ablation summary are two row layouts on top of them.

This module imports nothing heavy (no torch, no matplotlib): anything may import it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Task -> the name a table shows (``q2ar`` is both answers right, Q->A then QA->R).
METRIC_NAMES: dict[str, str] = {
    "q2a": "Q->A", "qa2r": "QA->R", "q2ar": "Q->AR",
    # VQA overall and per VQA v2 answer type (``vlekit.evaluation.evaluate.evaluate_vqa_model``)
    "vqa": "VQA", "vqa yes/no": "VQA yes/no", "vqa number": "VQA number", "vqa other": "VQA other",
}


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    return list(columns) if columns is not None else list(dict.fromkeys(key for row in rows for key in row))


def _cell(value: Any, *, digits: int) -> str:
    """A value as table text: floats rounded to ``digits``, everything else as ``str``."""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cells(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int) -> list[list[str]]:
    return [[_cell(row.get(column, ""), digits=digits) for column in columns] for row in rows]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
                   digits: int = 3) -> str:
    """Rows of dicts as a Markdown table; ``columns`` picks and orders them (default: every key, in
    order of first appearance); floats rounded to ``digits``; ``|`` and newlines in cells escaped."""
    rows = list(rows)
    columns = _columns(rows, columns)
    body = [[text.replace("|", "\\|").replace("\n", " ") for text in cells]
            for cells in _cells(rows, columns, digits=digits)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, digits: int = 3,
               align: str | None = None) -> str:
    """Rows of dicts as an aligned plain-text table, columns two spaces apart.

    align: one letter per column, ``l`` (left) or ``r`` (right); default: the first column left, the
        others right (a label, then numbers).
    """
    rows = list(rows)
    columns = _columns(rows, columns)
    align = align if align is not None else "l" + "r" * (len(columns) - 1)
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align={align!r}: give one of 'l' or 'r' per column ({len(columns)}: {', '.join(columns)})")
    body = _cells(rows, columns, digits=digits)
    widths = [max(len(header), *(len(cells[i]) for cells in body)) if body else len(header)
              for i, header in enumerate(columns)]
    return "\n".join(
        "  ".join(text.ljust(width) if side == "l" else text.rjust(width)
                  for text, width, side in zip(cells, widths, align)).rstrip()
        for cells in [columns, *body]
    )


def format_metrics_table(metrics: Mapping[str, Mapping[str, Any]], *, markdown: bool = False) -> str:
    """Evaluation metrics (``{task: {"accuracy", "ci95", "chance", "n"}}``, as ``vlekit.evaluation.evaluate``
    returns them): one row per task, Q->A, QA->R, Q->AR, VQA in that order, then any other rows (VQA's
    per-answer-type rows, a plugin task's score) in their own order. VQA's ``chance`` is the majority answer's
    accuracy; a task without one shows ``n/a``."""
    order = [task for task in METRIC_NAMES if task in metrics] + [task for task in metrics if task not in METRIC_NAMES]
    rows = [{"metric": METRIC_NAMES.get(task, task), "accuracy": f"{m['accuracy']:.3f}",
             "95% CI": f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]", "chance": "n/a" if m["chance"] is None else f"{m['chance']:.4f}", "n": m["n"]}
            for task, m in ((task, metrics[task]) for task in order)]
    columns = ["metric", "accuracy", "95% CI", "chance", "n"]
    return markdown_table(rows, columns) if markdown else text_table(rows, columns)


def format_results_table(rows: Sequence[Mapping[str, Any]], *, markdown: bool = False, metric: str | None = None) -> str:
    """Ablation summary rows (``vlekit.ablation.stats.summarize``: variant, task, seeds, mean, std, min, max,
    delta, train_loss) as a table, accuracies in percent; a single seed has no std (``n/a``). ``metric``
    (the accuracy column's name) defaults to the rows' task (``Q->A``, ``QA->R``)."""
    if metric is None:
        metric = METRIC_NAMES[rows[0]["task"]] if rows else "accuracy"
    mean = f"{metric} mean %"
    table = [{"variant": row["variant"], "seeds": row["seeds"], mean: f"{100 * row['mean']:.1f}",
              "std": "n/a" if math.isnan(row["std"]) else f"{100 * row['std']:.1f}",
              "min": f"{100 * row['min']:.1f}", "max": f"{100 * row['max']:.1f}",
              "vs reference": f"{100 * row['delta']:+.1f}",
              "final train loss": f"{row.get('train_loss', float('nan')):.3f}"}
             for row in rows]
    columns = ["variant", "seeds", mean, "std", "min", "max", "vs reference", "final train loss"]
    return markdown_table(table, columns) if markdown else text_table(table, columns)
