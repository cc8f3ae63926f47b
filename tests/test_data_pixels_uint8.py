"""uint8 pixels (``pixel_dtype="uint8"``): the canvas before normalisation, normalised by the model.

On the real 1920x797 fixture frame at 384 px (squash: all content; letterbox: 59% padding) the uint8
path must give the float path's pixels and logits to float rounding.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from data_prep.collate import collate_examples
from data_prep.pixels import load_pixels, padding_colour
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor
from data_prep.vcr import read_vcr
from vlekit import VCRModel, build_model

SIZE = 384


def _frame(vcr_fixtures: Path) -> tuple[Path, dict[str, Any]]:
    record = next(iter(read_vcr(vcr_fixtures / "val_samples.jsonl")))
    return vcr_fixtures / "vcr1images" / record["img_fn"], record


def _both(path: Path, geometry: str, *, draft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    config = PreprocessConfig(image_size=SIZE, geometry=geometry)
    return tuple(  # type: ignore[return-value]
        load_pixels(path, image_size=SIZE, geometry=geometry, mean=config.image_mean, std=config.image_std,
                    draft=draft, dtype=dtype)
        for dtype in ("float32", "uint8")
    )


def _normalise(pixels: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (config.image_mean, config.image_std))
    return (pixels.float() / 255 - mean) / std


@pytest.mark.parametrize("geometry", ["squash", "letterbox", "center-crop"])
@pytest.mark.parametrize("draft", [False, True])
def test_uint8_pixels_normalise_to_the_float_pixels(vcr_fixtures: Path, geometry: str, draft: bool) -> None:
    path, _ = _frame(vcr_fixtures)
    config = PreprocessConfig(image_size=SIZE, geometry=geometry)
    as_float, as_uint8 = _both(path, geometry, draft=draft)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape == (3, SIZE, SIZE)
    assert (_normalise(as_uint8, config) - as_float).abs().max() < 1e-6  # float rounding only
    if geometry == "letterbox":  # 1920x797 -> 384x159 content, rows 112..270; the rest is padding
        padding = torch.ones(SIZE, dtype=torch.bool)
        padding[112 : 112 + 159] = False
        colour = padding_colour(config.image_mean)
        assert colour == (123, 117, 104)  # CLIP's mean (0.4815, 0.4578, 0.4082) x 255, rounded
        assert torch.equal(as_uint8[:, padding].flatten(1).unique(dim=1), torch.tensor(colour, dtype=torch.uint8).view(3, 1))
        assert not torch.equal(as_uint8[:, ~padding].flatten(1).unique(dim=1), torch.tensor(colour).view(3, 1))


@pytest.fixture(scope="module")
def model_384() -> VCRModel:
    torch.manual_seed(0)
    return build_model(
        text_encoder="tiny-deberta", vision_encoder={"name": "tiny-clip", "image_size": SIZE},
        fusion="tiny-co-attention",
    ).eval()


@pytest.mark.parametrize("geometry", ["squash", "letterbox"])
def test_model_logits_from_uint8_batches_match_float_batches(vcr_fixtures: Path, model_384: VCRModel,
                                                             geometry: str) -> None:
    """Same canvas, normalised here or on the model's device: logits agree to float rounding."""
    path, record = _frame(vcr_fixtures)
    as_float, as_uint8 = _both(path, geometry, draft=True)
    grid = model_384.vision_encoder.grid
    example = {  # one object covering the top-left patches in every choice, so the patches reach the head
        "annot_id": record["annot_id"], "label": 0, "input_ids": [[1, 5, 6, 2, 7, 2]] * 4,
        "text_type_ids": [[0, 2, 0, 0, 0, 0]] * 4, "object_ids": [[0]] * 4, "object_patches": [[[0, 1, grid]]] * 4,
    }
    batches = [collate_examples([{**example, "pixel_values": pixels}] * 2, image_size=SIZE, grid=grid,
                                pad_to_multiple_of=8, pad_id=0) for pixels in (as_float, as_uint8)]
    assert batches[0]["pixel_values"].dtype == torch.float32 and batches[1]["pixel_values"].dtype == torch.uint8
    with torch.no_grad():
        from_float, from_uint8 = (model_384(**batch)["logits"] for batch in batches)
        blank = model_384(**{**batches[0], "pixel_values": torch.zeros_like(as_float).expand(2, -1, -1, -1)})["logits"]
    torch.testing.assert_close(from_uint8, from_float, atol=1e-6, rtol=1e-5)
    assert (from_float - blank).abs().max() > 1e-4  # the pixels reach the logits: the match is not vacuous


