"""Reduced-scale JPEG decoding (``jpeg_draft``) on the real 1920x797 frame; the speed goes to ``benchmark_pixels``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.bench import benchmark_pixels
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


def test_benchmark_pixels_reports_throughput(vcr_fixtures: Path) -> None:
    record = next(iter(read_vcr(vcr_fixtures / "val_samples.jsonl")))
    result = benchmark_pixels(vcr_fixtures / "vcr1images", record, jpeg_draft=True, repeat=2)
    assert result["examples"] == 2 and result["examples_per_s"] > 0 and result["jpeg_draft"] is True
