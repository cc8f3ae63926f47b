"""One data config and one box -> patch rule.

The run's preprocessing options are ``data_prep.options.PreprocessOptions`` (one default, one check
each; ``DataConfig`` inherits them, ``PreprocessConfig`` adds the image side the model supplies), a
saved config holds resolved values, and the object tokens and the PBC labels map boxes to the same cells.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_prep.geometry import box_cells, cell_patches
from data_prep.options import PreprocessOptions
from data_prep.preprocess import PreprocessConfig
from vlekit.components.heads import box_patch_labels
from vlekit.runs.experiment import DataConfig, ExperimentConfig, load_experiment

PREMOVE_CONFIG = Path(__file__).parent / "fixtures" / "run_v0.1.0" / "config.yaml"


@pytest.mark.parametrize(("options", "geometry"), [
    ({}, "squash"),
    ({"compat": "vle"}, "vle-compat"),
    ({"task": "vqa"}, "center-crop"),
    ({"task": "qa2r", "geometry": "letterbox"}, "letterbox"),
])
def test_an_unset_geometry_resolves_to_one_default_wherever_the_options_are_made(options: dict, geometry: str) -> None:
    assert DataConfig(**options).geometry == geometry
    assert PreprocessOptions(**options).geometry == geometry
    if options.get("task") != "vqa":
        assert PreprocessConfig(**options).geometry == geometry


def test_the_vqa_dataset_takes_the_same_default_geometry() -> None:
    from data_prep.vqa import VQADataset

    tokenizer = type("Tokenizer", (), {"pad_token_id": 0})()
    assert VQADataset([], tokenizer=tokenizer, vocabulary=None, image_size=32).geometry == "center-crop"


@pytest.mark.parametrize(
    ("options", "message"),
    [({"compat": "official"}, "data.compat='official' is not supported"),
     ({"compat": "vle", "geometry": "letterbox"}, "whose geometry is 'vle-compat'"),
     ({"max_length": 3}, "data.max_length=3 is too short for q2a"),
     ({"task": "vqa", "max_length": 2}, "data.max_length=2 is too short for vqa"),
     ({"task": "vqa", "geometry": "fisheye"}, "data.geometry='fisheye' is not supported"),
     ({"task": "vqa", "pixel_dtype": "float16"}, "data.pixel_dtype='float16' is not supported"),
     ({"task": "vqa", "answer_min_count": 0}, "data.answer_min_count must be >= 1")],
)
def test_a_bad_data_option_fails_when_the_config_is_made(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig(**options)


def test_the_vcr_preprocessor_takes_no_vqa_task() -> None:
    with pytest.raises(ValueError, match="task='vqa' is not supported; choose one of 'q2a', 'qa2r'$"):
        PreprocessConfig(task="vqa")


def test_a_config_saved_before_geometry_was_resolved_loads_and_saves_resolved(tmp_path: Path) -> None:
    assert yaml.safe_load(PREMOVE_CONFIG.read_text())["data"]["geometry"] is None
    config = load_experiment(PREMOVE_CONFIG)
    assert config.data.geometry == "squash"
    saved = config.save(tmp_path / "config.yaml")
    assert yaml.safe_load(saved.read_text())["data"]["geometry"] == "squash"
    assert load_experiment(saved) == config
    vle = ExperimentConfig(data=DataConfig(compat="vle")).save(tmp_path / "vle.yaml")
    assert yaml.safe_load(vle.read_text())["data"]["geometry"] == "vle-compat"


def test_the_run_options_are_the_vcr_preprocessor_options_and_the_vqa_subset() -> None:
    data = DataConfig(task="qa2r", compat="vle", max_length=40)
    config = PreprocessConfig(**data.preprocess_options(), image_size=64, patch_size=16)
    assert (config.task, config.compat, config.geometry, config.max_length) == ("qa2r", "vle", "vle-compat", 40)
    assert DataConfig(task="vqa", max_length=50).preprocess_options() == {
        "task": "vqa", "geometry": "center-crop", "max_length": 50, "jpeg_draft": False, "pixel_dtype": "float32"}


def test_the_model_supplies_image_size_patch_and_normalisation() -> None:
    from data_prep.tokenizer import build_word_tokenizer
    from vlekit import build_model
    from vlekit.runs.folder import make_preprocessor, saved_preprocessing

    model = build_model()
    model.vision_encoder.image_mean, model.vision_encoder.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    record = {"question": ["why", "?"], "answer_choices": [["it"]] * 4, "rationale_choices": [["so"]] * 4, "objects": []}
    tokenizer = build_word_tokenizer([record])
    preprocessor = make_preprocessor(tokenizer, model, images_root=None, **DataConfig(task="qa2r").preprocess_options())
    config = preprocessor.config
    assert (config.image_size, config.patch_size) == (model.vision_encoder.image_size, model.vision_encoder.patch_size)
    assert (config.image_mean, config.image_std, config.task) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "qa2r")
    saved = saved_preprocessing(DataConfig(task="qa2r").preprocess_options(), model)
    assert saved["geometry"] == "squash" and saved["image_mean"] == [0.5, 0.5, 0.5]
    assert saved["image_size"] == model.vision_encoder.image_size
    with pytest.raises(TypeError, match="image_size come from the model"):
        make_preprocessor(tokenizer, model, images_root=None, task="q2a", image_size=64)


# 64 px canvas, 16 px patches: a 4 x 4 grid.
AWKWARD_BOXES = [
    [0.0, 0.0, 16.0, 16.0],     # edges exactly on cell borders: x2 = 16 is the next cell's first pixel
    [16.0, 32.0, 31.999, 47.999],  # starts on a border, stops just before the next
    [48.0, 48.0, 64.0, 64.0],   # the canvas's far edge (x2 = 64 floors to 4, clipped to 3)
    [-30.0, -30.0, -1.0, 10.0],  # left of the canvas: nothing
    [65.0, 0.0, 90.0, 10.0],    # right of the canvas: nothing
    [-5.0, 20.0, 100.0, 21.0],  # wider than the canvas: clipped to the whole row
    [20.0, 20.0, 20.0, 20.0],   # a point: the cell it lies in
    [20.0, 5.0, 20.0, 60.0],    # a vertical line
    [40.0, 40.0, 30.0, 50.0],   # inverted (x2 < x1): nothing
    [64.0, 64.0, 64.0, 64.0],   # a point on the far corner: the last cell
    [0.0, 0.0, 0.0, 0.0],       # a point on the near corner: the first cell
]


def test_object_tokens_and_pbc_labels_map_awkward_boxes_to_the_same_cells() -> None:
    boxes = np.array(AWKWARD_BOXES)
    # Object tokens: image boxes through the squash transform (the identity on a square 64 px image).
    cells = box_cells(boxes, width=64, height=64, image_size=64, patch_size=16, geometry="squash")
    object_patches = [set(cell_patches(c, 4)) for c in cells.tolist()]
    labels = box_patch_labels(torch.tensor(boxes, dtype=torch.float32), image_size=64, patch_size=16)
    assert [set(row.nonzero().flatten().tolist()) for row in labels] == object_patches
    assert object_patches[:5] == [{0, 1, 4, 5}, {9}, {15}, set(), set()]
    assert object_patches[5:] == [{4, 5, 6, 7}, {5}, {1, 5, 9, 13}, set(), {15}, {0}]


def test_box_patch_labels_follow_the_rule_on_the_accelerator_side_too() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [70.0, 0.0, 80.0, 5.0]]], dtype=torch.bfloat16)
    labels = box_patch_labels(boxes, image_size=64, patch_size=16, box_mask=torch.tensor([[1, 1]]))
    assert labels.device == boxes.device and set(labels[0].nonzero().flatten().tolist()) == {0, 1, 4, 5}
