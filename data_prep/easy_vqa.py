"""easy-VQA (pip package ``easy-vqa``: third-party 64 x 64 shape images with questions about them)
written in the VQA v2 layout, so that every VQA tool of the kit reads it as it reads VQA v2, or as VCR
multiple choice (the VCR layout: its colour questions, four colours per question, see
:func:`write_easy_vqa_vcr`), so that the VCR tools (training, ``vlekit diagnose``) run on third-party data.

    vlekit easy-vqa runs/easy-vqa/data          # or convert_easy_vqa("runs/easy-vqa/data")
    vlekit easy-vqa runs/easy-vqa/vcr --format vcr   # or write_easy_vqa_vcr("runs/easy-vqa/vcr")

The data is converted where it is used (tests, the VQA notebook, a small run) and never copied into
the repository.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_prep.constants import NUM_CHOICES
from data_prep.vqa import ANSWERS_PER_QUESTION, VQAExamples, read_vqa

__all__ = [
    "EASY_VQA_COLOURS", "EASY_VQA_IMAGE_PATTERN", "EASY_VQA_SHAPES", "EASY_VQA_SPLITS", "EasyVQASplit", "EasyVQAVCR",
    "convert_easy_vqa", "question_kind", "shape_box", "write_easy_vqa_vcr",
]

EASY_VQA_SPLITS = ("train", "test")
EASY_VQA_IMAGE_PATTERN = "{image_id}.png"


@dataclass(frozen=True)
class EasyVQASplit:
    """Where :func:`convert_easy_vqa` wrote one split; :meth:`read` reads it back."""

    split: str
    questions_file: Path
    annotations_file: Path
    image_dir: Path
    image_pattern: str = EASY_VQA_IMAGE_PATTERN

    def read(self) -> VQAExamples:
        return read_vqa(self.questions_file, self.annotations_file, image_dir=self.image_dir,
                        image_pattern=self.image_pattern)


def _easy_vqa_module() -> Any:
    try:
        import easy_vqa
    except ImportError:
        raise ImportError("convert_easy_vqa needs the easy-vqa package (third-party images and questions): "
                          "pip install easy-vqa, or pip install 'vlekit[vqa]'") from None
    return easy_vqa


def _split_readers(splits: Sequence[str], max_questions: int | None, *, where: str) -> dict[str, tuple[Any, Any]]:
    """easy-VQA's (questions, image paths) readers of each split, after checking the requested options."""
    easy_vqa = _easy_vqa_module()
    readers = {
        "train": (easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        "test": (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    }
    unknown = [split for split in splits if split not in readers]
    if unknown:
        raise ValueError(f"{where}: unknown splits {unknown}; easy-VQA has {list(readers)}")
    if max_questions is not None and max_questions < 1:
        raise ValueError(f"{where}: max_questions must be >= 1, got {max_questions}")
    return readers


def convert_easy_vqa(out_dir: str | Path, *, splits: Sequence[str] = EASY_VQA_SPLITS,
                     max_questions: int | None = None) -> dict[str, EasyVQASplit]:
    """Write the easy-VQA dataset (pip package ``easy-vqa``) in the VQA v2 layout under ``out_dir``.

    Per split: ``v2_OpenEnded_easyvqa_{split}_questions.json``, ``v2_easyvqa_{split}_annotations.json``
    and the images copied to ``{split}/{image_id}.png`` (64 x 64 RGB). easy-VQA has one answer per
    question; it becomes ten identical annotator answers, so the official accuracy of a prediction
    is 1 or 0. ``answer_type`` is ``"yes/no"`` for yes/no answers and ``"other"`` otherwise;
    ``question_type`` is the question's first three words (easy-VQA has no VQA v2 question types).
    Question ids are ``image_id * 1000 + k`` for the k-th question of an image (VQA v2's scheme);
    image ids are easy-VQA's own, so they repeat across splits.

    ``max_questions``: keep the first N questions of each split in easy-VQA's order (and copy only
    their images), for quick runs and tests; the ids stay those of the full split.
    """
    readers = _split_readers(splits, max_questions, where="convert_easy_vqa")
    out_dir = Path(out_dir)
    written: dict[str, EasyVQASplit] = {}
    for split in splits:
        get_questions, get_image_paths = readers[split]
        texts, answers, image_ids = get_questions()
        image_paths = get_image_paths()
        per_image: Counter[int] = Counter()
        questions, annotations = [], []
        for text, answer, image_id in zip(texts, answers, image_ids):
            question_id = image_id * 1000 + per_image[image_id]
            per_image[image_id] += 1
            questions.append({"image_id": image_id, "question": text, "question_id": question_id})
            annotations.append({
                "question_id": question_id,
                "image_id": image_id,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                            for i in range(ANSWERS_PER_QUESTION)],
                "multiple_choice_answer": answer,
                "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                "question_type": " ".join(text.rstrip("?").split()[:3]),
            })
        questions, annotations = questions[:max_questions], annotations[:max_questions]
        image_dir = out_dir / split
        image_dir.mkdir(parents=True, exist_ok=True)
        for image_id in sorted({question["image_id"] for question in questions}):
            shutil.copyfile(image_paths[image_id], image_dir / EASY_VQA_IMAGE_PATTERN.format(image_id=image_id))
        subtype = f"easyvqa_{split}"
        questions_file = out_dir / f"v2_OpenEnded_{subtype}_questions.json"
        annotations_file = out_dir / f"v2_{subtype}_annotations.json"
        questions_file.write_text(json.dumps({"data_subtype": subtype, "questions": questions}), encoding="utf-8")
        annotations_file.write_text(json.dumps({"data_subtype": subtype, "annotations": annotations}), encoding="utf-8")
        written[split] = EasyVQASplit(split=split, questions_file=questions_file, annotations_file=annotations_file,
                                      image_dir=image_dir)
    return written


# --------------------------------------------------------------------------- VCR multiple choice

EASY_VQA_VCR_SPLITS = {"train": "train", "test": "val"}  # easy-VQA split -> VCR annotation file
EASY_VQA_COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
OBJECT_CLASS = "shape"
QUADRANTS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))
BACKGROUND_TOLERANCE = 48  # a pixel is the shape's when a channel differs this much from the background


