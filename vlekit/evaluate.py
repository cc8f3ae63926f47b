"""Evaluation: Q->A, QA->R (gold answer in the query) and Q->AR, with 95% bootstrap intervals.

``vlekit eval --checkpoint Q2A_DIR [--checkpoint QA2R_DIR] --annotations val.jsonl --images DIR``
writes ``metrics.json`` and per-question ``predictions.jsonl``; on unlabeled (test) records it writes
the leaderboard CSV (``annot_id, answer_0..3, rationale_conditioned_on_a{i}_{j}``), which needs QA->R
scores for every candidate answer. Each model runs in the precision it was trained with (the run's
``train.mixed_precision``) unless ``--precision`` says otherwise.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlekit.run_folder import EXPERIMENT_FILE, TrainedModel, load_trained
from vlekit.tables import format_metrics_table

CHANCE = {"q2a": 0.25, "qa2r": 0.25, "q2ar": 0.0625}
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
    return torch.cat(logits_chunks).cpu(), labels


def accuracy_on(model: torch.nn.Module, loader: DataLoader, accelerator: Any = None) -> float:
    """Accuracy of ``model`` on a labelled loader."""
    logits, labels = predict(model, loader, accelerator=accelerator)
    if labels is None:
        raise ValueError("accuracy needs labelled data; this loader's batches have no 'labels'")
    return float((logits.argmax(-1) == labels).float().mean())


def bootstrap_interval(correct: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of a 0/1 array (questions resampled)."""
    if len(correct) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(resamples, len(correct)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _loader(trained: TrainedModel, records: list[dict], *, images: str, batch_size: int, num_workers: int,
            expand_answers: bool = False, compat: str | None = None) -> DataLoader:
    from data_prep.dataset import VCRDataset

    dataset = VCRDataset(records, trained.preprocessor(images_root=images, compat=compat), expand_answers=expand_answers)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate, num_workers=num_workers)


def evaluate(
    checkpoints: list[str | Path], *, annotations: str | Path, images: str | Path, out: str | Path | None = None,
    batch_size: int = 32, num_workers: int = 2, progress: bool = True, resamples: int = 1000,
    precision: str | None = None,
    compat: str | None = None,
) -> dict[str, Any]:
    """Evaluate one Q->A and/or one QA->R checkpoint on a VCR split; Q->AR when both are given.

    precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` for every model; ``None``: each model's own
        ``train.mixed_precision`` (from the ``config.yaml`` that ``vlekit train`` saves with it).
    Returns ``{"metrics": {task: {"accuracy", "ci95", "chance", "n"}}, "leaderboard": path or None}``.
    """
    from data_prep.vcr import read_vcr

    trained = {}
    for folder in checkpoints:
        model = load_trained(folder)
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in trained.values():
        model.model.to(device)
    records = read_vcr(annotations)
    labelled = all(r.get("answer_label") is not None for r in records)
    out_dir = Path(out) if out is not None else None
    options = dict(images=str(images), batch_size=batch_size, num_workers=num_workers, compat=compat)
    answer_probs = rationale_probs = None
    per_question: dict[str, np.ndarray] = {}
    predictions: list[dict[str, Any]] = [{"annot_id": r["annot_id"]} for r in records]

    if "q2a" in trained:
        logits, _ = predict(trained["q2a"].model, _loader(trained["q2a"], records, **options),
                            precision=precisions["q2a"], progress=progress)
        answer_probs = logits.softmax(-1).numpy()
        for row, p in zip(predictions, answer_probs):
            row.update(answer_probs=p.round(5).tolist(), answer_pred=int(p.argmax()))
        if labelled:
            per_question["q2a"] = answer_probs.argmax(-1) == np.array([r["answer_label"] for r in records])
    if "qa2r" in trained:
        if labelled:  # the standard metric: the gold answer in the query
            logits, _ = predict(trained["qa2r"].model, _loader(trained["qa2r"], records, **options),
                                precision=precisions["qa2r"], progress=progress)
            rationale_probs = logits.softmax(-1).numpy()
            per_question["qa2r"] = rationale_probs.argmax(-1) == np.array([r["rationale_label"] for r in records])
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
    for task, correct in per_question.items():
        for row, ok in zip(predictions, correct):
            row[f"{task}_correct"] = bool(ok)

    leaderboard = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with (out_dir / "predictions.jsonl").open("w") as handle:
            for row in predictions:
                handle.write(json.dumps(row) + "\n")
        if not labelled and answer_probs is not None and rationale_probs is not None:
            leaderboard = write_leaderboard_csv(out_dir / "leaderboard.csv", records, answer_probs, rationale_probs)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a trained model folder (repeat: one Q->A and one QA->R for Q->AR)")
    parser.add_argument("--annotations", required=True, help="VCR jsonl (val, or test for the leaderboard CSV)")
    parser.add_argument("--images", required=True, help="the vcr1images folder")
    parser.add_argument("--out", help="where to write metrics.json, predictions.jsonl, leaderboard.csv")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast for every model (default: each run's train.mixed_precision)")
    parser.add_argument("--compat", choices=["none", "vle"],
                        help="preprocessing mode (default: the checkpoint's own; 'vle' for official VLE VCR checkpoints)")


def run(args: argparse.Namespace) -> int:
    from data_prep.vcr import VCRFormatError

    try:
        result = evaluate(args.checkpoint, annotations=args.annotations, images=args.images, out=args.out,
                          batch_size=args.batch_size, num_workers=args.num_workers, precision=args.precision,
                          compat=args.compat)
    except (VCRFormatError, FileNotFoundError, ValueError) as error:
        print(f"vlekit eval: {error}", file=sys.stderr)
        return 2
    if result["metrics"]:
        print(format_metrics_table(result["metrics"]))
    if result["leaderboard"]:
        print(f"leaderboard CSV: {result['leaderboard']}")
    return 0
