"""The component interfaces (DESIGN.md section 1): text encoder, vision encoder, fusion, task head; and a task.

Encoders and fusions need not inherit from these classes (the model checks attributes and shapes),
but the core ones do, and the docstrings here are the contract a plugin implements. A head inherits
from :class:`Head` (the model calls its ``task_logits``).
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

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

    A fusion that declares ``supports_pooled_only = True`` takes a ``pooled_only`` keyword, which the
    model sets when its head scores ``pooled`` alone; it may then skip the work only the returned
    streams need (its ``pooled`` must not change).
    """

    hidden_size: int
    pooled_size: int
    supports_pooled_only: ClassVar[bool] = False

    def resolved_config(self) -> Any:
        return self.config


class Head(nn.Module):
    """A task head: it reads one field of the fusion's output and owns the task's end of the forward.

    Declared on the class: ``reads`` (``"pooled"`` or ``"image"``: the :class:`FusionOutput` field it
    scores), ``multiple_choice`` (True: the model takes the VCR batch contract, C texts per image,
    and the head turns the ``B * C`` pair scores into ``[B, C]``); as an attribute or property,
    ``input_size`` (the width of what it reads; the model checks it against the fusion).

    ``forward(x)`` scores the field it reads; :meth:`task_logits` is what the model calls; ``loss(logits,
    labels)`` is the task's loss.
    """

    reads: ClassVar[str] = "pooled"
    multiple_choice: ClassVar[bool] = False
    input_size: int

    def task_logits(self, fused: FusionOutput, *, choices: int) -> torch.Tensor:
        """The task's logits from the fusion's output over ``B * choices`` (text, image) pairs; a head
        that scores each text on its own image (``choices`` 1) returns ``forward`` of its field."""
        return self(getattr(fused, self.reads))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define loss(logits, labels)")

    def resolved_config(self) -> Any:
        return self.config


class Task:
    """A task (``data.task``), registered with :func:`vlekit.registry.register_task` (core ones:
    :mod:`vlekit.evaluation.tasks`). ``head``: the registered head a run of the task trains;
    ``multiple_choice``: whether its examples are questions with C choices (the VCR batch contract);
    ``chance``: the score of guessing (None where it depends on the data, e.g. VQA's majority answer);
    ``data_task``: the data pipeline its examples go through (``q2a``, ``qa2r`` or ``vqa``: the texts and
    checks of ``data_prep``, saved in the model's ``data.json``); None: the task's own name (the core tasks).

    ``read(experiment config) -> RunData`` (``vlekit.runs.data``: the splits, checked, and the text an
    ``auto`` tokenizer is built from); ``datasets(experiment config, run data, tokenizer, model) ->
    (train, val or None)``; ``score(logits, labels)``.
    """

    head: ClassVar[str]
    multiple_choice: ClassVar[bool]
    chance: ClassVar[float | None] = None
    data_task: ClassVar[str | None] = None
    loss_label: ClassVar[str] = "loss"  # the training curve's loss axis

    def __init__(self, *, config: Any) -> None:
        self.config = config

    def read(self, config: Any) -> Any:
        """The run's splits, checked (the preflight), with the training text for an ``auto`` tokenizer."""
        raise NotImplementedError

    def datasets(self, config: Any, run_data: Any, tokenizer: Any, model: Any) -> tuple[Any, Any]:
        """``(train, val or None)`` datasets, fed as ``model`` needs them (image size, pixel statistics)."""
        raise NotImplementedError

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """The validation metric of ``logits`` against the loader's ``labels``, in ``[0, 1]``."""
        raise NotImplementedError


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
