"""vlekit-timm: ``timm-vit`` reads its geometry from the model, keeps the CLS, resizes positions.

All models are random-init (``pretrained=False``) or loaded from a local file written here: timm's
hub download is not reachable offline, but its pretrained-loading path (``pretrained_file``) is.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import vlekit
from vlekit.registry import FUSIONS, VISION_ENCODERS

TINY = dict(model_name="vit_tiny_patch16_224", pretrained=False, image_size=64)


def build(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {**TINY, **options}
    options["model_kwargs"] = {"depth": 1, **options.get("model_kwargs", {})}
    return VISION_ENCODERS.build("timm-vit", **options).eval()


@torch.no_grad()
def encode(encoder: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder output, timm's own ``forward_features``) on the same random images."""
    size = encoder.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return encoder(pixels), encoder.model.forward_features(pixels)


def test_registered_by_its_package() -> None:
    rows = {row["name"]: row for row in vlekit.list_components("vision_encoder")}
    for name in ("timm-vit", "tiny-timm-vit", "vit-base-patch16-224"):
        assert rows[name]["source"] == "package vlekit-timm"


def test_patch_size_and_grid_are_read_from_the_model_not_its_name() -> None:
    encoder = build()
    assert (encoder.patch_size, encoder.grid, encoder.image_size, encoder.hidden_size) == (16, 4, 64, 192)
    smaller_patches = build(model_kwargs={"patch_size": 8})  # the name still says patch16
    assert (smaller_patches.patch_size, smaller_patches.grid) == (8, 8)
    out, features = encode(smaller_patches)
    assert out.shape == (2, 1 + 64, 192)
    torch.testing.assert_close(out, features)  # one prefix token: exactly timm's tokens after the final norm


