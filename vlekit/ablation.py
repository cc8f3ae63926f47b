"""Ablation grids: one training run per (variant, seed), a results table, and paired significance tests.

    python -m vlekit.ablation --out runs/ablation            # the full grid (10 variants x 3 seeds; a GPU)
    python -m vlekit.ablation --out /tmp/abl --smoke         # 2 variants x 1 seed x a few steps (a CPU)

A variant is a name plus dotted config changes (``model.fusion``, ``model.use_object_tokens``,
``data.geometry``, any ``section.key``) applied with ``dataclasses.replace`` to the demo's tiny
experiment (``vlekit.demo.demo_experiment``). Every run trains on the same synthetic VCR data and is
evaluated on its val split; ``seed`` changes the initialisation and the data order, not the data.

Output folder::

    OUT/data/                      synthetic VCR data (written once, reused while its options match)
    OUT/tokenizer/                 one word-level tokenizer shared by every run
    OUT/runs/<variant>/seed-<s>/   the vlekit run folder + result.json (accuracy, per-question correctness)
    OUT/summary.md, summary.json   the results table and the tests; OUT/accuracy.png the bar chart

A finished run (its ``result.json`` written with the same resolved config) is skipped when the grid
runs again, so an interrupted grid continues where it stopped and extra seeds only add runs.

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

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlekit.demo import DemoConfig, demo_experiment
from vlekit.evaluate import CHANCE, METRIC_NAMES
from vlekit.experiment import ExperimentConfig, apply_changes, experiment_from_dict

REFERENCE = "vle"
NO_OBJECT_TOKENS = "no-object-tokens"
RESULT_FILE = "result.json"
CHANCE_LOSS = math.log(4)  # cross-entropy of a uniform guess over the 4 choices


@dataclass(frozen=True)
class Variant:
    """One row of an ablation grid.

    changes: dotted ``section.key`` -> value, applied to the base experiment, e.g.
        ``{"model.fusion": "tiny-merged-attention"}`` or ``{"data.geometry": "letterbox"}``.
    """

    name: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


def default_variants() -> list[Variant]:
    """The reference (VLE's VCR adaptation on the tiny co-attention model) and one change per row."""
    return [
        Variant(REFERENCE, {}, "co-attention, object tokens with their types k+2 (VLE's VCR adaptation)"),
        Variant(NO_OBJECT_TOKENS, {"model.use_object_tokens": False}, "no object tokens (mentions keep their types)"),
        Variant("no-object-types", {"model.use_object_types": False}, "object tokens, but text 0 / image 1 types only"),
        Variant("merged-attention", {"model.fusion": "tiny-merged-attention"}, "single-stream fusion (plugin)"),
        Variant("gated-cross-attention", {"model.fusion": "tiny-gated-cross-attention"}, "Flamingo-style fusion (plugin)"),
        Variant("projection-concat", {"model.fusion": "tiny-projection-concat"}, "image prefix to the text (plugin)"),
        Variant("dual-encoder", {"model.fusion": "tiny-dual-encoder"}, "late fusion, no cross-attention (plugin)"),
        Variant("letterbox", {"data.geometry": "letterbox"}, "geometry: pad to square"),
        Variant("center-crop", {"data.geometry": "center-crop"}, "geometry: short side, centre crop"),
        Variant("vle-compat", {"data.geometry": "vle-compat"}, "geometry: VLE's crop/box mismatch"),
    ]


def smoke_variants() -> list[Variant]:
    """The two variants of the headline comparison."""
    return [v for v in default_variants() if v.name in (REFERENCE, NO_OBJECT_TOKENS)]


@dataclass(frozen=True)
class GridConfig:
    """What every run of a grid shares.

    Sizes and optimisation default to the demo's (``vlekit.demo.DemoConfig``), whose tiny experiment
    every variant starts from.

    seeds: training seeds (initialisation and data order); the data is the same for all runs.
    device: ``auto`` (a GPU when there is one, bf16 where it has it) or ``cpu``.
    max_steps: stop each run after this many optimizer steps (0: run ``epochs``).
    torch_threads: ``torch.set_num_threads`` for the runs (0 leaves torch's default).
    """

    out: str = "runs/ablation"
    seeds: tuple[int, ...] = (0, 1, 2)
    task: str = "q2a"
    num_train: int = DemoConfig.num_train
    num_val: int = DemoConfig.num_val
    data_seed: int = 0
    epochs: float = DemoConfig.epochs
    batch_size: int = DemoConfig.batch_size
    lr: float = DemoConfig.lr
    max_steps: int = 0
    num_workers: int = 2
    device: str = "auto"
    torch_threads: int = 0


def smoke_grid(out: str | Path = "runs/ablation-smoke") -> GridConfig:
    """Seconds on a CPU: 32 training questions, one epoch of 4 steps, one seed."""
    return GridConfig(out=str(out), seeds=(0,), num_train=32, num_val=32, epochs=1.0, batch_size=8,
                      num_workers=0, device="cpu", torch_threads=1)


# -- configs --------------------------------------------------------------------------------------
def with_changes(config: ExperimentConfig, changes: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with dotted ``section.key`` changes, validated like a config file.

    A component field (``model.fusion`` ...) takes a registered name or ``{"name": ..., **options}``.
    """
    return experiment_from_dict(apply_changes(config.to_dict(), changes), where="ablation variant")


def base_experiment(grid: GridConfig, *, seed: int, data: Any, tokenizer: str, out: str | Path) -> ExperimentConfig:
    """The demo's tiny experiment with the grid's sizes, writing to ``out``."""
    demo = DemoConfig(out=str(out), num_train=grid.num_train, num_val=grid.num_val, epochs=grid.epochs,
                      batch_size=grid.batch_size, lr=grid.lr, seed=seed, num_workers=grid.num_workers)
    config = demo_experiment(demo, task=grid.task, data=data, tokenizer=tokenizer)
    train = dataclasses.replace(config.train, out=str(out), cpu=grid.device == "cpu", mixed_precision="auto",
                                max_steps=grid.max_steps)
    return dataclasses.replace(config, train=train)


def variant_config(grid: GridConfig, variant: Variant, *, seed: int, data: Any, tokenizer: str) -> ExperimentConfig:
    """The experiment of one run of the grid."""
    out = run_folder(grid, variant.name, seed)
    return with_changes(base_experiment(grid, seed=seed, data=data, tokenizer=tokenizer, out=out), variant.changes)


def run_folder(grid: GridConfig, variant: str, seed: int) -> Path:
    return Path(grid.out) / "runs" / variant / f"seed-{seed}"


# -- running --------------------------------------------------------------------------------------
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
        raw = json.loads(Path(path).read_text())
        raw.pop("config", None)
        return cls(**{**raw, "annot_ids": tuple(raw["annot_ids"]), "correct": tuple(raw["correct"])})


def _data_options(grid: GridConfig) -> dict[str, int]:
    return {"num_train": grid.num_train, "num_val": grid.num_val, "seed": grid.data_seed}


def prepare_data(grid: GridConfig) -> tuple[Any, str]:
    """Synthetic data and the shared tokenizer under ``grid.out``; kept while their options match."""
    from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
    from data_prep.tokenizer import build_word_tokenizer

    root = Path(grid.out) / "data"
    options = _data_options(grid)
    stamp = root / "options.json"
    tokenizer = Path(grid.out) / "tokenizer"
    if stamp.is_file() and json.loads(stamp.read_text()) == options and (tokenizer / "tokenizer_config.json").is_file():
        data = SyntheticVCR(root, root / "vcr1images", root / "train.jsonl", root / "val.jsonl", root / "test.jsonl")
        return data, str(tokenizer)
    data = generate_synthetic_vcr(root, num_test=0, **options)
    build_word_tokenizer([data.train], out_dir=tokenizer)
    stamp.write_text(json.dumps(options))
    return data, str(tokenizer)


def run_identity(config: ExperimentConfig, grid: GridConfig) -> dict[str, Any]:
    """What a run's result depends on: its config without the data-loader workers (they change the
    speed, not the batches), plus the synthetic data's options (the config names the data by path)."""
    raw = config.to_dict()
    raw["data"] = {key: value for key, value in raw["data"].items() if key != "num_workers"}
    return {**raw, "synthetic_data": _data_options(grid)}


def run_variant(grid: GridConfig, variant: Variant, seed: int, *, data: Any, tokenizer: str,
                progress: bool = False) -> RunResult:
    """Train and evaluate one (variant, seed), or load its result when it already ran with this config."""
    from vlekit.evaluate import evaluate
    from vlekit.plots import read_metrics
    from vlekit.train import train

    config = variant_config(grid, variant, seed=seed, data=data, tokenizer=tokenizer)
    folder = run_folder(grid, variant.name, seed)
    result_path = folder / RESULT_FILE
    resolved = run_identity(config, grid)
    if result_path.is_file() and json.loads(result_path.read_text()).get("config") == resolved:
        return RunResult.load(result_path)
    if folder.exists():  # a stale or unfinished run: start it again from nothing
        shutil.rmtree(folder)
    started = time.perf_counter()
    trained = train(config, progress=progress)
    if trained.model_dir is None:
        raise RuntimeError(f"run {variant.name} seed {seed} was interrupted at step {trained.global_step}")
    evaluation = evaluate([trained.model_dir], annotations=data.val, images=data.images_root, out=folder / "eval",
                          num_workers=grid.num_workers, progress=False)
    rows = evaluation["predictions"]
    losses = [r["loss"] for r in read_metrics(folder / "metrics.jsonl") if "loss" in r]
    result = RunResult(
        variant=variant.name, seed=seed, task=grid.task, accuracy=evaluation["metrics"][grid.task]["accuracy"],
        annot_ids=tuple(r["annot_id"] for r in rows), correct=tuple(bool(r[f"{grid.task}_correct"]) for r in rows),
        steps=trained.global_step, seconds=time.perf_counter() - started, folder=str(folder),
        final_loss=losses[-1] if losses else float("nan"),
    )
    result_path.write_text(json.dumps({**dataclasses.asdict(result), "config": resolved}))
    return result


def run_grid(grid: GridConfig, variants: Sequence[Variant] | None = None, *, progress: bool = False,
             log: Callable[[str], None] = print) -> list[RunResult]:
    """Every (variant, seed) of the grid, in order; finished runs are loaded, not repeated."""
    import torch

    variants = list(variants if variants is not None else default_variants())
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    if grid.torch_threads:
        torch.set_num_threads(grid.torch_threads)
    data, tokenizer = prepare_data(grid)
    results = []
    for variant in variants:
        for seed in grid.seeds:
            result = run_variant(grid, variant, seed, data=data, tokenizer=tokenizer, progress=progress)
            log(f"{variant.name:<24} seed {seed}: {grid.task} {result.accuracy:.3f} "
                f"({result.steps} steps, {result.seconds:.0f} s)")
            results.append(result)
    return results


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


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
                   digits: int = 3) -> str:
    """Rows of dicts as a Markdown table (``IPython.display.Markdown`` renders it); floats rounded."""
    rows = list(rows)
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows])


