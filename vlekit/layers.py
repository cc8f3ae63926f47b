"""Transformer building blocks shared by the core fusion, the model and fusion plugins (public API).

What lives here, once:

* :class:`TransformerConfig`, the options every BERT-style fusion takes, and
  :func:`check_transformer_config`, which rejects the ones the layers cannot honour;
* :class:`PostNormAttention` (multi-head SDPA attention, residual, LayerNorm), :class:`FeedForward`
  and :class:`PostNormLayer` (self-attention, optional cross-attention, feed-forward: BERT's and VLE's
  post-LayerNorm layer);
* :class:`Pooler` (Linear, tanh), :func:`masked_mean`, :func:`key_padding_mask`;
* :func:`init_bert_style` and :func:`run_layer` (gradient checkpointing per layer).

Parameter names (``self_attention.query``, ``feed_forward.intermediate``, ``output_norm``, ...) are
mapped to the official VLE checkpoints' by :mod:`vlekit.vle.keys`.
Plugins import these from ``vlekit.layers``; everything else in the core is private to it.
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

__all__ = [
    "FeedForward", "Pooler", "PostNormAttention", "PostNormLayer", "TransformerConfig", "check_transformer_config",
    "init_bert_style", "key_padding_mask", "masked_mean", "run_layer",
]


@dataclass(frozen=True)
class TransformerConfig:
    """Options of a BERT-style stack (defaults: VLE-base's fusion, 768 wide, 6 layers, 12 heads, 3072 FFN).

    gradient_checkpointing: recompute each layer in the backward pass (:func:`run_layer`).
    """

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    gradient_checkpointing: bool = False


def check_transformer_config(config: TransformerConfig, *, where: str) -> None:
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


def run_layer(layer: nn.Module, *inputs: Any, checkpointing: bool) -> torch.Tensor:
    """``layer(*inputs)``, recomputed in the backward pass when ``checkpointing`` and training."""
    if checkpointing and layer.training:
        return checkpoint(layer, *inputs, use_reentrant=False)
    return layer(*inputs)


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[N, S]`` 1/0 mask -> ``[N, 1, 1, S]`` boolean SDPA mask (True = attend)."""
    return rearrange(mask.bool(), "n s -> n 1 1 s")


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [N, S, D]`` over the positions where ``mask [N, ..., S]`` is nonzero -> ``[N, ..., D]``.

    The mask may carry extra dimensions (many selections of the same tokens, e.g. one per VCR object:
    ``[B, C, K, P]`` over patches ``[B, P, D]``), computed as one matmul. An empty selection gives zeros.
    """
    weights = mask.to(tokens.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.einsum("n...s,nsd->n...d", weights, tokens)


class Pooler(nn.Linear):
    """``tanh(Linear(vector))``: ``[N, D] -> [N, D]``; BERT's pooler when given the first token ``hidden[:, 0]``."""

    def __init__(self, *, size: int) -> None:
        super().__init__(size, size)

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(vector))


class PostNormAttention(nn.Module):
    """BERT attention block: multi-head attention (SDPA), output projection, residual, LayerNorm."""

    def __init__(self, *, hidden_size: int, num_heads: int, dropout: float, attention_dropout: float, eps: float):
        super().__init__()  # sizes: checked once, by check_transformer_config, where the component is named
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    @classmethod
    def from_config(cls, config: TransformerConfig) -> PostNormAttention:
        return cls(
            hidden_size=config.hidden_size, num_heads=config.num_attention_heads, dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob, eps=config.layer_norm_eps,
        )

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """``hidden [N, L, D]`` attends to ``context [N, S, D]`` under ``context_mask [N, 1, 1, S]``.

        Pass the same tensor as ``hidden`` and ``context`` for self-attention: the three projections
        then run as one matmul (same parameters and names, fewer kernels), unless an adapter wraps them
        (a PEFT layer's ``weight`` is its base layer's: concatenating it would skip the adapter).
        """
        plain = all(type(layer) is nn.Linear for layer in (self.query, self.key, self.value))
        if not plain:
            q, k, v = self.query(hidden), self.key(context), self.value(context)
        elif context is hidden:
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


class FeedForward(nn.Module):
    """``[N, S, D] -> [N, S, D]``: Linear(D, I) ``intermediate``, activation, Linear(I, D) ``output``, dropout.

    No residual and no norm: :class:`PostNormLayer` adds BERT's post-LayerNorm, a pre-LN block its own.
    """

    def __init__(self, *, config: TransformerConfig) -> None:
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_dropout(self.output(self.activation(self.intermediate(hidden))))


class PostNormLayer(nn.Module):
    """BERT / VLE layer: self-attention, optionally cross-attention to another stream, feed-forward,
    each with a residual and a post-LayerNorm.

    Parameters: ``self_attention.*``, ``cross_attention.*``, ``feed_forward.{intermediate,output}.*`` and
    ``output_norm.*``. Weights saved before the feed-forward block was its own module
    (``intermediate.*``, ``output.*`` next to ``self_attention``) load as they are.
    """

    def __init__(self, *, config: TransformerConfig, cross_attention: bool = False) -> None:
        # Registered in the order of the computation (attention, then feed-forward), as VLE does:
        # initialisation draws the weights in this order, so a seed gives VLE's layout the same init.
        super().__init__()
        self.self_attention = PostNormAttention.from_config(config)
        self.cross_attention = PostNormAttention.from_config(config) if cross_attention else None
        self.feed_forward = FeedForward(config=config)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for part in ("intermediate", "output"):  # the names of vlekit 0.1.0's run folders
            for key in [k for k in state_dict if k.startswith(f"{prefix}{part}.")]:
                state_dict[f"{prefix}feed_forward.{key[len(prefix):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, other: torch.Tensor | None = None,
        other_mask: torch.Tensor | None = None, first_token_only: bool = False,
    ) -> torch.Tensor:
        """``hidden [N, L, D]`` under the SDPA mask ``mask [N, 1, 1, L]`` -> ``[N, L, D]``.

        With cross-attention, ``other [N, S, D]`` under ``other_mask [N, 1, 1, S]`` gives its keys and
        values. With ``first_token_only`` only token 0 is updated (its keys and values are still all
        tokens), and the result is ``[N, 1, D]``.
        """
        query = hidden[:, :1] if first_token_only else hidden
        hidden = self.self_attention(query, hidden, mask)
        if self.cross_attention is not None:
            if other is None or other_mask is None:
                raise ValueError("PostNormLayer with cross-attention needs the other stream and its mask")
            hidden = self.cross_attention(hidden, other, other_mask)
        return self.output_norm(hidden + self.feed_forward(hidden))
