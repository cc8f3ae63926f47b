"""Ablation grids over any experiment: one training run per (variant, seed), a results table, and paired
significance tests.

    vlekit ablate --config EXPERIMENT.yaml --grid GRID.yaml --out runs/my-grid
    vlekit ablate --out runs/ablation          # the demo's grid (configs/grids/ablation-demo.yaml; a GPU)
    vlekit ablate --out /tmp/abl --smoke       # the reference and the baseline, 1 seed, a few steps (a CPU)

A grid file (YAML) is described in ``vlekit.ablation.config``.

With ``synthetic_data`` the grid writes one synthetic VCR dataset under ``OUT/data`` and every run trains
on it; without it every run uses the experiment's own ``data`` section. A word-level tokenizer
(``data.tokenizer: auto``) is built once under ``OUT/tokenizer`` and shared, so the runs share a vocabulary.

Output folder::

    OUT/data/                      synthetic VCR data (written once, reused while its options match)
    OUT/tokenizer/                 one word-level tokenizer shared by every run (data.tokenizer: auto)
    OUT/runs/<variant>/seed-<s>/   the vlekit run folder + result.json (accuracy, per-question correctness)
    OUT/summary.md, summary.json   the results table and the tests; OUT/accuracy.png the bar chart

A finished run (its ``result.json`` written with the same resolved config) is skipped when the grid
runs again, so an interrupted grid continues where it stopped and extra seeds only add runs. A folder whose
finished runs ran with another config (another lr, other data, a smoke grid's sizes) is refused unless
``overwrite`` (``--overwrite``): a grid does not replace another's results unasked.

The summary (results table, comparisons, tests) is ``vlekit.ablation.stats``'s, which says what the
statistics are.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from data_prep.options import saved_run_options
from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from vlekit.ablation.config import DEMO_GRID_FILE, GridConfig, Variant, demo_grid, load_grid, smoke
from vlekit.ablation.config import (  # noqa: F401  (re-exported: notebooks call them as ablation.* with the above)
    SyntheticData,
    check_grid,
    default_variants,
    smoke_grid,
    smoke_variants,
)
from vlekit.ablation.stats import RESULT_FILE, RunResult, write_summary
from vlekit.evaluation.evaluate import evaluate
from vlekit.runs.experiment import ExperimentConfig, apply_changes, experiment_from_dict, flat_options
from vlekit.runs.folder import RunFolder
from vlekit.training.monitor import TrainingDiverged
from vlekit.training.train import train


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
def _synthetic_paths(root: Path) -> SyntheticVCR:
    return SyntheticVCR(root, root / "vcr1images", root / "train.jsonl", root / "val.jsonl", root / "test.jsonl")


def planned_data(grid: GridConfig) -> tuple[SyntheticVCR | None, str | None]:
    """Where :func:`prepare_data` puts the grid's synthetic data and shared tokenizer, without writing them."""
    data = _synthetic_paths(Path(grid.out) / "data") if grid.synthetic_data is not None else None
    tokenizer = experiment_from_dict(grid.experiment, where="the grid's experiment").data.tokenizer
    return data, str(Path(grid.out) / "tokenizer") if tokenizer == "auto" else None


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
            data = _synthetic_paths(root)
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


def other_grid_in(grid: GridConfig, variants: Sequence[Variant]) -> list[str]:
    """What in ``grid.out`` this grid would replace: each finished run of its (variant, seed) pairs that ran with
    another config (the options that differ), and synthetic data written with other options while finished runs
    were evaluated on it. Empty: the folder is this grid's (or new)."""
    data, tokenizer = planned_data(grid)
    found = []
    for variant in variants:
        for seed in grid.seeds:
            path = run_folder(grid, variant.name, seed) / RESULT_FILE
            if not path.is_file():
                continue
            stored = json.loads(path.read_text()).get("config")
            if not stored:
                continue  # no config to compare with: a result an older vlekit wrote (trained again, as before)
            config = variant_config(grid, variant, seed=seed, data=data, tokenizer=tokenizer)
            changed = run_differences(stored, run_identity(config, grid))
            if changed:
                found.append(f"{variant.name} seed {seed} ({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''})")
    stamp = Path(grid.out) / "data" / "options.json"
    if (grid.synthetic_data is not None and stamp.is_file() and any(Path(grid.out).glob(f"runs/*/seed-*/{RESULT_FILE}"))
            and json.loads(stamp.read_text()) != dataclasses.asdict(grid.synthetic_data)):
        found.append(f"the synthetic data its runs were evaluated on ({stamp}: {stamp.read_text()})")
    return found


def run_identity(config: ExperimentConfig, grid: GridConfig) -> dict[str, Any]:
    """What a run's result depends on: its config without the data-loader workers (they change the
    speed, not the batches), plus the synthetic data's options (the config names the data by path)."""
    raw = config.to_dict()
    raw["data"] = {key: value for key, value in raw["data"].items() if key != "num_workers"}
    synthetic = dataclasses.asdict(grid.synthetic_data) if grid.synthetic_data is not None else None
    return {**raw, "synthetic_data": synthetic}


GRID_FOLDER = "<out>"  # the grid folder in a portable identity


