"""vlekit.bench.batches: padded text lengths are bucketed, so a compiled model sees few shapes."""
from __future__ import annotations

import torch

from vlekit.bench.batches import MAX_TEXT_LENGTH, PAD_MULTIPLE, distinct_text_lengths, synthetic_batch


def batches(n: int, **options) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [synthetic_batch(batch_size=4, image_size=64, grid=8, generator=generator, **options) for _ in range(n)]


def test_per_batch_padding_gives_few_distinct_lengths() -> None:
    """200 batches: each length a multiple of 8, at most 80 / 8 = 10 shapes (one compile each), not one per batch."""
    for task in ("q2a", "qa2r"):
        lengths = distinct_text_lengths(batches(200, task=task))
        assert all(length % PAD_MULTIPLE == 0 and length <= MAX_TEXT_LENGTH for length in lengths)
        assert 2 <= len(lengths) <= MAX_TEXT_LENGTH // PAD_MULTIPLE
    assert distinct_text_lengths(batches(20, pad_to=80)) == [80]
