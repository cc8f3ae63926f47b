"""vlekit.layers: the blocks the core co-attention and the fusion plugins share, and the conventions
of the core's and the plugins' classes (keyword-only constructors)."""
from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlekit
from vlekit.layers import FeedForward, Pooler, PostNormLayer, TransformerConfig, key_padding_mask, masked_mean
from vlekit.registry import FUSIONS

TINY = TransformerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_co_attention_layers_keep_vles_parameter_names() -> None:
    """vlekit.vle.checkpoint maps these names to the official checkpoints: they must not move."""
    layer = FUSIONS.build("tiny-co-attention").text_layers[0]
    attention = [f"{block}.{part}.{p}" for block in ("self_attention", "cross_attention")
                 for part in ("query", "key", "value", "dense", "layer_norm") for p in ("weight", "bias")]
    feed_forward = [f"{part}.{p}" for part in ("feed_forward.intermediate", "feed_forward.output", "output_norm")
                    for p in ("weight", "bias")]
    assert sorted(layer.state_dict()) == sorted(attention + feed_forward)
    # Registered in the order of the computation, so a seed initialises them as before.
    assert [name for name, _ in layer.named_children()] == ["self_attention", "cross_attention", "feed_forward", "output_norm"]


def test_weights_saved_with_the_flat_feed_forward_names_load_into_the_composed_layer() -> None:
    torch.manual_seed(0)
    layer = FUSIONS.build("tiny-co-attention").text_layers[0]
    flat = {key.replace("feed_forward.", ""): value.clone() + 1 for key, value in layer.state_dict().items()}
    assert "intermediate.weight" in flat and "output.bias" in flat  # as vlekit 0.1.0 saved them
    layer.load_state_dict(flat)
    torch.testing.assert_close(layer.feed_forward.intermediate.weight, flat["intermediate.weight"])
    torch.testing.assert_close(layer.output_norm.bias, flat["output_norm.bias"])


def test_post_norm_layer_is_attention_then_the_feed_forward_block_with_residuals() -> None:
    torch.manual_seed(0)
    layer = PostNormLayer(config=TINY).eval()
    assert layer.cross_attention is None and not any("cross" in name for name in layer.state_dict())
    hidden = torch.randn(2, 5, 16)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    keys = key_padding_mask(mask)
    with torch.no_grad():
        attended = layer.self_attention(hidden, hidden, keys)
        expected = layer.output_norm(attended + layer.feed_forward.output(F.gelu(layer.feed_forward.intermediate(attended))))
        torch.testing.assert_close(layer(hidden, keys), expected)
        first = layer(hidden, keys, first_token_only=True)
    assert first.shape == (2, 1, 16)
    torch.testing.assert_close(first[:, 0], expected[:, 0])
    with pytest.raises(ValueError, match="needs the other stream and its mask"):
        PostNormLayer(config=TINY, cross_attention=True)(hidden, keys)


def test_feed_forward_has_no_residual_and_no_norm() -> None:
    block = FeedForward(config=TINY).eval()
    x = torch.randn(3, 16)
    torch.testing.assert_close(block(x), block.output(F.gelu(block.intermediate(x))))


def test_masked_mean_over_one_or_many_selections() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 7, 4, generator=g)
    mask = torch.rand(2, 7, generator=g) < 0.5
    mask[:, 0] = True
    for n in range(2):
        torch.testing.assert_close(masked_mean(tokens, mask)[n], tokens[n][mask[n]].mean(0))
    many = torch.rand(2, 3, 5, 7, generator=g) < 0.4
    many[0, 0, 0] = False  # an empty selection gives zeros
    means = masked_mean(tokens, many)
    assert means.shape == (2, 3, 5, 4)
    assert torch.equal(means[0, 0, 0], torch.zeros(4))
    for n, c, k in [(0, 1, 2), (1, 2, 4), (1, 0, 0)]:
        chosen = tokens[n][many[n, c, k]]
        torch.testing.assert_close(means[n, c, k], chosen.mean(0) if len(chosen) else torch.zeros(4))


def test_pooler_is_a_tanh_linear_layer() -> None:
    pooler = Pooler(size=8)
    assert isinstance(pooler, nn.Linear) and sorted(pooler.state_dict()) == ["bias", "weight"]
    x = torch.randn(3, 8)
    torch.testing.assert_close(pooler(x), torch.tanh(F.linear(x, pooler.weight, pooler.bias)))


def test_every_fusion_config_in_core_and_plugins_is_a_transformer_config_from_layers() -> None:
    for name in ("co-attention", "merged-attention", "gated-cross-attention", "projection-concat", "dual-encoder"):
        assert issubclass(FUSIONS.get(name).config_class, TransformerConfig), name


MODULES = (
    "vlekit.layers", "vlekit.components.fusions", "vlekit.model", "vlekit.components.text_encoders", "vlekit.components.vision_encoders",
    "vlekit.registry", "vlekit_fusions.post_norm_layers", "vlekit_fusions.merged_attention",
    "vlekit_fusions.gated_cross_attention", "vlekit_fusions.projection_concat", "vlekit_fusions.dual_encoder",
    "vlekit_timm.timm_vit", "vlekit_plugin_template.mean_pool_fusion",
)


@pytest.mark.parametrize("module_name", MODULES)
def test_constructors_are_keyword_only(module_name: str) -> None:
    """``CoAttentionLayer(config)``-style positional arguments are gone: every class defined in the
    core's component modules and in the plugins takes its arguments by keyword (configs excepted,
    which are frozen dataclasses, and the frozen containers, which take what ``dict`` / ``list`` do)."""
    module = importlib.import_module(module_name)
    positional = []
    for name, cls in vars(module).items():
        if not inspect.isclass(cls) or cls.__module__ != module_name or dataclasses.is_dataclass(cls):
            continue
        if issubclass(cls, (dict, list, Exception)) or "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        loose = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if loose:
            positional.append(f"{name}({', '.join(loose)})")
    assert not positional, f"{module_name}: positional constructor arguments: {positional}"


def test_vlekit_exports_layers_as_public_api() -> None:
    """``from vlekit import *`` gives ``layers``, and ``vlekit.layers``' star import exactly its ``__all__``
    (which fails on a listed name that does not exist), the blocks the plugins build on among them."""
    public: dict = {}
    exec("from vlekit import *", public)
    assert public["layers"] is importlib.import_module("vlekit.layers")
    blocks: dict = {}
    exec("from vlekit.layers import *", blocks)
    assert {name for name in blocks if name != "__builtins__"} == set(vlekit.layers.__all__)
    assert {"FeedForward", "Pooler", "PostNormLayer", "TransformerConfig", "key_padding_mask", "masked_mean"} <= blocks.keys()