def format_results_table(rows: Sequence[Mapping[str, Any]], *, markdown: bool = False, metric: str | None = None) -> str:
    """The ``summarize`` rows as a text table (or a Markdown one), accuracies in percent; ``metric``
    (the accuracy column's name) defaults to the rows' task (``Q->A``, ``QA->R``)."""
    if metric is None:
        metric = METRIC_NAMES[rows[0]["task"]] if rows else "accuracy"

    def spread(row: Mapping[str, Any]) -> str:
        return "n/a" if math.isnan(row["std"]) else f"{100 * row['std']:.1f}"

    header = ["variant", "seeds", f"{metric} mean %", "std", "min", "max", "vs reference", "final train loss"]
    body = [[row["variant"], str(row["seeds"]), f"{100 * row['mean']:.1f}", spread(row), f"{100 * row['min']:.1f}",
             f"{100 * row['max']:.1f}", f"{100 * row['delta']:+.1f}", f"{row.get('train_loss', float('nan')):.3f}"]
            for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(h), *(len(cells[i]) for cells in body)) if body else len(h) for i, h in enumerate(header)]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        for cells in [header, *body]
    )


def learnt_nothing(row: Mapping[str, Any], *, tolerance: float = 0.02) -> bool:
    """Whether a ``summarize`` row's final training loss is still at chance (ln 4): the runs stayed on
    the initial plateau."""
    return row.get("train_loss", float("nan")) > CHANCE_LOSS - tolerance


