"""``hf-vision``: any Hugging Face vision tower with a patch grid (CLIP, SigLIP / SigLIP2, DINOv2, DINOv2 with
registers, ViT), by hub name, local folder or config.

The contract's tokens ``[B, 1 + grid**2, D]`` are built from what the model computes, read from the built
model and its config, never from its name:

* **patch grid**: the model's own ``last_hidden_state`` patch tokens, row-major, after its final norm (CLIP
  leaves ``post_layernorm`` out of ``last_hidden_state``: it is applied to every token, as VLE and
  ``clip-vision`` do; the other families' ``last_hidden_state`` is already normalised);
* **prefix tokens**: the class token (an embeddings ``cls_token`` / ``class_embedding``) and register tokens
  (``register_tokens``: DINOv2 with registers) come before the grid; the registers are dropped;
* **summary token** (``summary_token``): ``cls``, the model's class token; ``pooler``, the model's own
  ``pooler_output`` (SigLIP: its attention-pooling head, the image embedding it was trained to produce;
  ViT: dense + tanh on the CLS; DINOv2 / CLIP: the normalised CLS); ``mean``, the mean of the patch
  tokens. ``auto`` takes ``cls`` where the model has a class token, else ``pooler`` where it has a
  pooling head (SigLIP), else ``mean``. Pooling parts a choice leaves unused (SigLIP's head, ViT's pooler)
  are not built, so no parameter goes without a gradient (DDP); DINOv2's and ViT's ``mask_token`` (masked
  image modelling only) is kept in the weights but frozen.

Pixels: ``image_mean``, ``image_std`` and ``image_size`` come from the folder's (or hub repo's)
``preprocessor_config.json`` (the centre-crop size where the processor crops, else its resize size); without
one, from the family's published statistics (:data:`FAMILY_PIXEL_STATISTICS`) and the model config's
``image_size``. A processor size that is not a multiple of the patch size (SigLIP so400m: 384 px, 14 px
patches) becomes the pixels the patch convolution reads (378 px: 27 x 27 patches).

Resolution: another ``image_size`` (a multiple of the patch size) is run with the model's own position
interpolation: ``interpolate_pos_encoding=True`` for the families whose forward takes it (CLIP, SigLIP, ViT);
DINOv2's embeddings interpolate by themselves. A family with neither takes its config's size only, and
another is an error naming the sizes it can take.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import CONFIG_MAPPING, MODEL_MAPPING, AutoConfig, CLIPVisionModel, PretrainedConfig
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)
from transformers.utils import cached_file

from vlekit.components.text_encoders import enable_activation_checkpointing, load_pretrained_strictly
from vlekit.hf_configs import check_typed_keys, keys_from_file, saved_hf_config
from vlekit.interfaces import VisionEncoder, check_shape
from vlekit.options import thaw
from vlekit.registry import VISION_ENCODERS, register_vision_encoder

Triple = tuple[float, float, float]
SUMMARY_TOKENS = ("auto", "cls", "pooler", "mean")
PROCESSOR_FILE = "preprocessor_config.json"
# The pixel statistics of each family's published checkpoints (their preprocessor_config.json), keyed by the
# vision config's model_type: used when a folder has no processor config (a tower built from hf_config).
FAMILY_PIXEL_STATISTICS: dict[str, tuple[Triple, Triple]] = {
    "clip_vision_model": (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)),
    "siglip_vision_model": (tuple(IMAGENET_STANDARD_MEAN), tuple(IMAGENET_STANDARD_STD)),
    "dinov2": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
    "dinov2_with_registers": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
    "vit": (tuple(IMAGENET_STANDARD_MEAN), tuple(IMAGENET_STANDARD_STD)),
}
# Families whose last_hidden_state precedes their final norm: the norm's attribute, applied to every token.
_NORM_AFTER_LAST_HIDDEN_STATE: dict[type, str] = {CLIPVisionModel: "post_layernorm"}


def vision_config_class(model_type: str) -> type[PretrainedConfig]:
    """The vision config class of ``model_type``; a vision-language type (``siglip``, ``clip``) gives its vision tower's."""
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"hf-vision: unknown model_type {model_type!r}; e.g. 'siglip_vision_model', 'dinov2', "
                         f"'dinov2_with_registers', 'vit', 'clip_vision_model'")
    config_class = CONFIG_MAPPING[model_type]
    return getattr(config_class, "sub_configs", {}).get("vision_config", config_class)


