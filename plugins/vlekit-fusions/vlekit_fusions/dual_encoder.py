"""Dual encoder: CLIP-style late fusion, no cross-modal attention anywhere.

CLIP (Radford et al., ICML 2021) encodes text and image separately and compares one pooled vector
per modality. This is the baseline that shows what cross-modal fusion buys: each stream gets its own
post-LN BERT self-attention stack (so the core's token types reach the pooled vectors), and the two
streams meet only in the pooled features:

* text vector ``t = tanh(Linear(text[:, 0]))`` (the text [CLS]);
* image vector ``v = tanh(Linear(mean of the valid image tokens))``: the CLS, the patches and the
  core's object tokens, padding excluded (a mean rather than the CLS, so the object tokens count);
* ``pooled = [t; v; t * v]`` ``[N, 3D]``: the elementwise product sums to the dot product ``t . v``
  that CLIP scores, and lets the head weight it per dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlekit import FUSIONS, register_fusion
from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.layers import Pooler, check_transformer_config, init_bert_style, masked_mean
from vlekit_fusions.post_norm_layers import TINY_STACK, PostNormStack, PostNormStackConfig


@dataclass(frozen=True)
class DualEncoderConfig(PostNormStackConfig):
    """Options of ``dual-encoder``: ``num_hidden_layers`` self-attention layers per stream (0 allowed)."""


@register_fusion("dual-encoder", config=DualEncoderConfig, tiny=TINY_STACK)
class DualEncoderFusion(Fusion):
    """CLIP-style late fusion, no cross-modal attention: pooled [t; v; t * v] of width 3D."""

    def __init__(self, *, config: DualEncoderConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="dual-encoder")
        self.config = config
        self.hidden_size = config.hidden_size
        self.pooled_size = 3 * config.hidden_size
        self.text_stack = PostNormStack(config=config)
        self.image_stack = PostNormStack(config=config)
        self.text_pooler = Pooler(size=config.hidden_size)
        self.image_pooler = Pooler(size=config.hidden_size)
        init_bert_style(self)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks ``[N, L]``, ``[N, S]``.

        Returns each stream after its own stack (``[N, L, D]``, ``[N, S, D]``) and
        ``pooled [N, 3D]`` = ``[t; v; t * v]``.
        """
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="dual-encoder")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="dual-encoder")
        text = self.text_stack(text, text_mask)
        image = self.image_stack(image, image_mask)
        text_vector = self.text_pooler(text[:, 0])
        image_vector = self.image_pooler(masked_mean(image, image_mask))
        pooled = torch.cat([text_vector, image_vector, text_vector * image_vector], dim=-1)
        return FusionOutput(text=text, image=image, pooled=pooled)


FUSIONS.register_preset(
    "tiny-dual-encoder", base="dual-encoder", **TINY_STACK,
    description="tiny dual encoder (64 wide, 2 layers per stream) for tests and the demo",
)
