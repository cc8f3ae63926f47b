"""Tasks, a registered kind: what a run of ``data.task: NAME`` reads, the head it trains, how it is
scored and what chance is. A new task is one class and one registration, as a component is::

    @register_task("my-task", config=MyTaskConfig)
    class MyTask(Task):
        head = "my-head"
        def read(self, config): ...              # RunData: the splits, checked, and the tokenizer's text
        def datasets(self, config, run_data, tokenizer, model): ...
        def score(self, logits, labels): ...     # the validation metric, in [0, 1]

=========  =======================================  ======================  ==========================
task       data                                     head                    score (chance)
=========  =======================================  ======================  ==========================
``q2a``    VCR records, question -> answer          ``vcr-multiple-choice``  accuracy (1 / C = 0.25)
``qa2r``   VCR records, question + answer -> why    ``vcr-multiple-choice``  accuracy (1 / C = 0.25)
``vqa``    VQA v2 questions, annotations, images    ``vqa`` (the answers)    VQA accuracy (majority answer)
=========  =======================================  ======================  ==========================

The loop, schedule, checkpoints, resume and logging (:mod:`vlekit.training.train`) are the same for
every task; the data helpers are in :mod:`vlekit.runs.data`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from data_prep.constants import NUM_CHOICES
from data_prep.dataset import VCRDataset
from vlekit.evaluation.metrics import soft_accuracy
from vlekit.interfaces import Task
from vlekit.model import VCRModel
from vlekit.registry import TASKS, register_task
from vlekit.runs.data import VQA_HEAD, RunData, checked_records, checked_split, run_vocabulary, tokenizer_records
from vlekit.runs.experiment import ExperimentConfig
from vlekit.runs.folder import make_preprocessor, make_vqa_dataset

@dataclass(frozen=True)
class NoOptions:
    """A task without options of its own (its options are the experiment's ``data`` section)."""


@register_task("q2a", config=NoOptions, description="VCR Q->A: pick the answer (4 choices)")
class VCRTask(Task):
    """VCR multiple choice (Q->A; ``qa2r``: QA->R, the gold answer in the query): accuracy over the C
    choices. The records are read and checked once; ``data.task`` tells the preprocessor which texts."""

    head = "vcr-multiple-choice"
    multiple_choice = True
    chance = 1 / NUM_CHOICES
    loss_label = "cross-entropy over choices"

    def read(self, config: ExperimentConfig) -> RunData:
        data = config.data
        if data.train_annotations is None:
            raise ValueError("data.train_annotations is not set (a VCR train.jsonl)")
        train_records = checked_records(data, data.train_annotations)
        val_records = checked_records(data, data.val_annotations) if data.val_annotations else None
        return RunData(text=[train_records], vcr_train=train_records, vcr_val=val_records)

    def datasets(self, config: ExperimentConfig, run_data: RunData, tokenizer: Any, model: VCRModel) -> tuple[Any, Any]:
        data = config.data
        preprocessor = make_preprocessor(tokenizer, model, images_root=data.images, **data.preprocess_options())
        train_set = VCRDataset(run_data.vcr_train, preprocessor, skip_bad=data.skip_bad)
        val_set = None if run_data.vcr_val is None else VCRDataset(run_data.vcr_val, preprocessor, skip_bad=data.skip_bad)
        return train_set, val_set

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float((logits.argmax(-1) == labels).float().mean())


TASKS.register_preset("qa2r", base="q2a", description="VCR QA->R: pick the rationale for the gold answer (4 choices)")


@register_task("vqa", config=NoOptions, description="VQA v2: score the answer vocabulary (soft VQA accuracy)")
class VQATask(Task):
    """VQA v2 (one question per image): the ``vqa`` head over the run's answer vocabulary (``data.answers``,
    an official checkpoint's, or the training answers seen ``data.answer_min_count`` times), scored
    with the official soft accuracy of the arg-max answer."""

    head = VQA_HEAD
    multiple_choice = False
    loss_label = "BCE x answers (soft scores)"  # chance: the majority answer's accuracy, which depends on the data

    def read(self, config: ExperimentConfig) -> RunData:
        data = config.data
        train_split = checked_split(data, "train")
        vocabulary = run_vocabulary(data, train_split, init_from_vle=config.train.init_from_vle)
        return RunData(text=tokenizer_records(train_split), vocabulary=vocabulary, vqa_train=train_split,
                       vqa_val=checked_split(data, "val"))

    def datasets(self, config: ExperimentConfig, run_data: RunData, tokenizer: Any, model: VCRModel) -> tuple[Any, Any]:
        options = config.data.preprocess_options()
        train_set = make_vqa_dataset(run_data.vqa_train, tokenizer, model, **options)
        val_set = make_vqa_dataset(run_data.vqa_val, tokenizer, model, **options) if run_data.vqa_val else None
        return train_set, val_set

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float(soft_accuracy(logits, labels))


def task_for(name: str) -> Task:
    """The task ``data.task`` names (unknown names: the known ones and close matches)."""
    return TASKS.build(name)
