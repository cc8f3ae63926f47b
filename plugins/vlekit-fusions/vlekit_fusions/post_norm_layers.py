"""What the fusion variants share beyond :mod:`vlekit.layers`: their config, tiny size and a self-attention stack.

The attention, feed-forward and layer blocks, the pooler and the initialisation are vlekit's public
:mod:`vlekit.layers` (the core co-attention uses the same ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlekit.layers import PostNormLayer, TransformerConfig, key_padding_mask, run_layer


@dataclass(frozen=True)
class PostNormStackConfig(TransformerConfig):
    """Transformer options shared by the variants: the core co-attention's (VLE-base fusion size, 768
    wide, 6 layers; ``gradient_checkpointing`` recomputes each layer in the backward pass)."""


# The size every variant's tiny preset and registry-driven tests use (the core's tiny-co-attention size).
TINY_STACK: dict[str, int] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


class PostNormStack(nn.Module):
    """``num_hidden_layers`` self-attention :class:`vlekit.layers.PostNormLayer` s over one sequence."""

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
