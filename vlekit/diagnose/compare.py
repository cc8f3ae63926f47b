"""``vlekit compare EVAL EVAL [EVAL ...]``: evaluations of different models on the same questions, paired.

    vlekit eval --checkpoint runs/a --annotations val.jsonl --images vcr1images --out runs/a/eval
    vlekit eval --checkpoint runs/b --annotations val.jsonl --images vcr1images --out runs/b/eval
    vlekit compare runs/a/eval runs/b/eval --plot compare.png     # is b better than a, and where?

Each folder is the ``--out`` of a ``vlekit eval`` on a labelled split (its ``predictions.jsonl`` scores every
question). The first is the reference; each other is compared with it question for question, per task
(Q->A, QA->R, Q->AR; VQA with its soft scores):

- both accuracies and their difference, its 95% interval and two-sided p-value from the paired bootstrap over
  questions, McNemar's exact test on 0/1 scores (``vlekit.ablation.stats``);
- how many questions each gets right that the other does not;
- the same difference per question type: the question's first word (why, what, how, ...) from the annotations
  file the reference's ``inputs.json`` names, when it is still there unchanged; VQA's answer types.

With ``--against`` (``against=``) each side is several runs (one per training seed, say): the difference of
their means with the ablation grid's statistics (the bootstrap over questions with the runs nested, Welch's
t-test over the runs; ``vlekit.ablation.stats``), so a claim about a method need not rest on one seed:

    vlekit compare runs/full-s{0,1,2}/eval --against runs/lora-s{0,1,2}/eval

The runs are paired by training seed (``train.seed`` in the ``config.yaml`` of the model each ``inputs.json``
names) when both sides hold the same seeds, whatever order they are given in; otherwise in the order given, and
a note says why. The same weights twice on one side (a run counted twice) are refused.

Two evaluations compare only on the same questions (the same ids): evaluations of different splits, or of part
of one, are refused. Annotation files that differ in content while holding the same ids are compared and said so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.vcr import read_vcr
from vlekit.ablation.stats import mcnemar_exact, paired_bootstrap, welch_t_test
from vlekit.diagnose.report import OTHER_TYPE, format_p, question_types, type_order
from vlekit.evaluation.evaluate import PREDICTIONS_FILE
from vlekit.runs.experiment import VQA_TASK
from vlekit.runs.folder import EVAL_INPUTS_FILE, EXPERIMENT_FILE, read_json_file, read_yaml_file
from vlekit.runs.manifest import file_sha256
from vlekit.tables import METRIC_NAMES, markdown_table, text_table

VCR_TASKS = ("q2a", "qa2r", "q2ar")  # predictions.jsonl: {"annot_id", "<task>_correct", ...}
# VQA_TASK's predictions.jsonl: {"question_id", "accuracy" (soft, 0..1), "answer_type", ...}


@dataclass
class Evaluation:
    """One ``vlekit eval`` output folder, as far as a comparison needs it."""

    folder: Path
    scores: dict[str, dict[Any, float]]  # task -> {question id -> score (0/1, VQA: soft)}, in the file's order
    inputs: dict[str, Any] | None = None  # inputs.json (None: an older vlekit's evaluation)
    answer_types: dict[Any, str] = field(default_factory=dict)  # VQA question id -> answer type

    @property
    def annotations(self) -> dict[str, Any] | None:
        """``{"path", "sha256"}`` of the annotations file the evaluation read, when it recorded one."""
        return ((self.inputs or {}).get("data") or {}).get("annotations")

    @property
    def weights(self) -> tuple[str, ...] | None:
        """The SHA-256 of each model's weights the evaluation scored, when ``inputs.json`` recorded them."""
        models = (self.inputs or {}).get("models") or []
        digests = tuple(str(model.get("weights_sha256")) for model in models if model.get("weights_sha256"))
        return digests if models and len(digests) == len(models) else None

    @property
    def training_seed(self) -> int | None:
        """``train.seed`` of the model(s) scored, from the ``config.yaml`` in each model folder ``inputs.json``
        names (None: not recorded, the folder is gone, or the models disagree)."""
        seeds = set()
        for model in (self.inputs or {}).get("models") or [None]:
            path = Path(str((model or {}).get("folder"))) / EXPERIMENT_FILE
            if model is None or not path.is_file():
                return None
            config = read_yaml_file(path)
            seed = (config.get("train") or {}).get("seed") if isinstance(config, dict) else None
            if isinstance(seed, bool) or not isinstance(seed, int):
                return None
            seeds.add(seed)
        return seeds.pop() if len(seeds) == 1 else None


