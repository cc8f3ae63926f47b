"""Helpers shared by several test modules (not a test module: pytest collects nothing here).

* tiny training runs: the overrides of a tiny CPU run, its logged rows and final weights;
* :class:`LocalHub`: the stand-in for ``huggingface_hub.HfApi`` (writes commits into a local hub cache);
* :func:`tiny_batch`: a random batch in the VCR batch contract for any built model;
* the official VLE side, built from transformers pieces independently of vlekit's key map, and
  :func:`reference_logits`: VLE's forward written out by hand from an official-key state dict, one
  example (and, for VCR, one choice) at a time: the one reference every official-format test compares with.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
import huggingface_hub
import torch
import torch.nn.functional as F
from huggingface_hub.utils import hf_raise_for_status
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput


# -- tiny training runs -----------------------------------------------------------------------------------

def tiny_overrides(data, out: Path, **train: object) -> list[str]:
    """The dotted overrides of a tiny fp32 CPU run on a synthetic split (``data``), logging every step."""
    options = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "lr_multipliers": "{}", "mixed_precision": "fp32", "cpu": "true",
               "log_every_steps": 1, "out": str(out), **train}
    return [f"data.train_annotations={data.train}", f"data.val_annotations={data.val}",
            f"data.images={data.images_root}", "data.num_workers=0",
            *(f"train.{key}={value}" for key, value in options.items())]


# The demo's 32 px images (a 4 x 4 patch grid) instead of the tiny CLIP's 64 px: a quarter of the image tokens, for
# tests of the training loop's bookkeeping rather than of the model.
SMALL_IMAGES = "model.vision_encoder.hf_config.image_size=32"

# Dropout masks depend on how the batch is split over processes; without dropout the maths is equal.
NO_DROPOUT = [
    "model.text_encoder.hf_config.hidden_dropout_prob=0", "model.text_encoder.hf_config.attention_probs_dropout_prob=0",
    "model.fusion.hidden_dropout_prob=0", "model.fusion.attention_probs_dropout_prob=0",
]


def nan_loss_from(patch: pytest.MonkeyPatch, step: int) -> None:
    """From the ``step``-th training forward pass on (1-based; one per step without accumulation) the loss is NaN,
    as an overflow makes it: backward, gradient clipping and AdamW carry it into every weight."""
    from vlekit.model import VCRModel

    forward, calls = VCRModel.forward, [0]

    def forward_then_nan(self, **batch):
        output = forward(self, **batch)
        if self.training:
            calls[0] += 1
            if calls[0] >= step:
                output["loss"] = output["loss"] * float("nan")
        return output

    patch.setattr(VCRModel, "forward", forward_then_nan)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """The weights a finished run saved in ``OUT/model``."""
    return load_file(str(out / "model" / "model.safetensors"))


def metric_rows(out: Path) -> list[dict]:
    """The training log lines (those with a loss) of a run folder's ``metrics.jsonl``."""
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def torchrun_train(processes: int, overrides: list[str]) -> subprocess.CompletedProcess:
    """``vlekit train`` in ``processes`` CPU processes (gloo). ``torchrun`` really starts them; here
    ``accelerate launch --cpu --num_processes 2`` starts one, so the tests use torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "vlekit.cli", "train", "--no-progress", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# -- the Makefile ----------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_dry_run(target: str, **variables: object) -> list[str]:
    """The commands ``make -n TARGET`` would run here, with ``variables`` set on the command line, outside any
    virtualenv or conda environment (so ``PYTHON`` / ``ENV_DIR`` are the Makefile's own unless given)."""
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "CONDA_PREFIX", "MAKEFLAGS")}
    result = subprocess.run(["make", "-n", "-f", str(REPO_ROOT / "Makefile"), target, *(f"{k}={v}" for k, v in variables.items())],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    return [line for line in result.stdout.splitlines() if not line.startswith("make")]


# -- the Hub, offline -------------------------------------------------------------------------------------

def refused(status: int, repo_id: str) -> huggingface_hub.errors.HfHubHTTPError:
    """The error huggingface_hub raises when the Hub answers ``status`` for ``repo_id``."""
    response = httpx2.Response(status, headers={"X-Error-Code": "RepoNotFound"} if status == 401 else {},
                               request=httpx2.Request("POST", f"https://huggingface.co/api/models/{repo_id}"))
    try:
        hf_raise_for_status(response)
    except huggingface_hub.errors.HfHubHTTPError as error:
        return error
    raise AssertionError(f"HTTP {status} raised nothing")


class LocalHub:
    """Stands in for ``HfApi``: records the calls, writes each commit into a huggingface_hub cache
    (``models--org--name/{blobs,snapshots/<commit>,refs/main}``, snapshot files linked to
    content-addressed blobs), from which huggingface_hub's real ``snapshot_download`` loads offline."""

    def __init__(self, cache_dir: Path, *, refuse: int | None = None) -> None:
        self.cache_dir, self.refuse = cache_dir, refuse
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id: str, **options) -> None:
        if self.refuse is not None:
            raise refused(self.refuse, repo_id)
        self.created.append({"repo_id": repo_id, **options})

    def create_commit(self, repo_id: str, operations, *, commit_message: str, revision: str | None = None, **options):
        storage = self.cache_dir / f"models--{repo_id.replace('/', '--')}"
        contents = {}
        for operation in operations:
            with operation.as_file() as handle:
                contents[operation.path_in_repo] = handle.read()
        commit = hashlib.sha1(json.dumps({p: hashlib.sha256(c).hexdigest() for p, c in sorted(contents.items())}).encode()).hexdigest()
        for path_in_repo, content in contents.items():
            blob = storage / "blobs" / hashlib.sha256(content).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(content)
            link = storage / "snapshots" / commit / path_in_repo
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / (revision or "main")).write_text(commit)
        self.commits.append({"repo_id": repo_id, "message": commit_message, "files": sorted(contents)})
        return SimpleNamespace(commit_url=f"local://{repo_id}/commit/{commit}", oid=commit)


