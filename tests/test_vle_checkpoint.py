"""Official VLE checkpoints: the key map, loading (all file layouts), VLE's maths, writing back, the processor.

The official side (tests/helpers.py) is built independently of vlekit's key map: the encoders are Hugging
Face DebertaV2Model / CLIPVisionModel (the latter nested under ``vision_model`` as transformers 4.x named
it), the fusion is made of transformers' own ``BertAttention`` / ``BertIntermediate`` / ``BertOutput``
arranged as VLE's ``BertCrossLayer``, and ``helpers.reference_logits`` re-implements VLE's per-choice
computation by hand from the official-key state dict.
"""
from __future__ import annotations

import json

import pytest
import torch
from helpers import (IMAGE_SIZE, PATCH_SIZE, OfficialVCR, OfficialVLEModel, randomised, reference_logits,
                     task_checkpoint, text_config, vcr_batch, vision_config, vle_config, write_checkpoint)
from safetensors.torch import load_file
from torch import nn

from vlekit import build_model
from vlekit.vle.checkpoint import from_vle_pretrained, to_vle_pretrained
from vlekit.vle.config import vcr_model_from_vle_config
from vlekit.vle.keys import VLECheckpointError, official_to_vlekit_key, vlekit_to_official_key
from vlekit.vle.processor import vle_preprocessor


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)["logits"]


@pytest.mark.parametrize(
    ("task", "layout", "nested_vision"),
    [("q2a", "bin", False), ("qa2r", "safetensors", True), ("q2a", "sharded-safetensors", False),
     ("qa2r", "sharded-bin", False)],
)
def test_task_checkpoint_gives_the_official_logits(tmp_path, task, layout, nested_vision):
    directory, config, state = task_checkpoint(tmp_path, task, layout, nested_vision=nested_vision, position_ids=layout == "bin")
    model, report = from_vle_pretrained(directory, output_loading_info=True)
    assert report.ok and report.task == task and report.layout.startswith("task")
    assert not model.training
    if layout == "bin":
        assert sorted(report.dropped) == ["vle.text_model.embeddings.position_ids",
                                          "vle.vision_model.vision_model.embeddings.position_ids"]
    batch = vcr_batch(seed=1)
    logits = logits_of(model, batch)
    assert logits.shape == (2, 4)
    # Same maths, different kernels (SDPA, batched choices): agreement is ~1e-7.
    torch.testing.assert_close(logits, reference_logits(state, config, batch, task), atol=2e-6, rtol=1e-5)


def test_round_trip_through_the_official_format(tmp_path):
    directory, _, state = task_checkpoint(tmp_path, "q2a", "bin", position_ids=True)
    model = from_vle_pretrained(directory, "vcr_q2a")  # the official task name, accepted at this boundary
    exported = to_vle_pretrained(model, tmp_path / "exported", task="q2a")
    written = load_file(str(exported / "model.safetensors"))
    assert written.keys() == {k for k in state if not k.endswith("position_ids")}
    assert all(torch.equal(written[k], state[k]) for k in written)
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "vle" and config["architectures"] == ["VLEForVCRQ2A"]
    assert config["text_config"]["model_type"] == "deberta-v2"
    assert config["vision_config"]["model_type"] == "clip_vision_model" and config["vision_config"]["image_size"] == IMAGE_SIZE
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_token_types"]) == (32, 2, 83)

    again = from_vle_pretrained(exported)
    batch = vcr_batch(seed=2)
    assert torch.equal(logits_of(model, batch), logits_of(again, batch))
    first, second = model.state_dict(), again.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    bare = to_vle_pretrained(model, tmp_path / "bare", safe_serialization=False)
    bare_state = torch.load(bare / "pytorch_model.bin", weights_only=True)
    assert not any(k.startswith(("vle.", "vcr_")) for k in bare_state)
    assert json.loads((bare / "config.json").read_text())["architectures"] == ["VLEModel"]
    backbone, report = from_vle_pretrained(bare, output_loading_info=True)
    assert report.layout == "bare" and any(item.startswith("head.*") for item in report.initialised)
    reloaded = backbone.state_dict()
    assert all(torch.equal(reloaded[k], first[k]) for k in first if not k.startswith("head."))


