"""The template plugin's own test: found through its entry point, speaks the fusion interface, trains."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vlekit
from vlekit.registry import FUSIONS

NAME = "template/mean-pool-fusion"


def test_registered_through_the_entry_point() -> None:
    entry = FUSIONS.get(NAME)
    assert entry.source == "package vlekit-plugin-template"
    assert entry.component.__module__ == "vlekit_plugin_template.mean_pool_fusion"


def test_pooled_is_the_masked_means_through_linear_tanh() -> None:
    fusion = FUSIONS.build(NAME, hidden_size=8)
    text, image = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    text_mask, image_mask = torch.ones(3, 5), torch.ones(3, 7)
    text_mask[:, 3:], image_mask[:, 6:] = 0, 0
    out = fusion(text, text_mask, image, image_mask)
    assert out.pooled.shape == (3, fusion.pooled_size) == (3, 16)
    assert torch.equal(out.text, text) and torch.equal(out.image, image)
    means = torch.cat([text[:, :3].mean(1), image[:, :6].mean(1)], dim=-1)
    torch.testing.assert_close(out.pooled, torch.tanh(F.linear(means, fusion.pooler.weight, fusion.pooler.bias)))
    # Padding changes nothing.
    text[:, 3:], image[:, 6:] = 100.0, -100.0
    torch.testing.assert_close(fusion(text, text_mask, image, image_mask).pooled, out.pooled)


def test_builds_into_a_vcr_model_and_backpropagates() -> None:
    model = vlekit.build_model(fusion={"name": NAME, **FUSIONS.get(NAME).tiny})
    b, c, length, slots, patches = 2, 4, 6, 2, model.num_patches
    size = model.vision_encoder.image_size
    batch = dict(
        input_ids=torch.randint(0, 100, (b, c, length)), attention_mask=torch.ones(b, c, length, dtype=torch.long),
        text_type_ids=torch.zeros(b, c, length, dtype=torch.long), pixel_values=torch.randn(b, 3, size, size),
        object_patch_mask=torch.rand(b, c, slots, patches) > 0.5, object_type_ids=torch.full((b, c, slots), 2),
        object_mask=torch.ones(b, c, slots, dtype=torch.long), labels=torch.tensor([0, 3]),
    )
    output = model(**batch)
    assert output["logits"].shape == (b, c)
    output["loss"].backward()
    assert model.fusion.pooler.weight.grad is not None