@pytest.mark.parametrize(
    ("model_name", "mean", "std"),
    [
        ("vit_tiny_patch16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # augreg weights
        ("deit_tiny_patch16_224", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
        ("vit_base_patch16_clip_224.openai", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ],
)
def test_pixel_mean_and_std_come_from_the_models_pretrained_cfg(model_name: str, mean: tuple, std: tuple) -> None:
    encoder = build(model_name=model_name, model_kwargs={"embed_dim": 64, "num_heads": 2})
    assert encoder.image_mean == tuple(encoder.model.pretrained_cfg["mean"]) == pytest.approx(mean)
    assert encoder.image_std == tuple(encoder.model.pretrained_cfg["std"]) == pytest.approx(std)
    model = vlekit.build_model(vision_encoder={"name": "timm-vit", **TINY, "model_name": model_name,
                                               "model_kwargs": {"depth": 1, "embed_dim": 64, "num_heads": 2}})
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor(mean))  # uint8 input uses them


@pytest.mark.parametrize(
    ("model_name", "model_kwargs", "prefix"),
    [
        ("vit_tiny_patch16_224", {"reg_tokens": 4, "no_embed_class": True}, 5),  # CLS + 4 registers
        ("deit_tiny_distilled_patch16_224", {}, 2),  # CLS + distillation token
    ],
)
def test_extra_prefix_tokens_are_dropped_and_the_cls_kept(model_name: str, model_kwargs: dict, prefix: int) -> None:
    encoder = build(model_name=model_name, model_kwargs=model_kwargs)
    assert encoder.num_prefix_tokens == encoder.model.num_prefix_tokens == prefix
    out, features = encode(encoder)
    assert features.shape == (2, prefix + 16, 192)
    assert out.shape == (2, 1 + 16, 192)
    torch.testing.assert_close(out[:, 0], features[:, 0])
    torch.testing.assert_close(out[:, 1:], features[:, prefix:])


def test_models_without_a_cls_token_are_refused_or_given_the_patch_mean() -> None:
    no_cls = {"class_token": False, "global_pool": "avg"}
    with pytest.raises(ValueError, match="has no class token.*cls_token='mean'"):
        build(model_kwargs=no_cls)
    encoder = build(model_kwargs=no_cls, cls_token="mean")
    out, features = encode(encoder)
    assert encoder.num_prefix_tokens == 0 and out.shape == (2, 1 + 16, 192)
    # This model normalises after pooling (fc_norm): the synthetic CLS is timm's own pooled feature.
    assert encoder.norm_after_pool
    with torch.no_grad():
        torch.testing.assert_close(out[:, 0], encoder.model.forward_head(features, pre_logits=True))
        torch.testing.assert_close(out[:, 1:], encoder.model.fc_norm(features))


def test_attention_pool_head_is_dropped_so_every_parameter_trains() -> None:
    encoder = build(model_name="vit_base_patch16_siglip_224", cls_token="mean",
                    model_kwargs={"embed_dim": 64, "num_heads": 2})
    assert encoder.model.attn_pool is None
    encoder.train()
    out = encoder(torch.randn(2, 3, 64, 64))
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_gradient_checkpointing_is_timms() -> None:
    assert build(gradient_checkpointing=True).model.grad_checkpointing
    assert not build().model.grad_checkpointing


def test_image_size_sets_the_grid_and_position_embeddings() -> None:
    for size, grid in ((32, 2), (64, 4), (96, 6)):
        encoder = build(image_size=size)
        assert (encoder.image_size, encoder.grid) == (size, grid)
        assert encoder.model.pos_embed.shape == (1, 1 + grid**2, 192)
        assert encode(encoder)[0].shape == (2, 1 + grid**2, 192)
    with pytest.raises(ValueError, match=r"pixel_values has shape \[1, 3, 32, 32\], expected \[B, 3, 64, 64\]"):
        build()(torch.randn(1, 3, 32, 32))


def test_pretrained_weights_are_loaded_with_position_embeddings_resampled(tmp_path: Path) -> None:
    """timm's real loading path, offline: a checkpoint at 32 px loaded into a 64 px encoder."""
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    weights = tmp_path / "vit_tiny_32px.pth"
    torch.save(source.state_dict(), weights)
    encoder = build(pretrained=True, pretrained_file=str(weights), image_size=64)
    positions = encoder.model.pos_embed.detach()
    assert positions.shape == (1, 1 + 16, 192)
    torch.testing.assert_close(positions, resample_abs_pos_embed(source.pos_embed.detach(), (4, 4), num_prefix_tokens=1))
    torch.testing.assert_close(positions[:, 0], source.pos_embed.detach()[:, 0])  # the CLS row is kept
    torch.testing.assert_close(encoder.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    # The resolved config rebuilds the architecture offline, at the new size.
    resolved = encoder.resolved_config()
    assert (resolved.pretrained, resolved.pretrained_file, resolved.image_size) == (False, None, 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cls_token": "first"}, "cls_token must be one of"),
        ({"pretrained_file": "weights.pth"}, "needs pretrained=True"),
        ({"model_kwargs": {"img_size": 96}}, "may not set 'img_size'; use the option 'image_size'"),
        ({"model_name": "resnet18", "image_size": None}, "is not a ViT-family model"),
    ],
)
def test_bad_options_fail_fast_with_a_clear_message(options: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        VISION_ENCODERS.build("timm-vit", **{**TINY, **options})


FUSIONS_TO_COMBINE = ("co-attention", "merged-attention", "gated-cross-attention", "projection-concat", "dual-encoder")


@pytest.mark.parametrize("fusion", FUSIONS_TO_COMBINE)
def test_tiny_bert_timm_vit_and_each_fusion_build_a_vcr_model(fusion: str) -> None:
    torch.manual_seed(0)
    # Three different widths: text 64, vision 192, fusion 48; the core's projections adapt them.
    options = {**FUSIONS.get(fusion).tiny, "hidden_size": 48}
    model = vlekit.build_model(text_encoder="tiny-bert", vision_encoder="tiny-timm-vit",
                               fusion={"name": fusion, **options})
    assert (model.text_projection.in_features, model.image_projection.in_features) == (64, 192)
    assert model.text_projection.out_features == model.image_projection.out_features == 48
    batch = vcr_batch(patches=model.num_patches, image_size=model.vision_encoder.image_size, length=8)
    assert model.num_patches == 16
    output = model(**batch)
    assert output["logits"].shape == (2, 4)
    output["loss"].backward()
    assert model.vision_encoder.model.patch_embed.proj.weight.grad is not None


def vcr_batch(*, patches: int, image_size: int, batch: int = 2, choices: int = 4, length: int = 10,
              slots: int = 3) -> dict[str, torch.Tensor]:
    """A small fixed VCR batch (DESIGN.md section 3) with object tokens and object token types."""
    generator = torch.Generator().manual_seed(0)
    attention_mask = torch.ones(batch, choices, length, dtype=torch.long)
    attention_mask[0, 1, 7:] = 0
    input_ids = torch.randint(5, 1024, (batch, choices, length), generator=generator) * attention_mask
    text_type_ids = torch.zeros(batch, choices, length, dtype=torch.long)
    text_type_ids[:, :, 2] = 2  # mentions of object 0 ...
    text_type_ids[:, :, 4] = 3  # ... and object 1
    object_type_ids = torch.tensor([2, 3, 0]).expand(batch, choices, slots).clone()
    object_mask = (object_type_ids > 0).long()
    object_patch_mask = (torch.rand(batch, choices, slots, patches, generator=generator) > 0.7) & object_mask[..., None].bool()
    return dict(
        input_ids=input_ids, attention_mask=attention_mask, text_type_ids=text_type_ids,
        pixel_values=torch.randn(batch, 3, image_size, image_size, generator=generator),
        object_patch_mask=object_patch_mask, object_type_ids=object_type_ids, object_mask=object_mask,
        labels=torch.tensor([1, 3]),
    )
