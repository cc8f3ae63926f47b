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

The summary (results table, comparisons, tests) is ``vlekit.ablation.stats``'s, which says what the
statistics are.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from vlekit.ablation.stats import NO_OBJECT_TOKENS, REFERENCE, RESULT_FILE, RunResult, write_summary
from vlekit.evaluation.evaluate import evaluate
from vlekit.runs.experiment import ExperimentConfig, apply_changes, experiment_from_dict
from vlekit.options import make_config
from vlekit.runs.folder import RunFolder
from vlekit.training.train import train

# The demo's grid: shipped with the repository, next to the other experiment files.
DEMO_GRID_FILE = Path(__file__).resolve().parents[2] / "configs" / "grids" / "ablation-demo.yaml"


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
# -- running --------------------------------------------------------------------------------------
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
    parser.add_argument("--epochs", type=float, help="train.epochs of every run (default: the grid's)")
    parser.add_argument("--batch-size", type=int, help="train.batch_size of every run (default: the grid's)")
    parser.add_argument("--lr", type=float, help="train.lr of every run (default: the grid's)")
    parser.add_argument("--max-steps", type=int, help="train.max_steps of every run, e.g. for a quick look (default: the grid's)")
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
    parser = argparse.ArgumentParser(prog="python -m vlekit.ablation.grid", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
