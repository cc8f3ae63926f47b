"""Fusion modules. The core ships VLE's co-attention (METER-style); plugins add more.

Co-attention, as in VLE: two stacks of BERT-style post-LayerNorm layers, one per stream. Each layer
runs self-attention, then cross-attention whose keys and values are the other stream (masked by the
other stream's mask), then the feed-forward block. Both streams update simultaneously from the
previous layer's states. Each stream is pooled from its first token (Linear, tanh) and the two
pooled vectors are concatenated to ``2 * hidden_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN

from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.registry import FUSIONS, register_fusion


def init_bert_style(module: nn.Module, *, std: float = 0.02) -> None:
    """BERT initialisation: normal(0, std) weights, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=std)
            if isinstance(sub, nn.Linear) and sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[N, S]`` 1/0 mask -> ``[N, 1, 1, S]`` boolean SDPA mask (True = attend)."""
    return rearrange(mask.bool(), "n s -> n 1 1 s")


class PostNormAttention(nn.Module):
    """BERT attention block: multi-head attention (SDPA), output projection, residual, LayerNorm."""

    def __init__(self, *, hidden_size: int, num_heads: int, dropout: float, attention_dropout: float, eps: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """``hidden [N, L, D]`` attends to ``context [N, S, D]`` under ``context_mask [N, 1, 1, S]``.

        Pass the same tensor as ``hidden`` and ``context`` for self-attention: the three projections
        then run as one matmul (same parameters and names, fewer kernels).
        """
        if context is hidden:
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            q, k, v = F.linear(hidden, weight, bias).chunk(3, dim=-1)
        else:
            q = self.query(hidden)
            weight = torch.cat([self.key.weight, self.value.weight])
            k, v = F.linear(context, weight, torch.cat([self.key.bias, self.value.bias])).chunk(2, dim=-1)
        q, k, v = (rearrange(x, "n s (h d) -> n h s d", h=self.num_heads) for x in (q, k, v))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=context_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )
        attended = rearrange(attended, "n h s d -> n s (h d)")
        return self.layer_norm(hidden + self.dropout(self.dense(attended)))


class CoAttentionLayer(nn.Module):
    """One stream's layer: self-attention, cross-attention to the other stream, feed-forward."""

    def __init__(self, config: CoAttentionConfig):
        super().__init__()
        attention = dict(
            hidden_size=config.hidden_size, num_heads=config.num_attention_heads, dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob, eps=config.layer_norm_eps,
        )
        self.self_attention = PostNormAttention(**attention)
        self.cross_attention = PostNormAttention(**attention)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor,
        first_token_only: bool = False,
    ) -> torch.Tensor:
        """With ``first_token_only`` only token 0 is updated (its keys and values are still all tokens)."""
        query = hidden[:, :1] if first_token_only else hidden
        hidden = self.self_attention(query, hidden, mask)
        hidden = self.cross_attention(hidden, other, other_mask)
        return self.output_norm(hidden + self.output_dropout(self.output(self.activation(self.intermediate(hidden)))))


@dataclass(frozen=True)
class CoAttentionConfig:
    """Options of ``co-attention`` (VLE-base: 768 wide, 6 layers, 12 heads, 3072 feed-forward)."""

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    gradient_checkpointing: bool = False


def check_transformer_config(config: CoAttentionConfig, *, where: str) -> None:
    """Fail fast on transformer options the layers cannot honour, naming the component."""
    if config.hidden_act not in ACT2FN:
        raise ValueError(f"{where}: unknown hidden_act {config.hidden_act!r}; e.g. 'gelu' (erf), 'gelu_new', 'relu'")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"{where}: hidden_size {config.hidden_size} is not divisible by "
            f"num_attention_heads {config.num_attention_heads}"
        )
    if config.num_hidden_layers < 0:
        raise ValueError(f"{where}: num_hidden_layers must be >= 0, got {config.num_hidden_layers}")


def run_layer(layer: nn.Module, *inputs: Any, checkpointing: bool) -> torch.Tensor:
    """``layer(*inputs)``, recomputed in the backward pass when ``checkpointing`` and training."""
    if checkpointing and layer.training:
        return checkpoint(layer, *inputs, use_reentrant=False)
    return layer(*inputs)


_TINY_CO_ATTENTION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


@register_fusion("co-attention", config=CoAttentionConfig, tiny=_TINY_CO_ATTENTION)
class CoAttentionFusion(Fusion):
    """VLE / METER co-attention: two post-LN BERT stacks with cross-attention, CLS poolers (2H)."""

    def __init__(self, *, config: CoAttentionConfig) -> None:
        super().__init__()
        check_transformer_config(config, where="co-attention")
        self.config = config
        self.hidden_size = config.hidden_size
        self.pooled_size = 2 * config.hidden_size
        self.text_layers = nn.ModuleList(CoAttentionLayer(config) for _ in range(config.num_hidden_layers))
        self.image_layers = nn.ModuleList(CoAttentionLayer(config) for _ in range(config.num_hidden_layers))
        self.text_pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.image_pooler = nn.Linear(config.hidden_size, config.hidden_size)
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
        pooled = torch.cat(
            [torch.tanh(self.text_pooler(text[:, 0])), torch.tanh(self.image_pooler(image[:, 0]))], dim=-1
        )
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
