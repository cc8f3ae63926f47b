"""No silent option (issue 11): every option the model cannot honour is an error or a report.

hf_config keys are checked against the Hugging Face classes, nested configs are immutable, vision
encoders declare their pixel normalisation, uint8 pixels are normalised by the model, type ids are
range-checked, pretrained weights load strictly and a loose load reports what it left out.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from transformers import CLIPConfig, CLIPModel, DebertaV2Config, DebertaV2ForMaskedLM

import vlekit
from vlekit import VCRModel, build_model
from vlekit.model import MODEL_CONFIG_FILE
from vlekit.options import FrozenDict, make_config, thaw
from vlekit.components.text_encoders import _TINY_DEBERTA
from vlekit.components.vision_encoders import _TINY_CLIP, CLIP_MEAN, CLIP_STD, CLIPVisionEncoder

from helpers import tiny_batch as make_batch


@pytest.fixture(scope="module")
def model() -> VCRModel:
    torch.manual_seed(0)
    return build_model().eval()


# -- hf_config keys -----------------------------------------------------------------------------
def test_a_misspelt_hf_config_key_is_an_error_with_the_right_spelling() -> None:
    expected = (r"hf-text \(deberta-v2\): hf_config has keys that DebertaV2Config does not read: "
                r"'hidden_dropout_prop' \(did you mean 'hidden_dropout_prob'")
    with pytest.raises(TypeError, match=expected):
        build_model(text_encoder={"name": "tiny-deberta", "hf_config": {"hidden_dropout_prop": 0.0}})
    with pytest.raises(TypeError, match=r"clip-vision: .*'atention_dropout' \(did you mean 'attention_dropout'"):
        build_model(vision_encoder={"name": "tiny-clip", "hf_config": {"atention_dropout": 0.0}})


def test_hf_config_keys_the_model_reads_but_the_config_class_does_not_declare_are_accepted() -> None:
    # DeBERTa-v2's modeling code reads position_buckets with getattr(config, ...): a real option.
    model = build_model(text_encoder={"name": "tiny-deberta", "hf_config": {"position_buckets": 16,
                                                                             "hidden_dropout_prob": 0.0}})
    assert model.text_encoder.model.config.position_buckets == 16
    assert model.text_encoder.model.config.hidden_dropout_prob == 0.0


# -- immutable nested configs -------------------------------------------------------------------------
def test_nested_configs_cannot_be_changed_in_place(model: VCRModel) -> None:
    with pytest.raises(TypeError, match="config options are immutable"):
        model.config.text_encoder["name"] = "x"
    with pytest.raises(TypeError, match="config options are immutable"):
        model.resolved_config().text_encoder["hf_config"]["hidden_size"] = 1
    with pytest.raises(TypeError, match="config options are immutable"):
        model.resolved_config().text_encoder["hf_config"]["pos_att_type"].append("p2p")
    with pytest.raises(TypeError, match="config options are immutable"):
        model.text_encoder.config.hf_config.update(hidden_size=1)
    assert model.config.text_encoder == {"name": "tiny-deberta"}
    # replace builds a new config; the new one is frozen too.
    changed = dataclasses.replace(model.config, fusion={"name": "co-attention", "hidden_size": 32})
    assert isinstance(changed.fusion, FrozenDict) and changed.fusion["hidden_size"] == 32


def test_frozen_configs_serialise_and_compare_as_plain_ones(model: VCRModel) -> None:
    config = model.resolved_config()
    raw = dataclasses.asdict(config)
    assert isinstance(raw["text_encoder"]["hf_config"], FrozenDict)
    plain = thaw(raw)
    assert raw == plain and type(plain["text_encoder"]["hf_config"]) is dict
    assert json.dumps(raw, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert yaml.safe_dump(raw) == yaml.safe_dump(plain) and yaml.dump(raw) == yaml.dump(plain)
    rebuilt = make_config(vlekit.VCRModelConfig, json.loads(json.dumps(raw)), where="test")
    assert json.dumps(dataclasses.asdict(rebuilt), sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert hash(config) == hash(copy.deepcopy(config))
    assert pickle.loads(pickle.dumps(config)) == config and copy.deepcopy(config) == config


# -- pixel normalisation ------------------------------------------------------------------------------
def test_clip_declares_its_processor_normalisation(model: VCRModel) -> None:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()  # what the CLIP checkpoints' preprocessor_config.json hold
    assert model.vision_encoder.image_mean == CLIP_MEAN == pytest.approx(tuple(processor.image_mean), abs=1e-8)
    assert model.vision_encoder.image_std == CLIP_STD == pytest.approx(tuple(processor.image_std), abs=1e-8)


def test_uint8_pixels_are_normalised_on_the_device_as_the_float_input_would_be(model: VCRModel) -> None:
    batch = make_batch(model, seed=3)
    pixels = torch.randint(0, 256, batch["pixel_values"].shape, generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        from_uint8 = model(**dict(batch, pixel_values=pixels))["logits"]
        from_float = model(**dict(batch, pixel_values=(pixels.float() / 255 - mean) / std))["logits"]
        other = model(**dict(batch, pixel_values=pixels.float() / 255))["logits"]
    torch.testing.assert_close(from_uint8, from_float, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(from_uint8, other, atol=1e-4)  # the normalisation matters
    assert "pixel_mean" not in model.state_dict()  # declared by the encoder, not saved as a weight
    with pytest.raises(ValueError, match=r"pixel_values has dtype torch.int64; expected normalised floats or uint8"):
        model(**dict(batch, pixel_values=pixels.long()))


# -- token types -----------------------------------------------------------------------------------
def test_type_ids_outside_the_table_are_an_error_with_a_message(model: VCRModel) -> None:
    batch = make_batch(model, seed=4)
    text_types = batch["text_type_ids"].clone()
    text_types[0, 1, 2] = 83
    expected = r"VCRModel: text_type_ids must lie in \[0, num_token_types=83\).*more than 81 objects.*got ids from 0 to 83"
    with pytest.raises(ValueError, match=expected):
        model(**dict(batch, text_type_ids=text_types))
    object_types = batch["object_type_ids"].clone()
    object_types[1, 0, 0] = -1
    with pytest.raises(ValueError, match=r"object_type_ids must lie in \[0, num_token_types=83\).*got ids from -1"):
        model(**dict(batch, object_type_ids=object_types))
    # Ids the model ignores (use_object_types off) are not checked.
    without = build_model(use_object_types=False).eval()
    with torch.no_grad():
        assert without(**dict(batch, text_type_ids=text_types, object_type_ids=object_types))["logits"].shape == (2, 4)


# -- strict loading ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def masked_lm_folder(tmp_path_factory) -> Path:
    """A tiny DeBERTa-v2 saved with its masked-LM head: the encoder does not use the head's weights."""
    folder = tmp_path_factory.mktemp("deberta-mlm")
    torch.manual_seed(0)
    DebertaV2ForMaskedLM(DebertaV2Config(**_TINY_DEBERTA)).save_pretrained(folder)
    return folder


