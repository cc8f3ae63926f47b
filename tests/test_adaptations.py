"""Adaptation methods (``model.adaptation``): what each one trains on every core component family and a plugin
fusion, outputs at initialisation, merging, and a LoRA run on a named base through train / eval / predict /
export / push."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from torch import nn

import vlekit
from data_prep.synthetic import generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from data_prep.vcr import read_vcr
from vlekit.cli import main
from vlekit.components.adaptations import (
    ADAPTATIONS, is_adapter_key, load_base_state, merged_state_dict, parameter_counts, resolve_adaptation,
)
from vlekit.evaluation.evaluate import evaluate
from vlekit.model import VCRModel, VCRModelConfig, build_model
from vlekit.registry import REGISTRIES, RegistryError
from vlekit.runs.experiment import TrainConfig, load_experiment
from vlekit.runs.folder import load_trained
from vlekit.training.setup import make_optimizer
from vlekit.vle.checkpoint import from_vle_pretrained, to_vle_pretrained

from helpers import NO_DROPOUT, LocalHub, tiny_batch, tiny_overrides, torchrun_train

PARTS = {"text": "text_encoder", "vision": "vision_encoder", "fusion": "fusion"}
# One model per core family (hf-text, clip-vision, co-attention); the timm ViT and a plugin fusion (with an
# nn.MultiheadAttention: peft #761) in a second one.
MODELS = {"core": {}, "plugins": {"vision_encoder": "tiny-timm-vit", "fusion": "tiny-gated-cross-attention"}}
# LoRA's natural targets per part, by the last name of the module (the families' attention + feed-forward).
LORA_TARGETS = {
    ("core", "text"): {"query_proj", "key_proj", "value_proj", "dense"},
    ("core", "vision"): {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    ("core", "fusion"): {"query", "key", "value", "dense", "intermediate", "output"},
    ("plugins", "vision"): {"qkv", "proj", "fc1", "fc2"},
    # nn.MultiheadAttention as one module (peft #761); PEFT's LoRA on it wraps its out_proj as well
    ("plugins", "fusion"): {"query", "key", "value", "dense", "intermediate", "output", "attention", "out_proj"},
}


def build(kind: str, adaptation=None, seed: int = 0) -> VCRModel:
    torch.manual_seed(seed)
    return build_model(**MODELS[kind], adaptation=adaptation or {})


def trainable(model: nn.Module, attribute: str) -> set[str]:
    return {name for name, p in getattr(model, attribute).named_parameters() if p.requires_grad}


def adapted_modules(model: nn.Module, attribute: str) -> set[str]:
    """Last names of the modules PEFT wrapped in a part."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name.rsplit(".", 1)[-1] for name, m in getattr(model, attribute).named_modules() if isinstance(m, BaseTunerLayer)}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", ["full", "frozen", "bitfit", "lora", "dora", "ia3", "loha", "lokr", "oft"])
