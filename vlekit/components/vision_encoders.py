"""Vision encoders: the Hugging Face CLIP vision tower (VLE's), CLS + patch grid after post-LayerNorm.

Pixels are normalised with CLIP's mean and std (those of ``CLIPImageProcessor``), declared as the
encoder's ``image_mean`` / ``image_std``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from data_prep.constants import CLIP_MEAN, CLIP_STD  # the pixel statistics, defined once
from vlekit.interfaces import VisionEncoder, check_shape
from vlekit.options import thaw
from vlekit.registry import VISION_ENCODERS, register_vision_encoder
from vlekit.hf_configs import check_typed_keys, keys_from_file, saved_hf_config
from vlekit.components.text_encoders import enable_activation_checkpointing, load_pretrained_strictly
from vlekit.components.hf_vision import HFVisionConfig, HFVisionEncoder  # noqa: F401  (registers hf-vision, its presets)

# What a full CLIP checkpoint holds besides the vision tower.
_CLIP_TEXT_SIDE = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")


def interpolate_position_embeddings(weight: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resize ``[1 + g*g, D]`` position embeddings to ``[1 + new_grid**2, D]``.

    Bicubic over the patch grid; the CLS row is kept as it is (as VLE does for 384 px).
    """
    old_grid = int(round((weight.shape[0] - 1) ** 0.5))
    if old_grid * old_grid + 1 != weight.shape[0]:
        raise ValueError(f"position embeddings of {weight.shape[0]} rows are not 1 + a square grid")
    if old_grid == new_grid:
        return weight
    cls_row, grid = weight[:1], weight[1:]
    grid = rearrange(grid, "(h w) d -> 1 d h w", h=old_grid)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = rearrange(grid, "1 d h w -> (h w) d").to(weight.dtype)
    return torch.cat([cls_row, grid], dim=0)


@dataclass(frozen=True)
class CLIPVisionEncoderConfig:
    """Options of ``clip-vision``.

    model_name: hub name or local directory of a CLIP (or CLIP vision) checkpoint; with ``pretrained``
        its weights are loaded. ``None`` builds from ``hf_config`` alone (random init).
    hf_config: ``CLIPVisionConfig`` fields, overriding the named model's (unknown keys are errors when
        typed, dropped when read from a saved file: :mod:`vlekit.hf_configs`).
    image_size: run at another resolution; position embeddings are interpolated once at build time.
    strict / ignore_unexpected: as for ``hf-text``; the presets ignore the text side of a full CLIP
        checkpoint.
    """

    model_name: str | None = None
    pretrained: bool = True
    hf_config: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    gradient_checkpointing: bool = False
    strict: bool = True
    ignore_unexpected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_typed_keys(CLIPVisionConfig, self.hf_config, where="clip-vision")


_TINY_CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  image_size=64, patch_size=8)


