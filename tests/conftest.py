"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny models run faster on one thread than on two contending ones (and CI has 2 cores in all).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
VCR_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "vcr"


@pytest.fixture(scope="session")
def vcr_fixtures() -> Path:
    """The real VCR fixtures in ../shared/fixtures/vcr (skips when absent)."""
    if not (VCR_FIXTURES / "val_samples.jsonl").is_file():
        pytest.skip(f"real VCR fixtures not found at {VCR_FIXTURES}")
    return VCR_FIXTURES
