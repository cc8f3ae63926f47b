"""The data a run trains on: what a task (:mod:`vlekit.evaluation.tasks`) reads before the model
exists (:class:`RunData`: the training text for an ``auto`` tokenizer; for VQA the splits and the
answer vocabulary that sizes the ``vqa`` head), checked. ``vlekit.runs.folder`` builds the data
pipelines and ``vlekit.evaluation.evaluate`` scores them.

Reading includes the preflight (``data_prep.preflight``): image headers, sizes and boxes are checked
before the model is built, so a bad file stops the run before its first step, naming the annotation
file and line; with ``data.skip_bad`` the records at fault are left out and a summary says why.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data_prep.dataset import VCRDataset
from data_prep.preflight import preflight
from data_prep.vcr import VCRRecords
from data_prep.vqa import COCO_IMAGE_PATTERN, VQAExamples, preflight_vqa, read_vqa
from data_prep.vqa_answers import AnswerVocabulary
from vlekit.model import DEFAULT_HEAD, VCRModelConfig
from vlekit.runs.experiment import DataConfig

VQA_HEAD = "vqa"
SPLITS = ("train", "val")


# The data options that name files, and what each holds (the image folders are checked by the preflight, which
# also recognises an archive left unpacked or a folder one level off).
DATA_FILES = {
    "train_annotations": "the training annotations (VCR: train.jsonl)",
    "val_annotations": "the validation annotations (VCR: val.jsonl)",
    "train_questions": "the VQA training questions JSON",
    "val_questions": "the VQA validation questions JSON",
    "answers": "the id2label JSON of the answers",
}


def check_data_files(data: DataConfig) -> None:
    """Every file the data options name is there, before anything is read: else one error listing each missing one
    with its option (a run moved to another machine names the old machine's files)."""
    missing = [f"data.{option}={getattr(data, option)} " + ("is a folder" if os.path.isdir(getattr(data, option)) else
                                                           "does not exist") + f": it names {holds}"
               for option, holds in DATA_FILES.items()
               if getattr(data, option) is not None and not os.path.isfile(getattr(data, option))]
    if missing:
        raise FileNotFoundError("the data options name files that are not there: " + "; ".join(missing)
                                + ". Give each its place here: vlekit train ... data.OPTION=FILE (on a resume too)")


# -- VQA: the splits, the answer vocabulary, the head ----------------------------------------------
def read_split(data: DataConfig, split: str) -> VQAExamples | None:
    """The ``train`` or ``val`` split a VQA run names (``None``: no ``val_questions``)."""
    if split not in SPLITS:
        raise ValueError(f"read_split: split {split!r}; choose one of {', '.join(SPLITS)}")
    questions = data.train_questions if split == "train" else data.val_questions
    annotations = data.train_annotations if split == "train" else data.val_annotations
    images = data.images if split == "train" else (data.val_images or data.images)
    if questions is None:
        if split == "val":
            return None
        raise ValueError("data.train_questions is not set (a VQA v2 questions JSON; data.train_annotations "
                         "its annotations)")
    if annotations is None:
        raise ValueError(f"data.{split}_annotations is not set: a VQA run {'trains' if split == 'train' else 'validates'} "
                         f"on annotated questions (the annotations JSON of data.{split}_questions)")
    if images is None:
        raise ValueError(f"data.{'images' if split == 'train' else 'val_images'} is not set (the folder of the "
                         f"{split} split's images)")
    return read_vqa(questions, annotations, image_dir=images, image_pattern=data.image_pattern or COCO_IMAGE_PATTERN)


def _reports() -> bool:
    """Whether this process prints the data summaries: the first of its machine under ``torchrun`` /
    ``accelerate launch`` (``LOCAL_RANK`` 0), or a plain process. Every process checks its data."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def checked_split(data: DataConfig, split: str) -> VQAExamples | None:
    """:func:`read_split` with its images checked (``data_prep.vqa.preflight_vqa``, ``data.skip_bad``)."""
    examples = read_split(data, split)
    if examples is None:
        return None
    return preflight_vqa(examples, skip_bad=data.skip_bad, progress=_reports(), report=print if _reports() else None)


def checked_records(data: DataConfig, annotations: str) -> VCRRecords:
    """The VCR records of ``annotations`` the run uses, after the preflight (``data_prep.preflight``):
    records with errors stop the run, or with ``data.skip_bad`` are left out with a summary."""
    if data.images is None:
        raise ValueError("data.images is not set (the vcr1images folder that img_fn and metadata_fn are relative to)")
    return preflight(annotations, data.images, skip_bad=data.skip_bad, progress=_reports(),
                     report=print if _reports() else None)


def checkpoint_answers(init_from_vle: str) -> list[str] | None:
    """The answers of an official ``VLEForVQA`` checkpoint (hub name or folder); ``None`` for any other VLE checkpoint."""
    from vlekit.hub import resolve_folder
    from vlekit.vle.config import read_vle_config, vqa_answers
    from vlekit.vle.keys import VLE_TASKS

    folder = resolve_folder(init_from_vle)
    config = read_vle_config(folder)
    if config.get("architectures") != [VLE_TASKS["vqa"].architecture]:
        return None
    return vqa_answers(config, where=str(folder))


def run_vocabulary(data: DataConfig, train: VQAExamples, *, init_from_vle: str | None = None) -> AnswerVocabulary:
    """The run's answers: ``data.answers`` (an ``id2label`` JSON), else an official VQA checkpoint's
    (``train.init_from_vle``), else every normalised training answer seen ``data.answer_min_count`` times."""
    answers = checkpoint_answers(init_from_vle) if init_from_vle is not None else None
    if data.answers is not None:
        vocabulary = AnswerVocabulary.load(data.answers)
        if answers is not None and list(vocabulary.id2label) != answers:
            raise ValueError(
                f"data.answers ({data.answers}: {len(vocabulary)} answers) is not the answer vocabulary of the VLEForVQA "
                f"checkpoint train.init_from_vle={init_from_vle} ({len(answers)} answers), whose head it would have to "
                f"replace: leave data.answers out to fine-tune the checkpoint's head, or start from a checkpoint "
                f"without a VQA head (hfl/vle-base) for a new one"
            )
        return vocabulary
    if answers is not None:
        return AnswerVocabulary.from_id2label(answers)
    return AnswerVocabulary.from_examples(train, min_count=data.answer_min_count)


def vqa_head(head: dict[str, Any], vocabulary: AnswerVocabulary) -> dict[str, Any]:
    """The ``vqa`` head spec for ``vocabulary``, keeping the options of a ``vqa`` head spec."""
    if head["name"] not in (DEFAULT_HEAD, VQA_HEAD):
        raise ValueError(f"data.task=vqa trains the {VQA_HEAD!r} head, but model.head is {head['name']!r}: "
                         f"remove model.head (or set its name to {VQA_HEAD})")
    options = {k: v for k, v in head.items() if k != "name"} if head["name"] == VQA_HEAD else {}
    answers = list(vocabulary.id2label)
    given_labels, given_answers = options.get("num_labels"), options.get("answers")
    if (given_labels is not None and given_labels != len(answers)) or (given_answers and list(given_answers) != answers):
        raise ValueError(f"model.head sets num_labels / answers other than the run's answer vocabulary "
                         f"({len(answers)} answers, from data.answers or the training answers); leave them out: the run sets them")
    return {"name": VQA_HEAD, **options, "num_labels": len(answers), "answers": answers}


def vqa_model_config(model: VCRModelConfig, vocabulary: AnswerVocabulary) -> VCRModelConfig:
    """``model`` with the ``vqa`` head for ``vocabulary``."""
    return dataclasses.replace(model, head=vqa_head(dict(model.head), vocabulary))


def tokenizer_records(examples: VQAExamples) -> list[dict[str, list[str]]]:
    """The questions as records ``data_prep.tokenizer.build_word_tokenizer`` reads (``auto`` tokenizer)."""
    return [{"question": [example.question]} for example in examples]


# -- what a run reads, per task --------------------------------------------------------------------
@dataclass
class RunData:
    """What a run reads before its model exists: the training text (for an ``auto`` tokenizer) and,
    for VQA, the splits and the answer vocabulary that sizes the head."""

    text: Any  # what data_prep.tokenizer.build_word_tokenizer reads
    vocabulary: AnswerVocabulary | None = None
    vqa_train: Sequence[Any] = ()
    vqa_val: Sequence[Any] | None = None
    vcr_train: Sequence[Mapping[str, Any]] = ()
    vcr_val: Sequence[Mapping[str, Any]] | None = None


def skipped_items_summary(*datasets: Any, limit: int = 5) -> str:
    """For the end of a run: the items the DataLoader workers replaced because their image failed to
    load (``data.skip_bad``: a truncated JPEG only decoding finds), per split, the first ``limit``
    named; empty when there were none. Datasets without the record (``None``, VQA) are passed over."""
    lines = []
    for name, dataset in zip(("train", "val"), datasets):
        skipped = dataset.skipped_items() if isinstance(dataset, VCRDataset) else []
        if skipped:
            more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
            lines.append(f"data.skip_bad: {len(skipped)} {name} items failed to load and were replaced by the next "
                         f"item: {', '.join(skipped[:limit])}{more}")
    return "\n".join(lines)