# -- a batch for a built model ----------------------------------------------------------------------------

def tiny_batch(model, *, batch: int = 2, choices: int = 4, length: int = 12, slots: int = 3,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch in the contract's shapes for ``model``: padded text, used and padded object slots, labels."""
    g = torch.Generator().manual_seed(seed)
    size, patches = model.vision_encoder.image_size, model.num_patches
    lengths = torch.randint(length // 2, length + 1, (batch, choices), generator=g)
    attention_mask = (torch.arange(length) < lengths.unsqueeze(-1)).long()
    input_ids = torch.randint(1, 100, (batch, choices, length), generator=g) * attention_mask
    used = torch.randint(1, slots + 1, (batch, choices), generator=g)  # at least one object per pair
    object_mask = (torch.arange(slots) < used.unsqueeze(-1)).long()
    object_type_ids = (torch.arange(slots) + 2) * object_mask
    object_patch_mask = torch.rand(batch, choices, slots, patches, generator=g) < 0.3
    object_patch_mask &= object_mask.bool().unsqueeze(-1)
    text_type_ids = torch.zeros(batch, choices, length, dtype=torch.long)
    for b in range(batch):  # mention of object k at position 1 + k (when inside the text)
        for c in range(choices):
            for k in range(int(used[b, c])):
                if 1 + k < int(lengths[b, c]):
                    text_type_ids[b, c, 1 + k] = k + 2
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "text_type_ids": text_type_ids,
        "pixel_values": torch.randn(batch, 3, size, size, generator=g), "object_patch_mask": object_patch_mask,
        "object_type_ids": object_type_ids, "object_mask": object_mask,
        "labels": torch.randint(0, choices, (batch,), generator=g),
    }


# -- the official VLE model, built from transformers pieces -----------------------------------------------

VOCAB, IMAGE_SIZE, PATCH_SIZE = 100, 32, 8
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
FILE_KEYS = ("model_type", "transformers_version", "_name_or_path", "_commit_hash", "architectures", "torch_dtype", "dtype")
# What transformers 4.x wrote into every sub-config (VLE's repos carry these); transformers 5 drops them.
LEGACY_CONFIG_KEYS = dict(max_length=80, bad_words_ids=None, num_beams=1, do_sample=False, torch_dtype=None,
                          transformers_version="4.26.1", _name_or_path="")
# vlekit's task names -> the official head attributes (VLEForVCRQ2A.vcr_q2a_logit, VLEForVQA.vqa_classifier, ...).
OFFICIAL_HEADS = {"q2a": "vcr_q2a_logit", "qa2r": "vcr_qa2r_logit", "vqa": "vqa_classifier", "itm": "itm_score",
                  "pbc": "pbc_classifier"}
ARCHITECTURES = {"q2a": "VLEForVCRQ2A", "qa2r": "VLEForVCRQA2R", "vqa": "VLEForVQA", "itm": "VLEForITM", "pbc": "VLEForPBC"}


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


def classifier(width: int, outputs: int) -> nn.Sequential:
    """VLE's task classifiers: Linear, LayerNorm (PyTorch's default eps), GELU, Linear."""
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, outputs))


