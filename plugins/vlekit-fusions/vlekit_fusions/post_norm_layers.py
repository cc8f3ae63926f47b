"""Building blocks shared by the fusion variants: BERT-style post-LayerNorm self-attention layers.

The attention block is the core's :class:`vlekit.fusions.PostNormAttention` (PyTorch SDPA); this file
adds the feed-forward block, the layer, the stack and the first-token pooler around it, and the
transformer options every variant shares.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from vlekit.fusions import CoAttentionConfig, PostNormAttention, key_padding_mask, run_layer


@dataclass(frozen=True)
class PostNormStackConfig(CoAttentionConfig):
    """Transformer options shared by the variants: the core co-attention's (VLE-base fusion size, 768
    wide, 6 layers; ``gradient_checkpointing`` recomputes each layer in the backward pass)."""


# The size every variant's tiny preset and registry-driven tests use (the core's tiny-co-attention size).
TINY_STACK: dict[str, int] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


class FeedForward(nn.Sequential):
    """``[N, S, D] -> [N, S, D]``: Linear(D, I), activation, Linear(I, D), dropout (no residual, no norm)."""

    def __init__(self, *, config: PostNormStackConfig) -> None:
        super().__init__(
            nn.Linear(config.hidden_size, config.intermediate_size),
            ACT2FN[config.hidden_act],
            nn.Linear(config.intermediate_size, config.hidden_size),
            nn.Dropout(config.hidden_dropout_prob),
        )


class PostNormLayer(nn.Module):
    """BERT layer: self-attention, then feed-forward, each with a residual and a post-LayerNorm."""

    def __init__(self, *, config: PostNormStackConfig) -> None:
        super().__init__()
        self.attention = PostNormAttention(
            hidden_size=config.hidden_size, num_heads=config.num_attention_heads, dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob, eps=config.layer_norm_eps,
        )
        self.feed_forward = FeedForward(config=config)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``hidden [N, S, D]`` under the SDPA mask ``keys [N, 1, 1, S]`` -> ``[N, S, D]``."""
        hidden = self.attention(hidden, hidden, keys)
        return self.output_norm(hidden + self.feed_forward(hidden))


class PostNormStack(nn.Module):
    """``num_hidden_layers`` :class:`PostNormLayer` s over one sequence."""

    def __init__(self, *, config: PostNormStackConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = config.gradient_checkpointing
        self.layers = nn.ModuleList(PostNormLayer(config=config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden [N, S, D]`` with ``mask [N, S]`` (1 = real token) -> ``[N, S, D]``."""
        keys = key_padding_mask(mask)
        for layer in self.layers:
            hidden = run_layer(layer, hidden, keys, checkpointing=self.gradient_checkpointing)
        return hidden


class FirstTokenPooler(nn.Module):
    """BERT pooler: ``hidden [N, S, D]`` -> ``tanh(Linear(hidden[:, 0]))`` ``[N, D]``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))
