"""Projection-concat: image tokens mapped into the text space and prepended as a prefix.

BLIP-2 (Li et al., ICML 2023) and FROMAGe (Koh et al., ICML 2023) map visual features into the input
space of a language model with a learned projection and feed them as a prefix of soft tokens; LLaVA-1.5
(Liu et al., CVPR 2024) uses a two-layer GELU MLP per image token. Here every image token (CLS, patches
and the core's object tokens) goes through such an MLP, and the prefix ``[image; text]`` runs through a
post-LN BERT self-attention stack (bidirectional, as the model is an encoder). The prefix length is the
number of image tokens ``S``; the text's first token (its [CLS], at position ``S``) is pooled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from vlekit import FUSIONS, register_fusion
from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.layers import Pooler, check_transformer_config, init_bert_style
from vlekit_fusions.post_norm_layers import TINY_STACK, PostNormStack, PostNormStackConfig


@dataclass(frozen=True)
class ProjectionConcatConfig(PostNormStackConfig):
    """Options of ``projection-concat``: an MLP projector (D -> D, ``hidden_act``, D -> D) and one stack."""


@register_fusion("projection-concat", config=ProjectionConcatConfig, tiny=TINY_STACK)
class ProjectionConcatFusion(Fusion):
    """BLIP-2 / FROMAGe / LLaVA style: MLP-projected image tokens as a prefix to the text; pooled [N, D]."""

    def __init__(self, *, config: ProjectionConcatConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="projection-concat")
        self.config = config
        self.hidden_size = config.hidden_size
        # One pooler on the text [CLS]: the pooled width is hidden_size.
        self.pooled_size = config.hidden_size
        self.projector = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            ACT2FN[config.hidden_act],
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.stack = PostNormStack(config=config)
        self.pooler = Pooler(size=config.hidden_size)
        init_bert_style(self)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks ``[N, L]``, ``[N, S]``.

        The stack runs over ``[projector(image); text]`` ``[N, S + L, D]``. Returns the text part
        ``[N, L, D]``, the prefix part ``[N, S, D]`` as the image, and ``pooled [N, D]`` from the first
        text token.
        """
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="projection-concat")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="projection-concat")
        prefix_length = image.shape[1]
        sequence = torch.cat([self.projector(image), text], dim=1)
        mask = torch.cat([image_mask.to(text_mask.dtype), text_mask], dim=1)
        sequence = self.stack(sequence, mask)
        image, text = sequence[:, :prefix_length], sequence[:, prefix_length:]
        return FusionOutput(text=text, image=image, pooled=self.pooler(text[:, 0]))


FUSIONS.register_preset(
    "tiny-projection-concat", base="projection-concat", **TINY_STACK,
    description="tiny projection-concat (64 wide, 2 layers) for tests and the demo",
)
