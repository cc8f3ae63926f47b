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

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from data_prep.constants import NUM_CHOICES, PERSON_NAMES, VQA_TASK
from data_prep.geometry import box_cells
from data_prep.text import person_names, render_tokens
from data_prep.vcr import load_geometry
from vlekit.registry import register_probe

Batch = dict[str, torch.Tensor]
# Per task: the record keys that hold the C choices (and their per-choice annotations), and the label.
CHOICE_KEYS: dict[str, tuple[str, ...]] = {
    "q2a": ("answer_choices", "answer_match_iter", "answer_sources", "answer_likelihoods"),
    "qa2r": ("rationale_choices", "rationale_match_iter", "rationale_sources", "rationale_likelihoods"),
}
LABEL_KEY: dict[str, str] = {"q2a": "answer_label", "qa2r": "rationale_label"}
VCR_TASKS = tuple(LABEL_KEY)


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


# -- batch-level changes (pure functions of the batch contract) -----------------------------------------
def blind_pixels(batch: Batch, mean_pixels: torch.Tensor) -> Batch:
    """Every image replaced by ``mean_pixels [3, S, S]`` (normalised floats): the model's object tokens
    are then pooled from the mean image too, so nothing of the question's own image is left."""
    pixels = batch["pixel_values"]
    if tuple(mean_pixels.shape) != tuple(pixels.shape[1:]):
        raise ValueError(f"image-blind: the mean image has shape {list(mean_pixels.shape)}, the batch's images "
                         f"{list(pixels.shape[1:])}: compute the mean with the run's own preprocessing")
    mean = mean_pixels.to(device=pixels.device, dtype=torch.float32)
    return {**batch, "pixel_values": mean.expand(pixels.shape[0], *mean.shape).contiguous()}


def without_object_tokens(batch: Batch) -> Batch:
    """Every object slot turned into padding (mask 0, type 0, no patches): no object tokens in the
    image stream; the mentions in the text keep their type ids."""
    return {**batch, "object_mask": torch.zeros_like(batch["object_mask"]),
            "object_type_ids": torch.zeros_like(batch["object_type_ids"]),
            "object_patch_mask": torch.zeros_like(batch["object_patch_mask"])}


def without_text_types(batch: Batch) -> Batch:
    """Object tags removed from the text: every ``text_type_ids`` 0 (the object tokens keep theirs)."""
    return {**batch, "text_type_ids": torch.zeros_like(batch["text_type_ids"])}