def portable_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A run identity (:func:`run_identity`, or one a ``result.json`` holds) with the grid folder's paths written
    relative to it (``<out>/data/train.jsonl``), the folder taken from the run's own ``train.out``
    (``OUT/runs/<variant>/seed-<s>``): the same run whether the grid folder was given relative or absolute, or has
    been moved or copied since."""
    run = (identity.get("train") or {}).get("out")
    out = str(Path(run).parent.parent.parent) if run else None

    def portable(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: portable(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [portable(item) for item in value]
        if out and isinstance(value, str) and (value == out or value.startswith(out + "/")):
            return GRID_FOLDER + value[len(out):]
        return value

    return portable(json.loads(json.dumps(identity)))


def run_differences(stored: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """How a finished run's recorded identity differs from the one this grid gives it, option by option, in
    portable form (:func:`portable_identity`). Only the options the run recorded count (one added since is not a
    difference, as a resume sees it), but a preprocessing option an older run did not record counts at what that
    run was fed (``data_prep.options.saved_run_options``: ``person_names`` ``by-first-mention``)."""
    stored = portable_identity(stored)
    stored["data"] = saved_run_options(stored.get("data") or {})
    there, here = flat_options(stored), flat_options(portable_identity(identity))
    return [f"{key} {there[key]} there, {here.get(key, '(unset)')} here" for key in sorted(there) if there[key] != here.get(key)]


def run_variant(grid: GridConfig, variant: Variant, seed: int, *, data: SyntheticVCR | None, tokenizer: str | None,
                progress: bool = False) -> RunResult:
    """Train and evaluate one (variant, seed), or load its result when it already ran with this config."""
    config = variant_config(grid, variant, seed=seed, data=data, tokenizer=tokenizer)
    folder = run_folder(grid, variant.name, seed)
    result_path = folder / RESULT_FILE
    resolved = run_identity(config, grid)
    stored = json.loads(result_path.read_text()).get("config") if result_path.is_file() else None
    if stored and not run_differences(stored, resolved):
        return RunResult.load(result_path)
    if folder.exists():  # a stale or unfinished run: start it again from nothing
        shutil.rmtree(folder)
    if config.data.val_annotations is None:
        raise ValueError(f"run {variant.name} seed {seed}: data.val_annotations is not set; a grid evaluates every run")
    started = time.perf_counter()
    try:
        trained = train(config, progress=progress)
    except TrainingDiverged as error:
        raise TrainingDiverged(f"run {variant.name} seed {seed}: {error} The grid's finished runs are kept: lower the "
                               f"variant's learning rate in the grid file and run the grid again (finished runs are "
                               f"loaded, not repeated)", step=error.step, last_finite_step=error.last_finite_step,
                               checkpoint=error.checkpoint) from error
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
             log: Callable[[str], None] = print, overwrite: bool = False) -> list[RunResult]:
    """Every (variant, seed) of the grid, in order; finished runs are loaded, not repeated.

    ``variants``: these rows instead of ``grid.variants``. A ``grid.out`` holding finished runs of another grid
    (:func:`other_grid_in`: another lr, other data, ...) is refused before anything is written unless ``overwrite``,
    which trains those runs again in their folders.
    """
    variants = list(variants if variants is not None else grid.variants)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    replaced = other_grid_in(grid, variants)
    if replaced and not overwrite:
        raise ValueError(f"--out {grid.out} holds finished runs of another grid, which this one would replace: "
                         f"{', '.join(replaced[:3])}{f' and {len(replaced) - 3} more' if len(replaced) > 3 else ''}; "
                         f"choose another --out, or --overwrite (overwrite=True) to replace them")
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


# -- command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="EXPERIMENT.yaml", help="the base experiment (replaces the grid file's)")
    parser.add_argument("--grid", metavar="GRID.yaml",
                        help=f"the grid file: variants, seeds, reference (default: the demo's, {DEMO_GRID_FILE.name})")
    parser.add_argument("--out", default=GridConfig.out,
                        help="grid folder (its finished runs are reused; those of another config refused: --overwrite)")
    parser.add_argument("--smoke", action="store_true",
                        help="the reference and the baseline x 1 seed x a few steps on the CPU (seconds)")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: the grid file's)")
    parser.add_argument("--num-train", type=int, help="synthetic training questions (grids with synthetic_data)")
    parser.add_argument("--num-val", type=int, help="synthetic validation questions (grids with synthetic_data)")
    parser.add_argument("--epochs", type=float, help="train.epochs of every run (default: the grid's)")
    parser.add_argument("--batch-size", type=int, help="train.batch_size of every run (default: the grid's)")
    parser.add_argument("--lr", type=float, help="train.lr of every run (default: the grid's)")
    parser.add_argument("--max-steps", type=int, help="train.max_steps of every run, e.g. for a quick look (default: the grid's)")
    parser.add_argument("--num-workers", type=int, help="data-loader workers per run (default: the experiment's)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when there is a GPU")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the runs (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per run")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again the finished runs in --out that ran with another config (default: refused)")


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
    try:
        results = run_grid(grid, progress=args.progress, overwrite=args.overwrite)
    except ValueError as error:
        print(f"vlekit ablate: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"vlekit ablate: {error}", file=sys.stderr)
        return 1
    summary = write_summary(results, grid.out, reference=grid.reference, baseline=grid.baseline)
    print("\n" + summary.read_text())
    print(f"written: {summary}, {Path(grid.out) / 'summary.json'}, {Path(grid.out) / 'accuracy.png'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlekit.ablation.grid", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
