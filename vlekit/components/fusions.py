"""Fusion modules. The core ships VLE's co-attention (METER-style); plugins add more.

Co-attention, as in VLE: two stacks of BERT-style post-LayerNorm layers, one per stream. Each layer
runs self-attention, then cross-attention whose keys and values are the other stream (masked by the
other stream's mask), then the feed-forward block. Both streams update simultaneously from the
previous layer's states. Each stream is pooled from its first token (Linear, tanh) and the two
pooled vectors are concatenated to ``2 * hidden_size``.

Q-Former, as in BLIP-2 (Li et al., ICML 2023): learned query tokens and the text share each layer's
self-attention (bidirectional, as in BLIP-2's image-text matching); in every ``cross_attention_frequency``-th
layer the queries alone then read the image tokens (CLS, patches and the model's object tokens) by
cross-attention; queries and text have their own feed-forward blocks. The text's first token and the
mean of the queries are pooled (Linear, tanh) and concatenated to ``2 * hidden_size``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.layers import (
    FeedForward, Pooler, PostNormAttention, PostNormLayer, TransformerConfig, check_transformer_config, init_bert_style,
    key_padding_mask, run_layer,
)
from vlekit.registry import FUSIONS, register_fusion


@dataclass(frozen=True)
class CoAttentionConfig(TransformerConfig):
    """Options of ``co-attention`` (VLE-base: 768 wide, 6 layers, 12 heads, 3072 feed-forward)."""


_TINY_CO_ATTENTION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


@register_fusion("co-attention", config=CoAttentionConfig, tiny=_TINY_CO_ATTENTION)
class CoAttentionFusion(Fusion):
    """VLE / METER co-attention: two post-LN BERT stacks with cross-attention, CLS poolers (2H)."""

    supports_pooled_only = True

    def __init__(self, *, config: CoAttentionConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="co-attention")
        self.config = config
        self.hidden_size = config.hidden_size
        self.pooled_size = 2 * config.hidden_size
        self.text_layers = nn.ModuleList(
            PostNormLayer(config=config, cross_attention=True) for _ in range(config.num_hidden_layers)
        )
        self.image_layers = nn.ModuleList(
            PostNormLayer(config=config, cross_attention=True) for _ in range(config.num_hidden_layers)
        )
        self.text_pooler = Pooler(size=config.hidden_size)
        self.image_pooler = Pooler(size=config.hidden_size)
        init_bert_style(self)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor,
        pooled_only: bool = False,
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks -> fused streams, pooled ``[N, 2D]``.

        ``pooled_only``: the poolers read token 0 of each stream, so the last layer updates only
        token 0 (same pooled vector, ~12% fewer fusion FLOPs at VLE-base); the returned streams are
        then ``[N, 1, D]``.
        """
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="co-attention")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="co-attention")
        text_keys, image_keys = key_padding_mask(text_mask), key_padding_mask(image_mask)
        last, checkpointing = len(self.text_layers) - 1, self.config.gradient_checkpointing
        for index, (text_layer, image_layer) in enumerate(zip(self.text_layers, self.image_layers)):
            first_token_only = pooled_only and index == last
            text, image = (  # both streams update from the previous layer's states
                run_layer(text_layer, text, text_keys, image, image_keys, first_token_only, checkpointing=checkpointing),
                run_layer(image_layer, image, image_keys, text, text_keys, first_token_only, checkpointing=checkpointing),
            )
        pooled = torch.cat([self.text_pooler(text[:, 0]), self.image_pooler(image[:, 0])], dim=-1)
        return FusionOutput(text=text, image=image, pooled=pooled)


FUSIONS.register_preset(
    "co-attention-base", base="co-attention", description="VLE-base fusion: 768 wide, 6 layers, 12 heads",
)
FUSIONS.register_preset(
    "co-attention-large", base="co-attention", hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
    description="VLE-large fusion: 1024 wide, 6 layers, 16 heads",
)
FUSIONS.register_preset(
    "tiny-co-attention", base="co-attention", **_TINY_CO_ATTENTION,
    description="tiny co-attention (64 wide, 2 layers) for tests and the demo",
)