def question_positions(input_ids: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """``[B, C, L]`` (VQA: ``[B, L]``) bool: the question's tokens, between the first token ([CLS]) and the
    first [SEP]."""
    is_sep = input_ids == sep_token_id
    if not bool(is_sep.any(-1).all()):
        raise ValueError(f"question-blind: a text row has no [SEP] (id {sep_token_id}); expected the VCR layout "
                         f"[CLS] question [SEP] ... from the run's own tokenizer")
    first_sep = is_sep.int().argmax(-1, keepdim=True)  # [B, C, 1]: argmax is the first maximum
    position = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (position >= 1) & (position < first_sep)


def question_masked(batch: Batch, sep_token_id: int) -> Batch:
    """The question's tokens masked out of attention (and their tags dropped), and every object slot
    that only the question names masked too, so no mention of the question survives as an object token:
    what is left is the choice (QA->R: the gold answer and the rationale) with the image. A VQA batch
    (no type ids, no objects): [CLS] and [SEP] with the image."""
    question = question_positions(batch["input_ids"], sep_token_id)
    attention = batch["attention_mask"] * (~question).to(batch["attention_mask"].dtype)
    if "text_type_ids" not in batch:
        return {**batch, "attention_mask": attention}
    types = torch.where(question, torch.zeros_like(batch["text_type_ids"]), batch["text_type_ids"])
    slot_types = batch["object_type_ids"]  # [B, C, K]
    named = ((types.unsqueeze(-2) == slot_types.unsqueeze(-1)) & attention.bool().unsqueeze(-2)).any(-1)
    kept = named & batch["object_mask"].bool()
    return {**batch, "attention_mask": attention, "text_type_ids": types,
            "object_mask": batch["object_mask"] * kept.to(batch["object_mask"].dtype),
            "object_type_ids": torch.where(kept, slot_types, torch.zeros_like(slot_types)),
            "object_patch_mask": batch["object_patch_mask"] & kept.unsqueeze(-1)}


# -- record-level changes --------------------------------------------------------------------------------
def latin_orders(num_questions: int, *, seed: int, choices: int = NUM_CHOICES) -> np.ndarray:
    """``[choices, N, choices]``: per question, ``choices`` orders of its choices (order ``r`` puts
    original choice ``orders[r, n, j]`` at position ``j``): a random permutation shifted cyclically, so
    across the orders every choice, and so the gold one, stands once at every position."""
    rng = np.random.default_rng(seed)
    base = np.argsort(rng.random((num_questions, choices)), axis=1)  # a uniform random permutation per question
    shifts = (np.arange(choices)[:, None] + np.arange(choices)[None, :]) % choices  # [r, j] -> position in base
    return base[:, shifts].transpose(1, 0, 2)


def permute_choices(record: Mapping[str, Any], order: Sequence[int], *, task: str) -> dict[str, Any]:
    """``record`` with its task's choices (and their per-choice annotations) reordered so that position
    ``j`` holds original choice ``order[j]``; the label follows the gold choice."""
    order = [int(i) for i in order]
    if sorted(order) != list(range(NUM_CHOICES)):
        raise ValueError(f"choice order {order} is not a permutation of 0..{NUM_CHOICES - 1}")
    changed = dict(record)
    for key in CHOICE_KEYS[task]:
        values = record.get(key)
        if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == NUM_CHOICES:
            changed[key] = [values[i] for i in order]
    label = record.get(LABEL_KEY[task])
    if label is not None:
        changed[LABEL_KEY[task]] = order.index(int(label))
    return changed


def swap_person_names(record: Mapping[str, Any], shift: int, *, naming: str = "by-query",
                      answer: int | None = None) -> dict[str, Any]:
    """``record`` whose persons are called by other names, consistently in the question and every choice:
    the name a person gets under ``naming`` (the run's ``person_names``, ``data_prep.text``; ``answer``: the
    QA->R query's) moves ``shift`` places along VCR's name list. Done by writing the new name as the object's class name, which the text
    rendering uses as the word (and tags as the object's mention), so the objects and boxes stay."""
    if shift % len(PERSON_NAMES) == 0:
        raise ValueError(f"name-swap: shift {shift} keeps every name; use 1..{len(PERSON_NAMES) - 1}")
    objects = list(record["objects"])
    for index, name in person_names(record, naming, answer=answer).items():
        objects[index] = PERSON_NAMES[(PERSON_NAMES.index(name) + shift) % len(PERSON_NAMES)]
    return {**record, "objects": objects}


def mentioned_objects(record: Mapping[str, Any], *, task: str) -> set[int]:
    """The objects the texts of ``record``'s pairs name: the question and the answers (QA->R: the question,
    the gold answer and the rationales)."""
    texts = [record["question"], *record["answer_choices"]] if task == "q2a" else [
        record["question"], record["answer_choices"][record["answer_label"]], *record["rationale_choices"]]
    return {int(index) for tokens in texts for token in tokens if not isinstance(token, str) for index in token}


def swap_boxes(objects: Sequence[str], boxes: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """``boxes [M, 4]`` with each object's box given to another object of its class: within every class
    with two objects or more in ``objects`` (``objects[i]`` is box ``i``'s class), a random cyclic
    derangement, so no such object keeps its own box. A class of one object, and boxes past
    ``len(objects)``, keep theirs. Returns a new array."""
    boxes = np.asarray(boxes)
    swapped = boxes.copy()
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(objects):
        groups.setdefault(name, []).append(index)
    for members in groups.values():
        if len(members) >= 2:
            order = rng.permutation(members)
            swapped[order] = boxes[np.roll(order, -1)]  # order[j] takes order[j + 1]'s box
    return swapped


_WORD = re.compile(r"\w+")


def rendered_words(tokens: Sequence[Any], record: Mapping[str, Any]) -> set[str]:
    """The lower-cased words of VCR ``tokens`` as the model reads them (objects by their names)."""
    text, _ = render_tokens(tokens, record["objects"], person_names(record))
    return {word.lower() for word in _WORD.findall(text)}


def word_overlaps(record: Mapping[str, Any], *, task: str) -> list[int]:
    """Per choice, how many distinct words it shares with the query: the question (and, for QA->R,
    the gold answer), object mentions rendered as names (Ye & Kovashka's shortcut)."""
    query = rendered_words(record["question"], record)
    if task == "qa2r":
        query |= rendered_words(record["answer_choices"][record["answer_label"]], record)
    return [len(query & rendered_words(choice, record)) for choice in record[CHOICE_KEYS[task][0]]]


def word_overlap_choice(record: Mapping[str, Any], *, task: str, rng: np.random.Generator) -> int:
    """The choice with the most words in common with the query; ties broken uniformly at random."""
    overlaps = np.array(word_overlaps(record, task=task))
    return int(rng.choice(np.flatnonzero(overlaps == overlaps.max())))


def swap_images(examples: Sequence[Any], *, rng: np.random.Generator) -> list[Any]:
    """VQA ``examples`` (``data_prep.vqa.VQAExample``), each showing another image of the split: the
    distinct images in a random cycle, every question of an image given the next image's path."""
    images = list(dict.fromkeys(example.image_path for example in examples))
    if len(images) < 2:
        raise ValueError(f"image-swap: every question of the split is about one image ({images[0] if images else '-'}); "
                         f"it needs two images or more")
    order = [images[i] for i in rng.permutation(len(images))]
    shown = dict(zip(order, order[1:] + order[:1]))
    return [dataclasses.replace(example, image_path=shown[example.image_path]) for example in examples]


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
        """Per record, its boxes swapped (as metadata), and whether an object its texts name moved to other cells."""
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
        return metadata, np.array(moved, dtype=bool)

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