class OfficialVCR(nn.Module):
    """VLEForVCRQ2A / VLEForVCRQA2R (parameters only)."""

    def __init__(self, config: dict[str, Any], text: DebertaV2Config, vision: CLIPVisionConfig, head: str) -> None:
        super().__init__()
        self.vle = OfficialVLEModel(config, text, vision)
        self.add_module(head, classifier(2 * config["hidden_size"], 1))


class OfficialTaskModel(nn.Module):
    """VLEForVQA / VLEForITM / VLEForPBC (parameters only), attribute names as in modeling_vle.py."""

    def __init__(self, config: dict[str, Any], text: DebertaV2Config, vision: CLIPVisionConfig, task: str) -> None:
        super().__init__()
        self.vle = OfficialVLEModel(config, text, vision)
        hidden = config["hidden_size"]
        if task == "vqa":
            self.vqa_classifier = classifier(2 * hidden, len(config["id2label"]))
        elif task == "itm":
            self.itm_score = nn.Module()
            self.itm_score.fc = nn.Linear(2 * hidden, 2)
        else:
            self.pbc_classifier = classifier(hidden, 2)


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


def small_pre_norm_activations(state: dict[str, torch.Tensor], head: str) -> None:
    """Scale the first layer of a Linear-LayerNorm-GELU-Linear head down: its LayerNorm's eps then shows in the logits."""
    if f"{head}.0.weight" in state:
        state[f"{head}.0.weight"] *= 0.1


def task_checkpoint(tmp_path: Path, task: str, layout: str = "bin", *, nested_vision: bool = False, seed: int = 0,
                    position_ids: bool = False) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """An official VCR task checkpoint (VLEForVCRQ2A / VLEForVCRQA2R) with random weights, in ``layout``."""
    text, vision = text_config(), vision_config()
    config = vle_config(text, vision, num_token_types=83, nested_vision=nested_vision)
    config["architectures"] = [ARCHITECTURES[task]]
    state = randomised(OfficialVCR(config, text, vision, head=OFFICIAL_HEADS[task]), seed)
    small_pre_norm_activations(state, OFFICIAL_HEADS[task])
    if position_ids:  # what transformers < 4.31 saved
        state["vle.text_model.embeddings.position_ids"] = torch.arange(text.max_position_embeddings)[None]
        state["vle.vision_model.vision_model.embeddings.position_ids"] = torch.arange(NUM_PATCHES + 1)[None]
    return write_checkpoint(tmp_path / f"{task}-{layout}", config, state, layout), config, state


SAVED_SIZE, RUN_SIZE = 32, 48  # a VQA/ITM/PBC tower's config and the resolution the checkpoint runs at (VQA: 576 px)
ANSWERS = ["yes", "no", "2", "red", "dog"]


