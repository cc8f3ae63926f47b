"""``vlekit diagnose``: a trained VCR or VQA run under the registered probes, with paired statistics.

    vlekit diagnose --run runs/demo/q2a --annotations runs/demo/data/val.jsonl \\
                    --images runs/demo/data/vcr1images --out runs/demo/q2a-diagnose
    vlekit diagnose --run runs/easy-vqa/tiny --questions Q.json --annotations A.json --images DIR \\
                    --image-pattern '{image_id}.png' --out runs/easy-vqa/tiny/diagnose      # a VQA run

    from vlekit.diagnose.run import diagnose        # the same from a notebook
    result = diagnose("runs/demo/q2a", annotations=..., images=..., out=...)

Runs a Q->A, a QA->R or a VQA run (one per call) on a labelled split under each probe
(``vlekit.diagnose.probes``; ``vlekit list --kind probe`` lists them, third-party ones included; each says
which tasks it applies to) and reports each probe's accuracy with its 95% interval and its paired difference
from ``full`` (``vlekit.diagnose.report``), overall and per question type (VQA: answer type). With ``out``:
``diagnose.json`` (``{"task", "run", "annotations", "n", "probes": {name: {"accuracy", "ci95", "delta", ...}},
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

import torch

from data_prep.constants import VQA_TASK
from data_prep.preflight import preflight
from data_prep.vcr import VCRFormatError
from data_prep.vqa import COCO_IMAGE_PATTERN, preflight_vqa, read_vqa
from vlekit.diagnose.context import DiagnoseContext
from vlekit.diagnose.probes import Probe, ProbeOutcome
from vlekit.diagnose.report import (
    OTHER_TYPE,
    REFERENCE,
    by_question_type,
    plot_probes,
    probe_row,
    probes_table,
    question_types,
    result_chance,
    summary_markdown,
    type_kind,
    types_table,
)
from vlekit.evaluation.evaluate import claim_results_folder, evaluation_inputs, out_of_memory_advice
from vlekit.registry import PROBES
from vlekit.runs.folder import TrainedModel, load_trained

DEFAULT_PROBES: tuple[str, ...] = (
    "full", "image-blind", "no-object-tokens", "no-type-ids", "question-blind", "choice-permutation", "name-swap",
    "box-swap", "word-overlap",
)
VQA_PROBES: tuple[str, ...] = ("full", "image-blind", "question-blind", "image-swap")


def default_probes(task: str) -> tuple[str, ...]:
    """The probes a run of ``task`` goes through by default."""
    return VQA_PROBES if task == VQA_TASK else DEFAULT_PROBES
RESULT_FILE, SUMMARY_FILE, FIGURE_FILE = "diagnose.json", "diagnose.md", "diagnose.png"
INPUTS_FILE = "diagnose-inputs.json"  # what the diagnosis is of (as vlekit eval's inputs.json); beside an evaluation's
DIAGNOSE_FILES = (RESULT_FILE, SUMMARY_FILE, FIGURE_FILE, INPUTS_FILE)


def build_probes(names: Sequence[str], task: str | None = None) -> list[Probe]:
    """The probes ``names`` (registered names; ``full`` first, added when missing), each built once; with
    ``task``, a probe that does not apply to it (``Probe.tasks``) is an error naming those that do."""
    ordered = list(dict.fromkeys([REFERENCE, *names]))
    probes = [PROBES.build(name) for name in ordered]
    for probe in probes:
        if not isinstance(probe, Probe):
            raise TypeError(f"probe {probe.name!r} ({type(probe).__name__}) must subclass vlekit.diagnose.probes.Probe")
    misfits = [probe.name for probe in probes if task is not None and task not in probe.tasks]
    if misfits:
        fitting = [entry.name for entry in PROBES.entries() if task in getattr(entry.component, "tasks", ())]
        raise ValueError(f"probe(s) {', '.join(misfits)} do not apply to a {task} run; those that do: {', '.join(fitting)}")
    return probes


def run_probes(context: DiagnoseContext, probes: Sequence[Probe], *, progress: bool = True) -> dict[str, ProbeOutcome]:
    """Each probe's outcome on the context's split; the passes the probes declare run together (one pass over the
    split's pictures for all that show them, each image decoded once)."""
    context.prefetch({name: spec for probe in probes if probe.uses_model for name, spec in probe.passes(context).items()})
    outcomes = {}
    for probe in probes:
        started = time.perf_counter()
        outcomes[probe.name] = probe.run(context)
        if progress:
            print(f"probe {probe.name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return outcomes


def diagnose(
    run: str | Path | TrainedModel, *, annotations: str | Path, images: str | Path, out: str | Path | None = None,
    probes: Sequence[str] | None = None, questions: str | Path | None = None,
    image_pattern: str = COCO_IMAGE_PATTERN, data_subtype: str | None = None, batch_size: int = 32,
    num_workers: int = 2, precision: str | None = None, device: str | None = None, seed: int = 0,
    resamples: int = 1000, min_type_questions: int = 30, progress: bool = True, overwrite: bool = False,
) -> dict[str, Any]:
    """Put a trained run (a run folder, its ``model/``, or a loaded ``TrainedModel``) through ``probes``
    on a labelled split: VCR, ``annotations`` (jsonl) with images under ``images``; VQA, ``questions`` and
    ``annotations`` (VQA v2 JSON) with images under ``images`` named by ``image_pattern`` / ``data_subtype``
    (as ``vlekit eval``).

    probes: registered names (``None``: :func:`default_probes` of the run's task). precision: as ``vlekit
    eval`` (``None``: the run's own). seed: the probes' random draws (orders, names, ties, images) and the
    bootstrap's. min_type_questions: a question type (VCR: first word) gets its own row from this many
    questions on. Returns ``{"task", "run", "annotations", "n", "type_kind", "probes": {name: row},
    "by_question_type": {type: {"n", "probes": {name: {"accuracy", "ci95", "delta"}}}}}`` (rows:
    :func:`vlekit.diagnose.report.probe_row`) and writes it, with the tables and the plot, under ``out``.
    An ``out`` holding the diagnosis of another run or split is refused before any work unless ``overwrite``
    (a rerun of the same run on the same split replaces its files; an evaluation's files there are not touched).
    """
    if probes is not None:
        build_probes(probes)  # unknown names fail before the run is loaded
    trained = run if isinstance(run, TrainedModel) else load_trained(run)
    vqa = trained.task == VQA_TASK
    if vqa and questions is None:
        raise ValueError(f"{trained.folder} is a VQA run: give its split's --questions (with --annotations: the probes "
                         f"score the answers)")
    if not vqa and questions is not None:
        raise ValueError(f"{trained.folder} is a {trained.task} run: --questions is for a VQA run (a VCR split is "
                         f"its --annotations jsonl)")
    built = build_probes(default_probes(trained.task) if probes is None else probes, trained.task)
    data = {"annotations": annotations, "images": images, **({"questions": questions} if vqa else {})}
    if out is not None:
        options = {"image_pattern": image_pattern, "data_subtype": data_subtype} if vqa else {}
        inputs = evaluation_inputs([trained], data=data, probes=[probe.name for probe in built], precision=precision,
                                   seed=seed, resamples=resamples, **options)
        claim_results_folder(Path(out), inputs, overwrite=overwrite, files=DIAGNOSE_FILES, inputs_file=INPUTS_FILE,
                             kind="diagnosis")
    if vqa:
        records = preflight_vqa(read_vqa(questions, annotations, image_dir=images, image_pattern=image_pattern,
                                         data_subtype=data_subtype), progress=progress)
        types = [str(example.answer_type or OTHER_TYPE) for example in records]
    else:
        records = preflight(annotations, images, progress=progress)
        types = question_types(records, min_questions=min_type_questions)
    context = DiagnoseContext(trained, records, images=images, batch_size=batch_size, num_workers=num_workers,
                              precision=precision, device=device, seed=seed, progress=progress)
    outcomes = run_probes(context, built, progress=progress)
    reference = outcomes[REFERENCE]
    result: dict[str, Any] = {
        "task": context.task, "run": str(trained.folder), "annotations": str(annotations), "n": len(records),
        "seed": seed, "resamples": resamples, "type_kind": "answer type" if vqa else "question type",
        "probes": {name: probe_row(outcome, reference, chance=context.chance, resamples=resamples, seed=seed)
                   for name, outcome in outcomes.items()},
        "by_question_type": by_question_type(outcomes, types, resamples=resamples, seed=seed),
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
                        help="a trained run folder (VCR Q->A or QA->R, or VQA) from vlekit train, its model/ or a "
                             "checkpoints/step-N")
    parser.add_argument("--annotations", required=True,
                        help="a labelled VCR split (jsonl), e.g. val.jsonl; VQA: the annotations JSON of --questions")
    parser.add_argument("--images", required=True, help="the split's vcr1images folder; VQA: its image folder")
    parser.add_argument("--questions", help="VQA v2 questions JSON: diagnose a VQA run on it")
    parser.add_argument("--image-pattern", default=COCO_IMAGE_PATTERN,
                        help="VQA image file names from {image_id} and {data_subtype} (default: COCO's)")
    parser.add_argument("--data-subtype", help="VQA: the {data_subtype} of the image names")
    parser.add_argument("--out", help=f"write {RESULT_FILE}, {SUMMARY_FILE}, {FIGURE_FILE} and {INPUTS_FILE} here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the diagnosis of another run or split found in --out")
    parser.add_argument("--probes", nargs="+", metavar="PROBE",
                        help=f"registered probes to run (full is always run; default for VCR: {' '.join(DEFAULT_PROBES)}; "
                             f"for VQA: {' '.join(VQA_PROBES)}; `vlekit list --kind probe` lists them)")
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
                          probes=args.probes, questions=args.questions, image_pattern=args.image_pattern,
                          data_subtype=args.data_subtype, batch_size=args.batch_size, num_workers=args.num_workers,
                          precision=args.precision, device=args.device, seed=args.seed,
                          min_type_questions=args.min_type_questions, progress=not args.no_progress,
                          overwrite=args.overwrite)
    except (FileNotFoundError, ValueError, VCRFormatError, LookupError) as error:
        print(f"vlekit diagnose: {error}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as error:
        print(f"vlekit diagnose: {out_of_memory_advice(error, args.batch_size)}", file=sys.stderr)
        return 1
    from vlekit.tables import METRIC_NAMES

    chance = "the majority answer" if result["task"] == VQA_TASK else "chance"
    print(f"{METRIC_NAMES[result['task']]} run {result['run']} on {result['n']} questions of {result['annotations']} "
          f"({chance} {100 * result_chance(result):.3g}%)\n")
    print(probes_table(result))
    if len(result["by_question_type"]) > 1:
        print(f"\naccuracy % per {type_kind(result)}:\n{types_table(result)}")
    print(f"\nwritten: {Path(args.out) / RESULT_FILE}, {SUMMARY_FILE}, {FIGURE_FILE}, {INPUTS_FILE}" if args.out else
          f"\n(--out DIR writes {RESULT_FILE}, {SUMMARY_FILE} and {FIGURE_FILE})")
    return 0
