"""Ablation grid files: the rows (variants), seeds, reference and base experiment of a grid, and the demo's.

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

``vlekit.ablation.grid`` runs a grid; this module only reads and checks one.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlekit.ablation.stats import NO_OBJECT_TOKENS, REFERENCE
from vlekit.options import make_config

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