def read_evaluation(folder: str | Path) -> Evaluation:
    """The per-question scores of the evaluation in ``folder``, or an error saying what is missing."""
    folder = Path(folder)
    path = folder / PREDICTIONS_FILE
    if not path.is_file():
        hint = (f"; {folder / 'eval'} is one" if (folder / "eval" / PREDICTIONS_FILE).is_file() else
                "; give the --out folder of a vlekit eval")
        raise FileNotFoundError(f"{folder}: no {PREDICTIONS_FILE}{hint}")
    scores: dict[str, dict[Any, float]] = {}
    answer_types: dict[Any, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error}); the file is damaged") from error
        if "annot_id" in row:
            for task in VCR_TASKS:
                if f"{task}_correct" in row:
                    scores.setdefault(task, {})[row["annot_id"]] = float(row[f"{task}_correct"])
        elif "question_id" in row and "accuracy" in row:
            scores.setdefault(VQA_TASK, {})[row["question_id"]] = float(row["accuracy"])
            answer_types[row["question_id"]] = row.get("answer_type") or OTHER_TYPE
    if not scores:
        raise ValueError(f"{path}: no question is scored: an evaluation of an unlabelled split (such as VCR's test "
                         f"or VQA's test-dev) cannot be compared; evaluate on a labelled one")
    inputs = read_json_file(folder / EVAL_INPUTS_FILE) if (folder / EVAL_INPUTS_FILE).is_file() else None
    return Evaluation(folder=folder, scores=scores, inputs=inputs, answer_types=answer_types)


def labels_for(folders: Sequence[Path]) -> list[str]:
    """Short names that tell the folders apart: each one's path below the folders' common parent, less a last
    part they all share (``a/eval``, ``b/eval`` -> ``a``, ``b``)."""
    resolved = [folder.resolve() for folder in folders]
    root = Path(os.path.commonpath([str(folder) for folder in resolved]))
    if any(folder == root for folder in resolved):
        root = root.parent
    parts = [folder.relative_to(root).parts for folder in resolved]
    if all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]
    labels = ["/".join(p) for p in parts]
    return labels if len(set(labels)) == len(labels) else [str(folder) for folder in folders]


def vcr_question_types(evaluation: Evaluation, *, min_questions: int) -> tuple[dict[Any, str], str | None]:
    """annot_id -> question type (the question's first word) from the annotations file ``evaluation`` read,
    and a note when there are none (no inputs.json, the file gone or changed since)."""
    annotations = evaluation.annotations
    if annotations is None:
        return {}, f"{evaluation.folder} has no {EVAL_INPUTS_FILE} naming its annotations: no per-type rows"
    path = Path(annotations["path"])
    if not path.is_file():
        return {}, f"the annotations {path} are no longer there: no per-type rows"
    if annotations.get("sha256") and file_sha256(path) != annotations["sha256"]:
        return {}, f"the annotations {path} changed since the evaluation: no per-type rows"
    records = read_vcr(path)
    return dict(zip((r["annot_id"] for r in records), question_types(records, min_questions=min_questions))), None


def paired_row(reference: np.ndarray, other: np.ndarray, *, resamples: int, seed: int) -> dict[str, Any]:
    """``other`` against ``reference``, each ``[runs, questions]`` (the same questions, run ``i`` of each side
    paired; one run a side: ``[1, questions]``): the nested bootstrap the ablation grid uses, McNemar with one run
    a side, Welch's t-test over the runs' accuracies with two or more (see the module)."""
    (low, high), p_bootstrap = paired_bootstrap(other, reference, resamples=resamples, seed=seed)
    binary = bool(np.isin(reference, (0, 1)).all() and np.isin(other, (0, 1)).all())
    runs = len(reference)
    return {"runs": runs, "n": int(reference.shape[1]), "reference_accuracy": float(reference.mean()),
            "accuracy": float(other.mean()), "delta": float(other.mean() - reference.mean()), "delta_ci95": [low, high],
            "p_bootstrap": p_bootstrap, "p_mcnemar": mcnemar_exact(other[0], reference[0]) if binary and runs == 1 else None,
            "p_welch": welch_t_test(other.mean(axis=1), reference.mean(axis=1)) if runs > 1 else None,
            "only_reference": int((reference > other).sum()), "only_other": int((other > reference).sum())}


