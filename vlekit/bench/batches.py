"""Synthetic VCR batches for ``vlekit bench``: tensors already in the batch contract (DESIGN.md section 3).

Owns the text-length and object-count model (VCR-like lengths, longest-first truncation, padding to the
batch's longest sequence rounded up to `PAD_MULTIPLE` or to a fixed length) and `distinct_text_lengths`,
which says how many padded shapes a stream of batches has (each is one ``torch.compile`` graph).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from data_prep.constants import NUM_CHOICES, TASKS

MAX_TEXT_LENGTH = 80  # VLE's max_length for VCR
PAD_MULTIPLE = 8  # per-batch padding rounds up to this (tensor-core friendly)
MEAN_WORDS = {"question": 6.0, "answer": 8.0, "rationale": 16.0}  # VCR's mean lengths in words
SUBWORD_RATE = 0.3  # each word adds a sub-token with this probability: ~1.3 sub-tokens per word
PAD_ID, CLS_ID, SEP_ID = 0, 1, 2  # DeBERTa-v3's special ids
WORD_IDS = (3, 100)  # ordinary tokens; every registered text encoder accepts ids below 100
MAX_OBJECTS = 4  # referenced objects per choice: 1..4
IMAGE_OBJECTS = 8  # detected objects per image that choices refer to


def _token_counts(mean_words: float, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Sub-token counts of texts with ``mean_words`` words on average: words ~ 1 + Poisson(mean - 1)."""
    words = 1 + torch.poisson(torch.full(shape, mean_words - 1.0), generator=generator)
    subwords = torch.binomial(words, torch.full(shape, SUBWORD_RATE), generator=generator)
    return (words + subwords).long()


