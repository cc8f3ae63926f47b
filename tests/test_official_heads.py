"""Official VQA, ITM and PBC checkpoints (VLEForVQA / VLEForITM / VLEForPBC): strict loading, the round trip,
position interpolation to the checkpoint's resolution, and the logits against an independent computation.

The official checkpoints (tests/helpers.py) are written in the official key layout (``vle.``-prefixed
backbone from transformers pieces, heads ``vqa_classifier.{0,1,3}``, ``itm_score.fc``, ``pbc_classifier.{0,1,3}``);
``helpers.reference_logits`` re-implements VLE's forward for one example at a time from the official-key state dict.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import ANSWERS, ARCHITECTURES, RUN_SIZE, official_checkpoint, reference_logits, task_inputs
from safetensors.torch import load_file

from vlekit import build_model
from vlekit.vle.checkpoint import from_vle_pretrained, to_vle_pretrained
from vlekit.vle.keys import VLECheckpointError


@pytest.mark.parametrize("task", ["vqa", "itm", "pbc"])
def test_official_task_checkpoint_loads_strictly_with_the_official_logits_and_round_trips(tmp_path: Path, task: str) -> None:
    directory, config, state = official_checkpoint(tmp_path, task)
    model, report = from_vle_pretrained(directory, task, output_loading_info=True)
    assert report.ok and report.task == task and report.layout.startswith("task") and not report.initialised
    assert report.loaded == len(state) and report.ignored == []
    assert len(report.interpolated) == 1 and "17 -> 37 rows (6x6 patches)" in report.interpolated[0]
    assert model.vision_encoder.image_size == RUN_SIZE and model.num_patches == 36
    inputs = task_inputs(seed=1)
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
