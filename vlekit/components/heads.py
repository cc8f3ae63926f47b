"""Task heads, a registered component kind: VCR multiple choice, VQA, image-text matching (ITM) and
patch-box classification (PBC).

Each head is an ``nn.Module`` built from a frozen dataclass config (``Head(config=...)``), registered
with :func:`vlekit.registry.register_head` (plugins: entry-point group ``vlekit.heads``), that reads
one output of the fusion (``FusionOutput``) and owns its loss. A model is encoders + fusion + head;
it fills a head's ``pooled_size`` / ``hidden_size`` from its fusion and ``initializer_range`` from
its own config when the head spec leaves them out:

========  =====================================  ===================  =====================================
head      reads                                  logits               loss
========  =====================================  ===================  =====================================
VCRHead   ``pooled [B * C, 2H]`` (one row per    ``[B * C, 1]``,      cross-entropy over the C choices
          question-choice pair)                  model: ``[B, C]``
VQAHead   ``pooled [B, 2H]``                     ``[B, num_labels]``  BCE-with-logits (mean) x num_labels
                                                                      against soft scores (METER, BAN)
ITMHead   ``pooled [B, 2H]``                     ``[B, 2]``           cross-entropy over {no match, match}
PBCHead   fused image tokens ``[B, 1 + P, H]``   ``[B, P, 2]``        per-patch cross-entropy against the
          (CLS first, then the patch grid)                            patches a box covers
========  =====================================  ===================  =====================================

Every head is a :class:`vlekit.interfaces.Head`: ``reads`` says which ``FusionOutput`` field it
takes (``"pooled"`` or ``"image"``), ``input_size`` its width, ``multiple_choice`` whether it scores
VCR choices (the model then takes the VCR batch contract, DESIGN.md section 3), and ``task_logits``
turns the fusion's output into the task's logits (the VCR head unfolds the choices). A head that
reads the image stream gets the fusion's streams (no ``pooled_only``) and no appended object tokens.
VCR, VQA and PBC share one classifier builder, :class:`VLEClassifierHead`.

The parameter names are the official ones below the head's own prefix, so a checkpoint maps with
one prefix each: ``vcr_q2a_logit.{0,1,3}.*`` / ``vcr_qa2r_logit.*`` -> ``VCRHead.{0,1,3}.*``, ``vqa_classifier.{0,1,3}.*`` -> ``VQAHead.{0,1,3}.*``, ``itm_score.fc.*`` ->
``ITMHead.fc.*``, ``pbc_classifier.{0,1,3}.*`` -> ``PBCHead.{0,1,3}.*``. The LayerNorms keep
PyTorch's default eps (1e-5), as VLE's ``nn.LayerNorm`` do; weights start BERT-style (normal with
``initializer_range``, zero biases), as VLE's ``_init_weights``.

The official PBC loss passes ``[B, P, 2]`` logits straight to ``cross_entropy``, which reads the
patches as the class dimension and fails; :meth:`PBCHead.loss` puts the class last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vlekit.interfaces import FusionOutput, Head, check_shape
from vlekit.layers import init_bert_style
from vlekit.registry import register_head

__all__ = [
    "ITMHead",
    "ITMHeadConfig",
    "PBCHead",
    "PBCHeadConfig",
    "VCRHead",
    "VCRHeadConfig",
    "VQAHead",
    "VQAHeadConfig",
    "VLEClassifierHead",
    "box_patch_labels",
    "pbc_heat_map",
]

IGNORE_INDEX = -100  # F.cross_entropy's default: patch labels with this value do not count


def _check_positive(where: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")


class VLEClassifierHead(nn.Sequential, Head):
    """VLE's classifier block, as its VCR, VQA and PBC heads write it: Linear(width, width),
    LayerNorm(width), GELU, Linear(width, outputs); weights ``0.*``, ``1.*`` and ``3.*``, initialised
    BERT-style with the config's ``initializer_range``; the LayerNorm takes its ``layer_norm_eps``."""

    def __init__(self, config: Any, *, width: int, outputs: int) -> None:
        super().__init__(nn.Linear(width, width), nn.LayerNorm(width, eps=config.layer_norm_eps), nn.GELU(),
                         nn.Linear(width, outputs))
        self.config = config
        init_bert_style(self, std=config.initializer_range)


@dataclass(frozen=True)
class VCRHeadConfig:
    """pooled_size: the fusion's pooled width (2H for co-attention)."""

    pooled_size: int
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02


