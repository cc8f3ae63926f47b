"""No silent option on the train / eval side: run-level options a component cannot take,
``train.init_from_vle`` with a model section, the config a run records, and evaluation precision."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from data_prep.synthetic import generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from vlekit.cli import main as cli_main
from vlekit.evaluation.evaluate import evaluate
from vlekit.runs.experiment import load_experiment
from vlekit.runs.manifest import write_manifest
from vlekit.model import VCRModel, VCRModelConfig
from vlekit.registry import TEXT_ENCODERS
from vlekit.training.setup import build_run_model, model_config_for_run, with_component_option
from vlekit.training.train import train
from vlekit.vle.checkpoint import to_vle_pretrained

from helpers import tiny_overrides


@dataclasses.dataclass(frozen=True)
class FixedVocabularyConfig:
    hidden_size: int = 16


class FixedVocabularyEncoder(nn.Module):
    """A text encoder with a fixed vocabulary: no ``vocab_size`` and no ``gradient_checkpointing``."""

    def __init__(self, *, config: FixedVocabularyConfig) -> None:
        super().__init__()
        self.config, self.hidden_size = config, config.hidden_size
        self.embedding = nn.Embedding(100, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)


@pytest.fixture
def fixed_vocabulary_encoder():
    TEXT_ENCODERS.register("test/fixed-vocabulary", config=FixedVocabularyConfig)(FixedVocabularyEncoder)
    yield "test/fixed-vocabulary"
    TEXT_ENCODERS.unregister("test/fixed-vocabulary")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("synthetic"), num_train=16, num_val=8, num_test=0, seed=7)


class SizedTokenizer:
    def __len__(self) -> int:
        return 321


def test_a_run_level_option_a_component_lacks_is_an_error_naming_it(fixed_vocabulary_encoder):
    config = load_experiment(None, [f"model.text_encoder={fixed_vocabulary_encoder}"])
    with pytest.raises(ValueError, match=(
            r"data.tokenizer=auto builds a 321-token tokenizer the text encoder must be resized to, but text_encoder "
            r"'test/fixed-vocabulary' \(FixedVocabularyConfig\) has no 'vocab_size' option")):
        model_config_for_run(config, SizedTokenizer())
    config = load_experiment(None, ["model.fusion=template/mean-pool-fusion", "train.gradient_checkpointing=true"])
    with pytest.raises(ValueError, match=(r"train.gradient_checkpointing is on, but fusion 'template/mean-pool-fusion' "
                                          r"\(MeanPoolFusionConfig\) has no 'gradient_checkpointing' option")):
        model_config_for_run(config, SizedTokenizer())
    built = model_config_for_run(load_experiment(None, ["train.gradient_checkpointing=true"]), SizedTokenizer())
    assert built.text_encoder == {"name": "tiny-deberta", "vocab_size": 321, "gradient_checkpointing": True}
    assert built.fusion == {"name": "tiny-co-attention", "gradient_checkpointing": True}
    explicit = {"name": "tiny-clip", "gradient_checkpointing": False}  # set on the component: that wins
    assert with_component_option(explicit, "vision_encoder", "gradient_checkpointing", True, why="") == explicit


@pytest.fixture(scope="module")
def vle_checkpoint(tmp_path_factory, synthetic):
    """The default tiny model in VLE's official format, and a word tokenizer its vocabulary covers."""
    root = tmp_path_factory.mktemp("vle")
    torch.manual_seed(0)
    folder = to_vle_pretrained(VCRModel(config=VCRModelConfig()), root / "vle", task="q2a")
    tokenizer = build_word_tokenizer([synthetic.train], out_dir=root / "tokenizer")
    assert len(tokenizer) <= 1024
    return Path(folder), root / "tokenizer"


def vle_overrides(synthetic, vle_checkpoint, out: Path, *extra: str) -> list[str]:
    folder, tokenizer = vle_checkpoint
    return [*tiny_overrides(synthetic, out, epochs=1), f"train.init_from_vle={folder}", f"data.tokenizer={tokenizer}",
            *extra]


