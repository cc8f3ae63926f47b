"""Model assembly over the VCR batch contract (DESIGN.md sections 3 and 4), with tiny presets."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model

import vlekit
from vlekit import VCRModel, build_model
from vlekit.model import BATCH_KEYS, MODEL_CONFIG_FILE, WEIGHTS_FILE, load_model_config
from vlekit.components.text_encoders import _TINY_DEBERTA

from helpers import tiny_batch

B, C, L, K = 2, 4, 12, 3
PER_CHOICE_KEYS = (
    "input_ids", "attention_mask", "text_type_ids", "object_patch_mask", "object_type_ids", "object_mask",
)


def logits_of(model: VCRModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)["logits"]


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def model() -> VCRModel:
    torch.manual_seed(0)
    return build_model(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention").eval()


# -- the batch contract --------------------------------------------------------------------------
def test_logits_and_loss(model: VCRModel) -> None:
    batch = tiny_batch(model)
    model.train()
    try:
        output = model(**batch)
    finally:
        model.eval()
    assert output["logits"].shape == (B, C)
    assert output["loss"].shape == ()
    torch.testing.assert_close(output["loss"], F.cross_entropy(output["logits"], batch["labels"]))
    output["loss"].backward()
    # Every parameter takes part (DDP fails on unused ones); the loss reaches both encoders.
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    assert model.text_encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.vision_encoder.model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    unlabeled = {k: v for k, v in batch.items() if k != "labels"}
    output = model(**unlabeled, example_ids=["extra keys are allowed"])
    assert set(output) == {"logits"}


def test_batch_keys_constant_matches_the_contract() -> None:
    assert set(BATCH_KEYS) == set(PER_CHOICE_KEYS) | {"pixel_values"}


def test_choices_folded_and_image_shared_equal_running_each_choice_and_question_alone(model: VCRModel) -> None:
    batch = tiny_batch(model, seed=1)
    full = logits_of(model, batch)
    for c in range(C):
        one_choice = {k: (v[:, c:c + 1] if k in PER_CHOICE_KEYS else v) for k, v in batch.items() if k != "labels"}
        assert_close(logits_of(model, one_choice)[:, 0], full[:, c])
    for b in range(B):
        one_question = {k: v[b:b + 1] for k, v in batch.items()}
        assert_close(logits_of(model, one_question)[0], full[b])
    # ...and the logits do depend on the choice (the comparisons above are not trivially equal).
    assert full.std(dim=1).min() > 1e-4


def test_padded_object_slots_change_nothing(model: VCRModel) -> None:
    batch = tiny_batch(model, seed=2)
    g = torch.Generator().manual_seed(5)
    extra = 2
    padded = dict(batch)
    padded["object_patch_mask"] = torch.cat(
        [batch["object_patch_mask"], torch.rand(B, C, extra, model.num_patches, generator=g) < 0.5], dim=2)
    padded["object_type_ids"] = torch.cat(
        [batch["object_type_ids"], torch.randint(0, 83, (B, C, extra), generator=g)], dim=2)
    padded["object_mask"] = torch.cat([batch["object_mask"], torch.zeros(B, C, extra, dtype=torch.long)], dim=2)
    reference = logits_of(model, batch)
    assert_close(logits_of(model, padded), reference)
    # The same slots, switched on, do change the logits: by ~1e-4 at this random init (two more keys
    # among ~40 in the image stream), against < 1e-6 for the masked slots above.
    padded["object_mask"] = torch.cat([batch["object_mask"], torch.ones(B, C, extra, dtype=torch.long)], dim=2)
    assert (logits_of(model, padded) - reference).abs().max() > 3e-5


def test_padded_text_positions_change_nothing(model: VCRModel) -> None:
    batch = tiny_batch(model, seed=3)
    g = torch.Generator().manual_seed(6)
    extra = 5
    padded = dict(batch)
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.randint(0, 100, (B, C, extra), generator=g)], dim=2)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(B, C, extra, dtype=torch.long)], dim=2)
    padded["text_type_ids"] = torch.cat(
        [batch["text_type_ids"], torch.randint(0, 83, (B, C, extra), generator=g)], dim=2)
    assert_close(logits_of(model, padded), logits_of(model, batch))


def with_flags(model: VCRModel, **flags: bool) -> VCRModel:
    """A model with other ``VCRModelConfig`` flags and the same weights as ``model``."""
    other = build_model(**flags).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    return other


def test_without_object_tokens_the_patch_mask_is_ignored(model: VCRModel) -> None:
    without = with_flags(model, use_object_tokens=False)
    batch = tiny_batch(model, seed=4)
    changed = dict(batch, object_patch_mask=~batch["object_patch_mask"],
                   object_mask=torch.ones_like(batch["object_mask"]))
    assert_close(logits_of(without, changed), logits_of(without, batch))
    # With object tokens (same weights), the same change matters.
    assert not torch.allclose(logits_of(model, changed), logits_of(model, batch), atol=1e-4)


def test_without_object_types_the_type_ids_are_ignored(model: VCRModel) -> None:
    without = with_flags(model, use_object_types=False)
    batch = tiny_batch(model, seed=5)
    g = torch.Generator().manual_seed(7)
    changed = dict(batch, text_type_ids=torch.randint(0, 83, batch["text_type_ids"].shape, generator=g),
                   object_type_ids=torch.randint(0, 83, batch["object_type_ids"].shape, generator=g))
    assert_close(logits_of(without, changed), logits_of(without, batch))
    assert not torch.allclose(logits_of(model, changed), logits_of(model, batch), atol=1e-4)


# -- object tokens -------------------------------------------------------------------------------
def test_object_tokens_static_method_is_the_masked_mean() -> None:
    g = torch.Generator().manual_seed(8)
    patches = torch.randn(2, 9, 5, generator=g)
    mask = torch.rand(2, 3, 4, 9, generator=g) < 0.4
    mask[0, 0, 0] = False  # a box cropped away: no patches
    tokens = VCRModel.object_tokens(patches, mask)
    assert tokens.shape == (2, 3, 4, 5)
    for b in range(2):
        for c in range(3):
            for k in range(4):
                chosen = patches[b][mask[b, c, k]]
                expected = chosen.mean(0) if len(chosen) else torch.zeros(5)
                assert_close(tokens[b, c, k], expected)


def test_fusion_input_streams_types_and_object_token_means(model: VCRModel) -> None:
    batch = tiny_batch(model, seed=9)
    seen = {}
    hook = model.fusion.register_forward_pre_hook(lambda module, args: seen.update(args=args))
    try:
        logits_of(model, batch)
    finally:
        hook.remove()
    text, text_mask, image, image_mask = seen["args"]
    patches_n = model.num_patches
    assert image.shape == (B * C, 1 + patches_n + K, model.fusion.hidden_size)
    with torch.no_grad():
        projected = model.image_projection(model.vision_encoder(batch["pixel_values"]))  # [B, 1+P, D]
        types = model.token_type_embeddings.weight
        hidden = model.text_encoder(batch["input_ids"].flatten(0, 1), batch["attention_mask"].flatten(0, 1))
    # Text: projected states plus the type row (k + 2 on object mentions, 0 elsewhere), choices folded.
    assert_close(text, model.text_projection(hidden) + types[batch["text_type_ids"].flatten(0, 1)])
    for b in range(B):
        for c in range(C):
            row = b * C + c
            assert_close(image[row, : 1 + patches_n], projected[b] + types[1])
            for k in range(K):
                selected = projected[b, 1:][batch["object_patch_mask"][b, c, k]]
                mean = selected.mean(0) if len(selected) else torch.zeros_like(projected[b, 0])
                assert_close(image[row, 1 + patches_n + k], mean + types[int(batch["object_type_ids"][b, c, k])])
            assert image_mask[row].tolist() == [1] * (1 + patches_n) + batch["object_mask"][b, c].tolist()
            assert text_mask[row].tolist() == batch["attention_mask"][b, c].tolist()


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_pooled_only_last_layer_gives_the_same_pooled_vector_and_gradients(gradient_checkpointing: bool) -> None:
    """The model asks co-attention for ``pooled`` only; its last layer then updates token 0 alone."""
    torch.manual_seed(0)
    model = build_model(fusion={"name": "tiny-co-attention", "gradient_checkpointing": gradient_checkpointing,
                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    fusion = model.fusion.train()
    assert model.fusion.supports_pooled_only
    g = torch.Generator().manual_seed(3)
    n, length, tokens, width = 5, 7, 9, fusion.hidden_size
    text_mask, image_mask = torch.ones(n, length, dtype=torch.long), torch.ones(n, tokens, dtype=torch.long)
    text_mask[1, 4:], image_mask[2, 6:] = 0, 0
    text = torch.randn(n, length, width, generator=g, requires_grad=True)
    image = torch.randn(n, tokens, width, generator=g, requires_grad=True)
    results = []
    for pooled_only in (False, True):
        out = fusion(text, text_mask, image, image_mask, pooled_only=pooled_only)
        gradients = torch.autograd.grad(out.pooled.square().sum(), [text, image, *fusion.parameters()])
        results.append((out, gradients))
    (full, full_grads), (fast, fast_grads) = results
    assert full.text.shape == (n, length, width) and fast.text.shape == (n, 1, width) and fast.image.shape == (n, 1, width)
    torch.testing.assert_close(fast.pooled, full.pooled, atol=1e-6, rtol=1e-5)
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast.text[:, 0], full.text[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast.image[:, 0], full.image[:, 0], atol=1e-6, rtol=1e-5)


def test_clip_runs_pytorch_sdpa_attention(model: VCRModel) -> None:
    """The README's speed claim: CLIP's attention is PyTorch SDPA (flash / memory-efficient on GPUs)."""
    assert model.vision_encoder.model.config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_components_trace_under_torch_compile() -> None:
    """``train.compile`` / ``bench --compile`` compile the three components: TorchDynamo must trace
    them (the ``eager`` backend checks the tracing without a C++ compiler) for any text length."""
    torch.manual_seed(0)
    model = build_model().eval()
    batches = [tiny_batch(model, seed=2), tiny_batch(model, length=20, seed=3)]
    expected = [logits_of(model, batch) for batch in batches]
    torch._dynamo.reset()
    for component in (model.text_encoder, model.vision_encoder, model.fusion):
        component.compile(backend="eager")
    try:
        for batch, reference in zip(batches, expected):
            torch.testing.assert_close(logits_of(model, batch), reference, atol=0, rtol=0)
        model.train()
        model(**batches[1])["loss"].backward()
        assert model.fusion.text_pooler.weight.grad is not None
    finally:
        torch._dynamo.reset()


# -- shape errors ----------------------------------------------------------------------------------
def test_wrong_number_of_patches_is_a_clear_error(model: VCRModel) -> None:
    batch = tiny_batch(model)
    batch["object_patch_mask"] = torch.zeros(B, C, K, model.num_patches + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"object_patch_mask has shape \[2, 4, 3, 65\], expected \[2, 4, K, 64\]"):
        model(**batch)


def test_wrong_number_of_choices_is_a_clear_error(model: VCRModel) -> None:
    batch = tiny_batch(model)
    with pytest.raises(ValueError, match=r"VCRModel: attention_mask has shape \[2, 3, 12\], expected \[2, 4, 12\]"):
        model(**dict(batch, attention_mask=batch["attention_mask"][:, :3]))
    with pytest.raises(ValueError, match=r"object_patch_mask has shape \[2, 3, 3, 64\], expected \[2, 4, K, 64\]"):
        model(**dict(batch, object_patch_mask=batch["object_patch_mask"][:, :3]))
    with pytest.raises(ValueError, match=r"object_mask has shape \[2, 4, 2\], expected \[2, 4, 3\]"):
        model(**dict(batch, object_mask=batch["object_mask"][:, :, :2]))
    with pytest.raises(ValueError, match=r"pixel_values has shape \[1, 3, 64, 64\], expected \[2, 3, H, W\]"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:1]))


def test_unfolded_text_is_a_clear_error(model: VCRModel) -> None:
    batch = tiny_batch(model)
    text_keys = ("input_ids", "attention_mask", "text_type_ids")
    flat = {k: (v.flatten(0, 1) if k in text_keys else v) for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"VCRModel: input_ids has shape \[8, 12\], expected \[B, C, L\]"):
        model(**flat)


def test_wrong_image_size_is_a_clear_error(model: VCRModel) -> None:
    batch = tiny_batch(model)
    expected = r"clip-vision: pixel_values has shape \[2, 3, 32, 32\], expected \[B, 3, 64, 64\]"
    with pytest.raises(ValueError, match=expected):
        model(**dict(batch, pixel_values=torch.zeros(B, 3, 32, 32)))


# -- persistence -----------------------------------------------------------------------------------
def test_save_pretrained_round_trip(model: VCRModel, tmp_path: Path) -> None:
    batch = tiny_batch(model, seed=10)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted([MODEL_CONFIG_FILE, WEIGHTS_FILE])
    saved = json.loads((tmp_path / "ckpt" / MODEL_CONFIG_FILE).read_text())
    # The resolved component configs, not the preset names: the folder rebuilds the architecture.
    assert saved["text_encoder"]["name"] == "hf-text"
    assert saved["text_encoder"]["model_name"] is None and saved["text_encoder"]["pretrained"] is False
    assert saved["text_encoder"]["hf_config"]["hidden_size"] == 64
    assert saved["vision_encoder"]["name"] == "clip-vision"
    assert saved["vision_encoder"]["hf_config"]["image_size"] == 64
    assert saved["fusion"] == {"name": "co-attention", **{k: v for k, v in saved["fusion"].items() if k != "name"}}
    assert saved["fusion"]["hidden_size"] == 64 and saved["fusion"]["num_hidden_layers"] == 2
    assert saved["num_token_types"] == 83 and saved["use_object_tokens"] is True
    as_json = lambda config: json.loads(json.dumps(dataclasses.asdict(config)))  # noqa: E731
    assert as_json(load_model_config(tmp_path / "ckpt")) == as_json(model.resolved_config())
    loaded = VCRModel.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(logits_of(loaded, batch), logits_of(model, batch))


def test_from_pretrained_works_offline_from_the_folder_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Components loaded from local pretrained folders; the checkpoint must not need those folders."""
    torch.manual_seed(0)
    text_dir, vision_dir = tmp_path / "text", tmp_path / "vision"
    DebertaV2Model(DebertaV2Config(**_TINY_DEBERTA)).save_pretrained(text_dir)
    tiny_clip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     image_size=32, patch_size=8)
    CLIPVisionModel(CLIPVisionConfig(**tiny_clip)).save_pretrained(vision_dir)
    model = build_model(
        text_encoder={"name": "hf-text", "model_name": str(text_dir), "vocab_size": 200},
        vision_encoder={"name": "clip-vision", "model_name": str(vision_dir), "image_size": 48},
    ).eval()
    assert model.vision_encoder.grid == 6  # position embeddings interpolated to 48 px
    batch = tiny_batch(model, seed=11)
    expected = logits_of(model, batch)
    model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(text_dir)
    shutil.rmtree(vision_dir)

    def no_download(*args, **kwargs):
        raise AssertionError(f"from_pretrained tried to load {args} {kwargs} instead of using the folder")

    for cls in (AutoModel, CLIPVisionModel, vlekit.components.text_encoders.AutoConfig, CLIPVisionConfig):
        monkeypatch.setattr(cls, "from_pretrained", no_download)
    loaded = VCRModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.text_encoder.model.config.vocab_size == 200
    assert loaded.vision_encoder.image_size == 48
    torch.testing.assert_close(logits_of(loaded, batch), expected, atol=0, rtol=0)


