"""The notebooks: committed without outputs, parameterised, and runnable headless in SMOKE mode.

Each notebook has a cell tagged ``parameters`` (papermill's convention) that sets ``SMOKE = False``
for full runs; the test inserts a cell after it that sets ``SMOKE = True`` and points ``OUT`` at a
temporary folder, then executes the notebook from ``notebooks/`` with nbclient. Strip outputs
before committing (``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_data_prep", "03_finetune", "04_ablations", "05_write_a_plugin", "06_vqa"]
CELL_TIMEOUT_S = 300


def read(path: Path):
    return nbformat.read(path, as_version=4)


def parameters_index(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_the_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs_and_a_parameters_cell(path):
    notebook = read(path)
    nbformat.validate(notebook)
    dirty = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    # The kernel `make lab` registers, so another JupyterLab does not start some other interpreter.
    assert notebook.metadata.kernelspec.name == "vlekit", f"{path.name}: kernelspec {notebook.metadata.kernelspec.name!r}"
    source = notebook.cells[parameters_index(notebook)].source
    assert "SMOKE = False" in source and "OUT = " in source, f"{path.name}: the parameters cell must set SMOKE and OUT"
    # papermill reads one `name = value  # help` per line; a second '=' (even in the comment) hides it.
    unparsable = [line for line in source.splitlines()
                  if line.strip() and not line.lstrip().startswith("#") and line.count("=") != 1]
    assert not unparsable, f"{path.name}: parameter lines papermill cannot read: {unparsable}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    notebook = read(path)
    smoke = nbformat.v4.new_code_cell(f"SMOKE = True\nOUT = {str(tmp_path / 'out')!r}")
    smoke.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(parameters_index(notebook) + 1, smoke)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    # Every figure the notebook showed is also on disk next to its outputs (vlekit.evaluation.plots.save_shown_figures).
    shown = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    saved = sorted((tmp_path / "out" / "figures").glob("figure-*.png"))
    assert shown > 0 and len(saved) == shown and all(png.stat().st_size > 1000 for png in saved), (shown, saved)


@pytest.mark.slow
def test_a_notebook_runs_as_a_plain_script_without_jupyter(tmp_path):
    """``scripts/run_notebook.py``: the route on machines without Jupyter (the GPU box)."""
    import subprocess
    import sys

    script = NOTEBOOK_DIR.parent / "scripts" / "run_notebook.py"
    result = subprocess.run(
        [sys.executable, str(script), str(NOTEBOOK_DIR / "03_finetune.ipynb"), "--out", str(tmp_path), "SMOKE=True"],
        capture_output=True, text=True, timeout=CELL_TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "parameters: OUT=" in result.stdout and "SMOKE=True" in result.stdout
    assert "| Q->A |" in result.stdout  # display(Markdown(...)) printed as text
    assert (tmp_path / "q2a" / "model").is_dir() and (tmp_path / "eval").is_dir()
    figures = sorted((tmp_path / "figures").glob("cell-*.png"))
    assert len(figures) >= 3 and all(f.stat().st_size > 1000 for f in figures)

    failing = tmp_path / "failing.ipynb"
    failing.write_text(json.dumps({"cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ["X = 1"], "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": ["raise RuntimeError(f'boom {X}')"], "outputs": []},
    ]}))
    result = subprocess.run([sys.executable, str(script), str(failing), "--out", str(tmp_path / "f"), "X=7"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "boom 7" in result.stderr and "cell 1 failed" in result.stderr


# -- the library functions the notebooks added (vlekit.ablation.grid, vlekit.ablation.stats, vlekit.evaluation.plots) --------------------
def run_result(variant: str, seed: int, correct: list[bool]):
    from vlekit.ablation.stats import RunResult

    return RunResult(variant=variant, seed=seed, task="q2a", accuracy=sum(correct) / len(correct),
                     annot_ids=tuple(f"val-{i}" for i in range(len(correct))), correct=tuple(correct),
                     steps=1, seconds=0.0, folder="")


def test_variant_changes_are_applied_and_checked():
    from vlekit.ablation.grid import with_changes
    from vlekit.runs.experiment import ExperimentConfig

    config = with_changes(ExperimentConfig(), {"model.fusion": "tiny-merged-attention", "data.geometry": "letterbox",
                                               "model.use_object_tokens": False})
    assert config.model.fusion == {"name": "tiny-merged-attention"}
    assert config.data.geometry == "letterbox" and config.model.use_object_tokens is False
    with pytest.raises(TypeError, match="unknown option 'use_object_type'; did you mean 'use_object_types'"):
        with_changes(ExperimentConfig(), {"model.use_object_type": False})
    with pytest.raises(TypeError, match="use_object_tokens"):
        with_changes(ExperimentConfig(), {"model.use_object_tokens": "no"})


def test_summary_and_paired_tests():
    import math

    from vlekit.ablation.stats import (best_variant, breakdown_by, compare, mcnemar_exact, paired_bootstrap,
                                       summarize, welch_t_test)
    from vlekit.tables import format_results_table

    ref = [run_result("vle", s, [True] * 8 + [False] * 2) for s in (0, 1)]
    base = [run_result("none", s, [True] * 2 + [False] * 8) for s in (0, 1)]
    rows = summarize(ref + base, reference="vle")
    assert [(r["variant"], r["mean"], r["std"]) for r in rows] == [("vle", 0.8, 0.0), ("none", 0.2, 0.0)]
    assert rows[1]["delta"] == pytest.approx(-0.6)
    assert "| vle | 2 | 80.0 | 0.0 |" in format_results_table(rows, markdown=True)
    assert best_variant(rows, exclude="vle") == "none"
    assert mcnemar_exact([True] * 6, [False] * 6) == pytest.approx(2 / 2**6)  # 6 discordant pairs, all one way
    comparison = compare(ref + base, "vle", "none")  # 2 seeds: McNemar's pairs would not be independent
    assert comparison.difference == pytest.approx(0.6) and math.isnan(comparison.p_mcnemar)
    assert comparison.ci95[0] > 0 and comparison.p_bootstrap < 0.01
    assert math.isnan(welch_t_test([0.5], [0.4, 0.3]))  # one seed: no test
    assert welch_t_test([0.8, 0.82, 0.79], [0.3, 0.31, 0.28]) < 0.001
    assert math.isnan(summarize(ref[:1])[0]["std"])
    assert paired_bootstrap([1, 0, 1], [1, 0, 1]) == ((0.0, 0.0), 1.0)
    with pytest.raises(ValueError, match="share no seed"):
        compare([ref[0], run_result("none", 5, [True] * 10)], "vle", "none")
    table = breakdown_by(["a", "a", "b"], q2a=[True, False, True], qa2r=[True, True, False])
    assert table["a"]["n"] == 2 and table["a"]["q2a"] == 0.5 and table["all"]["n"] == 3
    assert table["b"]["joint"] == {"q2a right, qa2r right": 0, "q2a right, qa2r wrong": 1,
                                   "q2a wrong, qa2r right": 0, "q2a wrong, qa2r wrong": 0}


def test_a_grid_reuses_finished_runs_unless_what_they_depend_on_changed(tmp_path):
    import dataclasses

    from vlekit.ablation import grid as ablation, stats as ablation_stats

    grid = ablation.smoke_grid(tmp_path)
    variant = [v for v in ablation.smoke_variants() if v.name == ablation_stats.REFERENCE]
    first = ablation.run_grid(grid, variant, log=lambda _: None)[0]
    result_file = Path(first.folder) / ablation_stats.RESULT_FILE
    stamp = result_file.stat().st_mtime_ns
    again = ablation.run_grid(dataclasses.replace(grid, num_workers=1), variant, log=lambda _: None)[0]
    assert result_file.stat().st_mtime_ns == stamp and again == first  # workers: loaded, not re-run
    changed = ablation.run_grid(dataclasses.replace(grid, lr=grid.lr / 2), variant, log=lambda _: None)[0]
    assert result_file.stat().st_mtime_ns != stamp and changed.seconds != first.seconds  # lr: trained again


def test_plot_helpers_draw():
    import matplotlib.pyplot as plt
    import numpy as np

    from vlekit.evaluation.plots import draw_boxes, pixels_to_image, plot_outcome_breakdown, plot_patch_grid

    image = pixels_to_image(np.zeros((3, 32, 32), dtype=np.float32))
    assert image.shape == (32, 32, 3) and 0.4 < image.mean() < 0.5  # zero = the CLIP mean colour
    figures = [
        draw_boxes(np.zeros((20, 40, 3)), [[1, 1, 10, 10, 0.9]], ["[0] person"]),
        plot_patch_grid(image, grid=4, patches=[[0, 1, 4, 5], []], labels=["a", "b"]),
        plot_outcome_breakdown({"colour": {"n": 2, "joint": {"both right": 1, "both wrong": 1}}}),
    ]
    assert all(len(f.axes) >= 1 for f in figures)
    plt.close("all")