@register_vision_encoder("clip-vision", config=CLIPVisionEncoderConfig, tiny=dict(hf_config=_TINY_CLIP))
class CLIPVisionEncoder(VisionEncoder):
    """Hugging Face CLIP vision tower; all tokens pass through CLIP's post-LayerNorm (as in VLE)."""

    def __init__(self, *, config: CLIPVisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.model_name is not None:
            vision_config = CLIPVisionConfig.from_pretrained(config.model_name, **thaw(config.hf_config))
        else:
            vision_config = CLIPVisionConfig(**thaw(config.hf_config))
        if config.model_name is not None and config.pretrained:
            self.model = load_pretrained_strictly(
                CLIPVisionModel, config.model_name, config=vision_config, strict=config.strict,
                ignore_unexpected=config.ignore_unexpected, where="clip-vision",
            )
        else:
            self.model = CLIPVisionModel(vision_config)
        if config.image_size is not None and config.image_size != self.model.config.image_size:
            self._resize_positions(config.image_size)
        if config.gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        self.hidden_size: int = self.model.config.hidden_size
        self.patch_size: int = self.model.config.patch_size
        self.image_size: int = self.model.config.image_size
        self.grid: int = self.image_size // self.patch_size
        # CLIP's pixel normalisation: the preprocessor takes it from the encoder it feeds.
        self.image_mean: tuple[float, float, float] = CLIP_MEAN
        self.image_std: tuple[float, float, float] = CLIP_STD

    def _resize_positions(self, image_size: int) -> None:
        patch = self.model.config.patch_size
        if image_size % patch:
            raise ValueError(f"clip-vision: image_size {image_size} is not a multiple of the patch size {patch}")
        embeddings = self.model.embeddings
        new_grid = image_size // patch
        weight = interpolate_position_embeddings(embeddings.position_embedding.weight.data, new_grid)
        embeddings.position_embedding = nn.Embedding(weight.shape[0], weight.shape[1], _weight=weight.clone())
        embeddings.image_size = image_size
        embeddings.num_patches = new_grid * new_grid
        embeddings.num_positions = weight.shape[0]
        embeddings.register_buffer("position_ids", torch.arange(weight.shape[0]).unsqueeze(0), persistent=False)
        self.model.config.image_size = image_size

    @classmethod
    def options_from_file(cls, options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
        """Saved options as transformers would read them (:func:`vlekit.hf_configs.keys_from_file`)."""
        return {**options, "hf_config": keys_from_file(CLIPVisionConfig, options.get("hf_config") or {}, where=where)}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` -> ``[B, 1 + grid**2, hidden_size]`` after post-LayerNorm."""
        check_shape(pixel_values, ("B", 3, self.image_size, self.image_size), name="pixel_values", where="clip-vision")
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return self.model.post_layernorm(hidden)

    def resolved_config(self) -> CLIPVisionEncoderConfig:
        return dataclasses.replace(
            self.config, model_name=None, pretrained=False, hf_config=saved_hf_config(self.model.config), image_size=None
        )


VISION_ENCODERS.register_preset(
    "clip-vit-b16", base="clip-vision", model_name="openai/clip-vit-base-patch16", ignore_unexpected=_CLIP_TEXT_SIDE,
    description="CLIP ViT-B/16 (VLE-base's vision encoder; VLE runs it at 384 px)",
)
VISION_ENCODERS.register_preset(
    "clip-vit-l14", base="clip-vision", model_name="openai/clip-vit-large-patch14", ignore_unexpected=_CLIP_TEXT_SIDE,
    description="CLIP ViT-L/14 (VLE-large's vision encoder; VLE runs it at 336 px)",
)
VISION_ENCODERS.register_preset(
    "tiny-clip", base="clip-vision", hf_config=_TINY_CLIP,
    description="tiny random-init CLIP ViT (64 wide, 2 layers, 64 px, 8 px patches) for tests and the demo",
)
VISION_ENCODERS.register_preset(
    "clip-vit-b16-384-random", base="clip-vision",
    hf_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=384, patch_size=16, projection_dim=512),
    description="CLIP ViT-B/16 at 384 px shape, random init (benchmarks, no download)",
)
VISION_ENCODERS.register_preset(
    "clip-vit-l14-336-random", base="clip-vision",
    hf_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14, projection_dim=768),
    description="CLIP ViT-L/14 at 336 px shape, random init (benchmarks, no download)",
)


# -- blind: a vision encoder that sees nothing (the trainable text-only baseline; vlekit diagnose) ----------
@dataclass(frozen=True)
class BlindVisionEncoderConfig:
    """Options of ``blind``: the shape of the token grid it returns (the data pipeline still makes
    pixels and object patch masks of this size, so it fits every config that names a grid).

    hidden_size: width D of its tokens; image_size / patch_size: the grid, ``image_size // patch_size``.
    """

    hidden_size: int = 64
    image_size: int = 224
    patch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("hidden_size", "image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"blind: {name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"blind: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")


@register_vision_encoder("blind", config=BlindVisionEncoderConfig, tiny=dict(hidden_size=32, image_size=32, patch_size=8))
class BlindVisionEncoder(VisionEncoder):
    """No image information: one learned CLS token and one learned patch token, whatever the pixels.

    Every patch is the same vector, so object tokens (means of patches under a box) carry neither
    pixels nor box geometry: with it, a VCR model is the answer-from-text baseline (VCR's "text only"),
    trained and evaluated by the same pipeline as the model it is compared with.
    """

    def __init__(self, *, config: BlindVisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size, self.image_size, self.patch_size = config.hidden_size, config.image_size, config.patch_size
        self.grid = config.image_size // config.patch_size
        # Declared so the pipeline normalises as for CLIP; the pixels are read for their shape only.
        self.image_mean, self.image_std = CLIP_MEAN, CLIP_STD
        self.cls_token = nn.Parameter(torch.randn(config.hidden_size) * 0.02)
        self.patch_token = nn.Parameter(torch.randn(config.hidden_size) * 0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` (shape checked, values unused) -> ``[B, 1 + grid**2, hidden_size]``."""
        check_shape(pixel_values, ("B", 3, self.image_size, self.image_size), name="pixel_values", where="blind")
        batch, patches = pixel_values.shape[0], self.grid**2
        return torch.cat([self.cls_token.expand(batch, 1, -1), self.patch_token.expand(batch, patches, -1)], dim=1)
