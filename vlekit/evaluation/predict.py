"""A trained run as a predictor: score the choices of VCR questions, read from files or typed by a user.

    predictor = vlekit.load_run("runs/demo/q2a")            # a run folder, or its model/ folder
    predictor.score_batch(records, images_root="vcr1images")  # [N, 4] probabilities over the choices
    predictor.score_image("frame.jpg", question="What colour is [0] ?", choices=["red", "blue", "green", "grey"],
                          metadata="frame.json")              # [4]

    vlekit predict --run runs/demo/q2a --image frame.jpg --question "What colour is [0] ?" \\
        --answers red blue green grey [--boxes dog:10,20,60,80 | --metadata frame.json]

Typed text follows VCR's convention: ``[0]`` (or ``[0, 2]``) refers to object 0 (and 2) of the image, which
needs a class name and a box per object: ``boxes=`` with ``objects=``, or a VCR metadata file (``boxes``,
``names``, ``width``, ``height``). A QA->R run scores rationales given the answer in the query.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from data_prep.constants import NUM_CHOICES, TASKS
from data_prep.vcr import VCRFormatError
from vlekit.hub import resolve_folder
from vlekit.model import BATCH_KEYS
from vlekit.runs.folder import TrainedModel, load_trained
from vlekit.tables import METRIC_NAMES, text_table

Token = str | list[int]

# An object reference ``[0]`` / ``[0, 2]``, a word, or one punctuation mark (VCR keeps "?" apart).
_TOKEN = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]|[\w'-]+|[^\w\s]")


def parse_text(text: str) -> list[Token]:
    """Typed text -> VCR tokens: ``"Why is [0] near [1, 2] ?"`` -> ``["Why", "is", [0], "near", [1, 2], "?"]``."""
    tokens: list[Token] = []
    for match in _TOKEN.finditer(text):
        piece = match.group()
        tokens.append([int(i) for i in piece[1:-1].split(",")] if piece.startswith("[") else piece)
    if not tokens:
        raise ValueError(f"text {text!r} has no words")
    return tokens


def _referenced(tokens: Sequence[Token]) -> set[int]:
    return {index for token in tokens if not isinstance(token, str) for index in token}


class Predictor:
    """A trained model with the data pipeline it was trained with (``vlekit.load_run`` makes one).

    Scores are probabilities over a question's C = 4 choices (softmax of the model's logits): the
    answers for a Q->A run, the rationales for a QA->R run.

    Args:
        trained: the loaded run (``vlekit.runs.folder.load_trained``).
        device: where the model runs (default: a GPU when there is one).
        batch_size: questions per forward pass in :meth:`score_batch`.
    """

    def __init__(self, *, trained: TrainedModel, device: str | torch.device | None = None, batch_size: int = 32) -> None:
        if trained.task not in TASKS:
            raise ValueError(f"{trained.folder} is a {trained.task} run; the Predictor scores VCR choices. Answer VQA "
                             f"questions with vlekit eval --questions (vlekit.evaluation.evaluate.evaluate_vqa_model)")
        self.trained = trained
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = trained.model.to(self.device).eval()
        self.batch_size = batch_size

    @property
    def task(self) -> str:
        """``q2a`` (choices are answers) or ``qa2r`` (choices are rationales, given an answer)."""
        return self.trained.task

    def __repr__(self) -> str:
        return f"Predictor({METRIC_NAMES[self.task]} run {self.trained.folder}, device {self.device})"

    @torch.inference_mode()
    def score_batch(self, records: Sequence[Mapping[str, Any]], *, images_root: str | Path,
                    answer_indices: Sequence[int | None] | None = None,
                    metadata: Sequence[Mapping[str, Any]] | None = None) -> torch.Tensor:
        """Probabilities ``[N, C]`` over the choices of VCR ``records`` (images under ``images_root``).

        answer_indices: QA->R only: the answer in each query (default: the record's gold answer).
        metadata: per record, ``{"boxes", "width", "height"}`` instead of its ``metadata_fn`` file.
        """
        preprocessor = self.trained.preprocessor(images_root=images_root)
        answer_indices = answer_indices if answer_indices is not None else [None] * len(records)
        metadata = metadata if metadata is not None else [None] * len(records)
        if not len(answer_indices) == len(metadata) == len(records):
            raise ValueError(f"{len(records)} records, {len(answer_indices)} answer_indices and {len(metadata)} "
                             f"metadata: give one of each per record")
        scores = []
        for start in range(0, len(records), self.batch_size):
            stop = start + self.batch_size
            examples = [preprocessor(record, answer_index=index, metadata=meta)
                        for record, index, meta in zip(records[start:stop], answer_indices[start:stop], metadata[start:stop])]
            batch = preprocessor.collate(examples)
            logits = self.model(**{key: batch[key].to(self.device) for key in BATCH_KEYS})["logits"]
            scores.append(logits.float().softmax(-1).cpu())
        return torch.cat(scores) if scores else torch.zeros(0, NUM_CHOICES)

    def score_record(self, record: Mapping[str, Any], *, images_root: str | Path, answer_index: int | None = None,
                     metadata: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Probabilities ``[C]`` over the choices of one VCR record."""
        return self.score_batch([record], images_root=images_root, answer_indices=[answer_index],
                                metadata=None if metadata is None else [metadata])[0]

    def score_image(self, image: str | Path, *, question: str, choices: Sequence[str], answer: str | None = None,
                    objects: Sequence[str] = (), boxes: Sequence[Sequence[float]] | None = None,
                    metadata: str | Path | Mapping[str, Any] | None = None) -> torch.Tensor:
        """Probabilities ``[C]`` over typed ``choices`` for a typed ``question`` about ``image``.

        choices: the C = 4 candidate answers (Q->A) or rationales (QA->R).
        answer: QA->R only: the answer in the query.
        objects / boxes: class name and ``x1, y1, x2, y2`` (image pixels) of each object the text may
            refer to as ``[k]``; or ``metadata``: a VCR metadata file or dict (``boxes``, ``names``,
            ``width``, ``height``), whose ``names`` are the objects unless ``objects`` is given.
        """
        image = Path(image)
        if not image.is_file():
            raise FileNotFoundError(f"image {image} not found")
        if len(choices) != NUM_CHOICES:
            raise ValueError(f"give {NUM_CHOICES} choices (VCR is 4-way multiple choice), got {len(choices)}")
        if (answer is None) != (self.task == "q2a"):
            raise ValueError(f"this is a {METRIC_NAMES[self.task]} run: " + (
                "it scores answers; answer= is for QA->R runs" if self.task == "q2a" else
                "it scores rationales for a given answer; pass answer= (the answer in the query)"))
        question_tokens = parse_text(question)
        choice_tokens = [parse_text(choice) for choice in choices]
        answer_tokens = [parse_text(answer)] if answer is not None else []
        meta = _image_metadata(image, objects=objects, boxes=boxes, metadata=metadata)
        names = list(objects) if objects else list(meta.get("names") or [])
        referenced = _referenced([*question_tokens, *(t for c in choice_tokens + answer_tokens for t in c)])
        missing = sorted(i for i in referenced if i >= min(len(names), len(meta["boxes"])))
        if missing:
            raise ValueError(
                f"the text refers to object{'s' if len(missing) > 1 else ''} {', '.join(f'[{i}]' for i in missing)}, "
                f"but {min(len(names), len(meta['boxes']))} object(s) have a class name and a box: give one box per "
                f"object, numbered from [0] (boxes= with objects=, e.g. --boxes person:10,20,120,200 dog:130,90,200,160), "
                f"or a VCR metadata file with boxes and names (metadata=, --metadata FILE.json)")
        record = {
            "annot_id": "typed", "img_fn": image.name, "metadata_fn": f"{image.stem}.json", "objects": names,
            "question": question_tokens,
            "answer_choices": choice_tokens if self.task == "q2a" else answer_tokens,
            "rationale_choices": choice_tokens if self.task == "qa2r" else [],
        }
        return self.score_record(record, images_root=image.parent, answer_index=0 if self.task == "qa2r" else None,
                                 metadata=meta)


def _image_metadata(image: Path, *, objects: Sequence[str], boxes: Sequence[Sequence[float]] | None,
                    metadata: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"boxes", "names", "width", "height"}`` for a typed question about ``image``."""
    if boxes is not None and metadata is not None:
        raise ValueError("give boxes= (with objects=) or metadata=, not both")
    if isinstance(metadata, (str, Path)):
        path = Path(metadata)
        if not path.is_file():
            raise FileNotFoundError(f"metadata file {path} not found")
        metadata = json.loads(path.read_text())
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not isinstance(metadata.get("boxes"), list):
            raise ValueError("metadata needs 'boxes' (a list of [x1, y1, x2, y2, ...]), and 'width' / 'height'")
        return {"names": [], **metadata}
    with Image.open(image) as opened:
        width, height = opened.size
    boxes = [list(map(float, box)) for box in (boxes or [])]
    if len(boxes) != len(objects):
        raise ValueError(f"{len(boxes)} boxes for {len(objects)} objects: give a class name for every box")
    for box in boxes:
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"box {box} is not x1, y1, x2, y2 with x1 < x2 and y1 < y2 (image pixels)")
    return {"boxes": boxes, "names": list(objects), "width": width, "height": height}


def load_run(folder: str | Path, *, device: str | torch.device | None = None, batch_size: int = 32,
             revision: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None) -> Predictor:
    """The predictor of a trained run: ``RUN`` (as ``vlekit train`` writes it), ``RUN/model``, or a Hub repo
    id it was pushed to (``vlekit push``; revision / cache_dir / token: :func:`vlekit.hub.resolve_folder`)."""
    folder = resolve_folder(folder, revision=revision, cache_dir=cache_dir, token=token)
    return Predictor(trained=load_trained(folder), device=device, batch_size=batch_size)


# -- command line ---------------------------------------------------------------------------------
def parse_box(text: str) -> tuple[str, list[float]]:
    """``"person:10,20,120,200"`` -> ``("person", [10.0, 20.0, 120.0, 200.0])``."""
    name, sep, numbers = text.rpartition(":")
    try:
        box = [float(v) for v in numbers.split(",")]
    except ValueError:
        box = []
    if not sep or not name or len(box) != 4:
        raise ValueError(f"--boxes {text!r}: expected CLASS:x1,y1,x2,y2 in image pixels, e.g. person:10,20,120,200")
    return name, box


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # dest: ``args.run`` is the sub-command's entry point (vlekit.cli)
    parser.add_argument("--run", dest="run_dir", required=True, metavar="DIR",
                        help="a run folder from vlekit train (its model/, or one of its checkpoints/step-N)")
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument("--question", required=True, help="the question; [0], [1, 2] refer to the image's objects")
    parser.add_argument("--answers", nargs="+", metavar="ANSWER",
                        help=f"{NUM_CHOICES} candidate answers (a Q->A run)")
    parser.add_argument("--answer", help="the answer in the query (a QA->R run)")
    parser.add_argument("--rationales", nargs="+", metavar="RATIONALE",
                        help=f"{NUM_CHOICES} candidate rationales (a QA->R run)")
    objects = parser.add_mutually_exclusive_group()
    objects.add_argument("--boxes", nargs="+", metavar="CLASS:X1,Y1,X2,Y2",
                         help="the objects [0], [1], ... in order: class name and box in image pixels")
    objects.add_argument("--metadata", help="a VCR metadata JSON (boxes, names, width, height); default: the "
                                            "image's own .json next to it, when there is one")
    parser.add_argument("--device", help="cpu, cuda, ... (default: a GPU when there is one)")


def run(args: argparse.Namespace) -> int:
    try:
        predictor = load_run(args.run_dir, device=args.device)
        qa2r = predictor.task == "qa2r"
        choices = args.rationales if qa2r else args.answers
        if choices is None or (qa2r and args.answer is None) or (not qa2r and (args.answer or args.rationales)):
            raise ValueError(f"{args.run_dir} is a {METRIC_NAMES[predictor.task]} run: give " + (
                f"--answer (the answer in the query) and --rationales ({NUM_CHOICES})" if qa2r
                else f"--answers ({NUM_CHOICES}); --answer / --rationales are for QA->R runs"))
        named = [parse_box(text) for text in args.boxes or []]
        metadata = args.metadata
        sibling = Path(args.image).with_suffix(".json")
        if metadata is None and args.boxes is None and sibling.is_file():
            metadata = sibling  # VCR keeps each image's metadata next to it
        scores = predictor.score_image(
            args.image, question=args.question, choices=choices, answer=args.answer,
            objects=[name for name, _ in named], boxes=[box for _, box in named] if args.boxes else None,
            metadata=metadata)
    except (FileNotFoundError, ValueError, VCRFormatError) as error:
        print(f"vlekit predict: {error}", file=sys.stderr)
        return 2
    best = int(scores.argmax())
    kind = "rationale" if qa2r else "answer"
    print(f"{METRIC_NAMES[predictor.task]} scores (probability over the {NUM_CHOICES} {kind}s), run "
          f"{predictor.trained.folder}\nquestion: {args.question}" + (f"\nanswer:   {args.answer}" if qa2r else ""))
    rows = [{"choice": i, "score": float(p), kind: f"{text}{'   <- best' if i == best else ''}"}
            for i, (p, text) in enumerate(zip(scores.tolist(), choices))]
    print(text_table(rows, ["choice", "score", kind], align="rrl"))
    return 0
