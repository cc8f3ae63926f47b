"""The three component interfaces (DESIGN.md section 1).

Components need not inherit from these classes (the model checks attributes and shapes), but the
core ones do, and the docstrings here are the contract a plugin implements.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Token ids to contextual token states.

    ``forward(input_ids [N, L], attention_mask [N, L]) -> hidden [N, L, hidden_size]``.
    """

    hidden_size: int

    def resolved_config(self) -> Any:
        """The config that rebuilds this architecture offline (no weight download)."""
        return self.config


class VisionEncoder(nn.Module):
    """Pixels to a CLS token followed by a row-major ``grid x grid`` patch grid.

    ``forward(pixel_values [B, 3, image_size, image_size]) -> tokens [B, 1 + grid**2, hidden_size]``.
    Attributes ``hidden_size``, ``patch_size``, ``image_size`` and ``grid`` (ints), and ``image_mean``,
    ``image_std``: the per-channel (R, G, B) mean and standard deviation of pixels scaled to [0, 1]
    that the encoder's weights were trained with (3-tuples of floats). ``pixel_values`` are
    ``(pixels / 255 - image_mean) / image_std``; the preprocessor and ``VCRModel`` (for uint8 input)
    normalise with them, so an encoder with other weights declares its own (one that declares
    none still runs on float pixels, and uint8 input is then refused with a message).
    """

    hidden_size: int
    patch_size: int
    image_size: int
    grid: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def resolved_config(self) -> Any:
        return self.config


class FusionOutput(NamedTuple):
    """What a fusion returns: fused streams and the pooled vector the head scores."""

    text: torch.Tensor  # [N, L, hidden_size]
    image: torch.Tensor  # [N, S, hidden_size]
    pooled: torch.Tensor  # [N, pooled_size]


class Fusion(nn.Module):
    """Joins the text and image streams (both already projected to ``hidden_size``).

    ``forward(text [N, L, D], text_mask [N, L], image [N, S, D], image_mask [N, S]) -> FusionOutput``
    with ``pooled [N, pooled_size]`` (``2 * hidden_size`` for the co-attention reference).
    Masks are 1 for real tokens and 0 for padding.

    A fusion whose ``forward`` takes a ``pooled_only`` keyword gets ``pooled_only=True`` from the model
    (which scores ``pooled`` alone) and may skip the work only the returned streams need.
    """

    hidden_size: int
    pooled_size: int

    def resolved_config(self) -> Any:
        return self.config


def check_shape(tensor: torch.Tensor, expected: tuple[int | str, ...], *, name: str, where: str) -> None:
    """Raise a ValueError naming the tensor, where it went in, and the shape that was expected.

    ``expected`` holds ints for fixed sizes and strings for named free sizes (``"B"``, ``"L"``).
    """
    ok = tensor.dim() == len(expected) and all(
        isinstance(e, str) or actual == e for actual, e in zip(tensor.shape, expected)
    )
    if not ok:
        shown = "[" + ", ".join(str(e) for e in expected) + "]"
        raise ValueError(f"{where}: {name} has shape {list(tensor.shape)}, expected {shown}")
