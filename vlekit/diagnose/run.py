"""``vlekit diagnose``: a trained VCR run under the registered probes, with paired statistics.

    vlekit diagnose --run runs/demo/q2a --annotations runs/demo/data/val.jsonl \\
                    --images runs/demo/data/vcr1images --out runs/demo/q2a-diagnose

    from vlekit.diagnose.run import diagnose        # the same from a notebook
    result = diagnose("runs/demo/q2a", annotations=..., images=..., out=...)

Runs a Q->A or a QA->R run (one per call) on a labelled split under each probe
(``vlekit.diagnose.probes``; ``vlekit list --kind probe`` lists them, third-party ones included) and
reports each probe's accuracy with its 95% interval and its paired difference from ``full``
(``vlekit.diagnose.report``), overall and per question type. With ``out``: ``diagnose.json``
(``{"task", "run", "annotations", "n", "probes": {name: {"accuracy", "ci95", "delta", ...}},
"by_question_type": {...}}``), ``diagnose.md``, ``diagnose.png`` and ``diagnose-inputs.json`` (the run's
weights and the split's files with their SHA-256, as ``vlekit eval``'s ``inputs.json``): an ``out`` holding
another run's or split's diagnosis is refused unless ``overwrite``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.preflight import preflight
from data_prep.vcr import VCRFormatError
from vlekit.diagnose.context import DiagnoseContext
from vlekit.diagnose.probes import Probe, ProbeOutcome
from vlekit.diagnose.report import (
    REFERENCE,
    by_question_type,
    plot_probes,
    probe_row,
    probes_table,
    question_types,
    summary_markdown,
    types_table,
)
from vlekit.evaluation.evaluate import CHANCE, claim_results_folder, evaluation_inputs
from vlekit.registry import PROBES
from vlekit.runs.folder import TrainedModel, load_trained

DEFAULT_PROBES: tuple[str, ...] = (
    "full", "image-blind", "no-object-tokens", "no-type-ids", "question-blind", "choice-permutation", "name-swap",
    "box-swap", "word-overlap",
)
RESULT_FILE, SUMMARY_FILE, FIGURE_FILE = "diagnose.json", "diagnose.md", "diagnose.png"
INPUTS_FILE = "diagnose-inputs.json"  # what the diagnosis is of (as vlekit eval's inputs.json); beside an evaluation's
DIAGNOSE_FILES = (RESULT_FILE, SUMMARY_FILE, FIGURE_FILE, INPUTS_FILE)


def build_probes(names: Sequence[str]) -> list[Probe]:
    """The probes ``names`` (registered names; ``full`` first, added when missing), each built once."""
    ordered = list(dict.fromkeys([REFERENCE, *names]))
    probes = [PROBES.build(name) for name in ordered]
    for probe in probes:
        if not isinstance(probe, Probe):
            raise TypeError(f"probe {probe.name!r} ({type(probe).__name__}) must subclass vlekit.diagnose.probes.Probe")
    return probes


def run_probes(context: DiagnoseContext, probes: Sequence[Probe], *, progress: bool = True) -> dict[str, ProbeOutcome]:
    """Each probe's outcome on the context's split; the batch-level probes that read the images share one pass."""
    shared = {probe.name: (lambda batch, probe=probe: probe.transform(batch, context))
              for probe in probes if probe.uses_model and probe.batch_level and probe.needs_pixels}
    context.prefetch(shared)
    outcomes = {}
    for probe in probes:
        started = time.perf_counter()
        outcomes[probe.name] = probe.run(context)
        if progress:
            print(f"probe {probe.name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return outcomes


def diagnose(
    run: str | Path | TrainedModel, *, annotations: str | Path, images: str | Path, out: str | Path | None = None,
    probes: Sequence[str] = DEFAULT_PROBES, batch_size: int = 32, num_workers: int = 2, precision: str | None = None,
    device: str | None = None, seed: int = 0, resamples: int = 1000, min_type_questions: int = 30,
    progress: bool = True, overwrite: bool = False,
) -> dict[str, Any]:
    """Put a trained VCR run (a run folder, its ``model/``, or a loaded ``TrainedModel``) through ``probes``
    on the labelled split ``annotations`` (images under ``images``).

    precision: as ``vlekit eval`` (``None``: the run's own). seed: the probes' random draws (orders,
    names, ties) and the bootstrap's. min_type_questions: a question type (first word) gets its own row
    from this many questions on. Returns ``{"task", "run", "annotations", "n", "probes": {name: row},
    "by_question_type": {type: {"n", "probes": {name: {"accuracy", "ci95", "delta"}}}}}`` (rows:
    :func:`vlekit.diagnose.report.probe_row`) and writes it, with the tables and the plot, under ``out``.
    An ``out`` holding the diagnosis of another run or split is refused before any work unless ``overwrite``
    (a rerun of the same run on the same split replaces its files; an evaluation's files there are not touched).
    """
    built = build_probes(probes)  # unknown names fail before the run is loaded
    trained = run if isinstance(run, TrainedModel) else load_trained(run)
    if out is not None:
        inputs = evaluation_inputs([trained], data={"annotations": annotations, "images": images},
                                   probes=[probe.name for probe in built], precision=precision, seed=seed,
                                   resamples=resamples)
        claim_results_folder(Path(out), inputs, overwrite=overwrite, files=DIAGNOSE_FILES, inputs_file=INPUTS_FILE,
                             kind="diagnosis")
    records = preflight(annotations, images, progress=progress)
    context = DiagnoseContext(trained, records, images=images, batch_size=batch_size, num_workers=num_workers,
                              precision=precision, device=device, seed=seed, progress=progress)
    outcomes = run_probes(context, built, progress=progress)
    chance = CHANCE[context.task]
    reference = outcomes[REFERENCE]
    result: dict[str, Any] = {
        "task": context.task, "run": str(trained.folder), "annotations": str(annotations), "n": len(records),
        "seed": seed, "resamples": resamples,
        "probes": {name: probe_row(outcome, reference, chance=chance, resamples=resamples, seed=seed)
                   for name, outcome in outcomes.items()},
        "by_question_type": by_question_type(outcomes, question_types(records, min_questions=min_type_questions),
                                             resamples=resamples, seed=seed),
    }
    if out is not None:
        write_result(result, out)
        (Path(out) / INPUTS_FILE).write_text(json.dumps(inputs, indent=1))
    return result


def write_result(result: dict[str, Any], out: str | Path) -> Path:
    """``out/diagnose.json``, ``out/diagnose.md`` and ``out/diagnose.png``; returns the JSON's path."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
    (out / SUMMARY_FILE).write_text(summary_markdown(result))
    plt.close(plot_probes(result, out / FIGURE_FILE))
    return out / RESULT_FILE


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    # dest: ``args.run`` is the sub-command's entry point (vlekit.cli)
    parser.add_argument("--run", dest="run_dir", required=True, metavar="RUN",
                        help="a trained VCR run folder (Q->A or QA->R) from vlekit train, its model/ or a checkpoints/step-N")
    parser.add_argument("--annotations", required=True, help="a labelled VCR split (jsonl), e.g. val.jsonl")
    parser.add_argument("--images", required=True, help="the split's vcr1images folder")
    parser.add_argument("--out", help=f"write {RESULT_FILE}, {SUMMARY_FILE}, {FIGURE_FILE} and {INPUTS_FILE} here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the diagnosis of another run or split found in --out")
    parser.add_argument("--probes", nargs="+", default=list(DEFAULT_PROBES), metavar="PROBE",
                        help=f"registered probes to run (full is always run; default: {' '.join(DEFAULT_PROBES)}; "
                             f"`vlekit list --kind probe` lists them)")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per forward pass (default 32)")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loader workers decoding images (default 2)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"),
                        help="autocast precision (default: the run's train.mixed_precision)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: a GPU when there is one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes' draws and the bootstrap (default 0)")
    parser.add_argument("--min-type-questions", type=int, default=30,
                        help="questions a type (first word) needs for its own row (default 30)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        result = diagnose(args.run_dir, annotations=args.annotations, images=args.images, out=args.out,
                          probes=args.probes, batch_size=args.batch_size, num_workers=args.num_workers,
                          precision=args.precision, device=args.device, seed=args.seed,
                          min_type_questions=args.min_type_questions, progress=not args.no_progress,
                          overwrite=args.overwrite)
    except (FileNotFoundError, ValueError, VCRFormatError, LookupError) as error:
        print(f"vlekit diagnose: {error}", file=sys.stderr)
        return 2
    from vlekit.tables import METRIC_NAMES

    print(f"{METRIC_NAMES[result['task']]} run {result['run']} on {result['n']} questions of {result['annotations']} "
          f"(chance {100 * CHANCE[result['task']]:g}%)\n")
    print(probes_table(result))
    if len(result["by_question_type"]) > 1:
        print(f"\naccuracy % per question type:\n{types_table(result)}")
    print(f"\nwritten: {Path(args.out) / RESULT_FILE}, {SUMMARY_FILE}, {FIGURE_FILE}, {INPUTS_FILE}" if args.out else
          f"\n(--out DIR writes {RESULT_FILE}, {SUMMARY_FILE} and {FIGURE_FILE})")
    return 0