def test_each_method_trains_what_it_says_and_the_rest_gets_no_gradient(kind, method):
    model = build(kind, {part: method for part in PARTS})
    for part, attribute in PARTS.items():
        names = trainable(model, attribute)
        every = {name for name, _ in getattr(model, attribute).named_parameters()}
        if method == "full":
            assert names == every
        elif method == "frozen":
            assert names == set()
        elif method == "bitfit":
            assert names and all(n.endswith("bias") for n in names)
            assert names == {n for n in every if n.endswith("bias")}
        elif method in ("lora", "dora"):
            assert names and all(is_adapter_key(n) for n in names)
            assert any(".lora_magnitude_vector." in n for n in names) == (method == "dora")
            targets = LORA_TARGETS.get((kind, part), LORA_TARGETS["core", part])
            if method == "dora" and "attention" in targets:  # PEFT's DoRA does not take nn.MultiheadAttention
                targets = targets - {"attention", "out_proj"}
            assert adapted_modules(model, attribute) == targets
        elif method in ("loha", "lokr", "oft"):  # LoRA's targets; PEFT takes no nn.MultiheadAttention for these
            marker = {"loha": ".hada_", "lokr": ".lokr_", "oft": ".oft_R."}[method]
            assert names and all(is_adapter_key(n) and marker in n for n in names)
            targets = LORA_TARGETS.get((kind, part), LORA_TARGETS["core", part]) - {"attention", "out_proj"}
            if (kind, part) == ("core", "vision"):
                targets = targets | {"out_proj"}  # CLIP's out_proj is a plain Linear
            assert adapted_modules(model, attribute) == targets
        else:
            assert names and all(".ia3_l." in n for n in names)
    # The glue (projections, token types) and the head stay trained unless the fusion is frozen.
    glue = {n for n, p in model.named_parameters() if n.startswith(("text_projection", "token_type")) and p.requires_grad}
    assert bool(glue) == (method != "frozen")
    assert all(p.requires_grad for p in model.head.parameters())

    batch = tiny_batch(model)
    model(**batch)["loss"].backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", [{"name": "lora", "r": 4, "dropout": 0.1}, "dora", "ia3", "bitfit", "loha", "lokr",
                                    {"name": "oft", "block_size": 16}])
def test_adapted_model_equals_its_base_at_init_and_merges_to_the_same_outputs(kind, method):
    """PEFT's guarantee: LoRA's B = 0, DoRA's magnitude = |W|, IA3's scales = 1, LoHa's and LoKr's second factor 0,
    OFT's rotation the identity. Trained adapters merged
    into their layers (``vlekit export --merge``) give the adapted model's outputs."""
    base, adapted = build(kind), build(kind, {part: method for part in PARTS}, seed=1)
    load_base_state(adapted, base.state_dict(), where="test")
    base.eval(), adapted.eval()
    batch = tiny_batch(base)
    with torch.no_grad():
        torch.testing.assert_close(adapted(**batch)["logits"], base(**batch)["logits"], rtol=0, atol=1e-5)
        for parameter in (p for p in adapted.parameters() if p.requires_grad):  # as if trained
            parameter.add_(0.05 * torch.randn_like(parameter))
        changed = adapted(**batch)["logits"]
        assert not torch.allclose(changed, base(**batch)["logits"], atol=1e-4)
        plain = VCRModel(config=dataclasses.replace(adapted.resolved_config(), adaptation={})).eval()
        plain.load_state_dict(merged_state_dict(adapted))  # strict: the plain model's names exactly
        torch.testing.assert_close(plain(**batch)["logits"], changed, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "loha", "lokr", {"name": "oft", "block_size": 16}])
def test_a_model_on_a_named_base_saves_what_it_trained_and_is_rebuilt_on_the_base(method, tmp_path):
    """Each PEFT method on a named frozen base: the saved file holds its adapters and what else it trained (the
    head, the glue), not the frozen weights; loading rebuilds it on the base with the same outputs."""
    from safetensors.torch import load_file

    base = build("core")
    adapted = build("core", {part: method for part in PARTS}, seed=1)
    load_base_state(adapted, base.state_dict(), where="test")
    with torch.no_grad():
        for parameter in (p for p in adapted.parameters() if p.requires_grad):  # as if trained
            parameter.add_(0.05 * torch.randn_like(parameter))
    adapted.base_reference = {"format": "vlekit", "source": str(base.save_pretrained(tmp_path / "base"))}
    folder = adapted.save_pretrained(tmp_path / "run")
    saved = load_file(str(folder / "model.safetensors"))
    trained = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trained <= set(saved) and not any(name in saved for name, p in adapted.named_parameters() if not p.requires_grad)
    assert any(is_adapter_key(key) for key in saved) and len(saved) < len(adapted.state_dict())
    loaded = VCRModel.from_pretrained(folder).eval()
    adapted.eval()
    batch = tiny_batch(adapted)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)["logits"], adapted(**batch)["logits"], rtol=0, atol=0)