def official_checkpoint(tmp_path: Path, task: str, *, seed: int = 0) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """A VQA / ITM / PBC checkpoint whose tower was saved at SAVED_SIZE and whose preprocessor runs it at RUN_SIZE."""
    text, vision = text_config(), vision_config(image_size=SAVED_SIZE)
    config = vle_config(text, vision, num_token_types=2)
    config["architectures"] = [ARCHITECTURES[task]]
    if task == "vqa":
        config["id2label"] = {str(i): a for i, a in enumerate(ANSWERS)}
        config["label2id"] = {a: i for i, a in enumerate(ANSWERS)}
    state = randomised(OfficialTaskModel(config, text, vision, task), seed)
    small_pre_norm_activations(state, OFFICIAL_HEADS[task])
    directory = write_checkpoint(tmp_path / task, config, state, "safetensors")
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": RUN_SIZE, "width": RUN_SIZE}, "size": {"shortest_edge": RUN_SIZE}}))
    return directory, config, state


# -- inputs by hand ---------------------------------------------------------------------------------------

def vcr_batch(seed: int = 0, batch: int = 2, choices: int = 4, length: int = 9, slots: int = 3) -> dict[str, torch.Tensor]:
    """A VCR batch for the official-format models (VOCAB, IMAGE_SIZE / PATCH_SIZE): boxes as patch rectangles,
    each object mentioned once in its text."""
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


