"""Official VLE checkpoints: the key map, loading (all file layouts), VLE's maths, writing back, the processor.

The official side is built here independently of vlekit's key map: the encoders are Hugging Face
DebertaV2Model / CLIPVisionModel (the latter nested under ``vision_model`` as transformers 4.x named
it), the fusion is made of transformers' own ``BertAttention`` / ``BertIntermediate`` / ``BertOutput``
arranged as VLE's ``BertCrossLayer``, and the reference forward re-implements VLE's per-choice
computation by hand from the official-key state dict.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

from vlekit import build_model
from vlekit.vle.checkpoint import from_vle_pretrained, to_vle_pretrained
from vlekit.vle.config import vcr_model_from_vle_config
from vlekit.vle.keys import VLECheckpointError, official_to_vlekit_key, vlekit_to_official_key
from vlekit.vle.processor import vle_preprocessor

VOCAB, IMAGE_SIZE, PATCH_SIZE = 100, 32, 8
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
FILE_KEYS = ("model_type", "transformers_version", "_name_or_path", "_commit_hash", "architectures", "torch_dtype", "dtype")
# What transformers 4.x wrote into every sub-config (VLE's repos carry these); transformers 5 drops them.
LEGACY_CONFIG_KEYS = dict(max_length=80, bad_words_ids=None, num_beams=1, do_sample=False, torch_dtype=None,
                          transformers_version="4.26.1", _name_or_path="")


# -- the official model, built from transformers pieces --------------------------------------------------

def text_config(**overrides: Any) -> DebertaV2Config:
    fields = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, position_buckets=16, relative_attention=True, pos_att_type=["p2c", "c2p"],
                  max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
                  type_vocab_size=0, layer_norm_eps=1e-7, hidden_act="gelu")
    return DebertaV2Config(**{**fields, **overrides})


def vision_config(**overrides: Any) -> CLIPVisionConfig:
    fields = dict(hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
                  patch_size=PATCH_SIZE, hidden_act="quick_gelu", projection_dim=16)
    return CLIPVisionConfig(**{**fields, **overrides})


def vle_config(text: DebertaV2Config, vision: CLIPVisionConfig, *, num_token_types: int, hidden: int = 32, layers: int = 2,
               heads: int = 2, intermediate: int = 64, nested_vision: bool = False) -> dict[str, Any]:
    """An official-format config.json (VLEConfig.to_dict as the hfl repos hold it)."""
    vision_dict = {**vision.to_dict(), **LEGACY_CONFIG_KEYS}
    if nested_vision:  # a whole CLIP config in vision_config (VLEConfig accepts model_type 'clip')
        vision_dict = {"model_type": "clip", "projection_dim": 16, "vision_config": vision_dict,
                       "text_config": {"model_type": "clip_text_model", "hidden_size": 16, "num_attention_heads": 2}}
    return {
        "_commit_hash": None, "model_type": "vle", "attention_probs_dropout_prob": 0.1, "classifier_dropout": None,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": hidden, "initializer_range": 0.02,
        "intermediate_size": intermediate, "layer_norm_eps": 1e-12, "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_token_types": num_token_types,
        "text_config": {**text.to_dict(), **LEGACY_CONFIG_KEYS}, "vision_config": vision_dict,
    }


class CrossLayer(nn.Module):
    """VLE's BertCrossLayer (parameters only)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)


class Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class NestedCLIPVisionModel(nn.Module):
    """transformers 4.x CLIPVisionModel: the transformer under ``vision_model``."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class OfficialVLEModel(nn.Module):
    """VLE's VLEModel (parameters only), attribute names as in models/VLE/modeling_vle.py."""

    def __init__(self, config: dict[str, Any], text: DebertaV2Config, vision: CLIPVisionConfig) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        bert = BertConfig(hidden_size=hidden, num_attention_heads=config["num_attention_heads"],
                          intermediate_size=config["intermediate_size"], hidden_act=config["hidden_act"],
                          layer_norm_eps=config["layer_norm_eps"])
        self.vision_model = NestedCLIPVisionModel(vision)
        self.text_model = DebertaV2Model(text)
        self.text_projection_layer = nn.Linear(text.hidden_size, hidden)
        self.image_projection_layer = nn.Linear(vision.hidden_size, hidden)
        self.token_type_embeddings = nn.Embedding(config["num_token_types"], hidden)
        self.cross_modal_image_layers = nn.ModuleList(CrossLayer(bert) for _ in range(config["num_hidden_layers"]))
        self.cross_modal_text_layers = nn.ModuleList(CrossLayer(bert) for _ in range(config["num_hidden_layers"]))
        self.cross_modal_image_pooler = Pooler(hidden)
        self.cross_modal_text_pooler = Pooler(hidden)


