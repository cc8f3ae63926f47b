"""``vlekit runs FOLDER ...``: the training runs under folders at a glance. One row per run: where it
stands (finished, running, stopped at a checkpoint), its last and best validation scores and last
training loss, and the options in which the runs differ (from each run's ``config.yaml``); ``--plot``
draws their curves on one figure.

    vlekit runs runs/                          # every run folder below runs/
    vlekit runs runs/a runs/b --plot cmp.png   # two runs, and their curves overlaid

A run folder is one with ``config.yaml`` and ``metrics.jsonl`` (what ``vlekit train`` writes first);
the search does not descend into one. A run being written is read as far as it has got.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlekit.model import MODEL_CONFIG_FILE
from vlekit.runs.experiment import flat_options
from vlekit.runs.folder import EXPERIMENT_FILE, METRICS_FILE, MODEL_DIR, checkpoint_dirs, read_metrics, read_yaml_file
from vlekit.runs.lock import running_owner
from vlekit.runs.manifest import MANIFEST_FILE
from vlekit.tables import markdown_table, text_table

# Options every run has its own value of: not a difference worth a column.
_OWN = ("train.out",)
_WIDEST = 40  # longer option values are cut to their end (paths: the part that tells them apart)


def is_run_folder(folder: Path) -> bool:
    return (folder / EXPERIMENT_FILE).is_file() and (folder / METRICS_FILE).is_file()


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run folders among and below ``paths``, in path order (hidden folders skipped; a folder reached
    twice, through a link, is read once)."""
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(folder: Path) -> None:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        if is_run_folder(folder):
            found.append(folder)
            return
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            walk(child)

    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a folder (give folders that hold runs from vlekit train)")
        walk(path)
    return found


@dataclass
class RunSummary:
    """Where one run stands, from its files."""

    folder: Path
    task: str | None
    state: str
    step: int  # the last step it logged
    train_loss: float | None
    val: float | None  # the last validation score
    best_val: float | None
    best_step: int | None
    options: dict[str, Any] = field(default_factory=dict)  # its config.yaml, flat


def summarize_run(folder: str | Path) -> RunSummary:
    folder = Path(folder).resolve()
    saved = read_yaml_file(folder / EXPERIMENT_FILE) or {}
    records = read_metrics(folder / METRICS_FILE)
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_accuracy" in r]
    best = max(evals, key=lambda r: r["val_accuracy"], default=None)  # the first of equal scores
    owner = running_owner(folder)
    # The newest checkpoint whose save finished (its manifest is written last); not hashed here: that is for loading.
    checkpoint = next((c for c in reversed(checkpoint_dirs(folder)) if (c / MANIFEST_FILE).is_file()), None)
    if owner is not None:
        where = "" if owner.get("host") == socket.gethostname() else f" on {owner.get('host')}"
        state = f"running (pid {owner.get('pid')}{where})"
    elif records and records[-1].get("diverged"):  # vlekit.training.monitor stopped it; nothing saved after
        state = f"diverged at step {records[-1]['step']}: " + (checkpoint.name if checkpoint is not None else "no checkpoint")
    elif (folder / MODEL_DIR / MODEL_CONFIG_FILE).is_file():
        state = "finished"
    elif checkpoint is not None:
        state = f"stopped: {checkpoint.name}"
    else:
        state = "stopped, no checkpoint"
    return RunSummary(
        folder=folder, task=(saved.get("data") or {}).get("task"), state=state,
        step=max((r.get("step", 0) for r in records), default=0),
        train_loss=losses[-1]["loss"] if losses else None, val=evals[-1]["val_accuracy"] if evals else None,
        best_val=best["val_accuracy"] if best else None, best_step=best["step"] if best else None,
        options=flat_options(_specs_as_text(saved)),
    )


