"""Official VQA, ITM and PBC checkpoints (VLEForVQA / VLEForITM / VLEForPBC): strict loading, the round trip,
position interpolation to the checkpoint's resolution, and the logits against an independent computation.

The official checkpoints are written here in the official key layout (``vle.``-prefixed backbone from
transformers pieces, heads ``vqa_classifier.{0,1,3}``, ``itm_score.fc``, ``pbc_classifier.{0,1,3}``);
the reference re-implements VLE's forward for one example at a time from the official-key state dict.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_vle_checkpoint import (
    FILE_KEYS, PATCH_SIZE, VOCAB, OfficialVLEModel, randomised, text_config, vision_config, vle_config, write_checkpoint,
)
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model

from vlekit import build_model
from vlekit.vle.checkpoint import from_vle_pretrained, to_vle_pretrained
from vlekit.vle.keys import VLECheckpointError

SAVED_SIZE, RUN_SIZE = 32, 48  # the tower's config and the resolution the checkpoint runs at (VQA: 576 px)
ANSWERS = ["yes", "no", "2", "red", "dog"]
ARCHITECTURES = {"vqa": "VLEForVQA", "itm": "VLEForITM", "pbc": "VLEForPBC"}


class OfficialTaskModel(nn.Module):
    """VLEForVQA / VLEForITM / VLEForPBC (parameters only), attribute names as in modeling_vle.py."""

    def __init__(self, config: dict[str, Any], text: DebertaV2Config, vision: CLIPVisionConfig, task: str) -> None:
        super().__init__()
        self.vle = OfficialVLEModel(config, text, vision)
        hidden = config["hidden_size"]
        if task == "vqa":
            width = 2 * hidden
            self.vqa_classifier = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
                                                nn.Linear(width, len(config["id2label"])))
        elif task == "itm":
            self.itm_score = nn.Module()
            self.itm_score.fc = nn.Linear(2 * hidden, 2)
        else:
            self.pbc_classifier = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 2))


def official_checkpoint(tmp_path: Path, task: str, *, seed: int = 0) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """A task checkpoint whose tower was saved at SAVED_SIZE and whose preprocessor runs it at RUN_SIZE."""
    text, vision = text_config(), vision_config(image_size=SAVED_SIZE)
    config = vle_config(text, vision, num_token_types=2)
    config["architectures"] = [ARCHITECTURES[task]]
    if task == "vqa":
        config["id2label"] = {str(i): a for i, a in enumerate(ANSWERS)}
        config["label2id"] = {a: i for i, a in enumerate(ANSWERS)}
    state = randomised(OfficialTaskModel(config, text, vision, task), seed)
    for head in ("vqa_classifier", "pbc_classifier"):  # small pre-LayerNorm activations: its eps shows
        if f"{head}.0.weight" in state:
            state[f"{head}.0.weight"] *= 0.1
    directory = write_checkpoint(tmp_path / task, config, state, "safetensors")
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": RUN_SIZE, "width": RUN_SIZE}, "size": {"shortest_edge": RUN_SIZE}}))
    return directory, config, state


def make_inputs(seed: int, batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 4:] = 0
    attention_mask[2, 6:] = 0
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g) * attention_mask
    input_ids[:, 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": torch.randn(batch, 3, RUN_SIZE, RUN_SIZE, generator=g)}


def reference_logits(state: dict[str, torch.Tensor], config: dict[str, Any], inputs: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    """VLEForVQA / ITM / PBC forward, one example at a time, position embeddings interpolated by hand."""
    def weight(name: str) -> torch.Tensor:
        return state[name if name.split(".")[0] in ("vqa_classifier", "itm_score", "pbc_classifier") else "vle." + name].float()

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ weight(f"{name}.weight").T + weight(f"{name}.bias")

    def layer_norm(x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], weight(f"{name}.weight"), weight(f"{name}.bias"), eps)

    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]

    def attention(name: str, hidden: torch.Tensor, context: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (linear(x, f"{name}.self.{p}") for p, x in (("query", hidden), ("key", context), ("value", context)))
        q, k, v = (t.view(t.shape[0], heads, -1).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + extended_mask
        attended = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(hidden.shape[0], -1)
        return layer_norm(linear(attended, f"{name}.output.dense") + hidden, f"{name}.output.LayerNorm", eps)

    def cross_layer(name: str, hidden, mask, other, other_mask) -> torch.Tensor:
        hidden = attention(f"{name}.attention", hidden, hidden, mask)
        hidden = attention(f"{name}.crossattention", hidden, other, other_mask)
        return layer_norm(linear(F.gelu(linear(hidden, f"{name}.intermediate.dense")), f"{name}.output.dense") + hidden,
                          f"{name}.output.LayerNorm", eps)

    def sub_state(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    text_model = DebertaV2Model(DebertaV2Config(**{k: v for k, v in config["text_config"].items() if k not in FILE_KEYS})).eval()
    text_model.load_state_dict(sub_state("vle.text_model."))
    vision_fields = {k: v for k, v in config["vision_config"].items() if k not in FILE_KEYS}
    vision_model = CLIPVisionModel(CLIPVisionConfig(**{**vision_fields, "image_size": RUN_SIZE})).eval()
    vision_state = sub_state("vle.vision_model.vision_model.")
    saved = vision_state["embeddings.position_embedding.weight"]  # [1 + 4*4, D] -> [1 + 6*6, D]
    old, new = SAVED_SIZE // PATCH_SIZE, RUN_SIZE // PATCH_SIZE
    grid = saved[1:].T.reshape(1, -1, old, old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False).reshape(-1, new * new).T
    vision_state["embeddings.position_embedding.weight"] = torch.cat([saved[:1], grid])
    vision_model.load_state_dict(vision_state)
    types = weight("token_type_embeddings.weight")

    rows = []
    with torch.no_grad():
        for b in range(inputs["input_ids"].shape[0]):
            image = vision_model(pixel_values=inputs["pixel_values"][b: b + 1]).last_hidden_state[0]
            image = layer_norm(image, "vision_model.vision_model.post_layernorm", config["vision_config"]["layer_norm_eps"])
            y = linear(image, "image_projection_layer") + types[1]
            ids, mask = inputs["input_ids"][b], inputs["attention_mask"][b]
            length = int(mask.sum())  # padding changes nothing: run the real tokens alone
            text = text_model(input_ids=ids[None, :length]).last_hidden_state[0]
            x = linear(text, "text_projection_layer") + types[0]
            no_mask_x, no_mask_y = torch.zeros(x.shape[0]), torch.zeros(y.shape[0])
            for n in range(config["num_hidden_layers"]):
                x, y = (cross_layer(f"cross_modal_text_layers.{n}", x, no_mask_x, y, no_mask_y),
                        cross_layer(f"cross_modal_image_layers.{n}", y, no_mask_y, x, no_mask_x))
            pooled = torch.cat([torch.tanh(linear(x[0], "cross_modal_text_pooler.dense")),
                                torch.tanh(linear(y[0], "cross_modal_image_pooler.dense"))])
            if task == "itm":
                rows.append(linear(pooled, "itm_score.fc"))
                continue
            head, features = ("vqa_classifier", pooled) if task == "vqa" else ("pbc_classifier", y[1:])
            hidden = layer_norm(linear(features, f"{head}.0"), f"{head}.1", 1e-5)  # nn.LayerNorm's default eps
            rows.append(linear(F.gelu(hidden), f"{head}.3"))
    return torch.stack(rows)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task", ["vqa", "itm", "pbc"])
def test_official_task_checkpoint_loads_strictly_with_the_official_logits_and_round_trips(tmp_path: Path, task: str) -> None:
    directory, config, state = official_checkpoint(tmp_path, task)
    model, report = from_vle_pretrained(directory, task, output_loading_info=True)
    assert report.ok and report.task == task and report.layout.startswith("task") and not report.initialised
    assert report.loaded == len(state) and report.ignored == []
    assert len(report.interpolated) == 1 and "17 -> 37 rows (6x6 patches)" in report.interpolated[0]
    assert model.vision_encoder.image_size == RUN_SIZE and model.num_patches == 36
    inputs = make_inputs(seed=1)
    with torch.no_grad():
        logits = model(**inputs)["logits"]
    expected_shape = {"vqa": (3, len(ANSWERS)), "itm": (3, 2), "pbc": (3, 36, 2)}[task]
    assert logits.shape == expected_shape
    torch.testing.assert_close(logits, reference_logits(state, config, inputs, task), atol=2e-5, rtol=1e-4)
    assert logits.std() > 1e-3  # the agreement is not that of two constants
    if task == "vqa":
        assert list(model.head.config.answers) == ANSWERS

    # task=None reads the task from the architecture.
    assert from_vle_pretrained(directory).resolved_config().head["name"] == task

    exported = to_vle_pretrained(model, tmp_path / "exported", task=task)
    written = load_file(str(exported / "model.safetensors"))
    positions = "vle.vision_model.vision_model.embeddings.position_embedding.weight"
    assert written.keys() == state.keys()
    assert all(torch.equal(written[k], state[k]) for k in written if k != positions)
    assert written[positions].shape == (37, state[positions].shape[1])  # saved at the resolution it runs at
    exported_config = json.loads((exported / "config.json").read_text())
    assert exported_config["architectures"] == [ARCHITECTURES[task]]
    assert exported_config["vision_config"]["image_size"] == RUN_SIZE
    if task == "vqa":
        assert exported_config["id2label"] == config["id2label"] and exported_config["label2id"] == config["label2id"]
    again, again_report = from_vle_pretrained(exported, task, output_loading_info=True)
    assert again_report.ok and again_report.interpolated == []
    with torch.no_grad():
        assert torch.equal(again(**inputs)["logits"], logits)


def test_task_checkpoints_refuse_what_does_not_fit(tmp_path: Path) -> None:
    directory, config, state = official_checkpoint(tmp_path, "vqa")
    # The VQA checkpoint loaded as PBC: the VQA head is another class's (skipped), PBC's is new.
    pbc, report = from_vle_pretrained(directory, "pbc", output_loading_info=True)
    assert report.ok and sorted(report.ignored) == sorted(k for k in state if k.startswith("vqa_classifier."))
    assert any(item.startswith("head.* (new pbc head") for item in report.initialised)
    # A wrong answer count is a wrong shape, named.
    with pytest.raises(VLECheckpointError, match=r"vqa_classifier\.3\.weight \(model\.safetensors\) has shape \[5, 64\]"):
        from_vle_pretrained(directory, "vqa", answers=["yes", "no"])
    with pytest.raises(TypeError, match="use_object_tokens are VCR options"):
        from_vle_pretrained(directory, "vqa", use_object_tokens=False)
    broken = {**config, "id2label": {"0": "yes", "2": "no"}}
    (directory / "config.json").write_text(json.dumps(broken))
    with pytest.raises(VLECheckpointError, match="id2label ids must be 0..1"):
        from_vle_pretrained(directory, "vqa")
    with pytest.raises(ValueError, match="writes a VLEForITM with a 'itm' head, but the model has a 'pbc' head"):
        to_vle_pretrained(pbc, tmp_path / "wrong", task="itm")
    with pytest.raises(ValueError, match="carries the answers"):
        to_vle_pretrained(build_model(head={"name": "vqa", "num_labels": 3}), tmp_path / "no-answers", task="vqa")
