"""``timm-vit``: any timm ViT-family model (ViT, DeiT, DeiT-3, DINOv2, EVA-02, SigLIP, ...) as a vision encoder.

vlekit's vision contract is ``[B, 1 + grid**2, D]``: one CLS token, then the row-major patch grid,
after the model's final LayerNorm. timm models put ``num_prefix_tokens`` tokens before the patches
(the class token first, then distillation or register tokens), so this encoder keeps the class token
and drops the others. Everything is read from the built model, never from its name: the number of
prefix tokens (``num_prefix_tokens``), whether there is a class token (``cls_token``), the patch size
(``patch_embed.patch_size``), the grid (``patch_embed.grid_size``), the input size
(``patch_embed.img_size``) and the width (``num_features``).

Image size: ``image_size`` is passed to ``timm.create_model(img_size=...)``; timm builds the position
embeddings for that grid and, when it loads pretrained weights, resamples the checkpoint's position
embeddings to it (bicubic over the grid, prefix rows kept), as VLE does for CLIP at 384 px.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from vlekit import VISION_ENCODERS, register_vision_encoder
from vlekit.interfaces import VisionEncoder, check_shape

CLS_TOKEN_CHOICES = ("model", "mean")
# create_model arguments this encoder sets itself from its own options.
_RESERVED_KWARGS = {"pretrained": "pretrained", "img_size": "image_size", "num_classes": None,
                    "pretrained_cfg_overlay": "pretrained_file"}


@dataclass(frozen=True)
class TimmViTConfig:
    """Options of ``timm-vit``.

    model_name: a timm model name, optionally with a pretrained tag (``vit_base_patch16_224.augreg_in21k``).
    pretrained: load timm's pretrained weights (from the Hugging Face hub, or from ``pretrained_file``).
    pretrained_file: a local weights file in timm's key format, loaded instead of the hub (offline);
        timm's checkpoint filter still applies (position embeddings resampled to ``image_size``).
    image_size: input size in pixels (square); ``None`` keeps the model's default.
    model_kwargs: further ``timm.create_model`` arguments (``depth``, ``embed_dim``, ``drop_path_rate``, ...).
    cls_token: ``"model"``: the model's class token (models without one are refused); ``"mean"``: the
        mean of the patch tokens, for models without a class token (SigLIP, global-average-pool ViTs).
    """

    model_name: str = "vit_base_patch16_224"
    pretrained: bool = True
    pretrained_file: str | None = None
    image_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    cls_token: str = "model"
    gradient_checkpointing: bool = False


def _square(value: Any, *, what: str, model_name: str) -> int:
    """An int from timm's int or ``(h, w)`` pair; non-square grids do not fit vlekit's ``grid x grid``."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or pair[0] != pair[1]:
        raise ValueError(f"timm-vit: {model_name} has {what} {pair}; vlekit needs a square one (set image_size)")
    return int(pair[0])


def _channels(pretrained_cfg: dict[str, Any], key: str, model_name: str) -> tuple[float, float, float]:
    """The per-channel pixel ``mean`` or ``std`` of timm's ``pretrained_cfg`` as a 3-tuple of floats."""
    value = tuple(float(v) for v in (pretrained_cfg or {}).get(key, ()))
    if len(value) != 3:
        raise ValueError(f"timm-vit: {model_name}'s pretrained_cfg has no 3-channel {key!r} ({value}); vlekit needs RGB")
    return value  # type: ignore[return-value]


_TINY_TIMM_VIT = dict(model_name="vit_tiny_patch16_224", pretrained=False, image_size=64, model_kwargs=dict(depth=2))


