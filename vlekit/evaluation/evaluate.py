"""Evaluation: VCR Q->A, QA->R (gold answer in the query) and Q->AR, and VQA, with 95% bootstrap intervals.

``vlekit eval --checkpoint Q2A_DIR [--checkpoint QA2R_DIR] --annotations val.jsonl --images DIR``
writes ``metrics.json`` and per-question ``predictions.jsonl``; on unlabeled (test) records it writes
the leaderboard CSV (``annot_id, answer_0..3, rationale_conditioned_on_a{i}_{j}``), which needs QA->R
scores for every candidate answer.

``vlekit eval --checkpoint VQA_RUN --questions Q.json [--annotations A.json] --images DIR`` (a VQA
model: ``--questions`` says so) writes the evaluation server's result file ``vqa_submission.json``
(test-dev: questions only) and ``predictions.jsonl`` (top-5 answers per question); with annotations,
``metrics.json`` with the official accuracy overall and per answer type (``vlekit.evaluation.metrics``)
and the majority answer's accuracy beside it.

Each model runs in the precision it was trained with (the run's ``train.mixed_precision``) unless
``--precision`` says otherwise. Before the first batch the split is checked (``data_prep.preflight``:
image headers, sizes against the metadata, boxes): a bad record stops the evaluation with its file
and line. Nothing is skipped: the metrics and the leaderboard file cover every question.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from data_prep.preflight import preflight
from data_prep.vqa import COCO_IMAGE_PATTERN, preflight_vqa, read_vqa, write_submission
from vlekit.runs.experiment import VQA_TASK
from vlekit import __version__ as vlekit_version
from vlekit.runs.folder import EVAL_INPUTS_FILE, EVAL_METRICS_FILE, EXPERIMENT_FILE, TrainedModel, load_trained
from vlekit.runs.manifest import MANIFEST_FILE, file_sha256
from vlekit.model import WEIGHTS_FILE
from vlekit.tables import format_metrics_table
from vlekit.evaluation.metrics import evaluate_vqa as score_vqa
from vlekit.evaluation.metrics import majority_baseline
from vlekit.evaluation.tasks import VCRTask, task_for
from vlekit.interfaces import Task
from vlekit.registry import RegistryError, import_plugins

# VCR chance levels: one choice in C, and Q->AR needs both right.
CHANCE = {"q2a": VCRTask.chance, "qa2r": VCRTask.chance, "q2ar": VCRTask.chance**2}
VQA_SUBMISSION_FILE = "vqa_submission.json"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # as train.mixed_precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision (``PRECISIONS``) on ``device``; ``None``: plain fp32.
    ``auto`` is bf16 on a GPU that has it, as in training."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: DataLoader, *, accelerator: Any = None, precision: str = "fp32",
            progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits [N, C], labels [N] or None)`` for every example of ``loader``, in order.

    With an ``accelerator`` the model is the one it prepared, which already runs in the run's mixed
    precision, and the results are gathered over processes (duplicates of the last uneven batch
    dropped); without one the model runs where its parameters are, under autocast to ``precision``.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    dtype = autocast_dtype(precision, device) if accelerator is None else None
    logits_chunks, label_chunks = [], []
    for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels", None)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(**batch)["logits"].float()
        if accelerator is not None:
            logits = accelerator.gather_for_metrics(logits)
            labels = accelerator.gather_for_metrics(labels) if labels is not None else None
        logits_chunks.append(logits)
        if labels is not None:
            label_chunks.append(labels)
    model.train(was_training)
    labels = torch.cat(label_chunks).cpu() if len(label_chunks) == len(logits_chunks) and label_chunks else None
    logits = torch.cat(logits_chunks).cpu()
    if accelerator is None:  # an evaluation's scores (a training run's weights are checked by its own loop)
        check_finite_scores(logits, precision=precision)
    return logits, labels


def check_finite_scores(logits: torch.Tensor, *, precision: str) -> None:
    """Scores with a NaN or inf are no prediction (argmax of NaN is the first choice): an error naming how many
    and the precision that avoids the overflow."""
    bad = (~torch.isfinite(logits)).flatten(1).any(1).nonzero().flatten().tolist()
    if not bad:
        return
    advice = ("fp16 overflows where bf16 does not: evaluate with --precision bf16 (or fp32)" if precision == "fp16" else
              "evaluate with --precision fp32" if precision != "fp32" else
              "the model computes them from finite weights (load_trained checks those): an overflow; inspect those questions")
    raise ValueError(f"{len(bad)} of {len(logits)} questions got NaN / inf scores under {precision} (the first: number "
                     f"{bad[0]} of the split, 0-based); their predictions would be meaningless: {advice}")


def accuracy_on(model: torch.nn.Module, loader: DataLoader, accelerator: Any = None, *,
                score: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
    """The task metric of ``model`` on a labelled loader: ``score(logits, labels)``, a task's
    :meth:`vlekit.evaluation.tasks.Task.score`."""
    logits, labels = predict(model, loader, accelerator=accelerator)
    if labels is None:
        raise ValueError("accuracy needs labelled data; this loader's batches have no 'labels'")
    return score(logits, labels)


def bootstrap_interval(correct: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of a 0/1 array (questions resampled)."""
    if len(correct) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(resamples, len(correct)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_score(score: Callable[[torch.Tensor, torch.Tensor], float], logits: torch.Tensor, labels: torch.Tensor, *,
                    resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of any task score (``Task.score``; questions resampled)."""
    if len(labels) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = torch.from_numpy(rng.integers(0, len(labels), size=(resamples, len(labels))))
    low, high = np.percentile([score(logits[rows], labels[rows]) for rows in draws], [2.5, 97.5])
    return float(low), float(high)


def plugin_task(trained: TrainedModel) -> Task | None:
    """The task ``trained`` was trained for when that is a plugin's, not its data pipeline's (``data.task:
    my-task`` with ``data_task = "q2a"``): its score is reported beside the pipeline's accuracy. ``None`` for
    the built-in tasks, and, said on stderr, for a task not registered here (its plugin not installed)."""
    if trained.run_task is None:
        return None
    try:
        import_plugins(trained.plugins)
        return task_for(trained.run_task)
    except RegistryError as error:
        print(f"{trained.folder}: trained for the task {trained.run_task!r}, which cannot be found here ({error}); "
              f"scored as {trained.task} only", file=sys.stderr)
        return None


# What an evaluation writes into --out: the results, and what they are the results of.
PREDICTIONS_FILE, LEADERBOARD_FILE = "predictions.jsonl", "leaderboard.csv"
EVAL_FILES = (EVAL_METRICS_FILE, PREDICTIONS_FILE, LEADERBOARD_FILE, VQA_SUBMISSION_FILE, EVAL_INPUTS_FILE)


def evaluation_inputs(trained: list[TrainedModel], *, data: dict[str, str | Path | None], **options: Any) -> dict[str, Any]:
    """What an evaluation is of, written to ``OUT/inputs.json``: each model (folder, task, its weights' SHA-256
    from the folder's manifest), the data files (path and SHA-256) and the options; ``identity`` (models and
    data paths) says whether a rerun into the same ``--out`` is the same evaluation."""
    models = []
    for model in trained:
        manifest = model.folder / MANIFEST_FILE
        files = json.loads(manifest.read_text())["files"] if manifest.is_file() else {}
        models.append({"folder": str(model.folder.resolve()), "task": model.run_task or model.task,
                       "weights_sha256": (files.get(WEIGHTS_FILE) or {}).get("sha256")})
    files = {name: {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path)) if Path(path).is_file() else None}
             for name, path in data.items() if path is not None}
    return {"models": models, "data": files, "options": options, "vlekit": vlekit_version,
            "identity": {"models": [m["folder"] for m in models], "data": {k: v["path"] for k, v in files.items()}}}


def claim_results_folder(out: Path, inputs: dict[str, Any], *, overwrite: bool, files: Sequence[str] = EVAL_FILES,
                         inputs_file: str = EVAL_INPUTS_FILE, kind: str = "evaluation") -> None:
    """Make ``out`` ready for the ``files`` of an evaluation (or of another ``kind`` of results, such as a
    diagnosis) whose ``inputs`` (:func:`evaluation_inputs`) are recorded in ``inputs_file``: it may hold none
    of them, or those of the same models on the same data (a rerun), or any with ``overwrite``. The files there
    are removed first, so none of them is left beside the new ones (a leaderboard CSV of another split, say);
    other files in ``out`` are not touched."""
    found = [name for name in files if (out / name).exists()]
    if found and not overwrite:
        previous = json.loads((out / inputs_file).read_text()) if (out / inputs_file).is_file() else None
        if previous is None or previous.get("identity") != inputs["identity"]:
            what = ("models " + ", ".join(previous["identity"]["models"]) + " on " + ", ".join(previous["identity"]["data"].values())
                    if previous else f"no {inputs_file}: results of an older vlekit, of unknown models and data")
            raise ValueError(f"--out {out} holds the results of another {kind} ({', '.join(found)}: {what}); "
                             f"choose another --out, or --overwrite to replace them")
    for name in found:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _loader(trained: TrainedModel, records: list[dict], *, images: str, batch_size: int, num_workers: int,
            expand_answers: bool = False, compat: str | None = None) -> DataLoader:
    from data_prep.dataset import VCRDataset

    dataset = VCRDataset(records, trained.preprocessor(images_root=images, compat=compat), expand_answers=expand_answers)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate, num_workers=num_workers)


def evaluate(
    checkpoints: list[str | Path], *, annotations: str | Path, images: str | Path, out: str | Path | None = None,
    batch_size: int = 32, num_workers: int = 2, progress: bool = True, resamples: int = 1000,
    precision: str | None = None,
    compat: str | None = None, overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate one Q->A and/or one QA->R checkpoint on a VCR split; Q->AR when both are given.

    precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` for every model; ``None``: each model's own
        ``train.mixed_precision`` (from the ``config.yaml`` that ``vlekit train`` saves with it).
    Returns ``{"metrics": {task: {"accuracy", "ci95", "chance", "n"}}, "leaderboard": path or None}``; a run
    trained for a plugin's task (:func:`plugin_task`) adds a row under that task's name with its own score.
    out: where to write the files (:data:`EVAL_FILES`); one that holds another evaluation's is refused
        before any work unless ``overwrite`` (:func:`claim_results_folder`).
    """
    trained = {}
    for folder in checkpoints:
        model = load_trained(folder)
        if not task_for(model.task).multiple_choice:
            raise ValueError(f"{model.folder} is a VQA model: evaluate it with --questions (evaluate_vqa_model)")
        if model.task in trained:
            raise ValueError(f"two {model.task} checkpoints given ({trained[model.task].folder}, {model.folder}); give one Q->A and one QA->R")
        trained[model.task] = model
    precisions = {}
    for task, model in trained.items():
        precisions[task] = precision if precision is not None else model.mixed_precision
        if precisions[task] is None:
            raise ValueError(f"{model.folder}: no {EXPERIMENT_FILE} to take the evaluation precision from "
                             f"(train.mixed_precision); give one: --precision {{{','.join(PRECISIONS)}}}")
        autocast_dtype(precisions[task], torch.device("cpu"))  # a bad value fails before any work
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        inputs = evaluation_inputs(list(trained.values()), data={"annotations": annotations, "images": images},
                                   precision=precisions, compat=compat)
        claim_results_folder(out_dir, inputs, overwrite=overwrite)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in trained.values():
        model.model.to(device)
    records = preflight(annotations, images, progress=progress)
    labelled = all(r.get("answer_label") is not None for r in records)
    options = dict(images=str(images), batch_size=batch_size, num_workers=num_workers, compat=compat)
    answer_probs = rationale_probs = None
    per_question: dict[str, np.ndarray] = {}
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # task -> (logits, labels) of a labelled split
    predictions: list[dict[str, Any]] = [{"annot_id": r["annot_id"]} for r in records]

    if "q2a" in trained:
        logits, _ = predict(trained["q2a"].model, _loader(trained["q2a"], records, **options),
                            precision=precisions["q2a"], progress=progress)
        answer_probs = logits.softmax(-1).numpy()
        for row, p in zip(predictions, answer_probs):
            row.update(answer_probs=p.round(5).tolist(), answer_pred=int(p.argmax()))
        if labelled:
            labels = np.array([r["answer_label"] for r in records])
            per_question["q2a"], scored["q2a"] = answer_probs.argmax(-1) == labels, (logits, torch.from_numpy(labels))
    if "qa2r" in trained:
        if labelled:  # the standard metric: the gold answer in the query
            logits, _ = predict(trained["qa2r"].model, _loader(trained["qa2r"], records, **options),
                                precision=precisions["qa2r"], progress=progress)
            rationale_probs = logits.softmax(-1).numpy()
            labels = np.array([r["rationale_label"] for r in records])
            per_question["qa2r"], scored["qa2r"] = rationale_probs.argmax(-1) == labels, (logits, torch.from_numpy(labels))
            for row, p in zip(predictions, rationale_probs):
                row.update(rationale_probs=p.round(5).tolist(), rationale_pred=int(p.argmax()))
        else:  # leaderboard: every candidate answer in the query -> [N, 4 answers, 4 rationales]
            loader = _loader(trained["qa2r"], records, expand_answers=True, **options)
            logits, _ = predict(trained["qa2r"].model, loader, precision=precisions["qa2r"], progress=progress)
            rationale_probs = logits.softmax(-1).numpy().reshape(len(records), 4, 4)
    if "q2a" in per_question and "qa2r" in per_question:
        per_question["q2ar"] = per_question["q2a"] & per_question["qa2r"]

    metrics = {}
    for task, correct in per_question.items():
        low, high = bootstrap_interval(correct.astype(float), resamples=resamples)
        metrics[task] = {"accuracy": float(correct.mean()), "ci95": [low, high], "chance": CHANCE[task], "n": int(len(correct))}
    for task, (logits, labels) in scored.items():
        plugin = plugin_task(trained[task])
        if plugin is not None:
            metrics[trained[task].run_task] = {
                "accuracy": float(plugin.score(logits, labels)), "chance": plugin.chance, "n": int(len(labels)),
                "ci95": list(bootstrap_score(plugin.score, logits, labels, resamples=resamples))}
    for task, correct in per_question.items():
        for row, ok in zip(predictions, correct):
            row[f"{task}_correct"] = bool(ok)

    leaderboard = None
    if out_dir is not None:
        (out_dir / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        with (out_dir / PREDICTIONS_FILE).open("w") as handle:
            for row in predictions:
                handle.write(json.dumps(row) + "\n")
        if not labelled and answer_probs is not None and rationale_probs is not None:
            leaderboard = write_leaderboard_csv(out_dir / LEADERBOARD_FILE, records, answer_probs, rationale_probs)
        (out_dir / EVAL_INPUTS_FILE).write_text(json.dumps(inputs, indent=1))
    return {"metrics": metrics, "leaderboard": leaderboard, "predictions": predictions}


def write_leaderboard_csv(path: Path, records: list[dict], answer_probs: np.ndarray, rationale_probs: np.ndarray) -> Path:
    """VCR leaderboard format: ``annot_id, answer_0..3, rationale_conditioned_on_a{i}_{j}``."""
    header = ["annot_id", *[f"answer_{i}" for i in range(4)],
              *[f"rationale_conditioned_on_a{i}_{j}" for i in range(4) for j in range(4)]]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for record, answers, rationales in zip(records, answer_probs, rationale_probs):
            writer.writerow([record["annot_id"], *answers.round(6).tolist(), *rationales.reshape(-1).round(6).tolist()])
    return path


def _with_bootstrap(scores: np.ndarray, *, chance: float, resamples: int) -> dict[str, Any]:
    low, high = bootstrap_interval(scores, resamples=resamples)
    return {"accuracy": float(scores.mean()), "ci95": [low, high], "chance": chance, "n": int(len(scores))}


def evaluate_vqa_model(
    checkpoint: str | Path, *, questions: str | Path, annotations: str | Path | None, images: str | Path,
    image_pattern: str = COCO_IMAGE_PATTERN, data_subtype: str | None = None, out: str | Path | None = None,
    batch_size: int = 32, num_workers: int = 2, progress: bool = True, resamples: int = 1000,
    precision: str | None = None, top_k: int = 5, overwrite: bool = False,
) -> dict[str, Any]:
    """Answer a VQA v2 split with a trained VQA model; score it when ``annotations`` are given.

    The answer is the arg-max of the ``vqa`` head's logits (its ``answers``); probabilities are the
    sigmoid of each logit, as the head is trained (BCE). ``image_pattern`` / ``data_subtype``: as
    ``data_prep.vqa.read_vqa`` (test-dev questions: ``data_subtype="test2015"``).
    Returns ``{"metrics": {"vqa": ..., "vqa yes/no": ..., ...} (empty without annotations),
    "accuracy": VQAAccuracy or None, "majority": {"answer", "accuracy"} or None, "predictions":
    {question_id: answer}, "submission": path or None}``; ``metrics`` rows are fractions with 95%
    bootstrap intervals and the majority answer's accuracy as ``chance`` (the ``vqa`` row also names
    that answer: ``majority_answer``). The majority answer is the scored split's own most frequent
    answer: the best any constant answer does on it, so at least the usual training-prior baseline.
    """
    trained = load_trained(checkpoint)
    if task_for(trained.task).multiple_choice:
        raise ValueError(f"{trained.folder} is a {trained.task} model; --questions evaluates a VQA model (vlekit train --task vqa)")
    precision = precision if precision is not None else trained.mixed_precision
    if precision is None:
        raise ValueError(f"{trained.folder}: no {EXPERIMENT_FILE} to take the evaluation precision from; give --precision")
    autocast_dtype(precision, torch.device("cpu"))  # a bad value fails before any work
    if out is not None:
        inputs = evaluation_inputs([trained], data={"questions": questions, "annotations": annotations, "images": images},
                                   precision=precision, image_pattern=image_pattern, data_subtype=data_subtype)
        claim_results_folder(Path(out), inputs, overwrite=overwrite)
    examples = preflight_vqa(read_vqa(questions, annotations, image_dir=images, image_pattern=image_pattern,
                                      data_subtype=data_subtype), progress=progress)
    dataset = trained.vqa_dataset(examples)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate, num_workers=num_workers)
    model = trained.model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    logits, _ = predict(model, loader, precision=precision, progress=progress)
    answers = list(model.head.config.answers)
    probabilities, labels = logits.sigmoid().topk(min(top_k, len(answers)), dim=-1)
    predictions = {e.question_id: answers[int(row[0])] for e, row in zip(examples, labels)}

    metrics: dict[str, Any] = {}
    accuracy = majority = None
    if annotations is not None:
        accuracy = score_vqa(predictions, examples)
        majority_prediction, baseline = majority_baseline(examples)
        majority = {"answer": majority_prediction, "accuracy": baseline.overall / 100}
        per_question = np.array([accuracy.per_question[e.question_id] for e in examples]) / 100
        metrics[VQA_TASK] = {**_with_bootstrap(per_question, chance=baseline.overall / 100, resamples=resamples),
                             "majority_answer": majority_prediction}
        for kind in accuracy.per_answer_type:
            rows = [i for i, e in enumerate(examples) if e.answer_type == kind]
            metrics[f"{VQA_TASK} {kind}"] = _with_bootstrap(per_question[rows], chance=baseline.per_answer_type[kind] / 100,
                                                           resamples=resamples)
    submission = None
    if out is not None:
        out_dir = Path(out)
        submission = write_submission(predictions, out_dir / VQA_SUBMISSION_FILE, examples=examples)
        with (out_dir / PREDICTIONS_FILE).open("w") as handle:
            for example, row, scores in zip(examples, labels, probabilities):
                record = {"question_id": example.question_id, "question": example.question,
                          "answer": answers[int(row[0])],
                          "top_answers": [answers[int(i)] for i in row], "top_probs": [round(float(x), 5) for x in scores]}
                if accuracy is not None:
                    record.update(accuracy=accuracy.per_question[example.question_id] / 100, answer_type=example.answer_type)
                handle.write(json.dumps(record) + "\n")
        if metrics:
            (out_dir / EVAL_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (out_dir / EVAL_INPUTS_FILE).write_text(json.dumps(inputs, indent=1))
    return {"metrics": metrics, "accuracy": accuracy, "majority": majority, "predictions": predictions,
            "submission": submission}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a trained model folder: a run, its model/ or one of its checkpoints/step-N (repeat: one Q->A "
                             "and one QA->R for Q->AR; one VQA model)")
    parser.add_argument("--annotations", help="VCR jsonl (val, or test for the leaderboard CSV); VQA: the "
                                              "annotations JSON of --questions (leave out for test-dev)")
    parser.add_argument("--images", required=True, help="the vcr1images folder; VQA: the split's image folder")
    parser.add_argument("--questions", help="VQA v2 questions JSON: evaluate a VQA model on it")
    parser.add_argument("--image-pattern", default=COCO_IMAGE_PATTERN,
                        help="VQA image file names from {image_id} and {data_subtype} (default: COCO's)")
    parser.add_argument("--data-subtype", help="VQA: the {data_subtype} of the image names (test-dev: test2015)")
    parser.add_argument("--out", help="where to write metrics.json, predictions.jsonl, leaderboard.csv / vqa_submission.json "
                                      "and inputs.json (what they are the results of)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of another evaluation in --out (without it, such an --out is refused)")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per forward pass (default 32)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes decoding images (default 2; 0: in this process)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast for every model (default: each run's train.mixed_precision)")
    parser.add_argument("--compat", choices=["none", "vle"],
                        help="preprocessing mode (default: the checkpoint's own; 'vle' for official VLE VCR checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs and batch jobs)")


def run(args: argparse.Namespace) -> int:
    try:  # bad files and options (VCRFormatError, VQAFormatError are ValueErrors): one line, exit 2
        if args.questions is not None:
            _run_vqa(args)
        elif args.annotations is None:
            raise ValueError("--annotations (a VCR jsonl) is required; a VQA model is evaluated with --questions")
        else:
            _run_vcr(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"vlekit eval: {error}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as error:
        print(f"vlekit eval: {out_of_memory_advice(error, args.batch_size)}", file=sys.stderr)
        return 1
    return 0


def out_of_memory_advice(error: BaseException, batch_size: int) -> str:
    """What a command's ``--batch-size`` out of memory says: the error's first line and the smaller batch to try."""
    first_line = (str(error).strip().splitlines() or ["out of memory"])[0]
    smaller = f"try --batch-size {batch_size // 2}" if batch_size > 1 else "the model does not fit one question at a time"
    return f"out of memory at --batch-size {batch_size} ({first_line}): {smaller} (the results do not depend on it)"


def _say_written(out: str | None) -> None:
    if out:
        print(f"written to {out}: {', '.join(sorted(p.name for p in Path(out).iterdir() if p.name in EVAL_FILES))}")


def _run_vcr(args: argparse.Namespace) -> None:
    result = evaluate(args.checkpoint, annotations=args.annotations, images=args.images, out=args.out,
                      batch_size=args.batch_size, num_workers=args.num_workers, precision=args.precision,
                      compat=args.compat, overwrite=args.overwrite, progress=not args.no_progress)
    if result["metrics"]:
        print(format_metrics_table(result["metrics"]))
    if result["leaderboard"]:
        print(f"leaderboard CSV: {result['leaderboard']}")
    _say_written(args.out)


def _run_vqa(args: argparse.Namespace) -> None:
    if len(args.checkpoint) != 1 or args.compat is not None:
        raise ValueError("--questions evaluates one VQA model (one --checkpoint, no --compat)")
    result = evaluate_vqa_model(args.checkpoint[0], questions=args.questions, annotations=args.annotations,
                                images=args.images, image_pattern=args.image_pattern, data_subtype=args.data_subtype,
                                out=args.out, batch_size=args.batch_size, num_workers=args.num_workers,
                                precision=args.precision, overwrite=args.overwrite, progress=not args.no_progress)
    if result["metrics"]:
        print(format_metrics_table(result["metrics"]))
        print(f"majority answer {result['majority']['answer']!r}: {100 * result['majority']['accuracy']:.2f}% "
              f"(the 'chance' column); VQA accuracy {result['accuracy'].overall:.2f}%")
    if result["submission"]:
        print(f"VQA result file (evaluation server format): {result['submission']}")
    _say_written(args.out)