@dataclass(frozen=True)
class EasyVQAVCR:
    """Where :func:`write_easy_vqa_vcr` wrote the VCR layout (as ``data_prep.synthetic.SyntheticVCR``).

    ``images_root / record["img_fn"]`` is a record's image; ``test`` is an empty file (see there).
    ``dropped`` counts, per easy-VQA split, the questions left out by kind (``yes/no``, ``shape``).
    """

    root: Path
    images_root: Path
    train: Path
    val: Path
    test: Path
    dropped: dict[str, dict[str, int]]


def question_kind(answer: str) -> str:
    """``colour``, ``shape`` or ``yes/no``: the kind of an easy-VQA question, from its answer."""
    if answer in EASY_VQA_COLOURS:
        return "colour"
    if answer in EASY_VQA_SHAPES:
        return "shape"
    if answer in ("yes", "no"):
        return "yes/no"
    raise ValueError(f"easy-VQA answer {answer!r} is none of {EASY_VQA_COLOURS + EASY_VQA_SHAPES + ('yes', 'no')}")


def shape_box(image: Image.Image) -> list[int]:
    """The shape's box ``[x1, y1, x2, y2]`` (pixels, x2 / y2 exclusive): the pixels that differ from the
    background (the image's most frequent colour: easy-VQA paints one flat light tint) by more than
    `BACKGROUND_TOLERANCE` in some channel. The whole image when no pixel does."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    colours, counts = np.unique(packed, return_counts=True)
    mode = int(colours[counts.argmax()])
    background = np.array([mode >> 16, (mode >> 8) & 255, mode & 255])
    ys, xs = np.nonzero(np.abs(pixels - background).max(axis=-1) > BACKGROUND_TOLERANCE)
    if not len(xs):
        return [0, 0, image.width, image.height]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def quadrant(box: Sequence[float], width: int, height: int) -> tuple[str, str]:
    """Where the box's centre lies: ``("top" | "bottom", "left" | "right")``."""
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return ("top" if centre_y < height / 2 else "bottom", "left" if centre_x < width / 2 else "right")


def _question_tokens(text: str) -> list[str | list[int]]:
    """easy-VQA's words with its subject, "the shape" or "the circle", tagged as object 0 ("the [0]")."""
    words = text.rstrip("?").split() + ["?"]
    return [[0] if word in (OBJECT_CLASS, *EASY_VQA_SHAPES) and i and words[i - 1] == "the" else word
            for i, word in enumerate(words)]


def _rationale(colour: str, place: tuple[str, str]) -> list[str | list[int]]:
    return ["the", [0], "is", colour, "and", "sits", "at", "the", place[0], place[1], "of", "the", "picture", "."]


