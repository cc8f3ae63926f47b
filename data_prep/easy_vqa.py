"""easy-VQA (pip package ``easy-vqa``: third-party 64 x 64 shape images with questions about them)
written in the VQA v2 layout, so that every VQA tool of the kit reads it as it reads VQA v2.

    vlekit easy-vqa runs/easy-vqa/data          # or convert_easy_vqa("runs/easy-vqa/data")

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

from data_prep.vqa import ANSWERS_PER_QUESTION, VQAExamples, read_vqa

__all__ = ["EASY_VQA_IMAGE_PATTERN", "EASY_VQA_SPLITS", "EasyVQASplit", "convert_easy_vqa"]

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
    easy_vqa = _easy_vqa_module()
    readers = {
        "train": (easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        "test": (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    }
    unknown = [split for split in splits if split not in readers]
    if unknown:
        raise ValueError(f"convert_easy_vqa: unknown splits {unknown}; easy-VQA has {list(readers)}")
    if max_questions is not None and max_questions < 1:
        raise ValueError(f"convert_easy_vqa: max_questions must be >= 1, got {max_questions}")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to write the VQA v2 layout to (questions, annotations, images)")
    parser.add_argument("--splits", nargs="+", default=list(EASY_VQA_SPLITS), choices=EASY_VQA_SPLITS,
                        help="which easy-VQA splits to write (default: all)")
    parser.add_argument("--max-questions", type=int, help="keep the first N questions of each split (quick runs)")


def run(args: argparse.Namespace) -> int:
    try:
        written = convert_easy_vqa(args.out, splits=args.splits, max_questions=args.max_questions)
    except ImportError as error:
        print(f"vlekit easy-vqa: {error}", file=sys.stderr)
        return 2
    for split in written.values():
        print(f"{split.split}: {len(split.read())} questions, {split.questions_file.name}, "
              f"{split.annotations_file.name}, images in {split.image_dir} ({split.image_pattern})")
    return 0
