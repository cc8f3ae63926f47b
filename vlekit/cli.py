"""The ``vlekit`` command line: one sub-command per job, each implemented in its own module.

Each module provides ``add_arguments(parser)`` and ``run(args) -> int``; they are imported only when
their sub-command runs, so ``vlekit list`` stays fast. The command line writes figures to files, so it
chooses matplotlib's Agg backend (no windows) for every sub-command.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from vlekit.tables import text_table

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("vlekit.cli", "list registered components (core and plugins) with their source"),
    "synthetic": ("data_prep.synthetic", "write a synthetic VCR-format dataset (offline; grounding needed)"),
    "easy-vqa": ("data_prep.easy_vqa", "write easy-VQA (pip easy-vqa) in the VQA v2 layout (offline VQA data)"),
    "check-data": ("data_prep.check", "validate VCR annotations; statistics of the examples they give"),
    "train": ("vlekit.training.train", "fine-tune a VCR model (Q->A or QA->R) or a VQA model (--task vqa)"),
    "eval": ("vlekit.evaluation.evaluate", "evaluate checkpoints: Q->A, QA->R, Q->AR, leaderboard CSV; VQA accuracy, result file"),
    "predict": ("vlekit.evaluation.predict", "score typed answers to a typed question about an image with a trained run"),
    "demo": ("vlekit.demo", "the built-in demo: synthetic VCR data, tiny model, train, evaluate"),
    "ablate": ("vlekit.ablation.grid", "an ablation grid over any experiment (variants x seeds) with a report"),
    "compare": ("vlekit.diagnose.compare", "evaluations of different models on the same questions, paired: differences, CIs, per type"),
    "diagnose": ("vlekit.diagnose.run", "does the model look? a VCR or VQA run under shortcut probes, with paired statistics"),
    "bench": ("vlekit.bench.run", "measure training / inference speed, memory, FLOPs and MFU"),
    "runs": ("vlekit.evaluation.overview", "the training runs under folders: where each stands, its scores, the options that differ; curves"),
    "push": ("vlekit.runs.push", "upload a trained run to the Hugging Face Hub with a model card"),
    "export": ("vlekit.runs.export", "a trained run as a plain run folder (every weight; --merge: adapters merged) or, --format vle, an official VLE folder"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlekit list``."""
    from vlekit.registry import REGISTRIES

    parser.add_argument("--kind", choices=list(REGISTRIES), help="only this kind")


def run(args: argparse.Namespace) -> int:
    """``vlekit list``: a table of every component, its source and a line of description."""
    import vlekit

    print(text_table(vlekit.list_components(args.kind), ["kind", "name", "source", "description"], align="llll"))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ["MPLBACKEND"] = "Agg"  # read when matplotlib is first imported: figures go to files
    parser = argparse.ArgumentParser(prog="vlekit", description="VCR adaptation kit for vision-language encoders")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subcommands.add_parser(name, help=help_text, description=help_text)
        # Only the chosen sub-command's module is imported (its arguments are needed to parse).
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as error:
        print(f"vlekit {args.command}: {path_problem(error)}", file=sys.stderr)  # a path of the wrong kind: no traceback
        return 2


def path_problem(error: OSError) -> str:
    """What is wrong with the path an ``OSError`` names, in words (a file given for ``--out``, say)."""
    path = error.filename if error.filename is not None else ""
    if isinstance(error, FileExistsError):
        return f"{path} is a file where a folder is needed (--out, say): choose another path"
    if isinstance(error, NotADirectoryError):
        return f"{path}: a part of this path is a file, not a folder: choose another path"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder where a file is needed: name a file"
    return f"{path}: permission denied ({error.strerror}): choose a path you may write to" if path else str(error)


if __name__ == "__main__":
    sys.exit(main())
