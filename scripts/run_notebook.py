"""Run a notebook's code cells as a plain Python script, for machines without Jupyter (a GPU box).

    python scripts/run_notebook.py notebooks/03_finetune.ipynb --out runs/gpu/03 [NAME=VALUE ...]

The cells run in order in one namespace, from the notebook's folder, as they would in a kernel:
``OUT`` (from ``--out``) and each ``NAME=VALUE`` (a Python literal, else a string) are set right after
the cell tagged ``parameters``; IPython magics (``%...``, ``!...``) are skipped, and the
``IPython.display`` import gives way to a ``display`` and ``Markdown`` that print (no IPython
needed). Every figure a cell leaves open is saved as ``OUT/figures/cell-NN-K.png``. A failing cell
stops the run with its traceback and exit code 1.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import traceback
from pathlib import Path


def parameter(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name.strip(), value


class Markdown:
    """``IPython.display.Markdown`` for a terminal: the text itself."""

    def __init__(self, data: str) -> None:
        self.data = data

    def __str__(self) -> str:
        return self.data


def display(*objects: object, **_: object) -> None:
    """``IPython.display.display`` for a terminal: print."""
    print(*objects, sep="\n")


def code_cells(path: Path) -> list[tuple[int, str, bool]]:
    """``(index, source without magics, is the parameters cell)`` for each code cell."""
    notebook = json.loads(path.read_text())
    cells = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = [line for line in source.splitlines()
                 if not line.lstrip().startswith(("%", "!", "from IPython.display import"))]
        cells.append((index, "\n".join(lines), "parameters" in cell.get("metadata", {}).get("tags", [])))
    return cells


def save_open_figures(out: Path, cell: int) -> list[Path]:
    import matplotlib.pyplot as plt

    saved = []
    for k, number in enumerate(plt.get_fignums()):
        path = out / "figures" / f"cell-{cell:02d}-{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plt.figure(number).savefig(path, dpi=120, bbox_inches="tight")
        saved.append(path)
    plt.close("all")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the notebook's OUT folder; figures go to OUT/figures")
    parser.add_argument("parameters", nargs="*", type=parameter, metavar="NAME=VALUE")
    args = parser.parse_intermixed_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    notebook, out = args.notebook.resolve(), args.out.resolve()
    overrides = {"OUT": str(out), **dict(args.parameters)}
    cells = code_cells(notebook)
    if sum(is_parameters for _, _, is_parameters in cells) != 1:
        parser.error(f"{notebook.name}: expected exactly one code cell tagged 'parameters'")
    os.chdir(notebook.parent)
    namespace: dict[str, object] = {"__name__": "__main__", "display": display, "Markdown": Markdown}
    for index, source, is_parameters in cells:
        print(f"--- cell {index}", flush=True)
        try:
            exec(compile(source, f"{notebook.name}[cell {index}]", "exec"), namespace)
            if is_parameters:
                namespace.update(overrides)
                print("parameters: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
        except Exception:
            traceback.print_exc()
            print(f"{notebook.name}: cell {index} failed", file=sys.stderr)
            return 1
        for path in save_open_figures(out, index):
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
