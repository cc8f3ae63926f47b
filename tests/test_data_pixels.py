"""Reduced-scale JPEG decoding (``jpeg_draft``) on the real 1920x797 frame; the speed goes to ``benchmark_pixels``
and ``python -m data_prep.bench_pixels`` (measurements, not tests: here they only have to run)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.bench import benchmark_pixels
from data_prep.bench_pixels import main as bench_pixels_main
from data_prep.constants import CLIP_MEAN, CLIP_STD
from data_prep.pixels import load_pixels
from data_prep.preprocess import PreprocessConfig
from data_prep.vcr import read_vcr


@pytest.mark.parametrize("geometry", ["letterbox", "squash", "center-crop"])
def test_draft_decoding_stays_close_to_the_full_decode(vcr_fixtures: Path, geometry: str) -> None:
    record = next(iter(read_vcr(vcr_fixtures / "val_samples.jsonl")))
    root = vcr_fixtures / "vcr1images"
    config = PreprocessConfig(image_size=384, geometry=geometry)
    full, draft = (load_pixels(root / record["img_fn"], image_size=384, geometry=geometry, mean=config.image_mean,
                               std=config.image_std, draft=d) for d in (False, True))
    assert full.shape == draft.shape == (3, 384, 384) and not torch.equal(full, draft)
    # Normalised units (about 4 per full 0..255 range): a blur-level difference, not another picture.
    assert (full - draft).abs().mean() < 0.05


def test_the_official_mode_decodes_in_full() -> None:
    with pytest.raises(ValueError, match="jpeg_draft=True changes the pixels"):
        PreprocessConfig(compat="vle", jpeg_draft=True)


def test_vle_compat_pixels_are_clips_processor_output_bit_for_bit(vcr_fixtures: Path) -> None:
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    record = next(iter(read_vcr(vcr_fixtures / "val_samples.jsonl")))
    path = vcr_fixtures / "vcr1images" / record["img_fn"]
    processor = CLIPImageProcessorPil(size={"shortest_edge": 384}, crop_size={"height": 384, "width": 384},
                                      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    with Image.open(path) as image:
        official = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    ours = load_pixels(path, image_size=384, geometry="vle-compat", mean=CLIP_MEAN, std=CLIP_STD)
    assert ours.dtype == official.dtype == torch.float32 and torch.equal(ours, official)


def test_benchmark_pixels_reports_throughput(vcr_fixtures: Path) -> None:
    record = next(iter(read_vcr(vcr_fixtures / "val_samples.jsonl")))
    result = benchmark_pixels(vcr_fixtures / "vcr1images", [record, record], jpeg_draft=True, pixel_dtype="uint8",
                              repeat=2)
    assert result["examples"] == 4 and result["examples_per_s"] > 0
    assert result["jpeg_draft"] is True and result["pixel_dtype"] == "uint8"


def test_the_benchmark_command_prints_its_table(vcr_fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_pixels_main(["--images", str(vcr_fixtures / "vcr1images"), "--annotations",
                              str(vcr_fixtures / "val_samples.jsonl"), "--image-size", "64", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("image loading, 1 frame(s) x 1, letterbox 64 px")
    assert [line.split(" | ")[0] for line in lines[3:]] == [
        "| full decode, float32", "| draft decode, float32", "| draft decode, uint8"]
    with pytest.raises(SystemExit):  # no record has its image under that folder: a usage error
        bench_pixels_main(["--images", str(vcr_fixtures), "--annotations", str(vcr_fixtures / "val_samples.jsonl")])
