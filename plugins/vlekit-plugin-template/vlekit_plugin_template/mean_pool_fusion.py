"""``template/mean-pool-fusion``: the smallest useful fusion, as a template for plugin authors.

No attention at all: each stream is averaged over its real tokens (padding excluded), and the two
means go through one Linear + tanh. The streams themselves pass through unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlekit import register_fusion
from vlekit.interfaces import Fusion, FusionOutput, check_shape
from vlekit.layers import Pooler, masked_mean


# Step 1: the config, a frozen dataclass. Its fields are the options; unknown options are rejected.
@dataclass(frozen=True)
class MeanPoolFusionConfig:
    """Options of ``template/mean-pool-fusion``."""

    hidden_size: int = 768


# Step 2: the module (keyword-only config, the fusion interface, hidden_size and pooled_size attributes).
# Step 3: its registration line: a namespaced name, the config, and tiny options for the registry tests.
@register_fusion("template/mean-pool-fusion", config=MeanPoolFusionConfig, tiny=dict(hidden_size=64))
class MeanPoolFusion(Fusion):
    """Template fusion: masked means of both streams -> Linear + tanh; pooled [N, 2D], no attention."""

    def __init__(self, *, config: MeanPoolFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.pooled_size = 2 * config.hidden_size
        self.pooler = Pooler(size=self.pooled_size)  # Linear + tanh

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
    ) -> FusionOutput:
        """``text [N, L, D]``, ``image [N, S, D]`` with 1/0 masks -> the streams unchanged, pooled ``[N, 2D]``."""
        check_shape(text, ("N", "L", self.hidden_size), name="text", where="template/mean-pool-fusion")
        check_shape(image, (text.shape[0], "S", self.hidden_size), name="image", where="template/mean-pool-fusion")
        means = torch.cat([masked_mean(text, text_mask), masked_mean(image, image_mask)], dim=-1)
        return FusionOutput(text=text, image=image, pooled=self.pooler(means))