def _orig(tokens: Sequence[str | list[int]]) -> str:
    """VCR's ``*_orig`` text: 1-based object numbers, punctuation attached to the word before."""
    words = [" and ".join(str(i + 1) for i in t) if isinstance(t, list) else t for t in tokens]
    return " ".join(words).replace(" ?", "?").replace(" .", ".")


def write_easy_vqa_vcr(out_dir: str | Path, *, seed: int = 0, splits: Sequence[str] = EASY_VQA_SPLITS,
                       max_questions: int | None = None) -> EasyVQAVCR:
    """Write easy-VQA's colour questions as VCR multiple choice (the VCR layout) under ``out_dir``.

    Files: ``train.jsonl`` (easy-VQA train), ``val.jsonl`` (easy-VQA test, labelled), ``test.jsonl``
    (empty: easy-VQA has no third, unlabelled split) and ``vcr1images/easyvqa_{split}/{image_id}.png``
    (easy-VQA's 64 x 64 image, copied) with ``{image_id}.json`` beside it (``boxes``
    ``[[x1, y1, x2, y2, 1.0]]``, ``names`` ``["shape"]``, ``segms`` ``[[]]``, ``width``, ``height``).

    A record: one object, the picture's shape, of class ``"shape"`` (not "circle": the tag must not
    tell the text which shape it is), its box the pixels off the background (:func:`shape_box`);
    the question's subject ("the shape", "the circle") becomes its tag, ``["what", "color", "is",
    "the", [0], "?"]`` (``question_orig`` keeps easy-VQA's text); ``answer_choices`` are four colour
    words, the gold one at ``answer_label`` and three other colours of `EASY_VQA_COLOURS`, drawn
    uniformly; ``rationale_choices`` say where the shape is, ``the [0] is red and sits at the top left
    of the picture .`` for the four quadrants, all with the gold colour, the gold one (``rationale_label``)
    the quadrant of the box's centre, so QA->R needs the picture too. Extra keys (VCR readers ignore
    them): ``question_type`` (``"colour"``) and ``easy_vqa_index`` (the question's index in easy-VQA).

    Which questions, and why only colour ones: a choice the text can rule out is no choice, so every
    choice must be a plausible answer to its question. Colour questions (13% of easy-VQA) have 8
    answers: four distinct colours give a text-only model exactly 1 in 4 (the colours are near
    uniform in easy-VQA, about 12.5% +- 0.7 each). Shape questions (13%) have only 3 answers: a fourth
    choice would be something no picture ever shows, which the text learns to rule out (1 in 3).
    Yes/no questions (74%) are left out because their wording gives the answer away: "is there a red
    shape?" is "no" 88% of the time and "is there not a red shape?" "yes" 88% (measured on easy-VQA's
    train split), so "yes" / "no" with two fillers would be a text task; the counts left out are in
    ``dropped``.

    Deterministic: the choices and their order are a pure function of ``seed``, the split and the
    question's easy-VQA index (so ``max_questions`` does not change the records it keeps).
    ``max_questions``: keep the first N colour questions of each split (quick runs, tests).
    ``splits``: the easy-VQA splits to convert; a split left out gives an empty annotation file.
    """
    readers = _split_readers(splits, max_questions, where="write_easy_vqa_vcr")
    root = Path(out_dir)
    images_root = root / "vcr1images"
    files = {name: root / f"{name}.jsonl" for name in ("train", "val", "test")}
    root.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {name: [] for name in files}
    dropped: dict[str, dict[str, int]] = {}
    for split_number, split in enumerate(EASY_VQA_SPLITS):
        if split not in splits:
            continue
        get_questions, get_image_paths = readers[split]
        texts, answers, image_ids = get_questions()
        image_paths = get_image_paths()
        folder = f"easyvqa_{split}"
        (images_root / folder).mkdir(parents=True, exist_ok=True)
        places: dict[int, tuple[str, str]] = {}
        per_image: Counter[int] = Counter()
        left_out: Counter[str] = Counter()
        out = lines[EASY_VQA_VCR_SPLITS[split]]
        for index, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
            question_number = per_image[image_id]
            per_image[image_id] += 1
            kind = question_kind(answer)
            if kind != "colour":
                left_out[kind] += 1
                continue
            if max_questions is not None and len(out) >= max_questions:
                continue
            if image_id not in places:
                places[image_id] = _write_image(image_paths[image_id], images_root / folder, image_id)
            rng = np.random.default_rng((seed, split_number, index))
            others = [c for c in EASY_VQA_COLOURS if c != answer]
            choices = [answer, *(others[i] for i in rng.permutation(len(others))[:NUM_CHOICES - 1])]
            order = [int(i) for i in rng.permutation(NUM_CHOICES)]
            answer_choices = [[choices[i]] for i in order]
            rationale_places = [places[image_id], *(q for q in QUADRANTS if q != places[image_id])]
            rationale_order = [int(i) for i in rng.permutation(NUM_CHOICES)]
            rationale_choices = [_rationale(answer, rationale_places[i]) for i in rationale_order]
            question = _question_tokens(text)
            answer_label, rationale_label = order.index(0), rationale_order.index(0)
            record = {
                "movie": folder,
                "objects": [OBJECT_CLASS],
                "img_fn": f"{folder}/{image_id}.png",
                "metadata_fn": f"{folder}/{image_id}.json",
                "question_orig": text,
                "answer_orig": answer,
                "rationale_orig": _orig(rationale_choices[rationale_label]),
                "question": question,
                "answer_choices": answer_choices,
                "answer_label": answer_label,
                "answer_match_iter": [0 if i == answer_label else 1 for i in range(NUM_CHOICES)],
                "rationale_choices": rationale_choices,
                "rationale_label": rationale_label,
                "rationale_match_iter": [0 if i == rationale_label else 1 for i in range(NUM_CHOICES)],
                "img_id": f"{split}-{image_id}",
                "question_number": question_number,
                "annot_id": f"{split}-{image_id * 1000 + question_number}",
                "question_type": "colour",
                "easy_vqa_index": index,
            }
            out.append(json.dumps(record))
        dropped[split] = dict(sorted(left_out.items()))
    for name, path in files.items():
        path.write_text("".join(line + "\n" for line in lines[name]), encoding="utf-8")
    return EasyVQAVCR(root=root, images_root=images_root, train=files["train"], val=files["val"],
                      test=files["test"], dropped=dropped)


