"""vlekit.components.deberta_attention: the SDPA formulation of DeBERTa's disentangled attention equals Hugging
Face's eager attention (outputs and gradients) on tiny DeBERTa-v2/v3 configurations, and ``hf-text``
selects it with ``attention: sdpa``."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel
from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

import vlekit
from vlekit.components.deberta_attention import SDPADisentangledSelfAttention, use_deberta_attention

V3 = dict(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
          norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0)
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
CONFIGS = {
    "v3 (buckets, shared keys)": dict(V3, position_buckets=8),
    "v3 without buckets": dict(V3, position_buckets=-1, max_relative_positions=16),
    "separate position projections": dict(V3, position_buckets=8, share_att_key=False),
    "c2p only": dict(V3, position_buckets=8, pos_att_type=["c2p"]),
    "p2c only, unshared": dict(V3, position_buckets=8, pos_att_type=["p2c"], share_att_key=False),
    "no relative attention": dict(relative_attention=False, position_biased_input=True, pos_att_type=[]),
}


def eager_and_sdpa(options: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    eager = AutoModel.from_config(AutoConfig.for_model("deberta-v2", **{**TINY, **options})).double()
    sdpa = copy.deepcopy(eager)
    assert use_deberta_attention(sdpa, "sdpa") == TINY["num_hidden_layers"]
    return eager, sdpa


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 100, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padded sequences, as every VCR batch has
    attention_mask[2, 4:] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_sdpa_equals_eager_forward_and_gradients(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    eager, sdpa = eager_and_sdpa(options)
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(tuple(kwargs["attn_mask"].shape[-2:])) or fused(*args, **kwargs))
    input_ids, attention_mask = batch()
    real = attention_mask.bool()
    weights = torch.randn(*input_ids.shape, TINY["hidden_size"], generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)
    outputs, grads = [], []
    for model in (eager, sdpa):
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Padded positions' outputs are not used downstream (the mask drops them): only real ones count.
        (hidden * weights)[real].sum().backward()
        outputs.append(hidden[real])
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert calls == [(11, 11)] * TINY["num_hidden_layers"]  # the fused path ran, once per layer
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-10)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    # float64: the fused kernel sums in another order; differences are ~1e-10 of gradients of order 1.
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-7, atol=1e-8, msg=name)


def test_sdpa_in_float32_and_bfloat16_autocast_stays_close() -> None:
    eager, sdpa = eager_and_sdpa(CONFIGS["v3 (buckets, shared keys)"])
    eager, sdpa = eager.float(), sdpa.float()
    input_ids, attention_mask = batch()
    real = attention_mask.bool()
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            expected = eager(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[real]
            found = sdpa(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[real]
        tolerance = 3e-2 if autocast else 1e-5
        torch.testing.assert_close(found.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_dropout_is_applied_in_training_and_not_in_eval() -> None:
    _, sdpa = eager_and_sdpa(dict(CONFIGS["v3 (buckets, shared keys)"], attention_probs_dropout_prob=0.5))
    input_ids, attention_mask = batch()
    sdpa.train()
    first, second = (sdpa(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state for _ in range(2))
    assert not torch.allclose(first, second)
    sdpa.eval()
    first, second = (sdpa(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_output_attentions_falls_back_to_eager_and_the_switch_is_reversible() -> None:
    eager, sdpa = eager_and_sdpa(CONFIGS["v3 (buckets, shared keys)"])
    input_ids, attention_mask = batch()
    found = sdpa(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    expected = eager(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    assert len(found.attentions) == 2
    torch.testing.assert_close(found.attentions[-1], expected.attentions[-1])
    assert sdpa.state_dict().keys() == eager.state_dict().keys()
    assert use_deberta_attention(sdpa, "eager") == 2
    assert not any(isinstance(m, SDPADisentangledSelfAttention) for m in sdpa.modules())
    with pytest.raises(ValueError, match="eager, sdpa"):
        use_deberta_attention(sdpa, "flash")


def test_hf_text_selects_the_attention() -> None:
    sdpa = vlekit.build_model(text_encoder={"name": "tiny-deberta", "attention": "sdpa"}, vision_encoder="tiny-clip",
                              fusion="tiny-co-attention", num_token_types=8)
    eager = vlekit.build_model(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention",
                               num_token_types=8)
    kinds = [type(m) for m in sdpa.text_encoder.modules() if isinstance(m, DisentangledSelfAttention)]
    assert kinds == [SDPADisentangledSelfAttention] * 2
    assert not any(isinstance(m, SDPADisentangledSelfAttention) for m in eager.text_encoder.modules())
    assert sdpa.text_encoder.resolved_config().attention == "sdpa"
    with pytest.raises(Exception, match="DeBERTa"):
        vlekit.build_model(text_encoder={"name": "tiny-bert", "attention": "sdpa"}, vision_encoder="tiny-clip",
                           fusion="tiny-co-attention", num_token_types=8)