def pair_runs(reference: Sequence[Path], other: Sequence[Path], evaluations: dict[Path, Evaluation],
              names: dict[Path, str]) -> tuple[list[Path], str | None]:
    """``other`` in the order that pairs its runs with ``reference``'s (by training seed when both sides hold the
    same seeds; else as given), and a note when the pairing is not simply the order given (None otherwise).
    The same weights twice on one side are refused: a run counted twice."""
    for side in (reference, other):
        seen: dict[tuple[str, ...], Path] = {}
        for folder in side:
            weights = evaluations[folder].weights
            if weights is not None and weights in seen:
                raise ValueError(f"{names[seen[weights]]} and {names[folder]} are evaluations of the same weights "
                                 f"(SHA-256 {weights[0][:12]}...): one run counted twice; give each run once")
            if weights is not None:
                seen[weights] = folder
    if len(reference) < 2:
        return list(other), None
    seeds = {folder: evaluations[folder].training_seed for folder in (*reference, *other)}
    unknown = [names[f] for f, seed in seeds.items() if seed is None]
    if unknown:
        return list(other), (f"no training seed recorded for {', '.join(unknown)} (train.seed in the config.yaml of "
                             f"the model its inputs.json names): runs paired in the order given")
    mine, theirs = [seeds[f] for f in reference], [seeds[f] for f in other]
    if len(set(mine)) < len(mine) or len(set(theirs)) < len(theirs) or set(mine) != set(theirs):
        return list(other), (f"the sides' training seeds ({', '.join(map(str, mine))} / {', '.join(map(str, theirs))}) "
                             f"do not match one for one: runs paired in the order given")
    by_seed = {seeds[f]: f for f in other}
    paired = [by_seed[seed] for seed in mine]
    if paired == list(other):
        return paired, None
    return paired, ("runs paired by training seed, not in the order given: " +
                    ", ".join(f"{names[r]} with {names[o]}" for r, o in zip(reference, paired)))


def group_label(labels: Sequence[str]) -> str:
    """One name for the runs of one side (``full/seed-0``, ``full/seed-1`` -> ``full/seed-*``)."""
    if len(labels) == 1:
        return labels[0]
    common = os.path.commonprefix(list(labels))
    return f"{common}*" if common else f"{labels[0]} (+{len(labels) - 1})"