@register_vision_encoder("timm-vit", config=TimmViTConfig, tiny=_TINY_TIMM_VIT)
class TimmViTEncoder(VisionEncoder):
    """Any timm ViT-family model by name: CLS + patch grid after the final norm, prefix extras dropped."""

    def __init__(self, *, config: TimmViTConfig) -> None:
        super().__init__()
        self._check_options(config)
        self.config = config
        overlay = {"pretrained_cfg_overlay": {"file": config.pretrained_file}} if config.pretrained_file else {}
        size = {"img_size": config.image_size} if config.image_size is not None else {}
        self.model = timm.create_model(
            config.model_name, pretrained=config.pretrained, num_classes=0, **size, **overlay, **config.model_kwargs
        )
        patch_embed = getattr(self.model, "patch_embed", None)
        if not all(hasattr(x, a) for x, a in ((patch_embed, "grid_size"), (patch_embed, "patch_size"),
                                              (self.model, "num_prefix_tokens"), (self.model, "forward_features"))):
            raise TypeError(
                f"timm-vit: {config.model_name} ({type(self.model).__name__}) is not a ViT-family model: it needs "
                "patch_embed.grid_size, patch_embed.patch_size, num_prefix_tokens and forward_features"
            )
        self.patch_size: int = _square(patch_embed.patch_size, what="patch size", model_name=config.model_name)
        self.grid: int = _square(patch_embed.grid_size, what="patch grid", model_name=config.model_name)
        self.image_size: int = _square(patch_embed.img_size, what="image size", model_name=config.model_name)
        self.hidden_size: int = self.model.num_features
        # The normalisation the weights were trained with (ImageNet, CLIP, SigLIP's 0.5, ...).
        self.image_mean: tuple[float, float, float] = _channels(self.model.pretrained_cfg, "mean", config.model_name)
        self.image_std: tuple[float, float, float] = _channels(self.model.pretrained_cfg, "std", config.model_name)
        self.num_prefix_tokens: int = self.model.num_prefix_tokens
        self.has_class_token: bool = getattr(self.model, "cls_token", None) is not None
        if config.cls_token == "model" and not self.has_class_token:
            raise ValueError(
                f"timm-vit: {config.model_name} has no class token ({self.num_prefix_tokens} prefix tokens), and "
                "vlekit's vision output starts with a CLS. Pass cls_token='mean' to use the mean of the patch "
                "tokens as the CLS instead."
            )
        # Pool-then-norm models (global-average-pool ViTs, EVA-02) have norm = Identity and put their final
        # LayerNorm in fc_norm; applied per token it gives the normalised tokens the contract asks for.
        self.norm_after_pool: bool = isinstance(getattr(self.model, "norm", nn.Identity()), nn.Identity) and not isinstance(
            getattr(self.model, "fc_norm", nn.Identity()), nn.Identity
        )
        if getattr(self.model, "attn_pool", None) is not None:
            # The attention-pool head (MAP, SigLIP) is never used: drop it, so no parameter is left unused (DDP).
            self.model.reset_classifier(0, global_pool="")
        if config.gradient_checkpointing:
            self.model.set_grad_checkpointing(True)

    @staticmethod
    def _check_options(config: TimmViTConfig) -> None:
        if config.cls_token not in CLS_TOKEN_CHOICES:
            raise ValueError(f"timm-vit: cls_token must be one of {CLS_TOKEN_CHOICES}, got {config.cls_token!r}")
        if config.pretrained_file is not None and not config.pretrained:
            raise ValueError(f"timm-vit: pretrained_file={config.pretrained_file!r} needs pretrained=True")
        for key, option in _RESERVED_KWARGS.items():
            if key in config.model_kwargs:
                instead = f"use the option {option!r}" if option else "the encoder returns tokens, not logits"
                raise ValueError(f"timm-vit: model_kwargs may not set {key!r}; {instead}")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` -> ``[B, 1 + grid**2, hidden_size]`` (CLS, then the row-major grid)."""
        where = f"timm-vit ({self.config.model_name})"
        check_shape(pixel_values, ("B", 3, self.image_size, self.image_size), name="pixel_values", where=where)
        tokens = self.model.forward_features(pixel_values)  # [B, prefix + grid**2, D]
        check_shape(tokens, (pixel_values.shape[0], self.num_prefix_tokens + self.grid**2, self.hidden_size),
                    name="forward_features output", where=where)
        patches = tokens[:, self.num_prefix_tokens:]
        # timm puts the class token first among the prefix tokens; distillation / register tokens follow it.
        cls = tokens[:, :1] if self.config.cls_token == "model" else patches.mean(dim=1, keepdim=True)
        tokens = torch.cat([cls, patches], dim=1)
        return self.model.fc_norm(tokens) if self.norm_after_pool else tokens

    def resolved_config(self) -> TimmViTConfig:
        """Rebuilds the architecture offline: timm model definitions live in code, weights come from the checkpoint."""
        return dataclasses.replace(self.config, pretrained=False, pretrained_file=None, image_size=self.image_size)


VISION_ENCODERS.register_preset(
    "vit-base-patch16-224", base="timm-vit", model_name="vit_base_patch16_224",
    description="timm ViT-B/16 at 224 px (augreg ImageNet-21k -> 1k weights)",
)
VISION_ENCODERS.register_preset(
    "vit-base-patch14-reg4-dinov2", base="timm-vit", model_name="vit_base_patch14_reg4_dinov2.lvd142m",
    image_size=224, description="timm DINOv2 ViT-B/14 with 4 register tokens (dropped), resized to 224 px",
)
VISION_ENCODERS.register_preset(
    "tiny-timm-vit", base="timm-vit", **_TINY_TIMM_VIT,
    description="tiny random-init timm ViT (192 wide, 2 layers, 64 px, 16 px patches) for tests",
)
