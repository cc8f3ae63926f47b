"""Plots people would rather look at than read: training curves, results against chance, ablations."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows; notebooks display the returned figures themselves
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curve(
    metrics: str | Path | Mapping[str, str | Path], png: str | Path | None = None, *, title: str = "training"
) -> Figure:
    """Loss per step (left axis) and validation accuracy (right axis) of one or several runs.

    ``metrics``: a ``metrics.jsonl`` path, or ``{label: path}`` for several runs on one figure.
    """
    runs = {"": metrics} if isinstance(metrics, (str, Path)) else dict(metrics)
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    accuracy_axis = loss_axis.twinx()
    for index, (label, path) in enumerate(runs.items()):
        records = read_metrics(path)
        colour = f"C{index}"
        steps = [r for r in records if "loss" in r]
        evals = [r for r in records if "val_accuracy" in r]
        prefix = f"{label} " if label else ""
        loss_axis.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=colour, label=f"{prefix}train loss")
        if evals:
            accuracy_axis.plot([r["step"] for r in evals], [r["val_accuracy"] for r in evals], "o--", color=colour,
                               label=f"{prefix}val accuracy")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("cross-entropy over choices")
    accuracy_axis.set_ylabel("validation accuracy")
    accuracy_axis.set_ylim(0, 1)
    accuracy_axis.axhline(0.25, color="grey", lw=0.8, ls=":")
    handles = loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    loss_axis.set_title(title)
    figure.tight_layout()
    if png is not None:
        figure.savefig(png, dpi=120)
    return figure


def plot_accuracy_bars(
    results: Mapping[str, Mapping[str, float]], png: str | Path | None = None, *,
    errors: Mapping[str, Mapping[str, float]] | None = None, chance: Mapping[str, float] | None = None,
    title: str = "accuracy",
) -> Figure:
    """Grouped bars: ``results[variant][metric] = accuracy``, optional ``errors`` (same shape) and
    a dashed chance line per metric."""
    variants = list(results)
    metrics: Sequence[str] = list(dict.fromkeys(m for v in results.values() for m in v))
    width = 0.8 / max(1, len(metrics))
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(variants) * max(1, len(metrics)) / 2 + 2), 4))
    for index, metric in enumerate(metrics):
        xs = [v + index * width for v in range(len(variants))]
        heights = [results[v].get(metric, 0.0) for v in variants]
        yerr = [errors[v].get(metric, 0.0) for v in variants] if errors else None
        axis.bar(xs, heights, width=width, yerr=yerr, capsize=3, label=metric, color=f"C{index}")
        if chance and metric in chance:
            axis.hlines(chance[metric], xs[0] - width / 2, xs[-1] + width / 2, colors=f"C{index}", linestyles="dashed", lw=1)
    axis.set_xticks([v + width * (len(metrics) - 1) / 2 for v in range(len(variants))], variants, rotation=20, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    if png is not None:
        figure.savefig(png, dpi=120)
    return figure
