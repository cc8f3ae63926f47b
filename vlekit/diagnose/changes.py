"""The changes the probes make (``vlekit.diagnose.probes``), as pure functions: of a batch in the batch
contract (DESIGN.md section 3), of VCR records before preprocessing (choice orders, person names, boxes), or
of VQA examples (the image each question shows). Each changes one thing, exactly; none writes in place.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from data_prep.constants import NUM_CHOICES, PERSON_NAMES
from data_prep.text import person_names, render_tokens

Batch = dict[str, torch.Tensor]
# Per task: the record keys that hold the C choices (and their per-choice annotations), and the label.
CHOICE_KEYS: dict[str, tuple[str, ...]] = {
    "q2a": ("answer_choices", "answer_match_iter", "answer_sources", "answer_likelihoods"),
    "qa2r": ("rationale_choices", "rationale_match_iter", "rationale_sources", "rationale_likelihoods"),
}
LABEL_KEY: dict[str, str] = {"q2a": "answer_label", "qa2r": "rationale_label"}
VCR_TASKS = tuple(LABEL_KEY)


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