def test_from_pretrained_is_strict(model: VCRModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    config["fusion"]["num_hidden_layers"] = 3
    (tmp_path / MODEL_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"weights do not match the config; missing \['fusion.text_layers.2"):
        VCRModel.from_pretrained(tmp_path)
    loose = VCRModel.from_pretrained(tmp_path, strict=False)
    assert len(loose.fusion.text_layers) == 3


def test_from_pretrained_without_a_config_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected a folder written by VCRModel.save_pretrained"):
        VCRModel.from_pretrained(tmp_path)


def test_components_by_module_class_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(
        text_encoder={"name": "vlekit.components.text_encoders:HFTextEncoder", "hf_config": _TINY_DEBERTA},
        vision_encoder={"name": "vlekit.components.vision_encoders:CLIPVisionEncoder",
                        "hf_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=32, patch_size=16)},
        fusion={"name": "vlekit.components.fusions:CoAttentionFusion", "hidden_size": 32, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 64},
    ).eval()
    assert type(model.fusion).__name__ == "CoAttentionFusion" and model.num_patches == 4
    assert model.resolved_config().fusion["name"] == "vlekit.components.fusions:CoAttentionFusion"
    batch = tiny_batch(model, seed=12)
    assert logits_of(model, batch).shape == (B, C)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits_of(VCRModel.from_pretrained(tmp_path).eval(), batch), logits_of(model, batch))


def test_unknown_build_model_options_suggest_the_right_one() -> None:
    expected = "build_model: unknown option 'use_object_token'; did you mean 'use_object_tokens'"
    with pytest.raises(TypeError, match=expected):
        build_model(use_object_token=False)
    with pytest.raises(TypeError, match="fusion 'tiny-co-attention': unknown option 'hiden_size'.*'hidden_size'"):
        build_model(fusion={"name": "tiny-co-attention", "hiden_size": 32})
    expected = "unknown fusion 'tiny-co-atention'.*Did you mean 'tiny-co-attention'"
    with pytest.raises(vlekit.RegistryError, match=expected):
        build_model(fusion="tiny-co-atention")
    with pytest.raises(TypeError, match="build_model: option 'num_token_types' must be int"):
        build_model(num_token_types="83")


def test_parameter_groups_cover_every_parameter_exactly_once(model: VCRModel) -> None:
    groups = model.parameter_groups()
    assert set(groups) == {"text_encoder", "vision_encoder", "fusion", "head"}
    grouped = [parameter for members in groups.values() for _, parameter in members]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    names = {role: {name for name, _ in members} for role, members in groups.items()}
    assert all(n.startswith("text_encoder.") for n in names["text_encoder"])
    assert all(n.startswith("vision_encoder.") for n in names["vision_encoder"])
    assert all(n.startswith("head.") for n in names["head"]) and names["head"]
    assert {"text_projection.weight", "image_projection.weight", "token_type_embeddings.weight"} <= names["fusion"]


# -- the other tasks: one text per image, a registered head ---------------------------------------
def single_batch(model: VCRModel, *, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = model.vision_encoder.image_size
    attention_mask = torch.ones(B, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0
    return {
        "input_ids": torch.randint(0, 100, (B, 6), generator=g),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(B, 3, size, size, generator=g),
    }


@pytest.mark.parametrize("head", [{"name": "vqa", "num_labels": 5}, "itm", "pbc"], ids=["vqa", "itm", "pbc"])
def test_task_heads_give_their_logits_and_loss_and_every_parameter_learns(head: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(head=head)
    batch = single_batch(model, seed=1)
    g = torch.Generator().manual_seed(2)
    name = model.resolved_config().head["name"]
    if name == "vqa":
        shape, labels = (B, 5), torch.rand(B, 5, generator=g)
    elif name == "itm":
        shape, labels = (B, 2), torch.tensor([0, 1])
    else:
        shape, labels = (B, model.num_patches, 2), torch.randint(0, 2, (B, model.num_patches), generator=g)
    output = model(**batch, labels=labels)
    assert output["logits"].shape == shape
    torch.testing.assert_close(output["loss"], model.head.loss(output["logits"], labels))
    output["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    if name == "pbc":  # it reads the fused image stream: the text side's last layer and both poolers go unused
        last = model.fusion.config.num_hidden_layers - 1
        assert unused and all(n.startswith((f"fusion.text_layers.{last}.", "fusion.text_pooler.", "fusion.image_pooler."))
                              for n in unused), unused
    else:
        assert unused == []
    # The widths came from the fusion and are saved: the folder rebuilds offline, to the same logits.
    assert model.resolved_config().head["initializer_range"] == model.config.initializer_range
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = VCRModel.from_pretrained(tmp_path).eval()
    assert loaded.resolved_config() == model.resolved_config()
    with torch.no_grad():
        assert_close(loaded(**batch)["logits"], model(**batch)["logits"])


def test_task_head_model_refuses_the_vcr_batch_and_vice_versa() -> None:
    torch.manual_seed(0)
    vqa = build_model(head={"name": "vqa", "num_labels": 3}).eval()
    vcr_batch = tiny_batch(vqa, seed=4)
    with pytest.raises(TypeError, match="'vqa' head takes input_ids, attention_mask and pixel_values.*got text_type_ids"):
        vqa(**vcr_batch)
    batch = single_batch(vqa, seed=4)
    with pytest.raises(TypeError, match="got no pixel_values"):
        vqa(batch["input_ids"], batch["attention_mask"])
    vcr = build_model().eval()
    with pytest.raises(TypeError, match="missing text_type_ids, object_patch_mask, object_type_ids, object_mask"):
        vcr(**batch)


def test_head_width_that_disagrees_with_the_fusion_is_refused() -> None:
    with pytest.raises(ValueError, match="head 'itm' takes inputs of width 10, but the fusion's pooled vector has width 128"):
        build_model(head={"name": "itm", "pooled_size": 10})


def test_default_head_is_the_vcr_head_and_old_configs_without_one_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model().eval()
    assert model.resolved_config().head["name"] == "vcr-multiple-choice"
    assert {k for k in model.state_dict() if k.startswith("head.")} == {
        f"head.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "vlekit_config.json"
    written = json.loads(config_path.read_text())
    del written["head"]  # a folder written before heads were registered
    config_path.write_text(json.dumps(written))
    batch = tiny_batch(model, seed=5)
    assert_close(logits_of(VCRModel.from_pretrained(tmp_path).eval(), batch), logits_of(model, batch))