@dataclass(frozen=True)
class QFormerConfig(TransformerConfig):
    """Options of ``q-former`` (defaults: BLIP-2's Q-Former, 768 wide, 12 layers, 12 heads, 3072 feed-forward).

    num_query_tokens: learned queries (BLIP-2: 32). cross_attention_frequency: the queries read the image in
    layers 0, k, 2k, ... (BLIP-2: k = 2).
    """

    num_hidden_layers: int = 12
    num_query_tokens: int = 32
    cross_attention_frequency: int = 2


class QFormerLayer(nn.Module):
    """One Q-Former layer over ``[queries; text]``: joint self-attention, the queries' cross-attention to the
    image (where the layer has one), then separate feed-forward blocks (post-LayerNorm, as BERT)."""

    def __init__(self, *, config: QFormerConfig, cross_attention: bool) -> None:
        super().__init__()
        self.self_attention = PostNormAttention.from_config(config)
        self.cross_attention = PostNormAttention.from_config(config) if cross_attention else None
        self.query_feed_forward = FeedForward(config=config)
        self.query_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.text_feed_forward = FeedForward(config=config)
        self.text_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, queries: torch.Tensor, text: torch.Tensor, joint_mask: torch.Tensor, image: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries [N, Q, D]``, ``text [N, L, D]`` under ``joint_mask [N, 1, 1, Q + L]``; ``image [N, S, D]``
        under ``image_mask [N, 1, 1, S]`` -> updated ``queries [N, Q, D]``, ``text [N, L, D]``."""
        joint = torch.cat([queries, text], dim=1)
        joint = self.self_attention(joint, joint, joint_mask)
        queries, text = joint[:, :queries.shape[1]], joint[:, queries.shape[1]:]
        if self.cross_attention is not None:
            queries = self.cross_attention(queries, image, image_mask)
        queries = self.query_norm(queries + self.query_feed_forward(queries))
        return queries, self.text_norm(text + self.text_feed_forward(text))


_TINY_Q_FORMER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      num_query_tokens=8, cross_attention_frequency=1)


@register_fusion("q-former", config=QFormerConfig, tiny=_TINY_Q_FORMER)
class QFormerFusion(Fusion):
    """BLIP-2 Q-Former: learned queries read the image, share self-attention with the text; pooled [N, 2D]."""

    def __init__(self, *, config: QFormerConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="q-former")
        if config.num_query_tokens < 1 or config.cross_attention_frequency < 1:
            raise ValueError(f"q-former: num_query_tokens ({config.num_query_tokens}) and cross_attention_frequency "
                             f"({config.cross_attention_frequency}) must be >= 1")
        self.config = config
        self.hidden_size = config.hidden_size
        self.pooled_size = 2 * config.hidden_size
        self.queries = nn.Parameter(torch.empty(config.num_query_tokens, config.hidden_size))
        self.layers = nn.ModuleList(
            QFormerLayer(config=config, cross_attention=index % config.cross_attention_frequency == 0)
            for index in range(config.num_hidden_layers)
        )
        self.text_pooler = Pooler(size=config.hidden_size)
        self.query_pooler = Pooler(size=config.hidden_size)
        init_bert_style(self)
        nn.init.normal_(self.queries, std=0.02)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks ``[N, L]``, ``[N, S]`` -> fused text ``[N, L, D]``,
        the image tokens ``[N, S, D]`` as given (the queries read the image, they do not rewrite it), and
        ``pooled [N, 2D]``: the text's first token and the mean of the queries, each through a pooler."""
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="q-former")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="q-former")
        queries = self.queries.to(text.dtype).expand(text.shape[0], -1, -1)
        query_mask = torch.ones(queries.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        joint_mask = key_padding_mask(torch.cat([query_mask, text_mask], dim=1))
        image_keys = key_padding_mask(image_mask)
        fused_text = text
        for layer in self.layers:
            queries, fused_text = run_layer(layer, queries, fused_text, joint_mask, image, image_keys,
                                            checkpointing=self.config.gradient_checkpointing)
        pooled = torch.cat([self.text_pooler(fused_text[:, 0]), self.query_pooler(queries.mean(dim=1))], dim=-1)
        return FusionOutput(text=fused_text, image=image, pooled=pooled)


FUSIONS.register_preset(
    "q-former-base", base="q-former",
    description="BLIP-2's Q-Former size: 768 wide, 12 layers, 32 queries reading the image every 2nd layer",
)
FUSIONS.register_preset(
    "tiny-q-former", base="q-former", **_TINY_Q_FORMER,
    description="tiny Q-Former (64 wide, 2 layers, 8 queries) for tests",
)
