"""A run folder saved by vlekit 0.1.0 before the package was split into subpackages still loads and
scores exactly as it did then (tests/fixtures/run_v0.1.0, made at commit 3fff037; see its
expected_scores.json for the commands). Nothing a run folder holds may name a module path."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import vlekit

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0.1.0"


def test_a_run_folder_saved_before_the_move_loads_and_scores_the_same(vcr_fixtures):
    expected = json.loads((FIXTURE / "expected_scores.json").read_text())
    predictor = vlekit.load_run(FIXTURE)
    records = [json.loads(line) for line in (vcr_fixtures / expected["records"]["annotations"]).read_text().splitlines()]
    records = [next(r for r in records if r["annot_id"] == annot_id) for annot_id in expected["records"]["annot_ids"]]
    scores = predictor.score_batch(records, images_root=vcr_fixtures / "vcr1images")
    torch.testing.assert_close(scores, torch.tensor(expected["records"]["scores"]), rtol=0, atol=1e-6)

    image = vcr_fixtures / "vcr1images" / expected["typed"]["image"]
    typed = torch.stack([predictor.score_image(image, metadata=image.with_suffix(".json"), **question)
                         for question in expected["typed"]["questions"]])
    torch.testing.assert_close(typed, torch.tensor(expected["typed"]["scores"]), rtol=0, atol=1e-6)
    assert not torch.allclose(typed[0], typed[1]), "the fixture's scores must tell the questions apart"