def test_collate_refuses_a_batch_of_mixed_pixel_dtypes() -> None:
    example = {"annot_id": "a", "label": 0, "input_ids": [[1, 2]] * 4, "text_type_ids": [[0, 0]] * 4,
               "object_ids": [[]] * 4, "object_patches": [[]] * 4}
    examples = [{**example, "pixel_values": torch.zeros(3, 64, 64)},
                {**example, "pixel_values": torch.zeros(3, 64, 64, dtype=torch.uint8)}]
    with pytest.raises(ValueError, match=r"pixel_values mix dtypes .* same pixel_dtype"):
        collate_examples(examples, image_size=64, grid=8, pad_to_multiple_of=None, pad_id=0)


def test_uint8_is_refused_in_the_official_mode_and_unknown_dtypes_everywhere() -> None:
    with pytest.raises(ValueError, match=r"compat='vle' needs pixel_dtype='float32'"):
        PreprocessConfig(compat="vle", pixel_dtype="uint8")
    with pytest.raises(ValueError, match=r"pixel_dtype='float16' is not supported; choose one of 'float32', 'uint8'"):
        PreprocessConfig(pixel_dtype="float16")


def test_the_run_config_carries_pixel_dtype_to_the_preprocessor(vcr_fixtures: Path) -> None:
    from vlekit.runs.experiment import DataConfig

    path, record = _frame(vcr_fixtures)
    options = DataConfig(geometry="letterbox", jpeg_draft=True, pixel_dtype="uint8").preprocess_options()
    assert options["pixel_dtype"] == "uint8"
    tokens = SimpleNamespace(cls_token_id=1, sep_token_id=2, pad_token_id=0)  # load_pixels reads no text
    preprocessor = VCRPreprocessor(tokens, config=PreprocessConfig(**options, image_size=SIZE),
                                   images_root=vcr_fixtures / "vcr1images")
    pixels = preprocessor.load_pixels(record)
    assert pixels.dtype == torch.uint8 and torch.equal(pixels, _both(path, "letterbox", draft=True)[1])
    with pytest.raises(ValueError, match=r"compat='vle' needs pixel_dtype='float32'"):
        DataConfig(compat="vle", pixel_dtype="uint8")


def test_the_training_loop_on_uint8_pixels_follows_the_float_run(tmp_path: Path) -> None:
    """Two steps of ``vlekit train`` (letterbox, so padding is in every batch): the same losses."""
    import json

    from data_prep.synthetic import generate_synthetic_vcr
    from vlekit.runs.experiment import load_experiment
    from vlekit.training.train import train

    data = generate_synthetic_vcr(tmp_path / "data", num_train=16, num_val=0, num_test=0, seed=1)
    losses = {}
    for dtype in ("float32", "uint8"):
        out = tmp_path / dtype
        overrides = [f"data.train_annotations={data.train}", f"data.images={data.images_root}", "data.num_workers=0",
                     "data.geometry=letterbox", f"data.pixel_dtype={dtype}", "train.cpu=true", "train.max_steps=2",
                     "train.batch_size=8", "train.mixed_precision=fp32", "train.log_every_steps=1", f"train.out={out}",
                     "train.save_every_steps=0"]
        train(load_experiment(None, overrides), progress=False)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[dtype] = [r["loss"] for r in records if "loss" in r]
    assert len(losses["uint8"]) == 2
    assert losses["uint8"] == pytest.approx(losses["float32"], abs=1e-5)