def test_every_adapter_parameter_peft_names_for_these_methods_is_known_as_one():
    """Saving adapters only, merging and loading a base tell an adapter's weights by PEFT's names for them."""
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer
    from peft.tuners.oft import OFTLayer

    from vlekit.components.adaptations import ADAPTER_PARAMETERS

    peft_names = {name for layer in (LoraLayer, IA3Layer, LoHaLayer, LoKrLayer, OFTLayer) for name in layer.adapter_layer_names}
    assert peft_names <= set(ADAPTER_PARAMETERS), sorted(peft_names - set(ADAPTER_PARAMETERS))
    assert is_adapter_key("text_encoder.model.x.query_proj.hada_w1_a.default") and not is_adapter_key("x.lora.weight")


def test_lora_r8_on_the_vle_base_shape_trains_at_most_3_percent():
    with torch.device("meta"):  # shapes only: the VLE-base model's parameters are not allocated
        model = build_model(text_encoder="deberta-v3-base-random", vision_encoder="clip-vit-b16-384-random",
                            fusion="co-attention-base", adaptation={part: {"name": "lora", "r": 8} for part in PARTS})
    counts = parameter_counts(model)
    assert counts["total_parameters"] > 3e8
    assert counts["trainable_parameters"] / counts["total_parameters"] <= 0.03, counts


def test_the_adaptation_is_saved_and_rebuilt_and_defaults_to_full(tmp_path):
    assert VCRModelConfig().adaptation == {} and resolve_adaptation({"text": "full"}) == {}
    assert "adaptation" in REGISTRIES and {"full", "frozen", "lora", "dora", "ia3", "bitfit", "loha", "lokr", "oft"} <= {
        e.name for e in ADAPTATIONS.entries()}
    model = build("core", {"text": {"name": "lora", "r": 2}, "vision": "frozen", "head": "bitfit"})
    assert model.resolved_config().adaptation == {
        "text": {"name": "lora", "r": 2, "alpha": 16.0, "dropout": 0.0, "target_modules": None},
        "vision": {"name": "frozen"}, "head": {"name": "bitfit", "layer_norms": False}}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    loaded = VCRModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.resolved_config() == model.resolved_config()
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {n for n, p in model.named_parameters() if p.requires_grad}
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # Dotted overrides and YAML
    config = load_experiment(None, ["model.adaptation={text: {name: lora, r: 4}, vision: frozen}"])
    assert config.model.adaptation == {"text": {"name": "lora", "r": 4}, "vision": "frozen"}
    # A dotted option below a method given by name: the name is the short form of {name: ...}
    config = load_experiment(None, ["model.adaptation={text: lora}", "model.adaptation.text.r=4", "model.fusion=merged-attention",
                                    "model.fusion.num_hidden_layers=1"])
    assert config.model.adaptation == {"text": {"name": "lora", "r": 4}}
    assert config.model.fusion == {"name": "merged-attention", "num_hidden_layers": 1}
    with pytest.raises(ValueError, match=r"cannot set train.lr.x: train.lr is a value \(0.5\), not a section"):
        load_experiment(None, ["train.lr=0.5", "train.lr.x=1"])


@pytest.mark.parametrize(("adaptation", "message"), [
    ({"text": "lorra"}, r"model.adaptation.text: unknown adaptation 'lorra'. Did you mean 'lora'.*Known adaptations: "
                        r"bitfit, dora, frozen, full, ia3, loha, lokr, lora, oft"),
    ({"text": {"name": "oft", "block_size": 48}}, r"oft block_size=48 does not divide the input width \[64, 128\] of some targets"),
    ({"text": {"name": "loha", "rank_dropout": 1.0}}, r"need r >= 1, alpha > 0 and dropouts in \[0, 1\)"),
    ({"text": {"name": "lora", "rank": 4}}, r"model.adaptation.text: .*'rank'.*"),
    ({"text": {"name": "lora", "r": 0}}, r"need r >= 1"),
    ({"txt": "lora"}, r"unknown part 'txt'; the parts are text, vision, fusion, head"),
    ({"text": {"name": "lora", "target_modules": ["nothing"]}}, r"match no linear layer of HFTextEncoder; its linear "
                                                                r"layers are: model.encoder.layer.0.attention.self.query_proj"),
])
def test_unknown_methods_and_bad_options_are_errors_that_say_what_is_right(adaptation, message):
    with pytest.raises((RegistryError, TypeError, ValueError), match=message):
        build("core", adaptation)
    if "target_modules" not in str(adaptation) and "block_size" not in str(adaptation):  # caught when the config is
        # read, before any weight is built (the targets' names and widths are known once they are)
        with pytest.raises((RegistryError, TypeError, ValueError), match=message):
            VCRModelConfig(adaptation=adaptation)