def _write_image(source: str | Path, folder: Path, image_id: int) -> tuple[str, str]:
    """Copy one image, write its metadata, and return the quadrant of its shape."""
    shutil.copyfile(source, folder / f"{image_id}.png")
    with Image.open(source) as image:
        width, height = image.size
        box = shape_box(image)
    metadata = {"boxes": [[*box, 1.0]], "segms": [[]], "names": [OBJECT_CLASS], "width": width, "height": height}
    (folder / f"{image_id}.json").write_text(json.dumps(metadata), encoding="utf-8")
    return quadrant(box, width, height)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to write to (VQA v2: questions, annotations, images; "
                                    "VCR: *.jsonl, vcr1images/)")
    parser.add_argument("--format", choices=("vqa", "vcr"), default="vqa",
                        help="vqa: the VQA v2 layout (default); vcr: the colour questions as VCR multiple choice "
                             "(train.jsonl from easy-VQA train, val.jsonl from its test)")
    parser.add_argument("--seed", type=int, default=0, help="--format vcr: the seed of the distractors and orders")
    parser.add_argument("--splits", nargs="+", default=list(EASY_VQA_SPLITS), choices=EASY_VQA_SPLITS,
                        help="which easy-VQA splits to write (default: all)")
    parser.add_argument("--max-questions", type=int,
                        help="keep the first N questions of each split (quick runs; --format vcr: N colour questions)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.format == "vcr":
            vcr = write_easy_vqa_vcr(args.out, seed=args.seed, splits=args.splits, max_questions=args.max_questions)
        else:
            written = convert_easy_vqa(args.out, splits=args.splits, max_questions=args.max_questions)
    except ImportError as error:
        print(f"vlekit easy-vqa: {error}", file=sys.stderr)
        return 2
    if args.format == "vcr":
        for path in (vcr.train, vcr.val, vcr.test):
            count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            print(f"{path.name}: {count} questions")
        for split, kinds in vcr.dropped.items():
            print(f"easy-VQA {split}: left out " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
                  + " questions (their text gives the answer away or they lack 4 plausible choices)")
        print(f"images and metadata under {vcr.images_root}")
        return 0
    for split in written.values():
        print(f"{split.split}: {len(split.read())} questions, {split.questions_file.name}, "
              f"{split.annotations_file.name}, images in {split.image_dir} ({split.image_pattern})")
    return 0
