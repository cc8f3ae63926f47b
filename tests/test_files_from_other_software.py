"""Files vlekit did not write load as their writers meant them (issue 20, part 1).

* the official VLE ``config.json`` files in ``../shared/fixtures/vle_configs/`` (saved by the official code
  under transformers 4.26, every generic ``PretrainedConfig`` field of that era in the nested configs) load
  through ``from_vle_pretrained`` and give the official logits;
* a pretrained folder that ``transformers`` saved with legacy keys in its ``config.json`` fine-tunes, and the
  run evaluates, predicts and pushes;
* a run folder whose saved config holds a key the installed transformers does not read (written by a newer
  one) loads with a warning;
* what a person types stays strict.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file
from helpers import (RUN_SIZE, LocalHub, OfficialTaskModel, OfficialVCR, randomised, reference_logits, task_inputs,
                     tiny_batch, vcr_batch)
from transformers import BertConfig, BertModel, CLIPVisionConfig, DebertaV2Config

from data_prep.synthetic import generate_synthetic_vcr
from vlekit import build_model
from vlekit.cli import main
from vlekit.hf_configs import known_keys
from vlekit.model import MODEL_CONFIG_FILE, VCRModel
from vlekit.evaluation.predict import load_run
from vlekit.vle.checkpoint import from_vle_pretrained

VLE_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vle_configs"
OFFICIAL = sorted(p.parent.name for p in VLE_CONFIGS.glob("*/config.json"))
# The generic fields transformers 4.x wrote into every config (a sample, as in the official files).
LEGACY_KEYS = {"add_cross_attention": False, "is_decoder": False, "tie_word_embeddings": True, "bad_words_ids": None,
               "num_beams": 1, "top_k": 50, "tf_legacy_loss": False, "use_bfloat16": False, "torchscript": False,
               "gradient_checkpointing": False, "position_embedding_type": "absolute"}


def official_folder(tmp_path: Path, name: str) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """The official ``config.json`` as it is, with random weights of its shapes under the official names,
    made by the official module layout (not by vlekit)."""
    source = VLE_CONFIGS / name / "config.json"
    if not source.is_file():
        pytest.skip(f"official VLE configs not found at {VLE_CONFIGS}")
    config = json.loads(source.read_text())
    # The test's stand-in for the official modules reads the nested configs as transformers 4.26 did.
    text, vision = DebertaV2Config(**config["text_config"]), CLIPVisionConfig(**config["vision_config"])
    task = {"VLEForVCRQ2A": "q2a", "VLEForVQA": "vqa", "VLEForITM": "itm", "VLEForPBC": "pbc"}[config["architectures"][0]]
    module = OfficialVCR(config, text, vision, head="vcr_q2a_logit") if task == "q2a" else OfficialTaskModel(config, text, vision, task)
    state = randomised(module, seed=3)
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(source, folder / "config.json")
    save_file(state, str(folder / "model.safetensors"))
    return folder, config, state


@pytest.mark.parametrize("name", OFFICIAL or ["vcr_q2a"])
def test_every_official_config_loads_and_gives_the_official_logits(tmp_path: Path, name: str) -> None:
    folder, config, state = official_folder(tmp_path, name)
    assert "add_cross_attention" in config["text_config"] and "use_bfloat16" in config["vision_config"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the era's generic fields are read as transformers reads them: no noise
        # The task references run the tower at their RUN_SIZE, interpolating the positions as VLE does.
        model, report = from_vle_pretrained(folder, output_loading_info=True, image_size=None if name == "vcr_q2a" else RUN_SIZE)
    assert report.ok and report.loaded == len(state) and not report.initialised and not report.ignored
    # The architecture keys that DebertaV2Config does not declare are kept (the model reads them).
    assert model.text_encoder.model.config.position_buckets == config["text_config"]["position_buckets"]
    saved = model.resolved_config().text_encoder["hf_config"]
    assert "add_cross_attention" not in saved and "num_beams" not in saved and saved["position_buckets"] == 16
    size, patches = model.vision_encoder.image_size, model.num_patches
    with torch.no_grad():
        if report.task == "q2a":
            inputs = vcr_batch(seed=1)
            assert inputs["object_patch_mask"].shape[-1] == patches  # the fixture's grid is the helper's (4 x 4)
        else:
            inputs = task_inputs(seed=1)
        inputs["pixel_values"] = torch.randn(len(inputs["input_ids"]), 3, size, size, generator=torch.Generator().manual_seed(1))
        logits, expected = model(**inputs)["logits"], reference_logits(state, config, inputs, report.task)
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)
    assert logits.std() > 1e-3


def test_the_official_fixtures_are_all_there() -> None:
    if not VLE_CONFIGS.is_dir():
        pytest.skip(f"official VLE configs not found at {VLE_CONFIGS}")
    assert OFFICIAL == ["itm", "pbc", "vcr_q2a", "vqa"]


# -- a run fine-tuned from a folder transformers saved -----------------------------------------------
@pytest.fixture(scope="module")
def bert_run(tmp_path_factory) -> tuple[Path, object]:
    """``BertModel.save_pretrained`` in a separate step, its config.json then given the legacy keys an older
    transformers wrote; a run fine-tuned from that folder."""
    root = tmp_path_factory.mktemp("bert-run")
    folder = root / "tiny-bert"
    BertModel(BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **LEGACY_KEYS, "transformers_version": "4.26.0"}, indent=2))
    data = generate_synthetic_vcr(root / "data", num_train=16, num_val=8, num_test=4, seed=2)
    run = root / "run"
    assert main(["train", "--train-annotations", str(data.train), "--val-annotations", str(data.val),
                 "--images", str(data.images_root), "--out", str(run), "--batch-size", "8", "--epochs", "1",
                 "--lr", "1e-3", "--no-progress", "train.cpu=true", "train.mixed_precision=fp32", "data.num_workers=0",
                 "model.text_encoder={name: hf-text, model_name: " + str(folder) + "}"]) == 0
    return run, data


def test_a_run_from_a_legacy_pretrained_folder_saves_only_what_its_config_class_reads(bert_run) -> None:
    run, _ = bert_run
    saved = json.loads((run / "model" / MODEL_CONFIG_FILE).read_text())["text_encoder"]["hf_config"]
    assert saved["hidden_size"] == 32 and saved["vocab_size"] < 500  # resized to the run's tokenizer
    assert not set(saved) - known_keys(BertConfig)
    assert "gradient_checkpointing" not in saved and "position_embedding_type" not in saved and "num_beams" not in saved


def test_a_run_from_a_legacy_pretrained_folder_evaluates_predicts_and_pushes(bert_run, tmp_path, monkeypatch) -> None:
    run, data = bert_run
    assert main(["eval", "--checkpoint", str(run), "--annotations", str(data.val), "--images", str(data.images_root),
                 "--out", str(tmp_path / "eval"), "--num-workers", "0"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["q2a"]["n"] == 8 and 0.0 <= metrics["q2a"]["accuracy"] <= 1.0
    record = json.loads(Path(data.val).read_text().splitlines()[0])
    probabilities = load_run(run, device="cpu").score_record(record, images_root=data.images_root)
    assert probabilities.shape == (4,) and torch.isclose(probabilities.sum(), torch.tensor(1.0))
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    assert main(["push", "--run", str(run), "--repo", "org/bert-q2a"]) == 0
    assert MODEL_CONFIG_FILE in hub.commits[0]["files"]


# -- a run folder written under another transformers ------------------------------------------------
def test_a_run_folder_with_a_key_a_newer_transformers_added_loads_with_a_warning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model().eval()
    folder = model.save_pretrained(tmp_path / "model")
    raw = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    raw["text_encoder"]["hf_config"]["rope_scaling_v7"] = {"kind": "new"}
    raw["vision_encoder"]["hf_config"]["register_tokens"] = 0
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.warns(UserWarning) as caught:
        loaded = VCRModel.from_pretrained(folder).eval()
    messages = " ".join(str(w.message) for w in caught)
    assert "rope_scaling_v7" in messages and "register_tokens" in messages and str(folder / MODEL_CONFIG_FILE) in messages
    batch = tiny_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch)["logits"], model(**batch)["logits"])


def test_typed_hf_config_keys_stay_strict() -> None:
    with pytest.raises(TypeError, match=r"hf-text \(deberta-v2\): hf_config has keys that DebertaV2Config does not "
                                        r"read: 'num_beams'"):
        build_model(text_encoder={"name": "tiny-deberta", "hf_config": {"num_beams": 1}})
    with pytest.raises(TypeError, match=r"'hidden_dropout_prop' \(did you mean 'hidden_dropout_prob'"):
        build_model(text_encoder={"name": "tiny-deberta", "hf_config": {"hidden_dropout_prop": 0.0}})