def _specs_as_text(value: Any) -> Any:
    """A config with every component spec (a mapping with a ``name``) as one text, ``lora(r=8)``, so that a
    part given as ``bitfit`` in one run and as ``{name: lora, r: 8}`` in another is one column."""
    if not isinstance(value, Mapping):
        return value
    items = {key: _specs_as_text(item) for key, item in value.items()}
    if not isinstance(items.get("name"), str):
        return items
    options = flat_options({key: item for key, item in items.items() if key != "name"})
    return items["name"] + (f"({', '.join(f'{key}={item}' for key, item in options.items())})" if options else "")


def differing_options(runs: Sequence[RunSummary]) -> list[str]:
    """The options whose values are not the same in every run (an option a run lacks counts as differing)."""
    keys = sorted({key for run in runs for key in run.options} - set(_OWN))
    return [key for key in keys if len({json.dumps(run.options.get(key), default=str) for run in runs}) > 1]


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= _WIDEST else "..." + text[-(_WIDEST - 3):]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def run_name(run: RunSummary, root: Path | None) -> str:
    """The run's folder relative to ``root`` (where the search started), else in full."""
    return str(run.folder.relative_to(root) if root is not None and run.folder.is_relative_to(root) else run.folder)


def overview_rows(runs: Sequence[RunSummary], *, root: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The table's rows and columns: the run, its state and scores, then the options that differ."""
    options = differing_options(runs) if len(runs) > 1 else []
    rows = [{"run": run_name(run, root), "task": run.task or "-", "state": run.state, "step": run.step,
             "train loss": "-" if run.train_loss is None else f"{run.train_loss:.3f}", "val %": _percent(run.val),
             "best val % (step)": "-" if run.best_val is None else f"{_percent(run.best_val)} ({run.best_step})",
             **{key: _short(run.options.get(key)) for key in options}} for run in runs]
    return rows, ["run", "task", "state", "step", "train loss", "val %", "best val % (step)", *options]


def plot_runs(runs: Sequence[RunSummary], png: str | Path, *, root: Path | None = None) -> Path:
    """The runs' training loss and validation curves on one figure (their task's loss and chance when they share one)."""
    import matplotlib.pyplot as plt

    from vlekit.evaluation.plots import plot_training_curve
    from vlekit.evaluation.tasks import task_for
    from vlekit.registry import RegistryError

    labels = {run_name(run, root): run.folder / METRICS_FILE for run in runs}
    tasks = {run.task for run in runs}
    options: dict[str, Any] = {"loss_label": "training loss", "chance": None}
    if len(tasks) == 1 and None not in tasks:
        try:
            task = task_for(tasks.pop())
            options = {"loss_label": task.loss_label, "chance": task.chance}
        except RegistryError:  # a plugin's task, not installed here
            pass
    plt.close(plot_training_curve(labels, png, title=f"{len(runs)} runs", **options))
    return Path(png)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="run folders, or folders to search for them")
    parser.add_argument("--plot", metavar="PNG", help="also draw the runs' training and validation curves here")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (for notes and issues)")


def run(args: argparse.Namespace) -> int:
    try:
        folders = find_runs(args.folders)
    except FileNotFoundError as error:
        print(f"vlekit runs: {error}", file=sys.stderr)
        return 2
    if not folders:
        print(f"vlekit runs: no run folder ({EXPERIMENT_FILE} and {METRICS_FILE}) in or below "
              f"{', '.join(args.folders)}", file=sys.stderr)
        return 1
    runs = [summarize_run(folder) for folder in folders]
    root = Path(os.path.commonpath([str(Path(folder).resolve()) for folder in args.folders]))
    if any(run.folder == root for run in runs):  # a run given itself: named with its folder's name
        root = root.parent
    rows, columns = overview_rows(runs, root=root)
    print(markdown_table(rows, columns) if args.markdown else text_table(rows, columns, align="lllrrrr" + "l" * (len(columns) - 7)))
    if args.plot:
        print(f"curves: {plot_runs(runs, args.plot, root=root)}")
    return 0
