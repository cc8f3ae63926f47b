"""Merged attention: the single-stream fusion of VisualBERT, UNITER and ViLT.

VisualBERT (Li et al., 2019, "VisualBERT: A Simple and Performant Baseline for Vision and Language"),
UNITER (Chen et al., ECCV 2020) and ViLT (Kim et al., ICML 2021) concatenate the text tokens and the
image tokens into one sequence and run a single BERT stack over it, so every layer attends within and
across the modalities at once. The modality (and VCR object) identity comes from the core's token-type
embeddings, which are already added to both streams before the fusion.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlekit import FUSIONS, register_fusion
from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.layers import Pooler, check_transformer_config, init_bert_style
from vlekit_fusions.post_norm_layers import TINY_STACK, PostNormStack, PostNormStackConfig


@dataclass(frozen=True)
class MergedAttentionConfig(PostNormStackConfig):
    """Options of ``merged-attention``: one post-LN BERT stack over ``[text; image]``."""


@register_fusion("merged-attention", config=MergedAttentionConfig, tiny=TINY_STACK)
class MergedAttentionFusion(Fusion):
    """Single-stream fusion (VisualBERT / UNITER / ViLT): one BERT stack over text and image; pooled [N, D]."""

    def __init__(self, *, config: MergedAttentionConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="merged-attention")
        self.config = config
        self.hidden_size = config.hidden_size
        # One pooler on the text [CLS], as VisualBERT / ViLT: the pooled width is hidden_size, not 2H.
        self.pooled_size = config.hidden_size
        self.stack = PostNormStack(config=config)
        self.pooler = Pooler(size=config.hidden_size)
        init_bert_style(self)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks ``[N, L]``, ``[N, S]``.

        Returns the fused text ``[N, L, D]`` and image ``[N, S, D]`` (the two parts of the joint
        sequence) and ``pooled [N, D]`` from the first text token.
        """
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="merged-attention")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="merged-attention")
        length = text.shape[1]
        joint = self.stack(torch.cat([text, image], dim=1), torch.cat([text_mask, image_mask.to(text_mask.dtype)], dim=1))
        text, image = joint[:, :length], joint[:, length:]
        return FusionOutput(text=text, image=image, pooled=self.pooler(text[:, 0]))


FUSIONS.register_preset(
    "tiny-merged-attention", base="merged-attention", **TINY_STACK,
    description="tiny merged attention (64 wide, 2 layers) for tests and the demo",
)