def _truncate_longest_first(first: torch.Tensor, second: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut tokens from the end of the longer part until ``first + second <= budget`` (as tokenizers do)."""
    over = first + second > budget
    short = torch.minimum(first, second)
    kept_short = torch.where(over, torch.minimum(short, torch.full_like(short, budget // 2)), short)
    kept_long = torch.where(over, budget - kept_short, torch.maximum(first, second))
    first_is_short = first <= second
    return torch.where(first_is_short, kept_short, kept_long), torch.where(first_is_short, kept_long, kept_short)


def synthetic_batch(
    *,
    batch_size: int,
    image_size: int,
    grid: int,
    task: str = "q2a",
    pad_to: int | None = None,
    choices: int = NUM_CHOICES,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A random VCR batch in the batch contract, with VCR-like text lengths and object counts (on CPU).

    Text: ``[CLS] question [SEP] answer [SEP]`` (q2a) or ``[CLS] question [SEP] gold answer [SEP]
    rationale [SEP]`` (qa2r); questions, answers and rationales average 6, 8 and 16 words of ~1.3
    sub-tokens; truncated longest-first to ``pad_to`` (or 80), padded to ``pad_to`` or to the batch's
    longest sequence rounded up to a multiple of 8. Objects: each image has 8 boxes covering random
    rectangles of the ``grid x grid`` patch grid; each choice refers to 1-4 distinct ones, numbered in
    order of first mention, each mentioned by one sub-token tagged ``k + 2``.

    Returns ``input_ids, attention_mask, text_type_ids`` long ``[B, C, L]``; ``pixel_values`` float
    ``[B, 3, image_size, image_size]``; ``object_patch_mask`` bool ``[B, C, K, grid**2]`` (K the most
    objects of any choice); ``object_type_ids, object_mask`` long ``[B, C, K]``; ``labels`` long ``[B]``.
    """
    if task not in TASKS:
        raise ValueError(f"synthetic_batch: task must be one of {', '.join(TASKS)}, got {task!r}")
    if pad_to is not None and pad_to < 16:
        raise ValueError(f"synthetic_batch: pad_to {pad_to} is too short for a VCR question and choice (use >= 16)")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    b, c = batch_size, choices

    # Text lengths: the question (and in qa2r the gold answer) is shared by the question's choices.
    question = _token_counts(MEAN_WORDS["question"], (b, 1), g).expand(b, c)
    if task == "q2a":
        first, second = question, _token_counts(MEAN_WORDS["answer"], (b, c), g)
    else:
        gold = _token_counts(MEAN_WORDS["answer"], (b, 1), g).expand(b, c)
        first, second = question + 1 + gold, _token_counts(MEAN_WORDS["rationale"], (b, c), g)
    limit = pad_to or MAX_TEXT_LENGTH
    first, second = _truncate_longest_first(first, second, budget=limit - 3)
    lengths = first + 2 + second + 1  # [CLS] first [SEP] second [SEP]
    length = pad_to or math.ceil(int(lengths.max()) / PAD_MULTIPLE) * PAD_MULTIPLE

    positions = torch.arange(length)
    real = positions < lengths[..., None]
    separators = (positions == first[..., None] + 1) | (positions == lengths[..., None] - 1)
    if task == "qa2r":  # the [SEP] between question and gold answer, unless truncated away
        separators |= (positions == question[..., None] + 1) & (question[..., None] + 1 < first[..., None])
    input_ids = torch.randint(*WORD_IDS, (b, c, length), generator=g)
    input_ids = torch.where(separators, SEP_ID, input_ids)
    input_ids[..., 0] = CLS_ID
    input_ids = torch.where(real, input_ids, PAD_ID)
    content = real & ~separators & (positions > 0)

    # Referenced objects: 1..4 per choice, mentioned at random content positions in slot order.
    counts = torch.minimum(torch.randint(1, MAX_OBJECTS + 1, (b, c), generator=g), content.sum(-1))
    slots = int(counts.max())
    used = torch.arange(slots) < counts[..., None]  # [B, C, K]
    slot_types = (torch.arange(slots) + 2) * used
    scores = torch.rand(b, c, length, generator=g).masked_fill(~content, -1.0)
    mentions = scores.topk(slots, dim=-1).indices  # the first `count` are content positions
    mentions = torch.where(used, mentions, length).sort(dim=-1).values  # text order; unused -> a spare column
    text_type_ids = torch.zeros(b, c, length + 1, dtype=torch.long).scatter_(-1, mentions, slot_types)[..., :length]

    # Boxes: random rectangles of the patch grid (inclusive cell ranges), row-major patches.
    xs = torch.randint(0, grid, (b, IMAGE_OBJECTS, 2), generator=g).sort(dim=-1).values
    ys = torch.randint(0, grid, (b, IMAGE_OBJECTS, 2), generator=g).sort(dim=-1).values
    cells = torch.arange(grid)
    in_x = (cells >= xs[..., :1]) & (cells <= xs[..., 1:])  # [B, O, grid]
    in_y = (cells >= ys[..., :1]) & (cells <= ys[..., 1:])
    box_patches = (in_y[..., :, None] & in_x[..., None, :]).flatten(-2)  # [B, O, grid**2]
    chosen = torch.rand(b, c, IMAGE_OBJECTS, generator=g).argsort(dim=-1)[..., :slots]  # distinct per choice
    object_patch_mask = box_patches[torch.arange(b)[:, None, None], chosen] & used[..., None]

    return {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "text_type_ids": text_type_ids,
        "pixel_values": torch.randn(b, 3, image_size, image_size, generator=g),
        "object_patch_mask": object_patch_mask,
        "object_type_ids": slot_types,
        "object_mask": used.long(),
        "labels": torch.randint(0, c, (b,), generator=g),
    }


def distinct_text_lengths(batches: Iterable[Mapping[str, torch.Tensor]]) -> list[int]:
    """The padded text lengths ``L`` that occur in ``batches``, sorted: each is one shape that
    ``torch.compile`` (without dynamic shapes) traces once; per-batch padding to a multiple of
    `PAD_MULTIPLE` keeps them to at most ``MAX_TEXT_LENGTH / PAD_MULTIPLE``."""
    return sorted({int(batch["input_ids"].shape[-1]) for batch in batches})