class OfficialVCR(nn.Module):
    """VLEForVCRQ2A / VLEForVCRQA2R (parameters only)."""

    def __init__(self, config: dict[str, Any], text: DebertaV2Config, vision: CLIPVisionConfig, head: str) -> None:
        super().__init__()
        self.vle = OfficialVLEModel(config, text, vision)
        width = 2 * config["hidden_size"]
        self.add_module(head, nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, 1)))


def randomised(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights everywhere (LayerNorms near 1), so a swapped or transposed tensor shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            for name, parameter in sub.named_parameters(recurse=False):
                noise = torch.randn_like(parameter)
                parameter.copy_(1 + 0.1 * noise if isinstance(sub, nn.LayerNorm) and name == "weight" else 0.05 * noise)
    return {key: tensor.clone() for key, tensor in module.state_dict().items()}


def write_checkpoint(directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], layout: str) -> Path:
    """Official file layouts: bin, safetensors, or either sharded in two with an index."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if layout in ("bin", "safetensors"):
        if layout == "bin":
            torch.save(state, directory / "pytorch_model.bin")
        else:
            save_file(state, str(directory / "model.safetensors"))
        return directory
    keys = sorted(state)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    suffix, index = ("safetensors", "model.safetensors.index.json") if layout == "sharded-safetensors" else ("bin", "pytorch_model.bin.index.json")
    stem = "model" if suffix == "safetensors" else "pytorch_model"
    weight_map = {}
    for number, half in enumerate(halves, start=1):
        name = f"{stem}-{number:05d}-of-00002.{suffix}"
        shard = {key: state[key] for key in half}
        if suffix == "safetensors":
            save_file(shard, str(directory / name))
        else:
            torch.save(shard, directory / name)
        weight_map.update(dict.fromkeys(half, name))
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


# vlekit's VCR task names -> the official head attributes (VLEForVCRQ2A.vcr_q2a_logit, ...).
OFFICIAL_HEADS = {"q2a": "vcr_q2a_logit", "qa2r": "vcr_qa2r_logit"}


def task_checkpoint(tmp_path: Path, task: str, layout: str = "bin", *, nested_vision: bool = False, seed: int = 0,
                    position_ids: bool = False) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    text, vision = text_config(), vision_config()
    config = vle_config(text, vision, num_token_types=83, nested_vision=nested_vision)
    config["architectures"] = ["VLEForVCRQ2A" if task == "q2a" else "VLEForVCRQA2R"]
    state = randomised(OfficialVCR(config, text, vision, head=OFFICIAL_HEADS[task]), seed)
    # Small pre-LayerNorm activations in the head make its eps (VLE: nn.LayerNorm's default 1e-5) visible in the logits.
    state[f"{OFFICIAL_HEADS[task]}.0.weight"] *= 0.1
    if position_ids:  # what transformers < 4.31 saved
        state["vle.text_model.embeddings.position_ids"] = torch.arange(text.max_position_embeddings)[None]
        state["vle.vision_model.vision_model.embeddings.position_ids"] = torch.arange(NUM_PATCHES + 1)[None]
    return write_checkpoint(tmp_path / f"{task}-{layout}", config, state, layout), config, state


# -- a batch by hand -------------------------------------------------------------------------------------

def make_batch(seed: int = 0, batch: int = 2, choices: int = 4, length: int = 9, slots: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grid = IMAGE_SIZE // PATCH_SIZE
    lengths = torch.randint(4, length + 1, (batch, choices), generator=g)
    lengths[0, 0] = length
    attention_mask = (torch.arange(length) < lengths[..., None]).long()
    input_ids = torch.randint(5, VOCAB, (batch, choices, length), generator=g)
    input_ids[..., 0] = 1
    input_ids = input_ids * attention_mask
    used = torch.randint(0, slots + 1, (batch, choices), generator=g)
    used[0, 0], used[1, 1] = slots, 0
    object_mask = (torch.arange(slots) < used[..., None]).long()
    object_type_ids = (torch.arange(slots) + 2) * object_mask
    object_patch_mask = torch.zeros(batch, choices, slots, NUM_PATCHES, dtype=torch.bool)
    text_type_ids = torch.zeros(batch, choices, length, dtype=torch.long)
    for b in range(batch):
        for c in range(choices):
            for k in range(int(used[b, c])):
                x1, y1 = torch.randint(0, grid, (2,), generator=g).tolist()
                x2, y2 = x1 + int(torch.randint(0, grid - x1, (1,), generator=g)), y1 + int(torch.randint(0, grid - y1, (1,), generator=g))
                for y in range(y1, y2 + 1):
                    object_patch_mask[b, c, k, y * grid + x1: y * grid + x2 + 1] = True
                position = int(torch.randint(1, int(lengths[b, c]) - 1, (1,), generator=g))
                text_type_ids[b, c, position] = k + 2
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "text_type_ids": text_type_ids,
        "pixel_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "object_patch_mask": object_patch_mask, "object_type_ids": object_type_ids, "object_mask": object_mask,
    }


# -- VLE's computation, per question and choice, by hand --------------------------------------------------

def reference_logits(state: dict[str, torch.Tensor], config: dict[str, Any], batch: dict[str, torch.Tensor], *, head: str) -> torch.Tensor:
    """VLEForVCRQ2A.forward: the whole model once per choice, object tokens as Python means over patches."""
    def weight(name: str) -> torch.Tensor:
        return state[name if name.startswith(head) else "vle." + name].float()

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ weight(f"{name}.weight").T + weight(f"{name}.bias")

    def layer_norm(x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], weight(f"{name}.weight"), weight(f"{name}.bias"), eps)

    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]

    def attention(name: str, hidden: torch.Tensor, context: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (linear(x, f"{name}.self.{p}") for p, x in (("query", hidden), ("key", context), ("value", context)))
        split = lambda t: t.view(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + extended_mask
        attended = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(hidden.shape[0], -1)
        return layer_norm(linear(attended, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", eps)

    def cross_layer(name: str, hidden, mask, other, other_mask) -> torch.Tensor:
        hidden = attention(f"{name}.attention", hidden, hidden, mask)
        hidden = attention(f"{name}.crossattention", hidden, other, other_mask)
        inner = F.gelu(linear(hidden, f"{name}.intermediate.dense"))
        return layer_norm(linear(inner, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", eps)

    def sub_state(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.endswith("position_ids")}

    vision_dict = config["vision_config"].get("vision_config", config["vision_config"])
    text_model = DebertaV2Model(DebertaV2Config(**{k: v for k, v in config["text_config"].items() if k not in FILE_KEYS})).eval()
    text_model.load_state_dict(sub_state("vle.text_model."))
    vision_model = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in vision_dict.items() if k not in FILE_KEYS})).eval()
    vision_model.load_state_dict(sub_state("vle.vision_model.vision_model."))
    types = weight("token_type_embeddings.weight")

    logits = torch.zeros(batch["input_ids"].shape[:2])
    with torch.no_grad():
        for b in range(logits.shape[0]):
            image = vision_model(pixel_values=batch["pixel_values"][b: b + 1]).last_hidden_state[0]
            image = layer_norm(image, "vision_model.vision_model.post_layernorm", vision_dict["layer_norm_eps"])
            image = linear(image, "image_projection_layer")  # [1 + P, H]
            for c in range(logits.shape[1]):
                ids, mask = batch["input_ids"][b, c], batch["attention_mask"][b, c]
                text = text_model(input_ids=ids[None], attention_mask=mask[None]).last_hidden_state[0]
                text = linear(text, "text_projection_layer") + types[batch["text_type_ids"][b, c]]
                tokens = [image + types[1]]
                for k in range(batch["object_mask"].shape[-1]):
                    if batch["object_mask"][b, c, k]:
                        patches = [p for p in range(NUM_PATCHES) if batch["object_patch_mask"][b, c, k, p]]
                        mean = sum(image[1 + p] for p in patches) / len(patches)
                        tokens.append((mean + types[batch["object_type_ids"][b, c, k]])[None])
                x, y = text, torch.cat(tokens)
                text_mask = (1.0 - mask.float()) * -10000.0  # BERT's extended attention mask
                image_mask = torch.zeros(y.shape[0])
                for n in range(config["num_hidden_layers"]):
                    x, y = (cross_layer(f"cross_modal_text_layers.{n}", x, text_mask, y, image_mask),
                            cross_layer(f"cross_modal_image_layers.{n}", y, image_mask, x, text_mask))
                pooled = torch.cat([torch.tanh(linear(x[0], "cross_modal_text_pooler.dense")),
                                    torch.tanh(linear(y[0], "cross_modal_image_pooler.dense"))])
                hidden = F.layer_norm(linear(pooled, f"{head}.0"), pooled.shape, weight(f"{head}.1.weight"),
                                      weight(f"{head}.1.bias"), 1e-5)  # nn.LayerNorm's default eps
                logits[b, c] = linear(F.gelu(hidden), f"{head}.3")[0]
    return logits


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)["logits"]


# -- tests ------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest, and does not oversubscribe a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    batch = make_batch(seed=1)
    logits = logits_of(model, batch)
    assert logits.shape == (2, 4)
    # Same maths, different kernels (SDPA, batched choices): agreement is ~1e-7.
    torch.testing.assert_close(logits, reference_logits(state, config, batch, head=OFFICIAL_HEADS[task]), atol=2e-6, rtol=1e-5)


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
    batch = make_batch(seed=2)
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
    assert torch.isfinite(logits_of(model, make_batch(seed=4))).all()


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