def test_a_vlekit_model_exports_and_other_models_are_refused(tmp_path):
    model = build_model(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention")
    assert model.head[1].eps == 1e-5  # VLE's head is nn.LayerNorm(2H): PyTorch's default eps
    to_vle_pretrained(model, tmp_path / "qa2r", task="qa2r")
    loaded = from_vle_pretrained(tmp_path / "qa2r", "qa2r")
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys() and all(torch.equal(original[k], reloaded[k]) for k in original)

    with pytest.raises(TypeError, match="deberta-v2"):
        to_vle_pretrained(build_model(text_encoder="tiny-bert"), tmp_path / "bert")
    with pytest.raises(ValueError, match="use_object_tokens"):
        to_vle_pretrained(build_model(use_object_tokens=False), tmp_path / "ablation")
    with pytest.raises(ValueError, match="task='vcr' is not a VLE task; choose one of 'q2a', 'qa2r', 'vqa', 'itm', 'pbc'"):
        to_vle_pretrained(model, tmp_path / "bad-task", task="vcr")
    with pytest.raises(ValueError, match="task='vqa' writes a VLEForVQA with a 'vqa' head, but the model has a 'vcr-multiple-choice'"):
        to_vle_pretrained(model, tmp_path / "wrong-head", task="vqa")


def test_pretrained_checkpoint_grows_the_token_table_and_skips_pretraining_heads(tmp_path):
    text, vision = text_config(), vision_config()
    config = vle_config(text, vision, num_token_types=2)
    state = randomised(OfficialVLEModel(config, text, vision), seed=3)
    state.update({  # VLEForITM / VLEForMLM heads next to the bare backbone, and an old position-id buffer
        "itm_score.fc.weight": torch.randn(2, 64), "itm_score.fc.bias": torch.randn(2),
        "mlm_score.0.weight": torch.randn(48, 32), "mlm_score.0.bias": torch.randn(48),
        "text_model.embeddings.position_ids": torch.arange(64)[None],
    })
    directory = write_checkpoint(tmp_path / "pretrained", config, state, "sharded-bin")

    with pytest.raises(ValueError, match="num_token_types=83"):
        from_vle_pretrained(directory, "q2a")
    model, report = from_vle_pretrained(directory, "q2a", num_token_types=83, output_loading_info=True)
    assert report.ok and report.layout == "bare" and report.task == "q2a"
    assert sorted(report.ignored) == ["itm_score.fc.bias", "itm_score.fc.weight", "mlm_score.0.bias", "mlm_score.0.weight"]
    assert report.dropped == ["text_model.embeddings.position_ids"]
    assert any("rows 2..82" in item for item in report.initialised)
    assert any(item.startswith("head.*") for item in report.initialised)
    table = model.token_type_embeddings.weight.detach()
    assert table.shape == (83, 32)
    assert torch.equal(table[:2], state["token_type_embeddings.weight"])
    assert 0.015 < table[2:].std().item() < 0.025 and table[2:].abs().mean() > 0
    assert torch.isfinite(logits_of(model, vcr_batch(seed=4))).all()


def test_vle_base_key_map_is_a_bijection_with_equal_shapes():
    text = text_config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512, position_buckets=256)
    vision = vision_config(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16, projection_dim=512)
    config = vle_config(text, vision, num_token_types=83, hidden=768, layers=6, heads=12, intermediate=3072)
    with torch.device("meta"):
        official = {k: v.shape for k, v in OfficialVCR(config, text, vision, head="vcr_q2a_logit").state_dict().items()}
        ours = {k: v.shape for k, v in vcr_model_from_vle_config(config).state_dict().items()}
    assert official["vle.vision_model.vision_model.embeddings.position_embedding.weight"] == (577, 768)
    assert official["vle.text_model.embeddings.word_embeddings.weight"] == (128100, 768)
    mapped: dict[str, torch.Size] = {}
    for key, shape in official.items():
        bare = key.removeprefix("vle.")
        target = official_to_vlekit_key(bare)
        assert target is not None, f"{key} is not in the key map"
        assert target not in mapped, f"{key} maps onto {target} twice"
        assert vlekit_to_official_key(target, task="q2a") == bare
        mapped[target] = shape
    assert mapped.keys() == ours.keys()
    assert {k: s for k, s in mapped.items() if ours[k] != s} == {}