def test_layer_lr_decay_scales_the_encoder_layers():
    model = build("core")
    config = load_experiment(None, ["train.layer_lr_decay=0.5", "train.lr=1.0", "train.lr_multipliers={}"])
    lrs = {id(p): group["lr"] for group in make_optimizer(model, config).param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert lrs[id(named["text_encoder.model.embeddings.word_embeddings.weight"])] == 0.5 ** 3  # 2 layers + top
    assert lrs[id(named["text_encoder.model.encoder.layer.0.attention.self.query_proj.weight"])] == 0.5 ** 2
    assert lrs[id(named["text_encoder.model.encoder.layer.1.output.dense.weight"])] == 0.5
    assert lrs[id(named["vision_encoder.model.post_layernorm.weight"])] == 1.0
    assert lrs[id(named["fusion.text_layers.0.self_attention.query.weight"])] == 1.0  # not an encoder
    with pytest.raises(ValueError, match=r"train.layer_lr_decay=1.5 must be in \(0, 1\]"):
        TrainConfig(layer_lr_decay=1.5)


# -- a LoRA run on a named base: train, eval, predict, export --merge, push ------------------------
LORA = "model.adaptation={text: {name: lora, r: 4}, vision: {name: lora, r: 4}, fusion: {name: lora, r: 4}}"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("synthetic"), num_train=16, num_val=8, num_test=0, seed=7)


@pytest.fixture(scope="module")
def named_base(tmp_path_factory, synthetic):
    """A tiny model in the official VLE format (the named base) and a word tokenizer its vocabulary covers."""
    root = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    folder = to_vle_pretrained(VCRModel(config=VCRModelConfig()), root / "vle", task="q2a")
    build_word_tokenizer([synthetic.train], out_dir=root / "tokenizer")
    return Path(folder), root / "tokenizer"


def probabilities(folder: Path, synthetic) -> torch.Tensor:
    result = evaluate([folder], annotations=synthetic.val, images=synthetic.images_root, num_workers=0, progress=False)
    return torch.tensor([row["answer_probs"] for row in result["predictions"]])