@register_head("vcr-multiple-choice", config=VCRHeadConfig, tiny={"pooled_size": 16})
class VCRHead(VLEClassifierHead):
    """VLE's VCR head: Linear(2H, 2H), LayerNorm, GELU, Linear(2H, 1), one score per choice.

    ``forward(pooled [N, 2H]) -> [N, 1]`` with ``N = B * C`` question-choice pairs (the model folds
    the choices into the batch and back); submodules ``0, 1, 3`` as in VLE's ``vcr_q2a_logit``.
    """

    multiple_choice: ClassVar[bool] = True

    def __init__(self, *, config: VCRHeadConfig) -> None:
        _check_positive("VCRHeadConfig", pooled_size=config.pooled_size)
        super().__init__(config, width=config.pooled_size, outputs=1)

    @property
    def input_size(self) -> int:
        return self.config.pooled_size

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        check_shape(pooled, ("N", self.config.pooled_size), name="pooled", where="VCRHead")
        return super().forward(pooled)

    def task_logits(self, fused: FusionOutput, *, choices: int) -> torch.Tensor:
        """One score per (question, choice) pair, ``[B * C, 1]``, unfolded to ``logits [B, C]``."""
        return rearrange(self(fused.pooled), "(b c) 1 -> b c", c=choices)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the choices: ``logits [B, C]``, ``labels [B]`` (the right choice)."""
        check_shape(logits, ("B", "C"), name="logits", where="VCRHead.loss")
        check_shape(labels, (logits.shape[0],), name="labels", where="VCRHead.loss")
        return F.cross_entropy(logits.float(), labels.long())


@dataclass(frozen=True)
class VQAHeadConfig:
    """pooled_size: the fusion's pooled width (2H for co-attention); num_labels: the answers.

    answers: the answer of each label (an official checkpoint's ``id2label`` in id order), or empty
    when the vocabulary lives elsewhere; when given, one per label.
    """

    pooled_size: int
    num_labels: int
    answers: tuple[str, ...] = field(default=())
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02


@register_head("vqa", config=VQAHeadConfig, tiny={"pooled_size": 16, "num_labels": 5})
class VQAHead(VLEClassifierHead):
    """VLE's ``vqa_classifier``: Linear(2H, 2H), LayerNorm(2H), GELU, Linear(2H, num_labels).

    ``forward(pooled [B, 2H]) -> logits [B, num_labels]``; submodules ``0, 1, 3`` as in VLE.
    """

    def __init__(self, *, config: VQAHeadConfig) -> None:
        _check_positive("VQAHeadConfig", pooled_size=config.pooled_size, num_labels=config.num_labels)
        if config.answers and len(config.answers) != config.num_labels:
            raise ValueError(
                f"VQAHeadConfig: {len(config.answers)} answers for num_labels={config.num_labels}; give one answer "
                f"per label, or none"
            )
        super().__init__(config, width=config.pooled_size, outputs=config.num_labels)

    @property
    def input_size(self) -> int:
        return self.config.pooled_size

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        check_shape(pooled, ("B", self.config.pooled_size), name="pooled", where="VQAHead")
        return super().forward(pooled)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``BCE_with_logits(logits, targets, mean) * num_labels`` (VLE, METER, BAN).

        ``logits, targets [B, num_labels]``; targets are soft scores in ``[0, 1]``
        (``data_prep.vqa_answers.soft_target_matrix``). The factor turns the mean over labels back into a
        sum per question, averaged over the batch.
        """
        check_shape(logits, ("B", self.config.num_labels), name="logits", where="VQAHead.loss")
        check_shape(targets, tuple(logits.shape), name="targets", where="VQAHead.loss")
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * self.config.num_labels


@dataclass(frozen=True)
class ITMHeadConfig:
    """pooled_size: the fusion's pooled width (2H for co-attention)."""

    pooled_size: int
    initializer_range: float = 0.02


@register_head("itm", config=ITMHeadConfig, tiny={"pooled_size": 16})
class ITMHead(Head):
    """VLE's ``itm_score``: one Linear(2H, 2) named ``fc``; class 1 means "the text matches the image".

    ``forward(pooled [B, 2H]) -> logits [B, 2]``.
    """

    def __init__(self, *, config: ITMHeadConfig) -> None:
        super().__init__()
        _check_positive("ITMHeadConfig", pooled_size=config.pooled_size)
        self.config = config
        self.fc = nn.Linear(config.pooled_size, 2)
        init_bert_style(self, std=config.initializer_range)

    @property
    def input_size(self) -> int:
        return self.config.pooled_size

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        check_shape(pooled, ("B", self.config.pooled_size), name="pooled", where="ITMHead")
        return self.fc(pooled)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over {0: no match, 1: match}; ``logits [B, 2]``, ``labels [B]``."""
        check_shape(logits, ("B", 2), name="logits", where="ITMHead.loss")
        check_shape(labels, (logits.shape[0],), name="labels", where="ITMHead.loss")
        return F.cross_entropy(logits.float(), labels.long())

    @staticmethod
    def match_score(logits: torch.Tensor) -> torch.Tensor:
        """``logits [..., 2]`` -> the match probability ``[...]`` (softmax, class 1), for retrieval."""
        return logits.float().softmax(dim=-1)[..., 1]


@dataclass(frozen=True)
class PBCHeadConfig:
    """hidden_size: the fusion width H (the image stream's token width)."""

    hidden_size: int
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02


@register_head("pbc", config=PBCHeadConfig, tiny={"hidden_size": 8})
class PBCHead(VLEClassifierHead):
    """VLE's ``pbc_classifier``: Linear(H, H), LayerNorm(H), GELU, Linear(H, 2), on every patch.

    ``forward(image [B, 1 + P, H]) -> logits [B, P, 2]``: the fused image stream, CLS first (it is
    dropped), then the P patch tokens in row-major grid order. Class 1 means "this patch belongs
    to what the text describes". Submodules ``0, 1, 3`` as in VLE.
    """

    reads: ClassVar[str] = "image"

    def __init__(self, *, config: PBCHeadConfig) -> None:
        _check_positive("PBCHeadConfig", hidden_size=config.hidden_size)
        super().__init__(config, width=config.hidden_size, outputs=2)

    @property
    def input_size(self) -> int:
        return self.config.hidden_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_shape(image, ("B", "S", self.config.hidden_size), name="image", where="PBCHead")
        if image.shape[1] < 2:
            raise ValueError(f"PBCHead: image has {image.shape[1]} token(s); expected CLS followed by the patch tokens")
        return super().forward(image[:, 1:])

    @staticmethod
    def loss(logits: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
        """Per-patch cross-entropy, averaged over all counted patches of the batch.

        ``logits [B, P, 2]``; ``patch_labels [B, P]``: 1 for a patch the box covers, 0 otherwise,
        ``-100`` for a patch that should not count (e.g. letterbox padding); see
        :func:`box_patch_labels`.
        """
        check_shape(logits, ("B", "P", 2), name="logits", where="PBCHead.loss")
        check_shape(patch_labels, tuple(logits.shape[:2]), name="patch_labels", where="PBCHead.loss")
        return F.cross_entropy(rearrange(logits.float(), "b p c -> (b p) c"), patch_labels.long().flatten(),
                               ignore_index=IGNORE_INDEX)


def box_patch_labels(
    boxes: torch.Tensor, *, image_size: int, patch_size: int, box_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The patches boxes cover, as PBC labels: ``[B, P]`` long, 1 inside, 0 outside.

    Args:
        boxes: ``[B, K, 4]`` (or ``[B, 4]`` for one box each) ``x1, y1, x2, y2`` in pixels of the
            model's square input canvas (boxes already mapped through the image transform).
        image_size: the canvas side S; the grid is ``g = S // patch_size`` and ``P = g * g``.
        box_mask: ``[B, K]``, 1 for real boxes (padding boxes cover nothing).

    The rule is the one of VCR object tokens, ``data_prep.geometry.canvas_box_cells`` (DESIGN.md
    section 4): a box covers columns ``floor(x1 / patch_size) .. floor(x2 / patch_size)`` clipped to
    the grid, rows likewise, with no coverage threshold; a box entirely off the canvas covers nothing.
    Several boxes: the union.
    """
    # The one box -> cell rule; imported here, so that ``import vlekit`` does not load data_prep.
    from data_prep.geometry import canvas_box_cells

    if boxes.dim() == 2:
        boxes = boxes[:, None]
    check_shape(boxes, ("B", "K", 4), name="boxes", where="box_patch_labels")
    batch, slots, _ = boxes.shape
    if box_mask is None:
        box_mask = torch.ones(batch, slots, dtype=torch.bool, device=boxes.device)
    check_shape(box_mask, (batch, slots), name="box_mask", where="box_patch_labels")
    cells = canvas_box_cells(boxes.detach().double().cpu().numpy(), image_size=image_size, patch_size=patch_size)
    cells = torch.from_numpy(cells).to(boxes.device).view(batch, slots, 4)  # col0, row0, col1, row1; -1: nothing
    on_canvas = (cells[..., 0] >= 0) & box_mask.bool()  # [B, K]
    index = torch.arange(image_size // patch_size, device=boxes.device)
    columns = (index >= cells[..., 0, None]) & (index <= cells[..., 2, None])  # [B, K, g]
    rows = (index >= cells[..., 1, None]) & (index <= cells[..., 3, None])  # [B, K, g]
    covered = rows[..., :, None] & columns[..., None, :] & on_canvas[..., None, None]  # [B, K, g_row, g_col]
    return rearrange(covered.any(dim=1), "b r c -> b (r c)").long()


def pbc_heat_map(logits: torch.Tensor, *, grid: int) -> torch.Tensor:
    """VLE's PBC view: softmax over the patches of logit 1, as a ``[B, grid, grid]`` map summing to 1.

    ``logits [B, P, 2]`` with ``P = grid * grid`` (row-major).
    """
    check_shape(logits, ("B", grid * grid, 2), name="logits", where="pbc_heat_map")
    return rearrange(logits.float()[..., 1].softmax(dim=-1), "b (r c) -> b r c", r=grid)