def compare_evaluations(folders: Sequence[str | Path], *, against: Sequence[str | Path] | None = None,
                        resamples: int = 10000, seed: int = 0, min_type_questions: int = 30) -> dict[str, Any]:
    """Each evaluation after the first against the first, per task and per question type (see the module).

    against: instead, the evaluations of ``folders`` are several runs of the reference (training seeds, say) and
        these as many runs of the other model, paired by seed (:func:`pair_runs`): the difference of the means, with the ablation
        grid's bootstrap over questions with the runs nested, and Welch's t-test over the runs.
    Returns ``{"reference", "others", "labels", "pairs" (with ``against``: the runs paired, by training seed
    when both sides hold the same seeds), "tasks", "rows": [{"other", "task", "runs", "n",
    "reference_accuracy", "accuracy", "delta", "delta_ci95", "p_bootstrap", "p_mcnemar", "p_welch",
    "only_reference", "only_other"}], "by_type": [the same with "type"], "notes": [...]}`` (accuracies and
    differences as fractions; ``only_*`` count (run, question) pairs).
    """
    groups = [[Path(f)] for f in folders] if against is None else [[Path(f) for f in folders], [Path(f) for f in against]]
    if against is None and len(folders) < 2:
        raise ValueError(f"give at least two evaluations to compare (got {len(folders)})")
    if against is not None and (not folders or len(folders) != len(against)):
        raise ValueError(f"give as many runs of each side (one per seed, say), to be paired: {len(folders)} of "
                         f"the reference, {len(against)} against it")
    flat = [folder for group in groups for folder in group]
    evaluations = {folder: read_evaluation(folder) for folder in flat}
    names = dict(zip(flat, labels_for(flat)))
    notes = []
    if against is not None:
        groups[1], note = pair_runs(groups[0], groups[1], evaluations, names)
        notes += [note] if note else []
    labels = [group_label([names[f] for f in group]) for group in groups]
    reference = evaluations[groups[0][0]]
    tasks = [task for task in (*VCR_TASKS, VQA_TASK) if all(task in e.scores for e in evaluations.values())]
    if not tasks:
        scored = "; ".join(f"{names[f]}: {', '.join(METRIC_NAMES[t] for t in e.scores)}" for f, e in evaluations.items())
        raise ValueError(f"the evaluations share no scored task ({scored})")
    for task in tasks:
        questions = set(reference.scores[task])
        for folder in flat[1:]:
            theirs = set(evaluations[folder].scores[task])
            if theirs != questions:
                raise ValueError(
                    f"{names[flat[0]]} scored {len(questions)} {METRIC_NAMES[task]} questions, {names[folder]} "
                    f"{len(theirs)}, {len(questions & theirs)} of them the same: evaluations compare only on the same "
                    f"questions (evaluate both on the same split)")
    for folder in flat[1:]:
        mine, theirs = reference.annotations, evaluations[folder].annotations
        if mine and theirs and mine.get("sha256") != theirs.get("sha256"):
            notes.append(f"{names[flat[0]]} read {mine['path']}, {names[folder]} {theirs['path']}: files that differ "
                         f"in content but hold the same question ids; compared by id")

    types: dict[Any, str] = {}
    if any(task in VCR_TASKS for task in tasks):
        types, note = vcr_question_types(reference, min_questions=min_type_questions)
        if note:
            notes.append(note)
    types.update(reference.answer_types)

    rows, by_type = [], []
    for label, group in zip(labels[1:], groups[1:]):
        for task in tasks:
            ids = list(reference.scores[task])
            mine = np.array([[evaluations[f].scores[task][i] for i in ids] for f in groups[0]])  # [runs, questions]
            theirs = np.array([[evaluations[f].scores[task][i] for i in ids] for f in group])
            rows.append({"other": label, "task": task, **paired_row(mine, theirs, resamples=resamples, seed=seed)})
            task_types = [types.get(i, OTHER_TYPE) for i in ids]
            if len(set(task_types)) < 2:
                continue  # one type: the overall row says it all
            for kind in type_order(task_types):
                chosen = np.array([t == kind for t in task_types])
                by_type.append({"other": label, "task": task, "type": kind,
                                **paired_row(mine[:, chosen], theirs[:, chosen], resamples=resamples, seed=seed)})
    return {"reference": labels[0], "others": labels[1:], "labels": {names[f]: str(f) for f in flat},
            "pairs": [[names[f] for f in pair] for pair in zip(*groups)] if against is not None else [],
            "tasks": tasks, "resamples": resamples, "seed": seed, "rows": rows, "by_type": by_type, "notes": notes}


# -- tables and the plot --------------------------------------------------------------------------------
def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def comparison_table(result: dict[str, Any], *, markdown: bool = False) -> str:
    """One row per (evaluation, task): both accuracies, the difference in points with its interval, the
    p-values and the questions only one of the two gets right (with several runs a side: their number,
    Welch's test over them instead of McNemar's, and (run, question) pairs)."""
    reference, several = result["reference"], any(row["runs"] > 1 for row in result["rows"])
    table = []
    for row in result["rows"]:
        entry = {"evaluation": row["other"], "task": METRIC_NAMES[row["task"]], **({"runs": row["runs"]} if several else {}),
                 "n": row["n"], f"{reference} %": f"{100 * row['reference_accuracy']:.1f}",
                 "%": f"{100 * row['accuracy']:.1f}", "difference": _points(row["delta"]),
                 "95% CI": f"[{_points(row['delta_ci95'][0])}, {_points(row['delta_ci95'][1])}]",
                 "p (bootstrap)": format_p(row["p_bootstrap"], resamples=result["resamples"])}
        entry.update({"p (Welch)": format_p(row["p_welch"])} if several else {"p (McNemar)": format_p(row["p_mcnemar"])})
        entry.update({"only it right": row["only_other"], f"only {reference} right": row["only_reference"]})
        table.append(entry)
    return markdown_table(table) if markdown else text_table(table, align="ll" + "r" * (len(table[0]) - 2))