@pytest.mark.slow
def test_a_lora_run_on_a_named_base_saves_adapters_evaluates_exports_merged_and_pushes(
        synthetic, named_base, tmp_path, monkeypatch, capsys):
    folder, tokenizer = named_base
    out = tmp_path / "lora"
    overrides = [*tiny_overrides(synthetic, out, epochs=1), f"train.init_from_vle={folder}", f"data.tokenizer={tokenizer}"]
    assert main(["train", "--no-progress", *overrides, LORA]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert f"trainable parameters: {record['trainable_parameters']:,} of {record['total_parameters']:,}" in printed
    assert record["optimizer_state_bytes"] == 8 * record["trainable_parameters"]

    saved = json.loads((out / "model" / "vlekit_config.json").read_text())
    assert saved["base"]["format"] == "vle" and saved["base"]["source"] == str(folder.resolve())
    from safetensors.torch import load_file

    weights = load_file(str(out / "model" / "model.safetensors"))
    assert not any(".base_layer." in key for key in weights)  # only what was trained (adapters, glue, head)
    assert sum(v.numel() for v in weights.values()) < record["total_parameters"] / 2

    scores = probabilities(out, synthetic)
    [checkpoint] = (out / "checkpoints").iterdir()  # every weight, the frozen base's too
    torch.testing.assert_close(probabilities(checkpoint, synthetic), scores, rtol=0, atol=0)
    assert main(["export", "--run", str(out), "--merge", "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "model" / "vlekit_config.json").read_text())
    assert merged["adaptation"] == {} and "base" not in merged
    torch.testing.assert_close(probabilities(tmp_path / "merged", synthetic), scores, rtol=0, atol=1e-4)

    record_ = read_vcr(synthetic.val)[:2]
    local = vlekit.load_run(out, device="cpu").score_batch(record_, images_root=synthetic.images_root)
    exported = vlekit.load_run(tmp_path / "merged", device="cpu").score_batch(record_, images_root=synthetic.images_root)
    torch.testing.assert_close(exported, local, rtol=0, atol=1e-4)

    hub = LocalHub(tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    assert main(["push", "--run", str(out), "--repo", "me/lora-q2a"]) == 0
    card = next((tmp_path / "hf-cache").rglob("README.md")).read_text()
    assert "## Base model" in card and str(folder.resolve()) in card and saved["base"]["sha256"] in card

    # The official format holds no adapters: to_vle_pretrained writes the merged weights, which the official
    # loader reads back into the same function.
    adapted = VCRModel.from_pretrained(out / "model").eval()
    assert main(["export", "--run", str(out), "--format", "vle", "--out", str(tmp_path / "official")]) == 0
    assert "(the official VLE format)" in capsys.readouterr().out
    official = from_vle_pretrained(tmp_path / "official", task="q2a").eval()
    assert not official.resolved_config().adaptation
    batch = tiny_batch(adapted, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(official(**batch)["logits"], adapted(**batch)["logits"], rtol=0, atol=1e-5)

    # A base that no longer gives the frozen weights is refused, naming it.
    torch.manual_seed(1)
    to_vle_pretrained(VCRModel(config=VCRModelConfig()), folder, task="q2a")
    with pytest.raises(ValueError, match=r"does not give the frozen weights this model was trained on"):
        VCRModel.from_pretrained(out / "model")


@pytest.mark.slow
def test_an_unnamed_base_saves_in_full_with_bf16_and_gradient_checkpointing(synthetic, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    overrides = [*tiny_overrides(synthetic, out, epochs=1, mixed_precision="bf16", gradient_checkpointing="true"), LORA]
    # Its own process: Accelerate's precision is fixed per process once a run has set it.
    done = subprocess.run([sys.executable, "-m", "vlekit.cli", "train", "--no-progress", *overrides],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    saved = json.loads((out / "model" / "vlekit_config.json").read_text())
    assert "base" not in saved and saved["adaptation"]["text"]["r"] == 4
    assert load_experiment(out / "config.yaml").train.mixed_precision == "bf16"
    model = VCRModel.from_pretrained(out / "model")
    assert model.text_encoder.config.gradient_checkpointing and adapted_modules(model, "text_encoder")


@pytest.mark.slow
def test_lora_and_a_frozen_tower_under_ddp_on_two_cpu_processes(synthetic, tmp_path):
    """No unused-parameter error: DDP sees only the trained parameters, each of which gets a gradient."""
    overrides = [*tiny_overrides(synthetic, tmp_path / "ddp", epochs=1, batch_size=8), *NO_DROPOUT,
                 "model.adaptation={text: {name: lora, r: 4}, vision: frozen, fusion: ia3}"]
    torchrun_train(2, overrides)
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in records if "loss" in r] == [2, 2]
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    [checkpoint] = (tmp_path / "ddp" / "checkpoints").iterdir()  # DDP's state dict, read under the model's names
    loaded, final = load_trained(checkpoint).model.state_dict(), VCRModel.from_pretrained(tmp_path / "ddp" / "model").state_dict()
    assert loaded.keys() == final.keys() and all(torch.equal(loaded[key], final[key]) for key in loaded)
