"""Gated cross-attention: Flamingo's way of letting a text model look at images.

Flamingo (Alayrac et al., NeurIPS 2022, "Flamingo: a Visual Language Model for Few-Shot Learning")
interleaves the layers of a language model with freshly initialised GATED XATTN-DENSE blocks::

    y = y + tanh(alpha_xattn) * CrossAttention(LayerNorm(y), image)
    y = y + tanh(alpha_dense) * FeedForward(LayerNorm(y))

with the scalar gates ``alpha`` initialised to 0, so at initialisation the text path is exactly the
text-only model and the image is let in gradually. Here the text layers are post-LN BERT self-attention
layers over the (already encoded) text, with a gated block before every ``cross_attention_every``-th
layer. The flow is one-directional: text attends to the image tokens (CLS, patches and the core's
object tokens), the image tokens are returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlekit import FUSIONS, register_fusion
from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.layers import (
    FeedForward, Pooler, PostNormLayer, check_transformer_config, init_bert_style, key_padding_mask, run_layer,
)
from vlekit_fusions.post_norm_layers import TINY_STACK, PostNormStackConfig


@dataclass(frozen=True)
class GatedCrossAttentionConfig(PostNormStackConfig):
    """Options of ``gated-cross-attention``.

    cross_attention_every: a gated cross-attention block before every k-th text layer (Flamingo-3B
        uses 1, Flamingo-9B 4, Flamingo-80B 7).
    gate_init: initial value of every gate. Flamingo's 0 starts the text path exactly as the text-only
        stack; a nonzero value lets the image in from the first step (the ``tiny`` test options use
        0.5 so that the registry's generic tests exercise the cross-attention path).
    """

    cross_attention_every: int = 1
    gate_init: float = 0.0


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE block (pre-LN, tanh-gated residuals): ``[N, L, D] -> [N, L, D]``."""

    def __init__(self, *, config: GatedCrossAttentionConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = nn.MultiheadAttention(
            config.hidden_size, config.num_attention_heads, dropout=config.attention_probs_dropout_prob,
            batch_first=True,
        )
        self.attention_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config=config)
        # With gate_init = 0, tanh(0) = 0 and the block starts as the identity (Flamingo, section 2.2).
        self.attention_gate = nn.Parameter(torch.full((1,), config.gate_init))
        self.feed_forward_gate = nn.Parameter(torch.full((1,), config.gate_init))

    def forward(self, text: torch.Tensor, image: torch.Tensor, image_padding: torch.Tensor) -> torch.Tensor:
        """``text [N, L, D]`` attends to ``image [N, S, D]``; ``image_padding [N, S]`` is True on padding."""
        attended, _ = self.attention(
            self.attention_norm(text), image, image, key_padding_mask=image_padding, need_weights=False
        )
        text = text + torch.tanh(self.attention_gate) * self.attention_dropout(attended)
        return text + torch.tanh(self.feed_forward_gate) * self.feed_forward(self.feed_forward_norm(text))


@register_fusion(
    "gated-cross-attention", config=GatedCrossAttentionConfig, tiny=dict(TINY_STACK, gate_init=0.5)
)
class GatedCrossAttentionFusion(Fusion):
    """Flamingo-style fusion: text layers with tanh-gated cross-attention into the image; pooled [N, D]."""

    def __init__(self, *, config: GatedCrossAttentionConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="gated-cross-attention")
        if config.cross_attention_every < 1:
            raise ValueError(
                f"gated-cross-attention: cross_attention_every must be >= 1, got {config.cross_attention_every}"
            )
        self.config = config
        self.hidden_size = config.hidden_size
        # Only the text stream is fused, so one pooler on its [CLS]: the pooled width is hidden_size.
        self.pooled_size = config.hidden_size
        self.text_layers = nn.ModuleList(PostNormLayer(config=config) for _ in range(config.num_hidden_layers))
        self.cross_attention = nn.ModuleList(
            GatedCrossAttentionBlock(config=config)
            for _ in range(0, config.num_hidden_layers, config.cross_attention_every)
        )
        self.pooler = Pooler(size=config.hidden_size)
        init_bert_style(self)
        for block in self.cross_attention:  # nn.MultiheadAttention keeps its input projection as a bare Parameter
            nn.init.normal_(block.attention.in_proj_weight, std=0.02)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks ``[N, L]``, ``[N, S]``.

        Returns the fused text ``[N, L, D]``, the image ``[N, S, D]`` unchanged, and ``pooled [N, D]``
        from the first text token.
        """
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="gated-cross-attention")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="gated-cross-attention")
        text_keys = key_padding_mask(text_mask)
        image_padding = ~image_mask.bool()
        checkpointing = self.config.gradient_checkpointing
        for index, layer in enumerate(self.text_layers):
            if index % self.config.cross_attention_every == 0:
                block = self.cross_attention[index // self.config.cross_attention_every]
                text = run_layer(block, text, image, image_padding, checkpointing=checkpointing)
            text = run_layer(layer, text, text_keys, checkpointing=checkpointing)
        return FusionOutput(text=text, image=image, pooled=self.pooler(text[:, 0]))


FUSIONS.register_preset(
    "tiny-gated-cross-attention", base="gated-cross-attention", **TINY_STACK,
    description="tiny gated cross-attention (64 wide, 2 layers) for tests and the demo",
)
