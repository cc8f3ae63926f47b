"""Plots people would rather look at than read: training curves, results against chance, ablations.

The plotting backend is the caller's choice: the ``vlekit`` command line picks Agg (files, no
windows) before anything imports matplotlib; a notebook keeps its inline backend.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from vlekit.runs.folder import RunFolder, read_metrics


def save_shown_figures(folder: str | Path) -> Path | None:
    """In a notebook: from now on every figure a cell shows is also written to ``folder`` as
    ``figure-NN.png`` (in the order shown), so a run's pictures can be looked at outside Jupyter.

    Works through IPython's PNG formatter for matplotlib figures (what the inline backend uses), so
    call it after ``%matplotlib inline``. Outside IPython (a plain script, which saves its own
    figures) it does nothing and returns ``None``; calling it again moves the output to ``folder``.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None:
        return None
    formatter = shell.display_formatter.formatters["image/png"]
    try:
        show = formatter.lookup_by_type(Figure)
    except KeyError:
        raise RuntimeError("save_shown_figures: no PNG formatter for figures yet; run %matplotlib inline first") from None
    show = getattr(show, "shows", show)  # called again: wrap the original formatter, not our own wrapper
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = itertools.count(1)

    def show_and_save(figure: Figure, *args, **kwargs):
        figure.savefig(folder / f"figure-{next(numbers):02d}.png", dpi=120, bbox_inches="tight")
        return show(figure, *args, **kwargs)

    show_and_save.shows = show
    formatter.for_type(Figure, show_and_save)
    return folder


def plot_training_curve(
    metrics: str | Path | Mapping[str, str | Path], png: str | Path | None = None, *, title: str = "training",
    loss_label: str = "cross-entropy over choices", chance: float | None = 0.25,
) -> Figure:
    """Loss per step (left axis) and validation accuracy (right axis) of one or several runs; below, when the runs
    logged them, their gradient norms before clipping (each log window's mean, its largest dotted; log scale).

    ``metrics``: a ``metrics.jsonl`` path, or ``{label: path}`` for several runs on one figure.
    ``loss_label`` / ``chance`` (a dotted line on the accuracy axis; None: none): VCR's by default,
    a task's are its :class:`vlekit.interfaces.Task` attributes (``loss_label``, ``chance``).
    """
    runs = {"": metrics} if isinstance(metrics, (str, Path)) else dict(metrics)
    logs = {label: read_metrics(path) for label, path in runs.items()}
    norms = any("grad_norm" in r for records in logs.values() for r in records)
    if norms:  # a panel below: the gradient norms, on a log scale (a divergence shows there first)
        figure, (loss_axis, norm_axis) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                                      gridspec_kw={"height_ratios": [3, 1]})
    else:
        figure, loss_axis = plt.subplots(figsize=(7, 4))
    accuracy_axis = loss_axis.twinx()
    for index, (label, records) in enumerate(logs.items()):
        colour = f"C{index}"
        steps = [r for r in records if "loss" in r]
        evals = [r for r in records if "val_accuracy" in r]
        prefix = f"{label} " if label else ""
        loss_axis.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=colour, label=f"{prefix}train loss")
        if evals:
            accuracy_axis.plot([r["step"] for r in evals], [r["val_accuracy"] for r in evals], "o--", color=colour,
                               label=f"{prefix}val accuracy")
        for record in (r for r in records if r.get("diverged")):  # vlekit.training.monitor stopped the run there
            loss_axis.axvline(record["step"], color=colour, ls="-.", lw=1, label=f"{prefix}diverged (weights NaN / inf)")
        clipped = [r for r in steps if "grad_norm" in r]
        if norms and clipped:
            norm_axis.plot([r["step"] for r in clipped], [r["grad_norm"] for r in clipped], color=colour)
            norm_axis.plot([r["step"] for r in clipped], [r["grad_norm_max"] for r in clipped], color=colour, lw=0.6,
                           ls=":")
    if norms:
        norm_axis.set_yscale("log")
        norm_axis.set_ylabel("gradient norm\n(mean, max: dotted)", fontsize=8)
        norm_axis.set_xlabel("optimizer step")
    else:
        loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel(loss_label)
    accuracy_axis.set_ylabel("validation accuracy")
    accuracy_axis.set_ylim(0, 1)
    if chance is not None:
        accuracy_axis.axhline(chance, color="grey", lw=0.8, ls=":")
    handles = loss_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    loss_axis.set_title(title)
    figure.tight_layout()
    if png is not None:
        figure.savefig(png, dpi=120)
    return figure


def save_training_curve(run: RunFolder, *, title: str = "training", task: str = "q2a") -> Path:
    """Draw ``run``'s training curve into its ``curve.png`` (the figure is closed); returns the path."""
    from vlekit.evaluation.tasks import task_for  # the task's loss and chance level

    spec = task_for(task)
    plt.close(plot_training_curve(run.metrics_file, run.curve_file, title=title, loss_label=spec.loss_label,
                                  chance=spec.chance))
    return run.curve_file


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