def task_inputs(seed: int, batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    """Image-text pairs for the pooled tasks (VQA, ITM, PBC) at RUN_SIZE, two of them padded."""
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 4:] = 0
    attention_mask[2, 6:] = 0
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g) * attention_mask
    input_ids[:, 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": torch.randn(batch, 3, RUN_SIZE, RUN_SIZE, generator=g)}


# -- VLE's forward, by hand -------------------------------------------------------------------------------

class _ReferenceVLE:
    """VLE's backbone computed from an official-key state dict with plain tensor maths (the encoders are
    transformers' own DebertaV2Model / CLIPVisionModel, loaded from the state dict's sub-keys)."""

    def __init__(self, state: dict[str, torch.Tensor], config: dict[str, Any], image_size: int) -> None:
        self.state, self.config = state, config
        self.heads, self.eps = config["num_attention_heads"], config["layer_norm_eps"]
        self.vision = config["vision_config"].get("vision_config", config["vision_config"])  # nested CLIP configs too
        self.text_model = DebertaV2Model(DebertaV2Config(**self._fields(config["text_config"]))).eval()
        self.text_model.load_state_dict(self._sub_state("vle.text_model."))
        self.vision_model = CLIPVisionModel(CLIPVisionConfig(**{**self._fields(self.vision), "image_size": image_size})).eval()
        vision_state = self._sub_state("vle.vision_model.vision_model.")
        saved = vision_state["embeddings.position_embedding.weight"]  # [1 + old^2, D] -> [1 + new^2, D], bicubic as VLE
        old, new = math.isqrt(saved.shape[0] - 1), image_size // self.vision["patch_size"]
        if new != old:
            grid = F.interpolate(saved[1:].T.reshape(1, -1, old, old), size=(new, new), mode="bicubic", align_corners=False)
            vision_state["embeddings.position_embedding.weight"] = torch.cat([saved[:1], grid.reshape(-1, new * new).T])
        self.vision_model.load_state_dict(vision_state)
        self.types = self.weight("token_type_embeddings.weight")

    @staticmethod
    def _fields(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in FILE_KEYS}

    def _sub_state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.state.items()
                if k.startswith(prefix) and not k.endswith("position_ids")}

    def weight(self, name: str) -> torch.Tensor:
        """A head's tensor by its own name, a backbone tensor under ``vle.``."""
        return (self.state[name] if name in self.state else self.state["vle." + name]).float()

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.weight(f"{name}.weight").T + self.weight(f"{name}.bias")

    def layer_norm(self, x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight(f"{name}.weight"), self.weight(f"{name}.bias"), eps)

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[3, S, S]`` -> the projected image tokens ``[1 + P, H]`` (CLS first), post-LayerNorm on all of them."""
        image = self.vision_model(pixel_values=pixels[None]).last_hidden_state[0]
        image = self.layer_norm(image, "vision_model.vision_model.post_layernorm", self.vision["layer_norm_eps"])
        return self.linear(image, "image_projection_layer")

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The real tokens alone (padding must change nothing), projected: ``[length, H]``."""
        length = int(mask.sum())
        assert bool(mask[:length].all()), "padding at the end only"
        return self.linear(self.text_model(input_ids=ids[None, :length]).last_hidden_state[0], "text_projection_layer")

    def _attention(self, name: str, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.linear(x, f"{name}.self.{p}") for p, x in (("query", hidden), ("key", context), ("value", context)))
        q, k, v = (t.view(t.shape[0], self.heads, -1).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        attended = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(hidden.shape[0], -1)
        return self.layer_norm(self.linear(attended, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", self.eps)

    def _cross_layer(self, name: str, hidden: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        hidden = self._attention(f"{name}.attention", hidden, hidden)
        hidden = self._attention(f"{name}.crossattention", hidden, other)
        inner = F.gelu(self.linear(hidden, f"{name}.intermediate.dense"))
        return self.layer_norm(self.linear(inner, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", self.eps)

    def fuse(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VLE's co-attention layers on text ``x`` and image ``y`` (both without padding): the pooled
        ``[2H]`` vector (text CLS, image CLS) and the image stream."""
        for n in range(self.config["num_hidden_layers"]):
            x, y = (self._cross_layer(f"cross_modal_text_layers.{n}", x, y),
                    self._cross_layer(f"cross_modal_image_layers.{n}", y, x))
        pooled = torch.cat([torch.tanh(self.linear(x[0], "cross_modal_text_pooler.dense")),
                            torch.tanh(self.linear(y[0], "cross_modal_image_pooler.dense"))])
        return pooled, y

    def classifier(self, head: str, features: torch.Tensor) -> torch.Tensor:
        """Linear, LayerNorm with nn.LayerNorm's default eps (1e-5, as VLE builds it), GELU, Linear."""
        hidden = self.layer_norm(self.linear(features, f"{head}.0"), f"{head}.1", 1e-5)
        return self.linear(F.gelu(hidden), f"{head}.3")


def reference_logits(state: dict[str, torch.Tensor], config: dict[str, Any], inputs: dict[str, torch.Tensor],
                     task: str) -> torch.Tensor:
    """VLE's ``VLEForVCRQ2A/QA2R / VQA / ITM / PBC.forward`` for ``inputs``, one example at a time.

    VCR (``task`` q2a or qa2r, ``[B, C, L]`` text): the whole model once per choice, the image tokens then
    the object tokens (Python means over each object's patches, plus their token types), logits ``[B, C]``.
    VQA / ITM / PBC (``[B, L]`` text): ``[B, answers]``, ``[B, 2]``, ``[B, P, 2]``. The tower runs at the
    resolution of ``pixel_values``; position embeddings saved at another one are interpolated by hand.
    """
    reference = _ReferenceVLE(state, config, image_size=inputs["pixel_values"].shape[-1])
    types, head = reference.types, OFFICIAL_HEADS[task]
    rows = []
    with torch.no_grad():
        for b in range(inputs["input_ids"].shape[0]):
            image = reference.image(inputs["pixel_values"][b])
            if task in ("q2a", "qa2r"):
                choices = []
                for c in range(inputs["input_ids"].shape[1]):
                    x = reference.text(inputs["input_ids"][b, c], inputs["attention_mask"][b, c])
                    x = x + types[inputs["text_type_ids"][b, c, :x.shape[0]]]
                    tokens = [image + types[1]]
                    for k in range(inputs["object_mask"].shape[-1]):
                        if inputs["object_mask"][b, c, k]:
                            patches = [p for p in range(image.shape[0] - 1) if inputs["object_patch_mask"][b, c, k, p]]
                            mean = sum(image[1 + p] for p in patches) / len(patches)
                            tokens.append((mean + types[inputs["object_type_ids"][b, c, k]])[None])
                    pooled, _ = reference.fuse(x, torch.cat(tokens))
                    choices.append(reference.classifier(head, pooled)[0])
                rows.append(torch.stack(choices))
                continue
            x = reference.text(inputs["input_ids"][b], inputs["attention_mask"][b]) + types[0]
            pooled, y = reference.fuse(x, image + types[1])
            if task == "itm":
                rows.append(reference.linear(pooled, "itm_score.fc"))
            else:
                rows.append(reference.classifier(head, pooled if task == "vqa" else y[1:]))
    return torch.stack(rows)
