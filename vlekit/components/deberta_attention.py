"""DeBERTa's disentangled attention through ``torch.nn.functional.scaled_dot_product_attention``.

Hugging Face's DeBERTa-v2/v3 attention has no SDPA path: it materialises the scores, masks them,
softmaxes and multiplies with ``bmm`` in separate kernels. The disentangled terms are a bias on the
content scores: with ``q, k, v`` the content projections and ``s = 1 / sqrt(head_dim * f)``
(``f = 1 + [c2p] + [p2c]``)::

    scores = q k^T s + c2p + p2c,    c2p[i, j] = q_i . k^pos[delta(i, j)] s,   p2c[i, j] = k_j . q^pos[delta(j, i)] s

so ``softmax(scores + mask) v`` is exactly SDPA with ``scale = s`` and ``attn_mask = c2p + p2c`` where
the mask allows, ``finfo.min`` where it does not. The bias is computed by Hugging Face's own
``disentangled_attention_bias`` (same relative positions, buckets and position dropout), so only
the last step changes: on CUDA SDPA runs the memory-efficient fused kernel (bias supported, with
its gradient), which never stores the ``[B, H, L, L]`` probabilities for the backward pass.

`use_deberta_attention(model, "sdpa")` switches every disentangled attention of a loaded model in
place (same parameters, same state-dict keys); ``hf-text``'s ``attention`` option calls it.
``output_attentions=True`` falls back to the eager path, which is the only one that has the
probabilities to return.

The Triton kernels on PyPI (``disentangled-flash`` 1.1.1, ``flashdeberta`` 0.0.8, both Apache-2.0)
are CUDA-only in their fused paths and could not be checked against the eager attention without a
GPU, so they are not offered here.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

DEBERTA_ATTENTIONS = ("eager", "sdpa")


class SDPADisentangledSelfAttention(DisentangledSelfAttention):
    """Hugging Face's `DisentangledSelfAttention` with the scores, mask, softmax and value product in one
    ``scaled_dot_product_attention`` call; parameters and outputs as the eager module's."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        query_states: torch.Tensor | None = None,
        relative_pos: torch.Tensor | None = None,
        rel_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """``hidden_states [B, L, hidden]``, ``attention_mask [B, 1, L, L]`` (or broadcastable; true where
        query i may attend to key j) -> ``(context [B, L, heads * head_dim], None)``."""
        if output_attentions:  # only the eager path has the probabilities
            return super().forward(hidden_states, attention_mask, output_attentions=True, query_states=query_states,
                                   relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        if query_states is None:
            query_states = hidden_states
        heads = self.num_attention_heads
        query = self.transpose_for_scores(self.query_proj(query_states), heads)  # [B * H, L, D]
        key = self.transpose_for_scores(self.key_proj(hidden_states), heads)
        value = self.transpose_for_scores(self.value_proj(hidden_states), heads)
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        scale = 1.0 / math.sqrt(query.shape[-1] * scale_factor)  # a Python float: no tensor, no host sync

        batch, length = hidden_states.shape[0], query.shape[-2]
        allowed = attention_mask.bool()
        bias = None
        if self.relative_attention:
            bias = self.disentangled_attention_bias(query, key, relative_pos, self.pos_dropout(rel_embeddings),
                                                    scale_factor)
        if torch.is_tensor(bias):
            bias = bias.view(batch, heads, length, -1).to(query.dtype)
            bias = bias.masked_fill(~allowed, torch.finfo(query.dtype).min)
        else:  # no relative term (pos_att_type empty): the mask alone
            bias = torch.zeros_like(allowed, dtype=query.dtype).masked_fill(~allowed, torch.finfo(query.dtype).min)
        context = nn.functional.scaled_dot_product_attention(
            query.view(batch, heads, length, -1), key.view(batch, heads, key.shape[-2], -1),
            value.view(batch, heads, value.shape[-2], -1), attn_mask=bias,
            dropout_p=self.dropout.p if self.training else 0.0, scale=scale,
        )  # [B, H, L, D]
        return context.transpose(1, 2).reshape(batch, length, -1), None


def use_deberta_attention(model: nn.Module, attention: str) -> int:
    """Switch every DeBERTa-v2/v3 disentangled attention inside ``model`` to ``attention`` (one of
    `DEBERTA_ATTENTIONS`), in place; returns how many modules it switched (0 means none were found)."""
    if attention not in DEBERTA_ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(DEBERTA_ATTENTIONS)}, got {attention!r}")
    target = SDPADisentangledSelfAttention if attention == "sdpa" else DisentangledSelfAttention
    switched = 0
    for module in model.modules():
        if isinstance(module, DisentangledSelfAttention):
            # Same parameters and buffers, other forward: the state dict does not change.
            module.__class__ = target
            switched += 1
    return switched