def read_image_processor(model_name: str) -> dict[str, Any] | None:
    """The ``preprocessor_config.json`` of a local folder or hub repo, or None where it has none."""
    path = cached_file(model_name, PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def processor_image_size(processor: Mapping[str, Any], *, where: str) -> int | None:
    """The square side an image processor config feeds its model: the crop where it centre-crops, else the resize."""
    crop = processor.get("crop_size") if processor.get("do_center_crop") else None
    size = crop if crop is not None else processor.get("size")
    if size is None or isinstance(size, int):
        return size
    if "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise ValueError(f"{where}: the image processor feeds {size['height']} x {size['width']} px; vlekit's "
                             f"canvas is square: pass image_size")
        return int(size["height"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise ValueError(f"{where}: cannot read an image size from the image processor's size {dict(size)}; pass image_size")


def _triple(value: Any, *, name: str) -> Triple | None:
    if value is None:
        return None
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"hf-vision: {name} needs one value per RGB channel (3 floats), got {list(value)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class HFVisionConfig:
    """Options of ``hf-vision``.

    model_name: hub name or local folder of a vision model or of a vision-language model (CLIP, SigLIP:
        its vision tower is taken); with ``pretrained`` its weights are loaded, otherwise only its config.
        ``None`` builds ``model_type`` from ``hf_config`` alone (random init).
    model_type: the vision config type when ``model_name`` is None (``siglip_vision_model``, ``dinov2``,
        ``dinov2_with_registers``, ``vit``, ``clip_vision_model``; ``siglip`` / ``clip`` mean their towers).
    hf_config: fields of the vision config, overriding the named model's (typed keys are checked strictly,
        saved ones read as transformers reads them: :mod:`vlekit.hf_configs`).
    image_size: the side of the square input; ``None``: the image processor's (see the module docstring).
    image_mean / image_std: the pixel statistics; ``None``: the image processor's, else the family's.
    summary_token: the token put first: ``auto``, ``cls``, ``pooler`` or ``mean`` (module docstring).
    strict / ignore_unexpected: as for ``hf-text``; the presets ignore the text side of CLIP / SigLIP
        checkpoints. Pooling parts left out by ``summary_token`` are ignored in the checkpoint by themselves.
    """

    model_name: str | None = None
    pretrained: bool = True
    model_type: str = "siglip_vision_model"
    hf_config: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    summary_token: str = "auto"
    gradient_checkpointing: bool = False
    strict: bool = True
    ignore_unexpected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.summary_token not in SUMMARY_TOKENS:
            raise ValueError(f"hf-vision: summary_token must be one of {', '.join(SUMMARY_TOKENS)}, got {self.summary_token!r}")
        for name in ("image_mean", "image_std"):
            _triple(getattr(self, name), name=name)
        if self.model_name is None:
            check_typed_keys(vision_config_class(self.model_type), self.hf_config, where=f"hf-vision ({self.model_type})")


def _model_layout(model_class: type[nn.Module], config: PretrainedConfig) -> dict[str, Any]:
    """What a tower puts before its patch grid and how it pools, read from the model built on the meta device."""
    with torch.device("meta"):
        probe = model_class(config)
    embeddings = getattr(getattr(probe, "vision_model", probe), "embeddings", None)
    registers = getattr(embeddings, "register_tokens", None)
    return {
        "has_cls": any(isinstance(getattr(embeddings, name, None), nn.Parameter) for name in ("cls_token", "class_embedding")),
        "registers": 0 if registers is None else int(registers.shape[1]),
        "has_head": bool(getattr(config, "vision_use_head", False)),
        "pooler_option": "add_pooling_layer" in inspect.signature(model_class.__init__).parameters,
    }


def _checked_size(image_size: int, *, patch: int, where: str) -> int:
    if image_size <= 0 or image_size % patch:
        below, above = max(patch, image_size // patch * patch), (image_size // patch + 1) * patch
        raise ValueError(f"{where}: image_size {image_size} is not a multiple of the patch size {patch}; the "
                         f"nearest sizes it can take are {below} and {above}")
    return image_size


@register_vision_encoder("hf-vision", config=HFVisionConfig, tiny=dict(
    model_type="siglip_vision_model", hf_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=64, patch_size=8)))
class HFVisionEncoder(VisionEncoder):
    """Any Hugging Face vision tower with a patch grid (CLIP, SigLIP/SigLIP2, DINOv2 (+registers), ViT)."""

    def __init__(self, *, config: HFVisionConfig) -> None:
        super().__init__()
        self.config = config
        where = f"hf-vision ({config.model_name or config.model_type})"
        vision_config = self._vision_config(config)
        model_class = MODEL_MAPPING[type(vision_config)]
        required = [name for name, p in inspect.signature(model_class.forward).parameters.items()
                    if name not in ("self", "pixel_values") and p.default is p.empty and p.kind is not p.VAR_KEYWORD]
        if required:
            raise ValueError(f"{where}: {model_class.__name__} needs {', '.join(required)} besides pixel_values (a "
                             f"variable-resolution tower); hf-vision takes fixed-resolution ones (for SigLIP2: the "
                             f"'google/siglip2-*-patch16-<size>' checkpoints, model_type 'siglip')")
        layout = _model_layout(model_class, vision_config)
        summary = config.summary_token
        if summary == "auto":
            summary = "cls" if layout["has_cls"] else "pooler" if layout["has_head"] else "mean"
        if summary == "cls" and not layout["has_cls"]:
            raise ValueError(f"{where}: {model_class.__name__} has no class token; use summary_token 'pooler' or 'mean'")
        # Pooling parts that the summary leaves unused are not built (their checkpoint weights are then ignored).
        dropped, model_options, prefix = [], {}, model_class.base_model_prefix
        if summary != "pooler" and layout["has_head"]:
            vision_config.vision_use_head = False
            dropped += ["head.", f"{prefix}.head."]
        if layout["pooler_option"]:
            model_options["add_pooling_layer"] = summary == "pooler"
            dropped += [] if summary == "pooler" else ["pooler.", f"{prefix}.pooler."]
        if config.model_name is not None and config.pretrained:
            self.model = load_pretrained_strictly(
                model_class, config.model_name, config=vision_config, strict=config.strict,
                ignore_unexpected=(*config.ignore_unexpected, *dropped), where=where, **model_options,
            )
        else:
            self.model = model_class(vision_config, **model_options)
        self.summary_token: str = summary
        self.num_prefix_tokens: int = int(layout["has_cls"]) + layout["registers"]
        tower = getattr(self.model, "vision_model", self.model)
        mask_token = getattr(tower.embeddings, "mask_token", None)
        if isinstance(mask_token, nn.Parameter):  # masked image modelling only: vlekit never masks patches
            mask_token.requires_grad_(False)
        norm = _NORM_AFTER_LAST_HIDDEN_STATE.get(model_class)
        self.final_norm: nn.Module | None = getattr(tower, norm) if norm else None
        if config.gradient_checkpointing:
            enable_activation_checkpointing(self.model)

        processor = read_image_processor(config.model_name) if config.model_name is not None else None
        self.hidden_size: int = vision_config.hidden_size
        self.patch_size: int = vision_config.patch_size
        self.image_size: int = self._image_size(config, vision_config, processor, where=where)
        self.grid: int = self.image_size // self.patch_size
        self.image_mean, self.image_std = self._pixel_statistics(config, vision_config, processor, where=where)
        self._forward_options = self._position_options(model_class, tower, vision_config, where=where)

    @staticmethod
    def _vision_config(config: HFVisionConfig) -> PretrainedConfig:
        if config.model_name is None:  # model_type and the hf_config keys were checked by HFVisionConfig
            return vision_config_class(config.model_type)(**thaw(config.hf_config))
        loaded = AutoConfig.from_pretrained(config.model_name)
        loaded = getattr(loaded, "vision_config", loaded)  # CLIP / SigLIP: the vision tower's config
        check_typed_keys(type(loaded), config.hf_config, where=f"hf-vision ({config.model_name})")
        return type(loaded).from_dict({**loaded.to_dict(), **thaw(config.hf_config)})

    def _image_size(self, config: HFVisionConfig, vision_config: PretrainedConfig, processor: Mapping[str, Any] | None,
                    *, where: str) -> int:
        patch = vision_config.patch_size
        if config.image_size is not None:
            return _checked_size(config.image_size, patch=patch, where=where)
        size = processor_image_size(processor, where=where) if processor is not None else None
        size = size if size is not None else vision_config.image_size
        # The pixels the patch convolution reads (it drops a remainder): a size the patch grid covers.
        return max(patch, size // patch * patch)

    @staticmethod
    def _pixel_statistics(config: HFVisionConfig, vision_config: PretrainedConfig,
                          processor: Mapping[str, Any] | None, *, where: str) -> tuple[Triple, Triple]:
        family = FAMILY_PIXEL_STATISTICS.get(vision_config.model_type)
        statistics = []
        for index, name in enumerate(("image_mean", "image_std")):
            value = getattr(config, name)
            if value is None and processor is not None:
                value = processor.get(name)
            if value is None and family is not None:
                value = family[index]
            if value is None:
                raise ValueError(f"{where}: no {PROCESSOR_FILE} and no known statistics for model_type "
                                 f"{vision_config.model_type!r}: pass image_mean and image_std")
            statistics.append(_triple(value, name=name))
        return statistics[0], statistics[1]

    def _position_options(self, model_class: type[nn.Module], tower: nn.Module, vision_config: PretrainedConfig,
                          *, where: str) -> dict[str, Any]:
        """Forward options that run the model at ``image_size`` (position interpolation), or an error."""
        patch, trained = vision_config.patch_size, vision_config.image_size
        if self.grid == trained // patch:
            return {}
        if "interpolate_pos_encoding" in inspect.signature(model_class.forward).parameters:
            return {"interpolate_pos_encoding": True}
        if callable(getattr(tower.embeddings, "interpolate_pos_encoding", None)):
            return {}  # the embeddings interpolate whenever the input differs (DINOv2)
        raise ValueError(f"{where}: {model_class.__name__} cannot interpolate its position embeddings: it takes "
                         f"image_size {trained // patch * patch} only, not {self.image_size}")

    @classmethod
    def options_from_file(cls, options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
        """Saved options as transformers would read them (:func:`vlekit.hf_configs.keys_from_file`)."""
        model_type = options.get("model_type", HFVisionConfig.model_type)
        if options.get("model_name") is not None or model_type not in CONFIG_MAPPING:
            return dict(options)  # a named folder is read by transformers itself; an unknown type fails at build
        hf_config = keys_from_file(vision_config_class(model_type), options.get("hf_config") or {}, where=where)
        return {**options, "hf_config": hf_config}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, S, S]`` -> ``[B, 1 + grid**2, hidden_size]``: the summary token, then the grid."""
        where = f"hf-vision ({type(self.model).__name__})"
        check_shape(pixel_values, ("B", 3, self.image_size, self.image_size), name="pixel_values", where=where)
        output = self.model(pixel_values=pixel_values, **self._forward_options)
        tokens = output.last_hidden_state
        if self.final_norm is not None:
            tokens = self.final_norm(tokens)
        check_shape(tokens, (pixel_values.shape[0], self.num_prefix_tokens + self.grid**2, self.hidden_size),
                    name="last_hidden_state", where=where)
        patches = tokens[:, self.num_prefix_tokens:]
        if self.summary_token == "cls":
            summary = tokens[:, :1]
        elif self.summary_token == "pooler":
            summary = output.pooler_output.unsqueeze(1)
        else:
            summary = patches.mean(dim=1, keepdim=True)
        return torch.cat([summary, patches], dim=1)

    def resolved_config(self) -> HFVisionConfig:
        """Rebuilds the tower offline: its vision config, and the pixels and summary token it was given."""
        return dataclasses.replace(
            self.config, model_name=None, pretrained=False, model_type=self.model.config.model_type,
            hf_config=saved_hf_config(self.model.config), image_size=self.image_size, image_mean=self.image_mean,
            image_std=self.image_std, summary_token=self.summary_token, ignore_unexpected=(),
        )


# What a CLIP / SigLIP checkpoint holds besides the vision tower.
_SIGLIP_TEXT_SIDE = ("text_model.", "logit_scale", "logit_bias")
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8)

VISION_ENCODERS.register_preset(
    "siglip-base-patch16-224", base="hf-vision", model_name="google/siglip-base-patch16-224",
    ignore_unexpected=_SIGLIP_TEXT_SIDE, description="SigLIP ViT-B/16 at 224 px (no CLS: its attention-pool head first)",
)
VISION_ENCODERS.register_preset(
    "siglip2-base-patch16-224", base="hf-vision", model_name="google/siglip2-base-patch16-224",
    ignore_unexpected=_SIGLIP_TEXT_SIDE, description="SigLIP2 ViT-B/16 at 224 px (fixed resolution; pool head first)",
)
VISION_ENCODERS.register_preset(
    "siglip2-base-patch16-384", base="hf-vision", model_name="google/siglip2-base-patch16-384",
    ignore_unexpected=_SIGLIP_TEXT_SIDE, description="SigLIP2 ViT-B/16 at 384 px (fixed resolution; pool head first)",
)
VISION_ENCODERS.register_preset(
    "siglip-so400m-patch14-384", base="hf-vision", model_name="google/siglip-so400m-patch14-384",
    ignore_unexpected=_SIGLIP_TEXT_SIDE,
    description="SigLIP so400m/14 (1152 wide); its 384 px input runs as the 378 px its 27 x 27 patches read",
)
VISION_ENCODERS.register_preset(
    "dinov2-base", base="hf-vision", model_name="facebook/dinov2-base",
    description="DINOv2 ViT-B/14 at 224 px (its processor's crop; positions interpolated from 518 px)",
)
VISION_ENCODERS.register_preset(
    "dinov2-reg-base", base="hf-vision", model_name="facebook/dinov2-with-registers-base",
    description="DINOv2 ViT-B/14 with 4 registers (dropped) at 224 px",
)
VISION_ENCODERS.register_preset(
    "dinov2-reg-large", base="hf-vision", model_name="facebook/dinov2-with-registers-large",
    description="DINOv2 ViT-L/14 with 4 registers (dropped) at 224 px",
)
VISION_ENCODERS.register_preset(
    "vit-base-patch16-224-in21k", base="hf-vision", model_name="google/vit-base-patch16-224-in21k",
    description="ViT-B/16 pretrained on ImageNet-21k (Hugging Face), 224 px",
)
VISION_ENCODERS.register_preset(
    "tiny-siglip", base="hf-vision", model_type="siglip_vision_model", hf_config=dict(_TINY, intermediate_size=128),
    description="tiny random-init SigLIP tower (64 wide, 2 layers, 64 px, 8 px patches; pool head first) for tests",
)
VISION_ENCODERS.register_preset(
    "tiny-dinov2-reg", base="hf-vision", model_type="dinov2_with_registers",
    hf_config=dict(_TINY, mlp_ratio=2, num_register_tokens=4),
    description="tiny random-init DINOv2 with 4 registers (64 wide, 2 layers, 64 px, 8 px patches) for tests",
)
VISION_ENCODERS.register_preset(
    "tiny-vit", base="hf-vision", model_type="vit", hf_config=dict(_TINY, intermediate_size=128),
    description="tiny random-init Hugging Face ViT (64 wide, 2 layers, 64 px, 8 px patches) for tests",
)