def test_unexpected_pretrained_weights_are_an_error_unless_declared(masked_lm_folder: Path) -> None:
    spec = {"name": "hf-text", "model_name": str(masked_lm_folder)}
    with pytest.raises(ValueError, match=r"hf-text: the weights of .* do not match the model: missing \[\], "
                                         r"unexpected \['cls.predictions.bias'.*Pass strict=False"):
        vlekit.TEXT_ENCODERS.build(**spec)
    encoder = vlekit.TEXT_ENCODERS.build(**spec, ignore_unexpected=["cls."])
    assert encoder.hidden_size == 64


def test_missing_pretrained_weights_are_an_error_and_a_warning_when_allowed(masked_lm_folder: Path) -> None:
    spec = {"name": "hf-text", "model_name": str(masked_lm_folder), "ignore_unexpected": ["cls."],
            "hf_config": {"num_hidden_layers": 3}}
    with pytest.raises(ValueError, match=r"missing \['encoder.layer.2.attention"):
        vlekit.TEXT_ENCODERS.build(**spec)
    with pytest.warns(UserWarning, match=r"missing \['encoder.layer.2.attention.*unexpected \[\]"):
        encoder = vlekit.TEXT_ENCODERS.build(**spec, strict=False)
    assert len(encoder.model.encoder.layer) == 3


def test_clip_presets_ignore_the_text_side_of_a_full_clip_checkpoint(tmp_path: Path) -> None:
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=tiny, vision_config=dict(tiny, image_size=32, patch_size=8),
                         projection_dim=16)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"clip-vision: .*unexpected \['logit_scale', 'text_model"):
        vlekit.VISION_ENCODERS.build("clip-vision", model_name=str(tmp_path))
    _, config = vlekit.VISION_ENCODERS.resolve("clip-vit-b16")
    encoder = vlekit.VISION_ENCODERS.build("clip-vision", model_name=str(tmp_path),
                                           ignore_unexpected=list(config.ignore_unexpected))
    assert encoder.grid == 4


def test_a_loose_vcr_model_load_reports_both_lists(model: VCRModel, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    config["fusion"]["num_hidden_layers"] = 1
    (tmp_path / MODEL_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['fusion.text_layers.1.*Pass strict=False"):
        VCRModel.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"missing \[\], unexpected \['fusion.text_layers.1.cross_attention.dense.bias'"):
        loose, info = VCRModel.from_pretrained(tmp_path, strict=False, output_loading_info=True)
    assert info["missing_keys"] == []
    assert "fusion.image_layers.1.output_norm.bias" in info["unexpected_keys"]
    assert all(key.startswith(("fusion.text_layers.1.", "fusion.image_layers.1.")) for key in info["unexpected_keys"])
    assert len(loose.fusion.text_layers) == 1



class UndeclaredEncoder(CLIPVisionEncoder):
    """A vision encoder that does not declare the pixel statistics it expects."""

    def __init__(self, *, config) -> None:
        super().__init__(config=config)
        del self.image_mean


def test_an_encoder_without_declared_normalisation_is_refused_when_the_model_is_built() -> None:
    with pytest.raises(TypeError, match=r"vision encoder 'test_options:UndeclaredEncoder' \(UndeclaredEncoder\) does "
                                        r"not declare image_mean: every vision encoder declares"):
        build_model(vision_encoder={"name": "test_options:UndeclaredEncoder", "hf_config": _TINY_CLIP})
