"""The backbones researchers swap in: ``hf-vision`` (SigLIP / SigLIP2, DINOv2 with registers, ViT, CLIP), the
``hf-text`` families and presets (DeBERTa-v3, BERT, RoBERTa, ModernBERT, E5 / BGE) and the ``q-former`` fusion.

The vision towers are checked against folders that ``transformers`` itself wrote (a model saved with
``save_pretrained`` next to its image processor's ``preprocessor_config.json``): the tokens are the model's
own, the pixel statistics and size are the folder's. The hub presets' loading rules (which checkpoint keys
they ignore) are checked on tiny folders saved by the class their hub checkpoint was saved from.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    AutoConfig, AutoModel, BertConfig, BertForPreTraining, BertModel, BitImageProcessor, CLIPConfig, CLIPImageProcessor,
    CLIPModel, CLIPVisionModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ModernBertConfig,
    ModernBertForMaskedLM, RobertaConfig, RobertaForMaskedLM, SiglipConfig, SiglipImageProcessor, SiglipModel,
    SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.modeling_layers import GradientCheckpointingLayer

import vlekit
from data_prep.synthetic import generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from data_prep.vcr import read_vcr
from vlekit.ablation.grid import load_grid, variant_config
from vlekit.model import BATCH_KEYS
from vlekit.registry import FUSIONS, TEXT_ENCODERS, VISION_ENCODERS
from vlekit.runs.folder import make_preprocessor

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8)
TINY_TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
SIGLIP_TEXT_SIDE = ("text_model.", "logit_scale", "logit_bias")
# Statistics unlike any family's default: only reading the folder's file gives them.
FOLDER_MEAN, FOLDER_STD = (0.41, 0.42, 0.43), (0.21, 0.22, 0.23)


def _pixels(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory) -> Path:
    """A full SigLIP model (vision and text towers) and its image processor, as transformers saves them."""
    folder = tmp_path_factory.mktemp("siglip")
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=list(FOLDER_MEAN),
                         image_std=list(FOLDER_STD)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> Path:
    """DINOv2 with 4 registers trained at 64 px, whose processor resizes to 40 and centre-crops 32 px."""
    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(**{**TINY_VISION, "image_size": 64}, mlp_ratio=2, num_register_tokens=4)
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(folder)
    return folder


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# -- hf-vision against transformers' own models ---------------------------------------------------------------
def test_siglip_tokens_are_the_models_own_and_the_pixels_the_folders(siglip_folder):
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(siglip_folder), ignore_unexpected=SIGLIP_TEXT_SIDE).eval()
    reference = SiglipVisionModel.from_pretrained(siglip_folder).eval()
    assert (encoder.image_mean, encoder.image_std) == (FOLDER_MEAN, FOLDER_STD)
    assert (encoder.image_size, encoder.patch_size, encoder.grid, encoder.hidden_size) == (32, 8, 4, 32)
    assert encoder.summary_token == "pooler"  # no class token: SigLIP's attention-pool head goes first
    pixels = _pixels(32)
    with torch.no_grad():
        tokens, expected = encoder(pixels), reference(pixel_values=pixels)
    assert tokens.shape == (2, 1 + 16, 32)
    assert max_difference(tokens[:, 1:], expected.last_hidden_state) == 0.0
    assert max_difference(tokens[:, 0], expected.pooler_output) == 0.0


def test_siglip_runs_at_another_size_with_the_models_position_interpolation(siglip_folder):
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(siglip_folder), ignore_unexpected=SIGLIP_TEXT_SIDE,
                                    image_size=48).eval()
    reference = SiglipVisionModel.from_pretrained(siglip_folder).eval()
    pixels = _pixels(48)
    with torch.no_grad():
        tokens = encoder(pixels)
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    assert encoder.grid == 6 and tokens.shape == (2, 37, 32)
    assert max_difference(tokens[:, 1:], expected) == 0.0
    with pytest.raises(ValueError, match="not a multiple of the patch size 8; the nearest sizes it can take are 48 and 56"):
        VISION_ENCODERS.build("hf-vision", model_name=str(siglip_folder), ignore_unexpected=SIGLIP_TEXT_SIDE,
                              image_size=50)


def test_siglip_mean_summary_drops_the_pool_head_and_loads_strictly(siglip_folder):
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(siglip_folder), ignore_unexpected=SIGLIP_TEXT_SIDE,
                                    summary_token="mean").eval()
    assert not any("head" in name for name, _ in encoder.named_parameters())
    with torch.no_grad():
        tokens = encoder(_pixels(32))
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(dim=1))
    with pytest.raises(ValueError, match="has no class token"):
        VISION_ENCODERS.build("hf-vision", model_name=str(siglip_folder), summary_token="cls")


def test_the_text_side_of_a_full_checkpoint_is_an_error_unless_ignored(siglip_folder):
    with pytest.raises(ValueError, match=r"unexpected \[.*'logit_bias'.*'text_model\."):
        VISION_ENCODERS.build("hf-vision", model_name=str(siglip_folder))


@pytest.mark.parametrize("preset", ["siglip-base-patch16-224", "siglip2-base-patch16-224", "siglip2-base-patch16-384",
                                    "siglip-so400m-patch14-384"])
def test_siglip_presets_load_a_full_siglip_checkpoint(preset, siglip_folder):
    # The hub checkpoints of these presets are SiglipModel folders (SigLIP2's fixed-resolution ones too).
    encoder = VISION_ENCODERS.build(preset, model_name=str(siglip_folder))
    assert encoder.image_mean == FOLDER_MEAN and encoder.summary_token == "pooler"


def test_dinov2_registers_are_dropped_and_the_crop_size_is_the_input(dinov2_folder):
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(dinov2_folder)).eval()
    reference = Dinov2WithRegistersModel.from_pretrained(dinov2_folder).eval()
    # The processor's centre crop (32 px), not the 64 px of the model config: DINOv2 interpolates by itself.
    assert (encoder.image_size, encoder.grid, encoder.summary_token, encoder.num_prefix_tokens) == (32, 4, "cls", 5)
    assert encoder.image_mean == tuple(IMAGENET_DEFAULT_MEAN) and encoder.image_std == tuple(IMAGENET_DEFAULT_STD)
    pixels = _pixels(32)
    with torch.no_grad():
        tokens, expected = encoder(pixels), reference(pixel_values=pixels).last_hidden_state
    assert expected.shape[1] == 1 + 4 + 16 and tokens.shape == (2, 1 + 16, 32)
    assert max_difference(tokens[:, 0], expected[:, 0]) == 0.0
    assert max_difference(tokens[:, 1:], expected[:, 5:]) == 0.0
    mask_token = encoder.model.embeddings.mask_token  # masked image modelling only: kept, frozen
    assert not mask_token.requires_grad
    for preset in ("dinov2-reg-base", "dinov2-reg-large"):
        assert VISION_ENCODERS.build(preset, model_name=str(dinov2_folder)).num_prefix_tokens == 5


def test_vit_from_a_classification_checkpoint_and_the_in21k_preset(tmp_path):
    classifier = tmp_path / "classifier"
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**TINY_VISION, num_labels=3)).save_pretrained(classifier)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(classifier)
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(classifier), ignore_unexpected=("classifier.",)).eval()
    reference = ViTModel.from_pretrained(classifier, add_pooling_layer=False).eval()
    pixels = _pixels(32)
    with torch.no_grad():
        tokens, expected = encoder(pixels), reference(pixel_values=pixels).last_hidden_state
    assert encoder.summary_token == "cls" and encoder.image_mean == (0.5, 0.5, 0.5)
    assert max_difference(tokens, expected) == 0.0
    # google/vit-base-patch16-224-in21k is a ViTModel checkpoint with a pooler: unused by the CLS summary.
    base = tmp_path / "in21k"
    ViTModel(ViTConfig(**TINY_VISION)).save_pretrained(base)
    preset = VISION_ENCODERS.build("vit-base-patch16-224-in21k", model_name=str(base))
    assert preset.model.pooler is None
    pooled = VISION_ENCODERS.build("vit-base-patch16-224-in21k", model_name=str(base), summary_token="pooler").eval()
    with torch.no_grad():
        torch.testing.assert_close(pooled(pixels)[:, 0], ViTModel.from_pretrained(base).eval()(pixel_values=pixels).pooler_output)


def test_clip_through_hf_vision_matches_clip_vision(tmp_path):
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    clip_text_side = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(tmp_path), ignore_unexpected=clip_text_side).eval()
    reference = VISION_ENCODERS.build("clip-vision", model_name=str(tmp_path), ignore_unexpected=clip_text_side).eval()
    model = CLIPVisionModel.from_pretrained(tmp_path).eval()
    pixels = _pixels(32)
    with torch.no_grad():
        tokens = encoder(pixels)
        torch.testing.assert_close(tokens, reference(pixels), rtol=0, atol=0)
        # post_layernorm on every token (CLIP's last_hidden_state precedes it): the CLS is CLIP's pooled output.
        torch.testing.assert_close(tokens[:, 0], model(pixel_values=pixels).pooler_output, rtol=0, atol=0)
    assert encoder.image_mean == reference.image_mean and encoder.image_size == 32


def test_a_folder_without_processor_config_takes_the_family_statistics_and_the_config_size(tmp_path):
    SiglipVisionModel(SiglipVisionConfig(**TINY_VISION)).save_pretrained(tmp_path / "siglip")
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY_VISION)).save_pretrained(tmp_path / "dinov2")
    siglip = VISION_ENCODERS.build("hf-vision", model_name=str(tmp_path / "siglip"))
    dinov2 = VISION_ENCODERS.build("hf-vision", model_name=str(tmp_path / "dinov2"))
    assert (siglip.image_mean, siglip.image_std, siglip.image_size) == ((0.5,) * 3, (0.5,) * 3, 32)
    assert (dinov2.image_mean, dinov2.image_size) == (tuple(IMAGENET_DEFAULT_MEAN), 32)
    explicit = VISION_ENCODERS.build("hf-vision", model_name=str(tmp_path / "siglip"), image_mean=[0.1, 0.2, 0.3])
    assert explicit.image_mean == (0.1, 0.2, 0.3) and explicit.image_std == (0.5,) * 3


def test_a_processor_size_off_the_patch_grid_becomes_the_pixels_the_patches_read(tmp_path):
    # As SigLIP so400m: 384 px, 14 px patches -> 27 x 27 patches over 378 px (the convolution drops the rest).
    SiglipVisionModel(SiglipVisionConfig(**{**TINY_VISION, "image_size": 36})).save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 36, "width": 36}).save_pretrained(tmp_path)
    encoder = VISION_ENCODERS.build("hf-vision", model_name=str(tmp_path)).eval()
    assert (encoder.image_size, encoder.grid) == (32, 4)
    pixels = _pixels(32)
    with torch.no_grad():
        expected = SiglipVisionModel.from_pretrained(tmp_path).eval()(pixel_values=pixels).last_hidden_state
        assert max_difference(encoder(pixels)[:, 1:], expected) == 0.0


class _FixedGridConfig(SiglipVisionConfig):
    model_type = "vlekit_test_fixed_grid"


class _FixedGridModel(SiglipVisionModel):
    """A tower with no position interpolation at all (neither a forward flag nor embeddings that interpolate)."""

    config_class = _FixedGridConfig

    def __init__(self, config):
        super().__init__(config)
        self.embeddings.interpolate_pos_encoding = None

    def forward(self, pixel_values, **kwargs):
        return super().forward(pixel_values)


def test_a_family_that_cannot_interpolate_names_the_size_it_takes():
    if "vlekit_test_fixed_grid" not in transformers.CONFIG_MAPPING:
        AutoConfig.register("vlekit_test_fixed_grid", _FixedGridConfig)
        AutoModel.register(_FixedGridConfig, _FixedGridModel)
    options = dict(model_type="vlekit_test_fixed_grid", hf_config=TINY_VISION, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert VISION_ENCODERS.build("hf-vision", **options).image_size == 32
    with pytest.raises(ValueError, match="cannot interpolate its position embeddings: it takes image_size 32 only, not 48"):
        VISION_ENCODERS.build("hf-vision", **{**options, "image_size": 48})
    with pytest.raises(ValueError, match="pass image_mean and image_std"):
        VISION_ENCODERS.build("hf-vision", model_type="vlekit_test_fixed_grid", hf_config=TINY_VISION)


def test_variable_resolution_towers_and_typos_are_refused_with_the_way_out():
    with pytest.raises(ValueError, match="needs pixel_attention_mask, spatial_shapes besides pixel_values.*model_type 'siglip'"):
        VISION_ENCODERS.build("hf-vision", model_type="siglip2_vision_model",
                              hf_config={k: v for k, v in TINY_VISION.items() if k != "image_size"})
    with pytest.raises(TypeError, match="'num_registers' \\(did you mean 'num_register_tokens'"):
        VISION_ENCODERS.build("tiny-dinov2-reg", hf_config={"num_registers": 2})
    with pytest.raises(ValueError, match="summary_token must be one of auto, cls, pooler, mean"):
        VISION_ENCODERS.build("tiny-siglip", summary_token="first")


def test_a_model_type_of_a_vision_language_family_means_its_tower():
    encoder = VISION_ENCODERS.build("hf-vision", model_type="siglip", hf_config=TINY_VISION)
    assert isinstance(encoder.model, SiglipVisionModel)
    assert encoder.resolved_config().model_type == "siglip_vision_model"


def test_a_saved_model_with_a_folder_tower_rebuilds_offline(siglip_folder, tmp_path):
    """The run folder keeps the folder's tower, pixel statistics and size: it loads without the folder."""
    model = vlekit.build_model(vision_encoder={"name": "hf-vision", "model_name": str(siglip_folder),
                                               "ignore_unexpected": list(SIGLIP_TEXT_SIDE)}).eval()
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "vlekit_config.json").read_text())["vision_encoder"]
    assert saved["model_name"] is None and saved["image_mean"] == list(FOLDER_MEAN) and saved["summary_token"] == "pooler"
    loaded = vlekit.VCRModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.vision_encoder.image_mean == FOLDER_MEAN and loaded.vision_encoder.image_size == 32
    with torch.no_grad():
        torch.testing.assert_close(loaded.vision_encoder(_pixels(32)), model.vision_encoder(_pixels(32)), rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["tiny-siglip", "tiny-dinov2-reg", "tiny-vit"])
