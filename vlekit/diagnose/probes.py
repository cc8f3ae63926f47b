"""Diagnostic probes: what a trained run (VCR, or VQA) does when one source of information is taken away.

A probe is a class with a frozen dataclass config and one registration line, like a component (a
third-party probe registers the same way, in a module or a notebook cell, or through the entry-point
group ``vlekit.probes``)::

    @dataclass(frozen=True)
    class MyProbeConfig:
        seed: int = 0

    @vlekit.registry.register_probe("my-probe", config=MyProbeConfig)
    class MyProbe(Probe):
        '''One line for `vlekit list`.'''
        def transform(self, batch, context):       # a batch-level probe: change the batch contract ...
            return {**batch, "text_type_ids": torch.zeros_like(batch["text_type_ids"])}
        # ... or override run(context) -> ProbeOutcome (records, several passes, no model at all)

Each probe changes one thing, where the change is exact: on the batch contract (DESIGN.md section 3)
or on the records before preprocessing. A probe says which tasks it applies to (``tasks``): most put a VCR
run to the test; ``full``, ``image-blind`` and ``question-blind`` apply to VQA too, and ``image-swap`` to VQA only.

==================  ===========================================================  =========
probe               what it changes                                              where
==================  ===========================================================  =========
full                nothing: the run as trained (the reference row)               -
image-blind         pixels -> the split's mean image (object tokens pooled from it) batch
no-object-tokens    object slots masked out of the image stream                  batch
no-type-ids         object tags removed from the text (``text_type_ids`` -> 0)    batch
question-blind      question tokens masked, and the objects only it names        batch
choice-permutation  the choices reordered (4 orders per question, each gold      records
                    position once); accuracy by gold position, and how often
                    the prediction follows the content
name-swap           person names changed consistently within a question          records
box-swap            each object's box given to another object of its class       metadata
                    (text and picture unchanged: a mention points at another
                    region); accuracy on the questions whose named objects moved
word-overlap        no model: the choice sharing most words with the question    records
                    (and the gold answer, for QA->R), ties broken at random
image-swap          VQA: each question shown another question's image (a real    records
                    picture, the wrong one)
==================  ===========================================================  =========
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from data_prep.constants import NUM_CHOICES, PERSON_NAMES, VQA_TASK
from data_prep.geometry import box_cells
from data_prep.text import person_names
from data_prep.vcr import load_geometry
from vlekit.diagnose.changes import (  # the probes' changes, also for third-party probes as ``probes.<name>``
    CHOICE_KEYS,
    LABEL_KEY,
    VCR_TASKS,
    Batch,
    blind_pixels,
    latin_orders,
    mentioned_objects,
    permute_choices,
    question_masked,
    question_positions,
    rendered_words,
    swap_boxes,
    swap_images,
    swap_person_names,
    without_object_tokens,
    without_text_types,
    word_overlap_choice,
    word_overlaps,
)
from vlekit.registry import register_probe



@dataclass(frozen=True, eq=False)
class Pass:
    """One pass of the run over the split: its records changed one for one (``None``: the split's), their
    boxes (``metadata``: per record ``{"boxes", "width", "height"}``; ``None``: the metadata files), each
    batch changed by ``transform``; ``pixels=False``: no image decoded (the transform replaces them)."""

    transform: Callable[[Batch], Batch] | None = None
    records: Sequence[Any] | None = None
    metadata: Sequence[Mapping[str, Any]] | None = None
    pixels: bool = True


class ProbeContext(Protocol):
    """What a probe may use (``vlekit.diagnose.context.DiagnoseContext`` implements it)."""

    task: str  # "q2a", "qa2r" or "vqa"
    records: Sequence[Any]  # the split's VCR records, labelled (VQA: its examples, with their human answers)
    images: Path  # the split's vcr1images folder (images and metadata)
    labels: np.ndarray | None  # [N] the gold choice of each record (the task's label); VQA: None (see score)
    chance: float  # VCR: 1 / C; VQA: the split's majority answer's accuracy
    sep_token_id: int  # the run's tokenizer's [SEP]
    seed: int

    def score(self, logits: np.ndarray) -> np.ndarray:
        """``[N]`` the score of each question's arg-max prediction: VCR 1 / 0, VQA the official accuracy."""

    def logits(self, name: str, *, transform: Callable[[Batch], Batch] | None = None,
               records: Sequence[Mapping[str, Any]] | None = None, pixels: bool = True,
               metadata: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """``[N, C]`` logits of the run on ``records`` (default: the split's), each batch changed by
        ``transform``; ``pixels=False`` skips decoding images (the batch holds zeros); ``metadata``: per
        record, ``{"boxes", "width", "height"}`` instead of its metadata file. Cached by ``name``."""

    def pass_logits(self, name: str, spec: Pass) -> np.ndarray:
        """:meth:`logits` of the pass ``spec``, cached by ``name`` (run now unless prefetched)."""

    def mean_pixels(self) -> torch.Tensor:
        """The split's mean image ``[3, S, S]``, normalised as the model takes it."""


@dataclass(frozen=True)
class ProbeOutcome:
    """What a probe measured on each question of the split.

    scores: ``[N]`` in ``[0, 1]``: 1 / 0 when the probe makes one prediction per question; a share
        when it makes several (``choice-permutation``: right in how many of its orders).
    pairs: ``[N]`` bool, one right / wrong outcome per question for McNemar's test when ``scores``
        are shares (``None``: ``scores`` are 0 / 1 and serve).
    details: the probe's own figures (JSON-ready), reported beside its accuracy.
    """

    scores: np.ndarray
    pairs: np.ndarray | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels: np.ndarray, **details: Any) -> ProbeOutcome:
        return cls(scores=(np.asarray(logits).argmax(-1) == labels).astype(float), details=details)

    @property
    def binary(self) -> bool:
        """Whether the probe has one right / wrong outcome per question (McNemar's test applies)."""
        return self.pairs is not None or bool(np.isin(np.asarray(self.scores, dtype=float), (0.0, 1.0)).all())

    @property
    def outcomes(self) -> np.ndarray:
        """``[N]`` bool: the right / wrong outcome per question that McNemar's test pairs."""
        if self.pairs is not None:
            return np.asarray(self.pairs, dtype=bool)
        scores = np.asarray(self.scores, dtype=float)
        if not np.isin(scores, (0.0, 1.0)).all():
            raise ValueError("ProbeOutcome: scores are shares, not 0 / 1: give pairs= (one 0 / 1 outcome per question)")
        return scores > 0.5


class Probe:
    """A way of putting a trained run to the test. Subclasses override :meth:`transform` (a change of
    every batch, in the batch contract) or :meth:`run` (anything else: records, several passes, no model);
    one that runs the model on changed records says so in :meth:`passes`, so that ``vlekit diagnose`` runs
    every probe's passes together, each image decoded once.

    Class attributes: ``uses_model`` (False for a text-only baseline such as ``word-overlap``),
    ``needs_pixels`` (False when the transform replaces the pixels, so images need not be decoded) and
    ``tasks`` (the runs it puts to the test: VCR's by default).
    """

    uses_model: ClassVar[bool] = True
    needs_pixels: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = VCR_TASKS

    def __init__(self, *, config: Any) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    @property
    def batch_level(self) -> bool:
        """Whether the probe is a change of the batch (several such probes share one pass over the images)."""
        return type(self).transform is not Probe.transform

    def transform(self, batch: Batch, context: ProbeContext) -> Batch:
        """The batch (the contract's keys, on the model's device) as the probe changes it: a new dict,
        with changed tensors replaced, never written in place (other probes read the same batch)."""
        raise NotImplementedError(f"probe {self.name!r} overrides neither transform nor run")

    def passes(self, context: ProbeContext) -> dict[str, Pass]:
        """The passes :meth:`run` will ask the context for, by name (a batch-level probe: its own), so that
        they run together with the other probes'. Optional: a pass not declared runs when asked for."""
        if self.batch_level:
            return {self.name: Pass(transform=lambda batch: self.transform(batch, context), pixels=self.needs_pixels)}
        return {}

    def run(self, context: ProbeContext) -> ProbeOutcome:
        """The probe on the split: by default, the model on every batch changed by :meth:`transform`."""
        if not self.batch_level:
            raise NotImplementedError(f"probe {self.name!r} overrides neither transform nor run")
        logits = context.pass_logits(self.name, self.passes(context)[self.name])
        return ProbeOutcome(scores=context.score(logits))


@dataclass(frozen=True)
class NoOptions:
    """A probe without options."""


@dataclass(frozen=True)
class SeededProbeConfig:
    """seed: the random draws of the probe (orders, names, ties) are a pure function of it."""

    seed: int = 0


# -- the probes -------------------------------------------------------------------------------------------
@register_probe("full", config=NoOptions)
class Full(Probe):
    """The run as trained: the reference row every other probe is compared with."""

    tasks = (*VCR_TASKS, VQA_TASK)

    def transform(self, batch: Batch, context: ProbeContext) -> Batch:
        return batch


@register_probe("image-blind", config=NoOptions)
class ImageBlind(Probe):
    """No visual information: every image replaced by the split's mean image (object tokens pooled from it)."""

    needs_pixels = False
    tasks = (*VCR_TASKS, VQA_TASK)

    def transform(self, batch: Batch, context: ProbeContext) -> Batch:
        return blind_pixels(batch, context.mean_pixels())


@register_probe("no-object-tokens", config=NoOptions)
class NoObjectTokens(Probe):
    """No object tokens in the image stream (the text keeps its object tags)."""

    def transform(self, batch: Batch, context: ProbeContext) -> Batch:
        return without_object_tokens(batch)


@register_probe("no-type-ids", config=NoOptions)
class NoTypeIds(Probe):
    """Object tags removed from the text: text_type_ids all 0 (object tokens keep theirs)."""

    def transform(self, batch: Batch, context: ProbeContext) -> Batch:
        return without_text_types(batch)


@register_probe("question-blind", config=NoOptions)
class QuestionBlind(Probe):
    """The question's tokens masked (and objects only it names): the answer-only baseline (VQA: the image alone)."""

    tasks = (*VCR_TASKS, VQA_TASK)

    def transform(self, batch: Batch, context: ProbeContext) -> Batch:
        return question_masked(batch, context.sep_token_id)


@register_probe("choice-permutation", config=SeededProbeConfig)
class ChoicePermutation(Probe):
    """Choices reordered per question (4 orders, each gold position once): position bias, content-following."""

    def _orders(self, context: ProbeContext) -> np.ndarray:
        return latin_orders(len(context.records), seed=context.seed + self.config.seed)

    def passes(self, context: ProbeContext) -> dict[str, Pass]:
        return {f"{self.name}/order-{r}": Pass(records=[permute_choices(record, o, task=context.task)
                                                        for record, o in zip(context.records, order)])
                for r, order in enumerate(self._orders(context))}

    def run(self, context: ProbeContext) -> ProbeOutcome:
        labels = context.labels
        orders = self._orders(context)
        rows = np.arange(len(labels))
        chosen, gold_positions = [], []
        for order, (name, spec) in zip(orders, self.passes(context).items()):
            logits = context.pass_logits(name, spec)
            chosen.append(order[rows, logits.argmax(-1)])  # the original choice each prediction points at
            gold_positions.append((order == labels[:, None]).argmax(-1))
        chosen_, positions = np.stack(chosen), np.stack(gold_positions)  # [orders, N]
        correct = chosen_ == labels[None]
        by_position = {str(p): float(correct[positions == p].mean()) for p in range(NUM_CHOICES)}
        return ProbeOutcome(
            scores=correct.mean(0), pairs=correct[0],
            details={"orders": len(orders), "by_gold_position": by_position,
                     "follows_content": float((chosen_ == chosen_[:1]).all(0).mean())})


@register_probe("name-swap", config=SeededProbeConfig)
class NameSwap(Probe):
    """Person names changed consistently within each question: the prediction should not change."""

    def passes(self, context: ProbeContext) -> dict[str, Pass]:
        rng = np.random.default_rng(context.seed + self.config.seed)
        shifts = rng.integers(1, len(PERSON_NAMES), size=len(context.records))
        naming = context.trained.data.get("person_names", "by-query")  # a compat="vle" run: not recorded
        answer = (lambda record: record.get("answer_label")) if context.task == "qa2r" else (lambda record: None)
        return {self.name: Pass(records=[swap_person_names(record, int(s), naming=naming, answer=answer(record))
                                         for record, s in zip(context.records, shifts)])}

    def run(self, context: ProbeContext) -> ProbeOutcome:
        logits = context.pass_logits(self.name, self.passes(context)[self.name])
        full = context.logits("full")
        with_persons = np.array([bool(person_names(r, "by-first-mention")) for r in context.records])  # persons mentioned
        changed = logits.argmax(-1) != full.argmax(-1)
        return ProbeOutcome.from_logits(
            logits, context.labels, questions_with_persons=int(with_persons.sum()),
            changed_predictions=float(changed[with_persons].mean()) if with_persons.any() else 0.0)


@register_probe("box-swap", config=SeededProbeConfig)
class BoxSwap(Probe):
    """Each object's box given to another object of its class: same text and picture, the mention points elsewhere."""

    def _swapped(self, context: ProbeContext) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Per record, its boxes swapped (as metadata), and whether an object its texts name moved to other cells
        (worked out once per context: ``passes`` and ``run`` both need it, and it reads every metadata file)."""
        cached = getattr(self, "_swapped_on", None)
        if cached is not None and cached[0] is context:
            return cached[1]
        rng = np.random.default_rng(context.seed + self.config.seed)
        config = context.trained.preprocessor(images_root=context.images).config
        metadata, moved = [], []
        for record in context.records:
            geometry = load_geometry(context.images, record)
            boxes = swap_boxes(record["objects"], geometry.boxes, rng=rng)
            metadata.append({"boxes": boxes.tolist(), "width": geometry.width, "height": geometry.height})
            cells = [box_cells(b, width=geometry.width, height=geometry.height, image_size=config.image_size,
                               patch_size=config.patch_size, geometry=config.geometry) for b in (geometry.boxes, boxes)]
            named = sorted(mentioned_objects(record, task=context.task))
            moved.append(bool(named) and not np.array_equal(cells[0][named], cells[1][named]))
        self._swapped_on = (context, (metadata, np.array(moved, dtype=bool)))
        return self._swapped_on[1]

    def passes(self, context: ProbeContext) -> dict[str, Pass]:
        return {self.name: Pass(metadata=self._swapped(context)[0])}

    def run(self, context: ProbeContext) -> ProbeOutcome:
        metadata, moved = self._swapped(context)
        logits = context.pass_logits(self.name, Pass(metadata=metadata))
        full = context.logits("full")
        rows = moved
        right = logits.argmax(-1) == context.labels
        return ProbeOutcome(scores=right.astype(float), details={
            "questions_moved": int(rows.sum()),
            "accuracy_moved": float(right[rows].mean()) if rows.any() else None,
            "full_accuracy_moved": float((full.argmax(-1) == context.labels)[rows].mean()) if rows.any() else None,
            "changed_predictions_moved": float((logits.argmax(-1) != full.argmax(-1))[rows].mean()) if rows.any() else None,
        })


@register_probe("word-overlap", config=SeededProbeConfig)
class WordOverlap(Probe):
    """No model: the choice sharing most words with the question (and gold answer), Ye & Kovashka's shortcut."""

    uses_model = False

    def run(self, context: ProbeContext) -> ProbeOutcome:
        rng = np.random.default_rng(context.seed + self.config.seed)
        picks = np.array([word_overlap_choice(record, task=context.task, rng=rng) for record in context.records])
        return ProbeOutcome(scores=(picks == context.labels).astype(float))


@register_probe("image-swap", config=SeededProbeConfig)
class ImageSwap(Probe):
    """VQA: each question shown another question's image: a real picture, the wrong one."""

    tasks = (VQA_TASK,)

    def passes(self, context: ProbeContext) -> dict[str, Pass]:
        rng = np.random.default_rng(context.seed + self.config.seed)
        return {self.name: Pass(records=swap_images(context.records, rng=rng))}

    def run(self, context: ProbeContext) -> ProbeOutcome:
        logits = context.pass_logits(self.name, self.passes(context)[self.name])
        return ProbeOutcome(scores=context.score(logits))