def test_init_from_vle_refuses_a_model_section_and_records_what_it_built(synthetic, vle_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vle_checkpoint[1])
    config = load_experiment(None, vle_overrides(synthetic, vle_checkpoint, tmp_path / "x", "model.fusion=tiny-merged-attention"))
    with pytest.raises(ValueError, match=(r"train.init_from_vle=.* builds model.fusion from the checkpoint \('co-attention'\), "
                                          r"but the model section asks for \{'name': 'tiny-merged-attention'\}: remove model.fusion")):
        build_run_model(config, tokenizer)

    out = tmp_path / "run"
    overrides = vle_overrides(synthetic, vle_checkpoint, out, "train.gradient_checkpointing=true")
    result = train(load_experiment(None, overrides), progress=False)
    saved = load_experiment(out / "config.yaml")
    assert saved.model.text_encoder["name"] == "hf-text" and saved.model.vision_encoder["name"] == "clip-vision"
    assert saved.model.fusion["name"] == "co-attention"
    assert all(getattr(saved.model, part)["gradient_checkpointing"] for part in ("text_encoder", "vision_encoder", "fusion"))
    model = VCRModel.from_pretrained(result.model_dir)
    assert model.fusion.config.gradient_checkpointing and model.vision_encoder.config.gradient_checkpointing
    assert model.text_encoder.config.gradient_checkpointing
    # The recorded config resumes the run: its model section is what the checkpoint builds.
    again = train(load_experiment(out / "config.yaml"), resume="latest", progress=False)
    assert again.global_step == result.global_step


@pytest.fixture(scope="module")
def fp32_run(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "run"
    train(load_experiment(None, tiny_overrides(synthetic, out, epochs=1)), progress=False)
    return out


def probabilities(folder: Path, synthetic, **options) -> torch.Tensor:
    result = evaluate([folder], annotations=synthetic.val, images=synthetic.images_root, num_workers=0,
                      progress=False, **options)
    return torch.tensor([row["answer_probs"] for row in result["predictions"]])


def test_evaluation_precision_follows_the_run_config_unless_overridden(synthetic, fp32_run, tmp_path, capsys):
    as_fp32, as_bf16 = probabilities(fp32_run, synthetic, precision="fp32"), probabilities(fp32_run, synthetic, precision="bf16")
    assert not torch.equal(as_fp32, as_bf16)  # bf16 autocast is visible in the probabilities, on a CPU too
    assert torch.equal(probabilities(fp32_run, synthetic), as_fp32)  # trained in fp32: evaluated in fp32

    bf16_run = tmp_path / "bf16-run"
    shutil.copytree(fp32_run / "model", bf16_run / "model")
    config_file = bf16_run / "model" / "config.yaml"
    raw = yaml.safe_load(config_file.read_text())
    raw["train"]["mixed_precision"] = "bf16"
    config_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"bf16-run/model is damaged: config.yaml does not match its SHA-256"):
        probabilities(bf16_run, synthetic)  # an edit after training is caught by the model's manifest
    write_manifest(bf16_run / "model")  # as if the run had been trained in bf16
    assert torch.equal(probabilities(bf16_run, synthetic), as_bf16)  # the run's own precision
    assert torch.equal(probabilities(bf16_run, synthetic, precision="fp32"), as_fp32)  # unless overridden

    config_file.unlink()
    write_manifest(bf16_run / "model")  # a model folder saved without its config.yaml (vlekit before 0.1 did)
    with pytest.raises(ValueError, match=r"no config.yaml to take the evaluation precision from \(train.mixed_precision\); "
                                         r"give one: --precision \{auto,bf16,fp16,fp32\}"):
        evaluate([bf16_run], annotations=synthetic.val, images=synthetic.images_root, num_workers=0, progress=False)
    code = cli_main(["eval", "--checkpoint", str(bf16_run), "--annotations", str(synthetic.val),
                     "--images", str(synthetic.images_root), "--num-workers", "0", "--precision", "fp32",
                     "--out", str(tmp_path / "eval")])
    assert code == 0 and "Q->A" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert torch.equal(torch.tensor([r["answer_probs"] for r in rows]), as_fp32)
