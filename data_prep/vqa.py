"""VQA v2 data: reading questions and annotations (VQAExample, VQAExamples, VQAFormatError), the
torch Dataset (VQADataset) and the test-dev submission file (easy-VQA in this layout: ``data_prep.easy_vqa``).

    examples = read_vqa("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
                        image_dir="val2014")
    vocab = AnswerVocabulary.from_examples(train_examples, min_count=9)   # data_prep.vqa_answers
    dataset = VQADataset(examples, tokenizer=tokenizer, vocabulary=vocab, image_size=576)
    batch = dataset.collate([dataset[0], dataset[1]])                     # input_ids, pixel_values, labels
    write_submission({e.question_id: "yes" for e in examples}, "vqa_submit.json", examples=examples)

Everything about answers (the official normalisation, the answer vocabulary, soft scores) is in
``data_prep.vqa_answers``.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from data_prep.constants import CLIP_MEAN, CLIP_STD, VQA_TASK
from data_prep.errors import DataFormatError, describe, is_int, packed_as, utf8_problem
from data_prep.options import PreprocessOptions
from data_prep.pixels import load_pixels
from data_prep.preflight import archive_hint, check_image, folder_holding
from data_prep.vcr import VCRFormatError
from data_prep.vqa_answers import AnswerVocabulary, soft_scores

__all__ = [
    "ANSWERS_PER_QUESTION", "COCO_IMAGE_PATTERN", "MAX_QUESTION_LENGTH", "VQADataset", "VQAExample",
    "VQAExamples", "VQAFormatError", "preflight_vqa", "read_vqa", "write_submission",
]

ANSWERS_PER_QUESTION = 10
MAX_QUESTION_LENGTH = 50  # VLE's VQA fine-tuning (max_text_len)
# COCO file names: COCO_val2014_000000000042.jpg. ``data_subtype`` comes from the questions file
# (or the caller: test-dev questions say "test-dev2015" but their images are in test2015).
COCO_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"

# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

class VQAFormatError(DataFormatError):
    """A VQA questions or annotations file does not have the expected format.

    The message names the file, the question (when known), the field, what was expected and what
    was found::

        v2_mscoco_val2014_annotations.json (question_id 42): field 'answers': expected a list of 10 answers, got a list of length 9
    """

    def __init__(self, *, file: str | Path, question_id: int | None, field: str, expected: str, got: str) -> None:
        self.question_id = question_id
        location = f" (question_id {question_id})" if question_id is not None else ""
        super().__init__(file=file, field=field, expected=expected, got=got, location=location)

    def arguments(self) -> dict[str, Any]:
        return {**super().arguments(), "question_id": self.question_id}


@dataclass(frozen=True)
class VQAExample:
    """One question, with its ten human answers when the split is annotated.

    ``answers`` are the raw annotator strings in file order (empty on test splits);
    ``multiple_choice_answer``, ``answer_type`` (``"yes/no"``, ``"number"``, ``"other"``) and
    ``question_type`` (a question prefix such as ``"what color is the"``) are None on test splits.
    """

    question_id: int
    image_id: int
    question: str
    image_path: Path
    answers: tuple[str, ...] = ()
    multiple_choice_answer: str | None = None
    answer_type: str | None = None
    question_type: str | None = None

    @property
    def annotated(self) -> bool:
        return bool(self.answers)


class VQAExamples(list):
    """The examples of one split in questions-file order; ``questions_file``, ``annotations_file``
    (None for test splits) and ``data_subtype`` say where they came from."""

    def __init__(
        self, examples: Iterable[VQAExample], *, questions_file: str | Path, annotations_file: str | Path | None,
        data_subtype: str | None,
    ) -> None:
        super().__init__(examples)
        self.questions_file = str(questions_file)
        self.annotations_file = None if annotations_file is None else str(annotations_file)
        self.data_subtype = data_subtype


def _load_list(path: Path, key: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"VQA file not found: {path}") from None
    packed = packed_as(path)
    if packed is not None:  # VQA v2 ships each file zipped (v2_Questions_Val_mscoco.zip, ...)
        raise VQAFormatError(file=path, question_id=None, field="<file>", expected="a VQA JSON file",
                             got=f"a {packed[0]} file: unpack it ({packed[1]}) and give the .json file it holds")
    try:
        document = json.loads(data.decode("utf-8").removeprefix("\ufeff"))  # a byte-order mark is no JSON
    except UnicodeDecodeError as error:
        raise VQAFormatError(file=path, question_id=None, field="<file>", expected="UTF-8 JSON text",
                             got=utf8_problem(data, error)) from None
    except json.JSONDecodeError as error:
        raise VQAFormatError(file=path, question_id=None, field="<file>", expected="a JSON document",
                             got=f"invalid JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        got = describe(document.get(key)) if isinstance(document, dict) else describe(document)
        raise VQAFormatError(file=path, question_id=None, field=key, expected=f"an object with a list '{key}'", got=got)
    return document[key], document


def _require(entry: Any, field: str, kind: str, *, file: Path, question_id: int | None) -> Any:
    value = entry.get(field) if isinstance(entry, dict) else None
    ok = is_int(value) if kind == "int" else isinstance(value, str)
    if not ok:
        got = "nothing (field missing)" if isinstance(entry, dict) and field not in entry else describe(value)
        raise VQAFormatError(file=file, question_id=question_id, field=field, expected=f"a{'n' if kind == 'int' else ''} {kind}", got=got)
    return value


def read_vqa(
    questions_file: str | Path,
    annotations_file: str | Path | None = None,
    *,
    image_dir: str | Path,
    image_pattern: str = COCO_IMAGE_PATTERN,
    data_subtype: str | None = None,
) -> VQAExamples:
    """Read a VQA v2 split: its questions and (for train/val) its annotations.

    Args:
        questions_file: ``{"questions": [{"image_id", "question", "question_id"}, ...], "data_subtype": ...}``.
        annotations_file: ``{"annotations": [{"question_id", "image_id", "answers": [{"answer",
            "answer_confidence", "answer_id"} x 10], "multiple_choice_answer", "answer_type",
            "question_type"}, ...]}``; None for test splits. Every question must have exactly one
            annotation and every annotation a question, with the same ``image_id``.
        image_dir: the folder holding the split's images.
        image_pattern: the file name from ``{image_id}`` and ``{data_subtype}`` (``str.format``).
        data_subtype: overrides the questions file's ``data_subtype`` in ``image_pattern`` (test-dev
            questions say ``"test-dev2015"``, their images are named ``COCO_test2015_...``).

    Raises:
        VQAFormatError: the first problem found, naming file, question id and field.
    """
    questions_path = Path(questions_file)
    questions, document = _load_list(questions_path, "questions")
    subtype = data_subtype if data_subtype is not None else document.get("data_subtype")
    annotations: dict[int, dict[str, Any]] = {}
    annotations_path = None if annotations_file is None else Path(annotations_file)
    if annotations_path is not None:
        annotations = _read_annotations(annotations_path)

    image_dir = Path(image_dir)
    examples: list[VQAExample] = []
    seen: set[int] = set()
    for entry in questions:
        if not isinstance(entry, dict):
            raise VQAFormatError(file=questions_path, question_id=None, field="questions[]", expected="a JSON object",
                                 got=describe(entry))
        question_id = _require(entry, "question_id", "int", file=questions_path, question_id=None)
        if question_id in seen:
            raise VQAFormatError(file=questions_path, question_id=question_id, field="question_id",
                                 expected="a question id used once", got="a repeated id")
        seen.add(question_id)
        image_id = _require(entry, "image_id", "int", file=questions_path, question_id=question_id)
        question = _require(entry, "question", "str", file=questions_path, question_id=question_id)
        try:
            image_path = image_dir / image_pattern.format(image_id=image_id, data_subtype=subtype)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"read_vqa: image_pattern {image_pattern!r} does not format with image_id={image_id} and "
                f"data_subtype={subtype!r} ({error!r}); use the fields {{image_id}} and {{data_subtype}}"
            ) from None
        fields: dict[str, Any] = {}
        if annotations_path is not None:
            annotation = annotations.pop(question_id, None)
            if annotation is None:
                raise VQAFormatError(file=annotations_path, question_id=question_id, field="annotations",
                                     expected=f"an annotation for every question of {questions_path.name}", got="none")
            if annotation["image_id"] != image_id:
                raise VQAFormatError(file=annotations_path, question_id=question_id, field="image_id",
                                     expected=f"{image_id} (as in {questions_path.name})", got=describe(annotation["image_id"]))
            fields = {k: v for k, v in annotation.items() if k != "image_id"}
        examples.append(VQAExample(question_id=question_id, image_id=image_id, question=question,
                                   image_path=image_path, **fields))
    if annotations:
        stray = sorted(annotations)[:5]
        raise VQAFormatError(file=annotations_path, question_id=stray[0], field="question_id",
                             expected=f"a question id of {questions_path.name}",
                             got=f"{len(annotations)} annotations without a question (first ids {stray})")
    return VQAExamples(examples, questions_file=questions_path, annotations_file=annotations_path, data_subtype=subtype)


def _read_annotations(path: Path) -> dict[int, dict[str, Any]]:
    entries, _ = _load_list(path, "annotations")
    annotations: dict[int, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise VQAFormatError(file=path, question_id=None, field="annotations[]", expected="a JSON object",
                                 got=describe(entry))
        question_id = _require(entry, "question_id", "int", file=path, question_id=None)
        if question_id in annotations:
            raise VQAFormatError(file=path, question_id=question_id, field="question_id",
                                 expected="one annotation per question", got="a second annotation")
        answers = entry.get("answers")
        if not isinstance(answers, list) or len(answers) != ANSWERS_PER_QUESTION:
            raise VQAFormatError(file=path, question_id=question_id, field="answers",
                                 expected=f"a list of {ANSWERS_PER_QUESTION} answers", got=describe(answers))
        for i, answer in enumerate(answers):
            if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
                raise VQAFormatError(file=path, question_id=question_id, field=f"answers[{i}]",
                                     expected='an object {"answer": str, "answer_confidence", "answer_id"}',
                                     got=describe(answer))
        annotations[question_id] = {
            "image_id": _require(entry, "image_id", "int", file=path, question_id=question_id),
            "answers": tuple(answer["answer"] for answer in answers),
            "multiple_choice_answer": _require(entry, "multiple_choice_answer", "str", file=path, question_id=question_id),
            "answer_type": _require(entry, "answer_type", "str", file=path, question_id=question_id),
            "question_type": _require(entry, "question_type", "str", file=path, question_id=question_id),
        }
    return annotations


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def preflight_vqa(
    examples: VQAExamples,
    *,
    skip_bad: bool = False,
    progress: bool = False,
    report: Callable[[str], None] | None = _to_stderr,
) -> VQAExamples:
    """The examples whose image opens (``data_prep.preflight.check_image``: header only; VQA has no
    metadata sizes nor boxes), checked before a run's first step, each image once.

    Args:
        skip_bad: leave the other examples out, with a summary to ``report``, instead of raising.
        progress: show a progress bar (on a terminal).

    Raises:
        VQAFormatError: an image is missing or unreadable and ``skip_bad`` is False; names the
            questions file, the question and the image.
    """
    problems: dict[Path, list[Any]] = {}
    kept: list[VQAExample] = []
    skipped: list[tuple[str, VQAFormatError]] = []
    name = Path(examples.questions_file).name
    for example in tqdm(examples, desc=f"check {name}", unit="q", disable=None if progress else True, leave=False):
        path = Path(example.image_path)
        if path not in problems:
            problems[path] = check_image(path)
        if not problems[path]:
            kept.append(example)
            continue
        finding = problems[path][0]
        missing = finding.kind == "missing-image"
        archive = archive_hint(path.parent, holds="the split's image folder") if missing and not path.parent.is_dir() else None
        nearby = folder_holding(path.parent, path.name) if missing and archive is None else None
        got = finding.got + (f"; {archive}" if archive is not None else
                             f"; {nearby} holds it: is that the split's image folder (--images / data.images)?"
                             if nearby is not None else "")
        error = VQAFormatError(file=examples.questions_file, question_id=example.question_id, field="image_id",
                               expected=finding.expected, got=got)
        if not skip_bad:
            raise error
        skipped.append((finding.kind, error))
    if skipped and report is not None:
        reasons = ", ".join(f"{count} {kind}" for kind, count in Counter(kind for kind, _ in skipped).most_common())
        report(f"{name}: skipped {len(skipped)} of {len(examples)} questions (data.skip_bad): {reasons}; "
               f"first: {skipped[0][1]}")
    return VQAExamples(kept, questions_file=examples.questions_file, annotations_file=examples.annotations_file,
                       data_subtype=examples.data_subtype)


# ---------------------------------------------------------------------------------------------
# Dataset and batches
# ---------------------------------------------------------------------------------------------

class VQADataset(Dataset):
    """VQA examples as model inputs; images are decoded in ``__getitem__`` (DataLoader workers).

    ``dataset[i]``: ``question_id``, ``input_ids`` (``[CLS] question [SEP]`` as the tokenizer writes
    it, at most ``max_length`` tokens), ``pixel_values [3, S, S]`` (normalised float32, or uint8 with
    ``pixel_dtype="uint8"``; ``jpeg_draft`` as in ``PreprocessConfig``) and, for annotated examples when a
    vocabulary is given, ``labels [num_labels]``: the soft scores (:func:`soft_scores`).
    Use ``DataLoader(dataset, collate_fn=dataset.collate)``.

    ``decode_images=False``: a zero image instead of each picture, none read (for passes that replace the pixels).
    ``geometry``, ``max_length``, ``jpeg_draft`` and ``pixel_dtype`` are
    ``data_prep.options.PreprocessOptions``' (``task="vqa"``): unset, the geometry is ``center-crop``
    (short side to S, centre crop), what VLE's processor does; VQA has no boxes, so nothing else
    depends on it.
    """

    def __init__(
        self,
        examples: Sequence[VQAExample],
        *,
        tokenizer: Any,
        vocabulary: AnswerVocabulary | None,
        image_size: int,
        geometry: str | None = None,
        max_length: int = MAX_QUESTION_LENGTH,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        jpeg_draft: bool = False,
        pixel_dtype: str = "float32",
        decode_images: bool = True,
    ) -> None:
        # The run's options, validated (and geometry resolved) where every pipeline's are.
        options = PreprocessOptions(task=VQA_TASK, geometry=geometry, max_length=max_length, jpeg_draft=jpeg_draft,
                                    pixel_dtype=pixel_dtype)
        if tokenizer.pad_token_id is None:
            raise ValueError("VQADataset: the tokenizer has no pad token; set tokenizer.pad_token before batching")
        self.examples = examples
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.image_size = image_size
        self.geometry = options.geometry
        self.max_length = max_length
        self.jpeg_draft = jpeg_draft
        self.pixel_dtype = pixel_dtype
        self._mean = np.asarray(image_mean, dtype=np.float32)
        self._std = np.asarray(image_std, dtype=np.float32)
        # decode_images=False: one zero image for every example (a pass that replaces the pixels decodes none)
        self._placeholder = None if decode_images else torch.zeros(
            3, image_size, image_size, dtype=torch.uint8 if pixel_dtype == "uint8" else torch.float32)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        item: dict[str, Any] = {
            "question_id": example.question_id,
            "input_ids": self.tokenizer(example.question, truncation=True, max_length=self.max_length)["input_ids"],
            "pixel_values": self.load_pixels(example) if self._placeholder is None else self._placeholder,
        }
        if self.vocabulary is not None and example.annotated:
            labels, scores = soft_scores(example.answers, self.vocabulary)
            targets = torch.zeros(len(self.vocabulary))
            targets[labels] = torch.tensor(scores)
            item["labels"] = targets
        return item

    def load_pixels(self, example: VQAExample) -> torch.Tensor:
        """Decode and transform the example's image -> ``[3, S, S]``: normalised float32, or uint8
        pixels for the model to normalise (``pixel_dtype``; ``data_prep.pixels.load_pixels``)."""
        try:
            return load_pixels(Path(example.image_path), image_size=self.image_size, geometry=self.geometry,
                               mean=self._mean, std=self._std, draft=self.jpeg_draft, dtype=self.pixel_dtype)
        except VCRFormatError as error:
            raise VQAFormatError(file=example.image_path, question_id=example.question_id, field="image_id",
                                 expected="a readable image at the path image_dir / image_pattern gives",
                                 got=error.got) from None

    def collate(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack items: ``input_ids, attention_mask`` long ``[B, L]`` (L the longest question),
        ``pixel_values [B, 3, S, S]``, ``question_id [B]`` and, when every item has them,
        ``labels`` float ``[B, num_labels]`` (soft scores)."""
        if not items:
            raise ValueError("VQADataset.collate needs at least one item")
        length = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(items), length, dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
            attention_mask[row, : len(item["input_ids"])] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "question_id": torch.tensor([item["question_id"] for item in items], dtype=torch.long),
        }
        if all("labels" in item for item in items):
            batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------

def write_submission(
    predictions: Mapping[int, str], path: str | Path, *, examples: Sequence[VQAExample] | None = None
) -> Path:
    """Write the evaluation server's result file: ``[{"question_id": int, "answer": str}, ...]``.

    With ``examples``, the predictions must cover exactly their question ids (the server, like
    vqaEval's ``loadRes``, rejects a result set that differs from the split's questions); the file
    then follows the examples' order.
    """
    for question_id, answer in predictions.items():
        if not is_int(question_id) or not isinstance(answer, str):
            raise ValueError(f"write_submission: expected int question ids and str answers, got {question_id!r}: {answer!r}")
    order = list(predictions)
    if examples is not None:
        wanted = [example.question_id for example in examples]
        missing = sorted(set(wanted) - set(predictions))
        extra = sorted(set(predictions) - set(wanted))
        if missing or extra:
            raise ValueError(f"write_submission: predictions must cover the split's {len(wanted)} questions exactly; "
                             f"{len(missing)} missing (first {missing[:5]}), {len(extra)} extra (first {extra[:5]})")
        order = wanted
    path = Path(path)
    path.write_text(json.dumps([{"question_id": qid, "answer": predictions[qid]} for qid in order]), encoding="utf-8")
    return path
