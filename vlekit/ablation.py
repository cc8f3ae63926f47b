"""Ablation grids over any experiment: one training run per (variant, seed), a results table, and paired
significance tests.

    vlekit ablate --config EXPERIMENT.yaml --grid GRID.yaml --out runs/my-grid
    vlekit ablate --out runs/ablation          # the demo's grid (configs/grids/ablation-demo.yaml; a GPU)
    vlekit ablate --out /tmp/abl --smoke       # the reference and the baseline, 1 seed, a few steps (a CPU)

A grid file (YAML; ``configs/grids/ablation-demo.yaml`` is one) says::

    experiment: base.yaml        # the base experiment: a path (relative to the grid file) or the sections
                                 # themselves; --config replaces it
    variants:                    # the rows: a name and dotted config changes (any ``section.key``)
      - {name: vle, description: "the reference"}
      - {name: no-object-tokens, changes: {model.use_object_tokens: false}}
    seeds: [0, 1, 2]             # training seeds: they change the initialisation and data order, not the data
    reference: vle               # the row every other is compared with
    baseline: no-object-tokens   # the other side of the headline comparison (optional)
    synthetic_data: {num_train: 2000, num_val: 300, seed: 0}   # optional: see below

With ``synthetic_data`` the grid writes one synthetic VCR dataset under ``OUT/data`` and every run trains
on it; without it every run uses the experiment's own ``data`` section. A word-level tokenizer
(``data.tokenizer: auto``) is built once under ``OUT/tokenizer`` and shared, so the runs share a vocabulary.

Output folder::

    OUT/data/                      synthetic VCR data (written once, reused while its options match)
    OUT/tokenizer/                 one word-level tokenizer shared by every run (data.tokenizer: auto)
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
import copy
import dataclasses
import difflib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from vlekit.evaluate import CHANCE, evaluate
from vlekit.experiment import ExperimentConfig, apply_changes, experiment_from_dict
from vlekit.registry import make_config
from vlekit.run_folder import RunFolder
from vlekit.tables import METRIC_NAMES, format_results_table
from vlekit.train import train

REFERENCE = "vle"
NO_OBJECT_TOKENS = "no-object-tokens"
RESULT_FILE = "result.json"
CHANCE_LOSS = math.log(4)  # cross-entropy of a uniform guess over the 4 choices
# The demo's grid: shipped with the repository, next to the other experiment files.
DEMO_GRID_FILE = Path(__file__).resolve().parents[1] / "configs" / "grids" / "ablation-demo.yaml"


@dataclass(frozen=True)
class Variant:
    """One row of an ablation grid.

    changes: dotted ``section.key`` -> value, applied to the base experiment, e.g.
        ``{"model.fusion": "tiny-merged-attention"}`` or ``{"data.geometry": "letterbox"}``.
    """

    name: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class SyntheticData:
    """The synthetic VCR data a grid writes once under ``OUT/data`` (``data_prep.generate_synthetic_vcr``)."""

    num_train: int = 2000
    num_val: int = 300
    seed: int = 0


@dataclass(frozen=True)
class GridConfig:
    """A grid: the base experiment, its rows and seeds, and what every run shares.

    experiment: the base experiment as nested sections (``plugins``, ``model``, ``data``, ``train``),
        as in an experiment YAML; validated, with the run's changes, when a run is built.
    variants: the rows (unique names); seeds: one run per row and seed.
    synthetic_data: write this synthetic data under ``out/data`` and train every run on it (None: the
        experiment's ``data`` section).
    reference / baseline: the row the others are compared with / the headline's other side.
    epochs, batch_size, lr, max_steps, num_workers: every run's ``train.*`` / ``data.num_workers``
        (None: as the experiment says).
    device: ``auto`` (a GPU when there is one), ``cpu``, or None (the experiment's ``train.cpu``).
    torch_threads: ``torch.set_num_threads`` for the runs (0 leaves torch's default).
    """

    out: str = "runs/ablation"
    experiment: Mapping[str, Any] = field(default_factory=dict)
    variants: tuple[Variant, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    synthetic_data: SyntheticData | None = None
    reference: str = REFERENCE
    baseline: str | None = NO_OBJECT_TOKENS
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_steps: int | None = None
    num_workers: int | None = None
    device: str | None = None
    torch_threads: int = 0


# -- grid files -----------------------------------------------------------------------------------
_GRID_KEYS = ("experiment", "variants", "seeds", "reference", "baseline", "synthetic_data")


def _variant(raw: Any, *, where: str) -> Variant:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise TypeError(f"{where}: a variant is a mapping with a 'name' (and optional 'changes', 'description'), "
                        f"got {raw!r}")
    variant = make_config(Variant, dict(raw), where=f"{where}: variant {raw['name']!r}")
    if not isinstance(variant.changes, Mapping):
        raise TypeError(f"{where}: variant {variant.name!r}: 'changes' must map dotted keys (section.key) to values")
    return variant


def load_grid(path: str | Path, *, experiment: str | Path | None = None, **settings: Any) -> GridConfig:
    """Read a grid file; ``experiment`` (a YAML path) replaces its base experiment; ``settings`` are
    other :class:`GridConfig` fields (``out``, ``seeds``, ``epochs``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise TypeError(f"{path}: expected a mapping with keys {', '.join(_GRID_KEYS)}")
    unknown = [key for key in raw if key not in _GRID_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _GRID_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{path}: unknown key {unknown[0]!r}{hint} Keys: {', '.join(_GRID_KEYS)}")
    base = experiment if experiment is not None else raw.get("experiment")
    if base is None:
        raise ValueError(f"{path}: no base experiment: add 'experiment: FILE.yaml' to the grid file or pass --config")
    if isinstance(base, (str, Path)):
        base_path = Path(base) if experiment is not None or Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: experiment config {base_path} not found")
        base = yaml.safe_load(base_path.read_text()) or {}
    if not isinstance(base, Mapping):
        raise TypeError(f"{path}: the experiment must be a YAML file or a mapping with sections "
                        f"plugins/model/data/train")
    variants = tuple(_variant(v, where=str(path)) for v in raw.get("variants") or ())
    if not variants:
        raise ValueError(f"{path}: 'variants' lists no rows; give at least one {{name: ..., changes: {{...}}}}")
    grid = {key: raw[key] for key in ("reference", "baseline") if key in raw}
    if "seeds" in raw:
        grid["seeds"] = tuple(raw["seeds"])
    if raw.get("synthetic_data") is not None:
        grid["synthetic_data"] = make_config(SyntheticData, raw["synthetic_data"], where=f"{path}: synthetic_data")
    return check_grid(GridConfig(experiment=dict(base), variants=variants, **{**grid, **settings}), where=str(path))


def check_grid(grid: GridConfig, *, where: str = "grid") -> GridConfig:
    """``grid``, after checking its rows: unique names, and the reference among them."""
    names = [v.name for v in grid.variants]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: variant names must be unique, got {names}")
    if grid.reference not in names:
        raise ValueError(f"{where}: the reference {grid.reference!r} is not a variant; variants: {', '.join(names)}")
    if grid.device not in (None, "auto", "cpu"):
        raise ValueError(f"{where}: device={grid.device!r}; expected 'auto', 'cpu' or None (the experiment's)")
    return grid


def demo_grid(**settings: Any) -> GridConfig:
    """The demo's grid (``configs/grids/ablation-demo.yaml``: the demo's tiny experiment, ten rows, three seeds)."""
    if not DEMO_GRID_FILE.is_file():
        raise FileNotFoundError(f"the demo's grid file {DEMO_GRID_FILE} is missing (vlekit installed without its "
                                f"repository?): pass a grid file of your own")
    return load_grid(DEMO_GRID_FILE, **settings)


def default_variants() -> list[Variant]:
    """The demo grid's rows: the reference (VLE's VCR adaptation on the tiny co-attention model) and
    one change per row."""
    return list(demo_grid().variants)


def smoke_variants(grid: GridConfig | None = None) -> list[Variant]:
    """The two rows of the headline comparison (reference and baseline) of ``grid`` (default: the demo's)."""
    grid = grid if grid is not None else demo_grid()
    return [v for v in grid.variants if v.name in (grid.reference, grid.baseline)]


def smoke(grid: GridConfig) -> GridConfig:
    """``grid`` cut to seconds on a CPU: the headline rows, one seed, one epoch of 8-question batches;
    32 training and validation questions of synthetic data, or at most 4 steps on real data."""
    sizes: dict[str, Any] = {"max_steps": 4} if grid.synthetic_data is None else {
        "synthetic_data": dataclasses.replace(grid.synthetic_data, num_train=32, num_val=32)}
    return dataclasses.replace(grid, variants=tuple(smoke_variants(grid)), seeds=grid.seeds[:1], epochs=1.0,
                               batch_size=8, num_workers=0, device="cpu", torch_threads=1, **sizes)


def smoke_grid(out: str | Path = "runs/ablation-smoke") -> GridConfig:
    """The demo grid, :func:`smoke`-sized (``lr`` set, as the demo's, so that a test can vary it)."""
    grid = smoke(demo_grid(out=str(out)))
    return dataclasses.replace(grid, lr=float(grid.experiment["train"]["lr"]))


# -- configs --------------------------------------------------------------------------------------
def with_changes(config: ExperimentConfig, changes: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with dotted ``section.key`` changes, validated like a config file.

    A component field (``model.fusion`` ...) takes a registered name or ``{"name": ..., **options}``.
    """
    return experiment_from_dict(apply_changes(config.to_dict(), changes), where="ablation variant")


def run_folder(grid: GridConfig, variant: str, seed: int) -> Path:
    return Path(grid.out) / "runs" / variant / f"seed-{seed}"


def shared_changes(grid: GridConfig, *, seed: int, data: SyntheticVCR | None, tokenizer: str | None,
                   out: str | Path) -> dict[str, Any]:
    """The dotted changes every run of ``grid`` makes to the base experiment (before its variant's)."""
    changes: dict[str, Any] = {"train.out": str(out), "train.seed": seed}
    if data is not None:
        changes.update({"data.train_annotations": str(data.train), "data.val_annotations": str(data.val),
                        "data.images": str(data.images_root)})
    if tokenizer is not None:
        changes["data.tokenizer"] = tokenizer
    if grid.device is not None:
        changes["train.cpu"] = grid.device == "cpu"
    for key, value in (("train.epochs", grid.epochs), ("train.batch_size", grid.batch_size), ("train.lr", grid.lr),
                       ("train.max_steps", grid.max_steps), ("data.num_workers", grid.num_workers)):
        if value is not None:
            changes[key] = value
    return changes


def variant_config(grid: GridConfig, variant: Variant, *, seed: int, data: SyntheticVCR | None,
                   tokenizer: str | None) -> ExperimentConfig:
    """The experiment of one run of the grid: the base, the grid's shared changes, the variant's."""
    raw = apply_changes(copy.deepcopy(dict(grid.experiment)),
                        shared_changes(grid, seed=seed, data=data, tokenizer=tokenizer,
                                       out=run_folder(grid, variant.name, seed)))
    return experiment_from_dict(apply_changes(raw, variant.changes), where=f"ablation variant {variant.name!r}")


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


def prepare_data(grid: GridConfig) -> tuple[SyntheticVCR | None, str | None]:
    """The grid's synthetic data (None without ``synthetic_data``) and its shared tokenizer (None when
    the experiment names one), under ``grid.out``; both kept while the options they came from match."""
    data_config = experiment_from_dict(grid.experiment, where="the grid's experiment").data
    data = None
    options: dict[str, Any] = {"train_annotations": data_config.train_annotations}
    if grid.synthetic_data is not None:
        root = Path(grid.out) / "data"
        options = dataclasses.asdict(grid.synthetic_data)
        stamp = root / "options.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == options:
            data = SyntheticVCR(root, root / "vcr1images", root / "train.jsonl", root / "val.jsonl",
                                root / "test.jsonl")
        else:
            data = generate_synthetic_vcr(root, num_test=0, **options)
            stamp.write_text(json.dumps(options))
    if data_config.tokenizer != "auto":
        return data, None
    train_annotations = data.train if data is not None else data_config.train_annotations
    if train_annotations is None:
        raise ValueError("the grid's experiment builds its tokenizer from data.train_annotations (tokenizer: auto), "
                         "which is not set: set it, or give the grid synthetic_data")
    tokenizer = Path(grid.out) / "tokenizer"
    stamp = tokenizer / "built-from.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == options):
        build_word_tokenizer([train_annotations], out_dir=tokenizer)
        stamp.write_text(json.dumps(options))
    return data, str(tokenizer)


def run_identity(config: ExperimentConfig, grid: GridConfig) -> dict[str, Any]:
    """What a run's result depends on: its config without the data-loader workers (they change the
    speed, not the batches), plus the synthetic data's options (the config names the data by path)."""
    raw = config.to_dict()
    raw["data"] = {key: value for key, value in raw["data"].items() if key != "num_workers"}
    synthetic = dataclasses.asdict(grid.synthetic_data) if grid.synthetic_data is not None else None
    return {**raw, "synthetic_data": synthetic}


def run_variant(grid: GridConfig, variant: Variant, seed: int, *, data: SyntheticVCR | None, tokenizer: str | None,
                progress: bool = False) -> RunResult:
    """Train and evaluate one (variant, seed), or load its result when it already ran with this config."""
    config = variant_config(grid, variant, seed=seed, data=data, tokenizer=tokenizer)
    folder = run_folder(grid, variant.name, seed)
    result_path = folder / RESULT_FILE
    resolved = run_identity(config, grid)
    if result_path.is_file() and json.loads(result_path.read_text()).get("config") == resolved:
        return RunResult.load(result_path)
    if folder.exists():  # a stale or unfinished run: start it again from nothing
        shutil.rmtree(folder)
    if config.data.val_annotations is None:
        raise ValueError(f"run {variant.name} seed {seed}: data.val_annotations is not set; a grid evaluates every run")
    started = time.perf_counter()
    trained = train(config, progress=progress)
    if trained.model_dir is None:
        raise RuntimeError(f"run {variant.name} seed {seed} was interrupted at step {trained.global_step}")
    task = config.data.task
    evaluation = evaluate([trained.model_dir], annotations=config.data.val_annotations, images=config.data.images,
                          out=folder / "eval", num_workers=config.data.num_workers, progress=False)
    rows = evaluation["predictions"]
    losses = [r["loss"] for r in RunFolder(folder).metrics() if "loss" in r]
    result = RunResult(
        variant=variant.name, seed=seed, task=task, accuracy=evaluation["metrics"][task]["accuracy"],
        annot_ids=tuple(r["annot_id"] for r in rows), correct=tuple(bool(r[f"{task}_correct"]) for r in rows),
        steps=trained.global_step, seconds=time.perf_counter() - started, folder=str(folder),
        final_loss=losses[-1] if losses else float("nan"),
    )
    result_path.write_text(json.dumps({**dataclasses.asdict(result), "config": resolved}))
    return result


def run_grid(grid: GridConfig, variants: Sequence[Variant] | None = None, *, progress: bool = False,
             log: Callable[[str], None] = print) -> list[RunResult]:
    """Every (variant, seed) of the grid, in order; finished runs are loaded, not repeated.

    ``variants``: these rows instead of ``grid.variants``.
    """
    variants = list(variants if variants is not None else grid.variants)
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
            log(f"{variant.name:<24} seed {seed}: {result.task} {result.accuracy:.3f} "
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
    parser.add_argument("--config", metavar="EXPERIMENT.yaml", help="the base experiment (replaces the grid file's)")
    parser.add_argument("--grid", metavar="GRID.yaml",
                        help=f"the grid file: variants, seeds, reference (default: the demo's, {DEMO_GRID_FILE.name})")
    parser.add_argument("--out", default=GridConfig.out, help="grid folder (finished runs in it are reused)")
    parser.add_argument("--smoke", action="store_true",
                        help="the reference and the baseline x 1 seed x a few steps on the CPU (seconds)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the grid file's)")
    parser.add_argument("--num-train", type=int, help="synthetic training questions (grids with synthetic_data)")
    parser.add_argument("--num-val", type=int, help="synthetic validation questions (grids with synthetic_data)")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--num-workers", type=int, help="data-loader workers per run (default: the experiment's)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when there is a GPU")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the runs (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per run")


def grid_from_args(args: argparse.Namespace) -> GridConfig:
    if args.config is not None and args.grid is None:
        raise ValueError("--config needs --grid GRID.yaml: the variants to run over the experiment")
    grid = load_grid(args.grid, experiment=args.config, out=args.out) if args.grid else demo_grid(out=args.out)
    if args.smoke:
        grid = smoke(grid)
    if args.num_train is not None or args.num_val is not None:
        if grid.synthetic_data is None:
            raise ValueError("--num-train / --num-val size the grid's synthetic data, and this grid has no "
                             "synthetic_data: it trains on its experiment's data")
        sizes = {"num_train": args.num_train, "num_val": args.num_val}
        grid = dataclasses.replace(grid, synthetic_data=dataclasses.replace(
            grid.synthetic_data, **{k: v for k, v in sizes.items() if v is not None}))
    changes = {"seeds": tuple(args.seeds) if args.seeds else None, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "max_steps": args.max_steps,
               "num_workers": args.num_workers, "device": "cpu" if args.cpu else None,
               "torch_threads": args.torch_threads}
    grid = dataclasses.replace(grid, **{k: v for k, v in changes.items() if v is not None})
    if args.variants:
        known = {v.name: v for v in grid.variants}
        unknown = [name for name in args.variants if name not in known]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(known)}")
        grid = dataclasses.replace(grid, variants=tuple(known[name] for name in args.variants))
    return grid


def run(args: argparse.Namespace) -> int:
    try:
        grid = grid_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"vlekit ablate: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"ablation grid: {len(grid.variants)} variants x {len(grid.seeds)} seeds -> {grid.out}")
    results = run_grid(grid, progress=args.progress)
    summary = write_summary(results, grid.out, reference=grid.reference, baseline=grid.baseline)
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