def types_table(result: dict[str, Any], *, markdown: bool = False) -> str:
    """Per question type: the difference from the reference in points with its interval, one column per
    (evaluation, task)."""
    columns = list(dict.fromkeys(f"{row['other']} {METRIC_NAMES[row['task']]}" for row in result["by_type"]))
    table: dict[str, dict[str, Any]] = {}
    for row in result["by_type"]:
        entry = table.setdefault(row["type"], {"type": row["type"], "n": row["n"]})
        entry[f"{row['other']} {METRIC_NAMES[row['task']]}"] = (
            f"{_points(row['delta'])} [{_points(row['delta_ci95'][0])}, {_points(row['delta_ci95'][1])}]")
    rows = list(table.values())
    return markdown_table(rows, ["type", "n", *columns]) if markdown else text_table(rows, ["type", "n", *columns])


def plot_comparison(result: dict[str, Any], png: str | Path | None = None):
    """One panel per task: each evaluation's difference from the reference (points, 95% interval), overall
    and per question type; green: better, red: worse, grey: the interval holds 0."""
    import matplotlib.pyplot as plt  # the caller (CLI: Agg; a notebook: inline) has chosen the backend

    tasks = result["tasks"]
    per_task = {task: [(f"{row['other']}", row, True) for row in result["rows"] if row["task"] == task] for task in tasks}
    for task in tasks:
        for other in result["others"]:
            overall = next(i for i, (_, row, _) in enumerate(per_task[task]) if row["other"] == other)
            extra = [(f"  {row['type']} ({row['n']})", row, False) for row in result["by_type"]
                     if row["task"] == task and row["other"] == other]
            per_task[task][overall + 1:overall + 1] = extra
    height = max(len(entries) for entries in per_task.values())
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 1.5, 0.35 * height + 1.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        entries = per_task[task]
        positions = np.arange(len(entries))[::-1]
        for position, (name, row, overall) in zip(positions, entries):
            low, high = 100 * row["delta_ci95"][0], 100 * row["delta_ci95"][1]
            colour = "grey" if low <= 0 <= high else ("C2" if low > 0 else "C3")
            axis.errorbar(100 * row["delta"], position, xerr=[[100 * row["delta"] - low], [high - 100 * row["delta"]]],
                          fmt="o" if overall else ".", color=colour, capsize=3, ms=6 if overall else 4)
        axis.axvline(0, color="black", lw=0.8)
        axis.set_yticks(positions, [name for name, _, _ in entries], fontsize=8)
        axis.set_xlabel(f"{METRIC_NAMES[task]}: difference from {result['reference']} (points, 95% CI)", fontsize=8)
    figure.suptitle(f"against {result['reference']}; green better, red worse, grey: no measurable difference", fontsize=9)
    figure.tight_layout()
    if png is not None:
        figure.savefig(png, dpi=120)
    return figure


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="EVAL",
                        help="vlekit eval --out folders on the same labelled split; the first is the reference "
                             "(with --against: the reference's runs, one per seed)")
    parser.add_argument("--against", nargs="+", metavar="EVAL",
                        help="as many runs of the other model, paired with EVAL... by training seed (else in order): the difference of the "
                             "means, with the runs nested in the bootstrap (as vlekit ablate) and Welch's test over them")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables (for notes and issues)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the differences with their intervals here")
    parser.add_argument("--json", metavar="FILE", help="also write the whole comparison as JSON here")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    parser.add_argument("--min-type-questions", type=int, default=30,
                        help="questions a type (first word) needs for its own row (default 30)")


def run(args: argparse.Namespace) -> int:
    try:
        result = compare_evaluations(args.folders, against=args.against, resamples=args.resamples, seed=args.seed,
                                     min_type_questions=args.min_type_questions)
    except (FileNotFoundError, ValueError) as error:
        print(f"vlekit compare: {error}", file=sys.stderr)
        return 2
    print(comparison_table(result, markdown=args.markdown))
    if result["by_type"]:
        print(f"\ndifference from {result['reference']} per question type (points, 95% CI):\n"
              f"{types_table(result, markdown=args.markdown)}")
    for note in result["notes"]:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"written: {args.json}")
    if args.plot:
        import matplotlib.pyplot as plt

        plt.close(plot_comparison(result, args.plot))
        print(f"written: {args.plot}")
    return 0