def test_loading_errors_name_the_file_and_the_keys(tmp_path):
    _, config, state = task_checkpoint(tmp_path, "q2a", "bin")

    missing = {k: v for k, v in state.items() if k != "vle.cross_modal_text_layers.1.crossattention.self.key.weight"}
    directory = write_checkpoint(tmp_path / "missing", config, missing, "bin")
    with pytest.raises(VLECheckpointError) as error:
        from_vle_pretrained(directory)
    assert "pytorch_model.bin" in str(error.value) and "missing (1)" in str(error.value)
    assert "vle.cross_modal_text_layers.1.crossattention.self.key.weight -> fusion.text_layers.1.cross_attention.key.weight" in str(error.value)

    extra = {**state, "vle.cross_modal_text_layers.0.attention.self.rotary.weight": torch.zeros(3)}
    directory = write_checkpoint(tmp_path / "unexpected", config, extra, "sharded-safetensors")
    with pytest.raises(VLECheckpointError) as error:
        from_vle_pretrained(directory)
    assert "unexpected (1)" in str(error.value)
    assert "vle.cross_modal_text_layers.0.attention.self.rotary.weight (model-0000" in str(error.value)

    reshaped = {**state, "vle.text_projection_layer.weight": torch.zeros(32, 47)}
    directory = write_checkpoint(tmp_path / "shape", config, reshaped, "safetensors")
    with pytest.raises(VLECheckpointError) as error:
        from_vle_pretrained(directory)
    message = str(error.value)
    assert "vle.text_projection_layer.weight (model.safetensors) has shape [32, 47]" in message and "[32, 48]" in message

    model, report = from_vle_pretrained(directory, strict=False, output_loading_info=True)
    assert not report.ok and len(report.mismatched) == 1 and report.loaded == len(model.state_dict()) - 1

    with pytest.raises(VLECheckpointError, match="carries the q2a head: pass task='q2a'"):
        from_vle_pretrained(tmp_path / "q2a-bin", "qa2r")

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    with pytest.raises(VLECheckpointError, match=r"model_type is 'bert', expected 'vle'"):
        from_vle_pretrained(tmp_path / "bert")
    with pytest.raises(VLECheckpointError, match="both VCR heads"):
        both = {**state, **{k.replace("vcr_q2a_logit", "vcr_qa2r_logit"): v for k, v in state.items() if k.startswith("vcr_q2a_logit")}}
        from_vle_pretrained(write_checkpoint(tmp_path / "both", config, both, "bin"))


def test_vle_preprocessor_reads_the_checkpoint_folder(tmp_path):
    pytest.importorskip("data_prep.preprocess", reason="data_prep.preprocess (VCRPreprocessor) is not written yet")
    import sentencepiece

    folder = tmp_path / "vle"
    folder.mkdir()
    words = "a person is holding the cup why does look at table who man woman car dog sitting red blue because".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9)) for i in range(200)))
    sentencepiece.SentencePieceTrainer.train(  # DeBERTa-v3's special pieces and ids
        input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=40, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], minloglevel=2,
    )
    (folder / "spm.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False, "vocab_type": "spm",
        "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]",
    }))
    (folder / "config.json").write_text(json.dumps(vle_config(text_config(), vision_config(), num_token_types=83)))
    processor = {"crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "size": {"shortest_edge": IMAGE_SIZE},
                 "do_center_crop": True, "image_processor_type": "CLIPImageProcessor", "processor_class": "VLEProcessor",
                 "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "resample": 3}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))

    preprocessor = vle_preprocessor(folder, task="qa2r", geometry="letterbox", max_length=40)
    settings = preprocessor.config
    assert (settings.image_size, settings.patch_size, settings.task, settings.geometry) == (IMAGE_SIZE, PATCH_SIZE, "qa2r", "letterbox")
    assert settings.image_mean == (0.5, 0.4, 0.3) and settings.image_std == (0.2, 0.25, 0.3) and settings.max_length == 40
    tokenizer = preprocessor.tokenizer
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert tokenizer("a person is holding the cup").input_ids[0] == 1

    with pytest.raises(TypeError, match="image_size"):
        vle_preprocessor(folder, image_size=64)
    processor["crop_size"] = {"height": 48, "width": 48}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match="48 px images.*32 px"):
        vle_preprocessor(folder)