def chance_loss_note(rows: Sequence[Mapping[str, Any]], *, reference: str = REFERENCE,
                     longer: str = "more epochs or data") -> str | None:
    """Markdown on the variants whose training loss stayed at chance, or ``None`` when none did.

    When the reference learnt within the same budget, staying at chance is the variant's result (it
    cannot fit the task with these settings); otherwise the runs were too short to say anything.
    """
    stuck = [row["variant"] for row in rows if learnt_nothing(row)]
    if not stuck:
        return None
    loss = f"the final training loss of {', '.join(stuck)} stayed at chance (ln 4 = {CHANCE_LOSS:.3f})"
    if any(row["variant"] == reference for row in rows) and reference not in stuck:
        return (f"**Note**: {loss} while {reference} learnt with the same budget: with these settings "
                f"{'that variant' if len(stuck) == 1 else 'those variants'} cannot fit the task; this is a result, "
                f"not an unfinished run.")
    return (f"**Warning**: {loss}: those runs learnt nothing yet, so their accuracies do not measure the "
            f"variants. Train longer ({longer}) before reading the table.")


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


# -- reporting ------------------------------------------------------------------------------------
def report(results: Sequence[RunResult], *, reference: str = REFERENCE, baseline: str = NO_OBJECT_TOKENS,
           headline_points: float = 15.0) -> str:
    """Markdown on the grid's task: the results table, best vs reference, the headline (reference vs
    ``baseline``) and which tests the comparisons are."""
    rows = summarize(results, reference=reference)
    metric = METRIC_NAMES[grid_task(results)]
    parts = [f"## Ablation ({metric}, val accuracy, mean and std over seeds)", "",
             format_results_table(rows, markdown=True, metric=metric), ""]
    note = chance_loss_note(rows, reference=reference)
    if note:
        parts += [note, ""]
    variants = {row["variant"] for row in rows}
    if reference in variants and len(variants) > 1:
        best = best_variant(rows, exclude=reference)
        parts += [f"**Best other variant vs the reference**: {compare(results, best, reference).describe()}", ""]
    if reference in variants and baseline in variants:
        headline = compare(results, reference, baseline)
        verdict = "holds" if headline.difference * 100 >= headline_points else "does NOT hold"
        parts += [f"**Headline** (the VLE adaptation beats {baseline} by >= {headline_points:g} points): "
                  f"{verdict}. {headline.describe()}", ""]
    if reference in variants and len(variants) > 1:
        parts += [f"Comparisons use the seeds both variants ran and the same val questions. The interval and "
                  f"its p-value are a {BOOTSTRAP_TEST}: each resample draws questions and seeds with replacement, "
                  f"the same for both variants. McNemar's exact test is given only for a single seed; Welch's "
                  f"t-test compares the per-seed accuracies and ignores the questions.", ""]
    return "\n".join(parts)


