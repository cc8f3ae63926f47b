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
EXPECTED = ["01_quickstart", "02_data_prep", "03_finetune", "04_ablations", "05_write_a_plugin", "06_vqa", "07_diagnose", "08_adaptation"]
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
    # nbformat 4.5 cell ids (nbformat fills a missing one in memory, with a warning, and will refuse it).
    unnamed = [i for i, cell in enumerate(json.loads(path.read_text())["cells"]) if "id" not in cell]
    assert not unnamed, f"{path.name}: cells {unnamed} have no id; save the notebook with nbformat.normalize()"
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


# -- what the notebooks draw (vlekit.evaluation.plots); the statistics and grids they call are tested in
# tests/test_ablation_statistics.py and tests/test_demo_grid.py ---------------------------------------------
def test_plot_helpers_draw_what_they_are_given():
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    from vlekit.evaluation.plots import draw_boxes, pixels_to_image, plot_outcome_breakdown, plot_patch_grid

    image = pixels_to_image(np.zeros((3, 32, 32), dtype=np.float32))
    assert image.shape == (32, 32, 3) and 0.4 < image.mean() < 0.5  # zero = the CLIP mean colour
    try:
        # One outlined box per row of boxes (x1, y1, x2, y2, score), at its place, with its label.
        (axis,) = draw_boxes(np.zeros((20, 40, 3)), [[1, 1, 10, 12, 0.9], [20, 5, 30, 15, 0.5]], ["[0] person", "[1] dog"]).axes
        boxes = [p for p in axis.patches if isinstance(p, Rectangle)]
        assert [(b.get_xy(), b.get_width(), b.get_height(), b.get_fill()) for b in boxes] == [
            ((1, 1), 9, 11, False), ((20, 5), 10, 10, False)]
        assert [t.get_text() for t in axis.texts] == ["[0] person", "[1] dog"]
        assert axis.get_xlim() == (0, 40) and axis.get_ylim() == (20, 0)  # the image's pixels, y downwards

        # Object 'a' covers patches 0, 1, 4, 5 of a 4 x 4 grid on 32 px: four shaded 8 px cells and their outline.
        (axis, *_) = plot_patch_grid(image, grid=4, patches=[[0, 1, 4, 5], []], labels=["a", "b"]).axes
        shaded = sorted((p.get_xy(), p.get_width()) for p in axis.patches if p.get_fill())
        assert shaded == [((0, 0), 8), ((0, 8), 8), ((8, 0), 8), ((8, 8), 8)]
        assert [(p.get_xy(), p.get_width(), p.get_height()) for p in axis.patches if not p.get_fill()] == [((0, 0), 16, 16)]
        assert [t.get_text() for t in axis.get_legend().get_texts()] == ["a (4 patches)", "b (0 patches)"]

        # Stacked shares of each group's questions.
        (axis,) = plot_outcome_breakdown({"colour": {"n": 4, "joint": {"both right": 1, "both wrong": 3}},
                                          "place": {"n": 2, "joint": {"both right": 2}}}).axes
        bars = [(round(p.get_y(), 6), round(p.get_height(), 6)) for p in axis.patches]
        assert bars == [(0, 0.25), (0, 1.0), (0.25, 0.75), (1.0, 0)]  # per outcome: the colour bar, then place
        assert [t.get_text() for t in axis.get_legend().get_texts()] == ["both right", "both wrong"]
    finally:
        plt.close("all")
