"""Batching: prepared examples -> the VCR batch contract (DESIGN.md section 3).

Owns ``collate_examples``: padding of the C sequences, the object slots as patch masks and type
ids, and the checks that examples fit the preprocessor's grid and layout.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from data_prep.constants import NUM_CHOICES

__all__ = ["collate_examples"]


def collate_examples(
    examples: Sequence[Mapping[str, Any]], *, image_size: int, grid: int, pad_to_multiple_of: int | None, pad_id: int
) -> dict[str, torch.Tensor]:
    """Stack examples into the VCR batch contract (DESIGN.md section 3): images of side ``image_size``,
    a ``grid x grid`` patch grid, text padded with ``pad_id`` (the ``PreprocessConfig`` values).

    Returns:
        ``input_ids``, ``attention_mask``, ``text_type_ids``: long ``[B, C, L]``, L the longest
        sequence rounded up to ``pad_to_multiple_of``; ``pixel_values`` ``[B, 3, S, S]`` in the
        examples' dtype (float32 normalised, or uint8 for the model to normalise);
        ``object_patch_mask`` bool ``[B, C, K, P]`` (K the most slots of any choice, at least 1);
        ``object_type_ids`` long ``[B, C, K]`` (``k + 2``, 0 on padding); ``object_mask`` long
        ``[B, C, K]``; ``labels`` long ``[B]`` only when every example has a label.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    size, num_patches = image_size, grid * grid
    for i, example in enumerate(examples):
        for key in ("input_ids", "text_type_ids", "object_ids", "object_patches"):
            if len(example[key]) != NUM_CHOICES:
                raise ValueError(
                    f"example {i} ({example.get('annot_id')}): '{key}' has {len(example[key])} choices, "
                    f"expected {NUM_CHOICES}"
                )
        if "pixel_values" not in example:
            raise ValueError(
                f"example {i} ({example.get('annot_id')}) has no 'pixel_values': collate the output of "
                f"the preprocessor's __call__ (or VCRDataset), not of prepare_text"
            )
        if tuple(example["pixel_values"].shape) != (3, size, size):
            raise ValueError(
                f"example {i} ({example.get('annot_id')}): pixel_values has shape "
                f"{tuple(example['pixel_values'].shape)}, expected (3, {size}, {size}) for image_size={size}"
            )
    pixel_dtypes = {torch.as_tensor(example["pixel_values"]).dtype for example in examples}
    if len(pixel_dtypes) > 1:
        raise ValueError(
            f"pixel_values mix dtypes {sorted(map(str, pixel_dtypes))} in one batch: prepare every example "
            f"with the same pixel_dtype (uint8 pixels are 0..255, float32 ones are already normalised)"
        )
    sequences = [ids for example in examples for ids in example["input_ids"]]
    tags = [t for example in examples for t in example["text_type_ids"]]
    slot_objects = [objs for example in examples for objs in example["object_ids"]]
    slot_patches = [p for example in examples for p in example["object_patches"]]
    batch, rows = len(examples), len(sequences)

    length = max(len(ids) for ids in sequences)
    if pad_to_multiple_of:
        length = math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((rows, length), pad_id, dtype=np.int64)
    text_type_ids = np.zeros((rows, length), dtype=np.int64)
    attention_mask = np.zeros((rows, length), dtype=np.int64)
    for row, (ids, row_tags) in enumerate(zip(sequences, tags)):
        if len(row_tags) != len(ids):
            raise ValueError(
                f"example {row // NUM_CHOICES} choice {row % NUM_CHOICES}: {len(row_tags)} text_type_ids "
                f"for {len(ids)} input_ids; they must align token by token"
            )
        input_ids[row, : len(ids)] = ids
        text_type_ids[row, : len(ids)] = row_tags
        attention_mask[row, : len(ids)] = 1

    slots_per_row = np.array([len(objs) for objs in slot_objects], dtype=np.int64)
    if any(len(p) != n for p, n in zip(slot_patches, slots_per_row.tolist())):
        raise ValueError("object_patches and object_ids disagree on the number of slots")
    num_slots = max(1, int(slots_per_row.max()))
    object_mask = (np.arange(num_slots)[None, :] < slots_per_row[:, None]).astype(np.int64)
    object_type_ids = object_mask * (np.arange(num_slots)[None, :] + 2)

    # Scatter every (row, slot, patch) triple at once: flat patch indices + repeated slot ids.
    flat_slots = [p for row_patches in slot_patches for p in row_patches]
    counts = np.array([len(p) for p in flat_slots], dtype=np.int64)
    patch_index = np.fromiter(itertools.chain.from_iterable(flat_slots), dtype=np.int64, count=int(counts.sum()))
    if patch_index.size and (patch_index.min() < 0 or patch_index.max() >= num_patches):
        raise ValueError(
            f"object patch index {int(patch_index.max())} is outside the {grid}x{grid} grid: "
            f"the examples were prepared with another image_size/patch_size than this preprocessor's"
        )
    row_index = np.repeat(np.arange(rows), slots_per_row)
    slot_index = np.arange(len(flat_slots)) - np.repeat(np.cumsum(slots_per_row) - slots_per_row, slots_per_row)
    patch_mask = np.zeros((rows, num_slots, num_patches), dtype=bool)
    patch_mask[np.repeat(row_index, counts), np.repeat(slot_index, counts), patch_index] = True

    def per_choice(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).reshape(batch, NUM_CHOICES, *array.shape[1:])

    out = {
        "input_ids": per_choice(input_ids),
        "attention_mask": per_choice(attention_mask),
        "text_type_ids": per_choice(text_type_ids),
        "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
        "object_patch_mask": per_choice(patch_mask),
        "object_type_ids": per_choice(object_type_ids),
        "object_mask": per_choice(object_mask),
    }
    labels = [example["label"] for example in examples]
    if all(label is not None for label in labels):
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out
