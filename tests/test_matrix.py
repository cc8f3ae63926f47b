"""The backbone matrix: every text encoder x vision encoder x fusion of the registry's tiny presets, core and plugins.

Generated from the registries at collection time. Each component contributes its ``tiny-*`` presets, or its
own ``tiny`` options where it has no tiny preset (so a new component joins the matrix by registering). Every
combination is built as a VCR model, runs a training forward and backward on a real batch (synthetic VCR
images, object tokens included), is written as a model folder (weights, tokenizer, preprocessing, as
``vlekit train`` writes it), loaded back with ``vlekit.load_run`` and used to predict: the loaded predictor's
scores equal the trained model's own. The whole matrix is ``slow``; the unmarked subset puts every component
in at least one combination.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import vlekit
from data_prep.constants import PREPROCESS_FILE, TOKENIZER_DIR
from data_prep.synthetic import generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from data_prep.vcr import read_vcr
from vlekit.model import BATCH_KEYS
from vlekit.options import thaw
from vlekit.registry import MODEL_REGISTRIES, Entry
from vlekit.runs.folder import make_preprocessor, saved_preprocessing

KINDS = ("text_encoder", "vision_encoder", "fusion")
RUN_OPTIONS = {"task": "q2a"}
NUM_QUESTIONS = 2


def tiny_specs(kind: str) -> list[dict[str, Any]]:
    """The matrix axis of ``kind``: each component's ``tiny-*`` presets, else its registered ``tiny`` options."""
    entries: list[Entry] = MODEL_REGISTRIES[kind].entries()
    specs = []
    for component in (entry for entry in entries if entry.preset_of is None):
        presets = [entry for entry in entries if entry.preset_of == component.name and entry.name.startswith("tiny-")]
        specs += [{"name": preset.name} for preset in presets] or [{"name": component.name, **thaw(component.tiny)}]
    return specs


AXES = {kind: tiny_specs(kind) for kind in KINDS}
COMBINATIONS = list(itertools.product(*(AXES[kind] for kind in KINDS)))
# Every component in at least one combination: the i-th combination takes the i-th entry of each axis (cycling).
LONGEST = max(len(axis) for axis in AXES.values())
COVERING = [tuple(AXES[kind][index % len(AXES[kind])] for kind in KINDS) for index in range(LONGEST)]


def _id(combination: tuple[dict[str, Any], ...]) -> str:
    return "+".join(spec["name"] for spec in combination)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("matrix")
    synthetic = generate_synthetic_vcr(root / "data", num_train=NUM_QUESTIONS, num_val=2, num_test=0, seed=5)
    records = read_vcr(synthetic.train)[:NUM_QUESTIONS]
    tokenizer = build_word_tokenizer(synthetic.train, out_dir=root / "tokenizer")
    return {"records": records, "images": synthetic.images_root, "tokenizer": tokenizer, "batches": {}}


def _text_spec(spec: dict[str, Any], vocabulary: int) -> dict[str, Any]:
    """A text encoder sized to the data-built tokenizer where it takes ``vocab_size`` (as a run does)."""
    _, config = MODEL_REGISTRIES["text_encoder"].resolve(spec["name"], {k: v for k, v in spec.items() if k != "name"})
    return {**spec, "vocab_size": vocabulary} if "vocab_size" in {f.name for f in dataclasses.fields(config)} else spec


def _batch(data: dict[str, Any], model: vlekit.VCRModel) -> dict[str, torch.Tensor]:
    """The records as the model's pipeline makes them (image side from its vision encoder), cached per image side."""
    vision = model.vision_encoder
    key = (vision.image_size, vision.patch_size, tuple(vision.image_mean), tuple(vision.image_std))
    if key not in data["batches"]:
        preprocessor = make_preprocessor(data["tokenizer"], model, images_root=data["images"], **RUN_OPTIONS)
        data["batches"][key] = preprocessor.collate([preprocessor(record) for record in data["records"]])
    return data["batches"][key]


def check_combination(combination: tuple[dict[str, Any], ...], data: dict[str, Any], folder: Path) -> None:
    text, vision, fusion = combination
    torch.manual_seed(0)
    model = vlekit.build_model(text_encoder=_text_spec(text, len(data["tokenizer"])), vision_encoder=vision,
                               fusion=fusion)
    batch = _batch(data, model)
    assert batch["object_mask"].sum() > 0, "the batch must carry object tokens"

    model.train()
    output = model(**{key: batch[key] for key in (*BATCH_KEYS, "labels")})
    assert output["logits"].shape == (NUM_QUESTIONS, 4) and torch.isfinite(output["loss"])
    output["loss"].backward()
    # The backward reaches every part (a gated fusion's closed gates make the image side's gradient zero at init).
    for part in ("text_encoder", "vision_encoder", "fusion", "head"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert grads and any(g is not None for g in grads), f"no gradient reaches the {part}"
        assert all(torch.isfinite(g).all() for g in grads if g is not None), f"non-finite gradient in the {part}"
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0

    model.eval()
    with torch.no_grad():
        expected = model(**{key: batch[key] for key in BATCH_KEYS})["logits"].softmax(-1)
    model.save_pretrained(folder)
    data["tokenizer"].save_pretrained(folder / TOKENIZER_DIR)
    (folder / PREPROCESS_FILE).write_text(json.dumps(saved_preprocessing(RUN_OPTIONS, model)))

    predictor = vlekit.load_run(folder, device="cpu")
    loaded = predictor.trained.model
    assert json.loads(json.dumps(dataclasses.asdict(loaded.resolved_config()))) == json.loads(
        json.dumps(dataclasses.asdict(model.resolved_config())))
    scores = predictor.score_batch(data["records"], images_root=data["images"])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


def test_the_matrix_covers_core_and_plugin_components() -> None:
    names = {kind: [spec["name"] for spec in AXES[kind]] for kind in KINDS}
    assert {"tiny-deberta", "tiny-bert", "tiny-modernbert"} <= set(names["text_encoder"])
    assert {"tiny-clip", "tiny-siglip", "tiny-dinov2-reg", "tiny-vit", "tiny-timm-vit"} <= set(names["vision_encoder"])
    assert {"tiny-co-attention", "tiny-q-former", "tiny-merged-attention"} <= set(names["fusion"])
    assert len(COMBINATIONS) == len(names["text_encoder"]) * len(names["vision_encoder"]) * len(names["fusion"])
    for kind in KINDS:  # every entry of every axis is in the unmarked subset
        assert {spec["name"] for combination in COVERING for spec in combination} >= set(names[kind])


@pytest.mark.parametrize("combination", COVERING, ids=[_id(c) for c in COVERING])
def test_every_component_trains_saves_loads_and_predicts(combination, data, tmp_path) -> None:
    check_combination(combination, data, tmp_path / "model")


@pytest.mark.slow
@pytest.mark.parametrize("combination", COMBINATIONS, ids=[_id(c) for c in COMBINATIONS])
def test_matrix_combination(combination, data, tmp_path) -> None:
    check_combination(combination, data, tmp_path / "model")