def test_hf_vision_trains_under_bf16_autocast_and_gradient_checkpointing(preset):
    torch.manual_seed(0)
    encoder = VISION_ENCODERS.build(preset, gradient_checkpointing=True).train()
    layer = next(m for m in encoder.model.modules() if isinstance(m, GradientCheckpointingLayer))
    runs = []  # one entry per run of the first layer's first Linear (inside the checkpointed forward)
    linear = next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: runs.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = encoder(_pixels(encoder.image_size))
    (tokens.float() * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    assert runs == [torch.bfloat16] * 2, "one bf16 forward, one recomputation in the backward pass"
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "every trainable weight gets a finite gradient"


# -- text encoders ----------------------------------------------------------------------------------------------
TEXT_FAMILIES = {
    "deberta-v3": {"name": "tiny-deberta", "attention": "sdpa"},  # vlekit's SDPA disentangled attention
    "bert": {"name": "tiny-bert"},
    "roberta": {"name": "hf-text", "model_type": "roberta", "hf_config": dict(
        vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=130)},
    "modernbert": {"name": "tiny-modernbert"},
}


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_family_trains_under_sdpa_bf16_autocast_and_gradient_checkpointing(family):
    spec = TEXT_FAMILIES[family]
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS.build(spec["name"], **{k: v for k, v in spec.items() if k != "name"},
                                  gradient_checkpointing=True).train()
    if family != "deberta-v3":
        assert encoder.model.config._attn_implementation == "sdpa"
    layers = [m for m in encoder.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    dtypes = []  # one entry per run of the first layer's first Linear (inside the checkpointed forward)
    linear = next(m for m in layers[0].modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    target = torch.randn(4, encoder.hidden_size, generator=generator)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = encoder(ids, mask)
            loss = ((hidden[:, 0].float() - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert set(dtypes) == {torch.bfloat16}, "the layers' matmuls run in bf16 under autocast"
    runs_in_training, dtypes[:] = len(dtypes), []
    with torch.no_grad():
        encoder(ids, mask)
    assert runs_in_training == 2 * 6 * len(dtypes), "gradient checkpointing recomputes each layer in the backward pass"
    assert losses[-1] < 0.8 * losses[0], losses


# The class each preset's hub checkpoint was saved from, and a tiny config of its family.
_MODERNBERT = dict(TINY_TEXT, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                   max_position_embeddings=64, local_attention=16)
TEXT_PRESET_CHECKPOINTS = {
    "modernbert-base": (ModernBertForMaskedLM, ModernBertConfig, _MODERNBERT),
    "modernbert-large": (ModernBertForMaskedLM, ModernBertConfig, _MODERNBERT),
    "roberta-base": (RobertaForMaskedLM, RobertaConfig, dict(TINY_TEXT, max_position_embeddings=66)),
    "roberta-large": (RobertaForMaskedLM, RobertaConfig, dict(TINY_TEXT, max_position_embeddings=66)),
    "bert-base": (BertForPreTraining, BertConfig, TINY_TEXT),
    "bert-large": (BertForPreTraining, BertConfig, TINY_TEXT),
    "e5-base": (BertModel, BertConfig, TINY_TEXT),
    "bge-base": (BertModel, BertConfig, TINY_TEXT),
}


@pytest.mark.parametrize("preset", TEXT_PRESET_CHECKPOINTS)
def test_text_preset_loads_its_kind_of_checkpoint_strictly(preset, tmp_path):
    writer, config_class, options = TEXT_PRESET_CHECKPOINTS[preset]
    torch.manual_seed(0)
    writer(config_class(**options)).save_pretrained(tmp_path)
    encoder = TEXT_ENCODERS.build(preset, model_name=str(tmp_path)).eval()  # strict: every weight used or ignored
    reference = AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(encoder(ids, mask), expected, rtol=0, atol=0)
    assert not any(name.startswith("pooler.") for name, _ in encoder.model.named_parameters())


# -- VCR models with the new components train ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def vcr_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr")
    data = generate_synthetic_vcr(root / "data", num_train=4, num_val=2, num_test=0, seed=2)
    return data, read_vcr(data.train)[:4], build_word_tokenizer(data.train)


@pytest.mark.parametrize("vision, fusion", [("tiny-siglip", "tiny-co-attention"), ("tiny-dinov2-reg", "tiny-co-attention"),
                                            ("tiny-clip", "tiny-q-former")])
def test_a_vcr_model_with_the_new_components_trains(vision, fusion, vcr_data):
    data, records, tokenizer = vcr_data
    torch.manual_seed(0)
    model = vlekit.build_model(text_encoder={"name": "tiny-deberta", "vocab_size": len(tokenizer)},
                               vision_encoder=vision, fusion=fusion)
    preprocessor = make_preprocessor(tokenizer, model, images_root=data.images_root, task="q2a")
    batch = preprocessor.collate([preprocessor(record) for record in records])
    assert batch["pixel_values"].shape[-1] == model.vision_encoder.image_size and batch["object_mask"].sum() > 0
    model.eval()  # dropout off: the few steps fit the four questions deterministically
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    losses = []
    for _ in range(20):
        loss = model(**{key: batch[key] for key in (*BATCH_KEYS, "labels")})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0], losses


def test_q_former_queries_read_the_object_tokens():
    fusion = FUSIONS.build("tiny-q-former").eval()
    generator = torch.Generator().manual_seed(0)
    text, image = torch.randn(2, 5, 64, generator=generator), torch.randn(2, 7, 64, generator=generator)
    text_mask, image_mask = torch.ones(2, 5), torch.ones(2, 7)
    with torch.no_grad():
        reference = fusion(text, text_mask, image, image_mask)
        moved = image.clone()
        moved[:, -1] += 1.0  # an object token (appended after the image tokens)
        changed = fusion(text, text_mask, moved, image_mask)
        masked = fusion(text, text_mask, moved, torch.cat([torch.ones(2, 6), torch.zeros(2, 1)], dim=1))
        unmasked = fusion(text, text_mask, image, torch.cat([torch.ones(2, 6), torch.zeros(2, 1)], dim=1))
    assert not torch.allclose(changed.pooled, reference.pooled, atol=1e-4)
    assert not torch.allclose(changed.text, reference.text, atol=1e-4)  # through the shared self-attention
    torch.testing.assert_close(masked.pooled, unmasked.pooled)  # a padded object slot is not read
    assert fusion.pooled_size == 128 and reference.pooled.shape == (2, 128)


# -- the backbones grid -------------------------------------------------------------------------------------------
def test_the_backbones_grid_swaps_towers_on_the_demo_data():
    grid = load_grid(REPO_ROOT / "configs" / "grids" / "backbones.yaml", out="/tmp/backbones-grid")
    names = [variant.name for variant in grid.variants]
    assert grid.reference == "clip" and {"siglip", "dinov2-reg", "modernbert", "q-former"} <= set(names)
    assert grid.synthetic_data is not None
    built = {}
    for variant in grid.variants:
        config = variant_config(grid, variant, seed=0, data=None, tokenizer=None)
        model = vlekit.VCRModel(config=copy.deepcopy(config.model))
        built[variant.name] = (model.vision_encoder.resolved_config(), model.text_encoder.config.model_type
                               if dataclasses.is_dataclass(model.text_encoder.config) else None)
        assert model.vision_encoder.image_size == 32  # every tower on the same 4 x 4 grid
    assert type(built["siglip"][0]).__name__ == "HFVisionConfig" and built["siglip"][0].model_type == "siglip_vision_model"
    assert built["dinov2-reg"][0].model_type == "dinov2_with_registers"
    assert built["modernbert"][1] == "modernbert" and built["clip"][1] == "deberta-v2"