def write_summary(results: Sequence[RunResult], out: str | Path, *, reference: str = REFERENCE,
                  baseline: str = NO_OBJECT_TOKENS) -> Path:
    """``out/summary.md``, ``out/summary.json`` and ``out/accuracy.png``; returns the Markdown path."""
    from vlekit.plots import plot_accuracy_bars

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results, reference=reference)
    (out / "summary.md").write_text(report(results, reference=reference, baseline=baseline))
    comparisons = {}
    if {reference, baseline} <= {row["variant"] for row in rows}:
        comparisons["headline"] = dataclasses.asdict(compare(results, reference, baseline))
    task = grid_task(results)
    (out / "summary.json").write_text(json.dumps({"task": task, "rows": rows, "comparisons": comparisons}, indent=2))
    metric = METRIC_NAMES[task]
    figure = plot_accuracy_bars({row["variant"]: {metric: row["mean"]} for row in rows}, out / "accuracy.png",
                                errors={row["variant"]: {metric: 0.0 if math.isnan(row["std"]) else row["std"]} for row in rows},
                                chance={metric: CHANCE[task]}, title=f"ablation: {metric} val accuracy (mean ± std over seeds)")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return out / "summary.md"


# -- command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GridConfig()
    parser.add_argument("--out", default=defaults.out, help="grid folder (finished runs in it are reused)")
    parser.add_argument("--smoke", action="store_true", help="2 variants x 1 seed x 4 steps on the CPU (seconds)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"training seeds (default: {' '.join(map(str, defaults.seeds))})")
    parser.add_argument("--num-train", type=int)
    parser.add_argument("--num-val", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--num-workers", type=int, help="data-loader workers per run (default: min(4, cores - 1))")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when there is a GPU")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the runs (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per run")


def grid_from_args(args: argparse.Namespace) -> tuple[GridConfig, list[Variant]]:
    grid = smoke_grid(args.out) if args.smoke else GridConfig(
        out=args.out, num_workers=max(0, min(4, (os.cpu_count() or 1) - 1)))
    changes = {"seeds": tuple(args.seeds) if args.seeds else None, "num_train": args.num_train,
               "num_val": args.num_val, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
               "max_steps": args.max_steps, "num_workers": args.num_workers, "device": "cpu" if args.cpu else None,
               "torch_threads": args.torch_threads}
    grid = dataclasses.replace(grid, **{k: v for k, v in changes.items() if v is not None})
    variants = smoke_variants() if args.smoke and not args.variants else default_variants()
    if args.variants:
        known = {v.name: v for v in default_variants()}
        unknown = [name for name in args.variants if name not in known]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(known)}")
        variants = [known[name] for name in args.variants]
    return grid, variants


def run(args: argparse.Namespace) -> int:
    try:
        grid, variants = grid_from_args(args)
    except ValueError as error:
        print(f"vlekit.ablation: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"ablation grid: {len(variants)} variants x {len(grid.seeds)} seeds -> {grid.out}")
    results = run_grid(grid, variants, progress=args.progress)
    summary = write_summary(results, grid.out)
    print("\n" + summary.read_text())
    print(f"written: {summary}, {Path(grid.out) / 'summary.json'}, {Path(grid.out) / 'accuracy.png'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlekit.ablation", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