# -- images, boxes and patch grids ----------------------------------------------------------------
def pixels_to_image(pixel_values, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """Undo the pixel normalisation: ``pixel_values [3, S, S]`` -> ``[S, S, 3]`` floats in 0..1 for ``imshow``.

    ``mean`` / ``std`` default to CLIP's, which the data pipeline uses.
    """
    import numpy as np

    from data_prep.constants import CLIP_MEAN, CLIP_STD

    pixels = np.asarray(pixel_values, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"pixel_values has shape {list(pixels.shape)}, expected [3, S, S]")
    mean_ = np.asarray(CLIP_MEAN if mean is None else mean, dtype=np.float32)[:, None, None]
    std_ = np.asarray(CLIP_STD if std is None else std, dtype=np.float32)[:, None, None]
    return np.clip(pixels * std_ + mean_, 0.0, 1.0).transpose(1, 2, 0)


def _axis(ax, figsize: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize)


def draw_boxes(image, boxes, labels: Sequence[str] | None = None, *, ax=None, title: str | None = None) -> Figure:
    """``image`` (a PIL image or ``[H, W, 3]`` array) with ``boxes [N, 4+]`` (``x1, y1, x2, y2`` in its
    pixels, extra columns such as scores ignored) drawn in colours C0, C1, ..., each with its label."""
    import numpy as np

    array = np.asarray(image)
    height, width = array.shape[:2]
    figure, axis = _axis(ax, (7, 7 * height / max(1, width) + 0.6))
    axis.imshow(array)
    boxes = np.asarray(boxes, dtype=float)
    boxes = boxes.reshape(-1, boxes.shape[-1]) if boxes.size else np.zeros((0, 4))
    for index, box in enumerate(boxes):
        x1, y1, x2, y2 = box[:4]
        colour = f"C{index % 10}"
        axis.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=2))
        if labels is not None:
            axis.text(x1, y1, labels[index], color="white", fontsize=8, va="bottom",
                      bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0))
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.axis("off")
    if title:
        axis.set_title(title, fontsize=10)
    return figure


def plot_patch_grid(image, *, grid: int, patches: Sequence[Sequence[int]], labels: Sequence[str] | None = None,
                    ax=None, title: str | None = None) -> Figure:
    """The model's square input with its ``grid x grid`` patch lines, each object's patches shaded.

    ``image``: ``[S, S, 3]`` (e.g. ``pixels_to_image(example["pixel_values"])``); ``patches``: per
    object, its row-major patch indices (an example's ``object_patches[choice]``), drawn in C0, C1, ...
    """
    import numpy as np
    from matplotlib.patches import Patch

    array = np.asarray(image)
    size = array.shape[0]
    cell = size / grid
    figure, axis = _axis(ax, (4.5, 4.5))
    axis.imshow(array, extent=(0, size, size, 0))
    for line in range(grid + 1):
        axis.axhline(line * cell, color="white", lw=0.4, alpha=0.6)
        axis.axvline(line * cell, color="white", lw=0.4, alpha=0.6)
    handles = []
    for index, indices in enumerate(patches):
        colour = f"C{index % 10}"
        cells = [divmod(int(patch), grid) for patch in indices]
        for row, col in cells:
            axis.add_patch(plt.Rectangle((col * cell, row * cell), cell, cell, color=colour, alpha=0.2, lw=0))
        if cells:  # outline the cells' bounding rectangle, so overlapping objects stay apart
            rows, cols = [r for r, _ in cells], [c for _, c in cells]
            axis.add_patch(plt.Rectangle((min(cols) * cell, min(rows) * cell), (max(cols) - min(cols) + 1) * cell,
                                         (max(rows) - min(rows) + 1) * cell, fill=False, edgecolor=colour, lw=2))
        label = labels[index] if labels is not None else f"object {index}"
        handles.append(Patch(color=colour, alpha=0.6, label=f"{label} ({len(indices)} patches)"))
    axis.set_xlim(0, size)
    axis.set_ylim(size, 0)
    axis.set_xticks([])
    axis.set_yticks([])
    if handles:
        axis.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, frameon=False)
    if title:
        axis.set_title(title, fontsize=10)
    return figure


def plot_outcome_breakdown(breakdown: Mapping[str, Mapping], png: str | Path | None = None, *,
                           title: str = "outcomes by question type") -> Figure:
    """Stacked bars, one per group, of the joint outcomes in ``vlekit.ablation.stats.breakdown_by`` output
    (e.g. Q->A right / QA->R wrong), as shares of the group's questions."""
    groups = list(breakdown)
    outcomes = list(dict.fromkeys(o for entry in breakdown.values() for o in entry.get("joint", {})))
    if not outcomes:
        raise ValueError("the breakdown has no joint outcomes: build it from two outcomes, e.g. q2a= and qa2r=")
    figure, axis = plt.subplots(figsize=(max(5, 1.1 * len(groups) + 2), 4))
    bottoms = [0.0] * len(groups)
    for index, outcome in enumerate(outcomes):
        shares = [breakdown[g]["joint"].get(outcome, 0) / max(1, breakdown[g]["n"]) for g in groups]
        axis.bar(groups, shares, bottom=bottoms, label=outcome, color=f"C{index}")
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    axis.set_xticks(range(len(groups)), [f"{g}\n(n={breakdown[g]['n']})" for g in groups], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of questions")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    if png is not None:
        figure.savefig(png, dpi=120)
    return figure
