"""The ``vlekit prep`` command (data_prep/prep.py): caching, summaries, bad input, loading back."""
from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from data_prep.constants import PERSON_NAMES
from data_prep.dataset import VCRDataset
from data_prep.prep import add_arguments, load_prepared, run
from data_prep.preprocess import VCRPreprocessor
from data_prep.vcr import read_vcr

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def val_records(vcr_fixtures: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (vcr_fixtures / "val_samples.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer_dir(val_records: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece tokenizer built from the fixture text, saved like a hub tokenizer."""
    from transformers import BertTokenizer

    words = {w for r in val_records for t in (r["question"], *r["answer_choices"], *r["rationale_choices"])
             for token in t if isinstance(token, str) for w in re.findall(r"\w+|[^\w\s]", token.lower())}
    words |= {o.lower() for r in val_records for o in r["objects"]} | {n.lower() for n in PERSON_NAMES}
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]))
    folder = tmp_path_factory.mktemp("tokenizer")
    BertTokenizer(vocab={piece: i for i, piece in enumerate(vocab)}).save_pretrained(str(folder))
    return folder


@pytest.fixture()
def annotations(val_records: list[dict[str, Any]], tmp_path: Path) -> Path:
    """val-1 (the record whose image is in the fixtures), a copy of it, and an unlabeled copy."""
    val1 = val_records[0]
    copy_ = {**copy.deepcopy(val1), "annot_id": "val-1-copy"}
    test = {k: copy.deepcopy(val1[k]) for k in ("question", "answer_choices", "rationale_choices", "objects", "img_fn", "metadata_fn")}
    test["annot_id"] = "test-1"
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (val1, copy_, test)), encoding="utf-8")
    return path


def _args(annotations: Path, images: Path, tokenizer: Path, out: Path, *extra: str, task: str = "q2a") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([
        "--annotations", str(annotations), "--images", str(images), "--task", task,
        "--tokenizer", str(tokenizer), "--out", str(out), *extra,
    ])


def test_prepares_then_reuses_the_cache(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, out = vcr_fixtures / "vcr1images", tmp_path / "prepared"
    assert run(_args(annotations, images, tokenizer_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "read 3 records, skipped 0" in printed
    assert "examples: 3 for q2a" in printed
    assert "objects per choice: mean 1.25, max 2" in printed  # val-1: answers name [0], [0], [0], [0 and 1]
    assert "empty object patch sets: 0 of 15 slots" in printed
    assert "truncated sequences: 0 of 12" in printed
    npz = out / "val.q2a.npz"
    stamp = npz.stat().st_mtime_ns

    assert run(_args(annotations, images, tokenizer_dir, out)) == 0
    again = capsys.readouterr().out
    assert again.startswith("cached: ") and "examples: 3 for q2a" in again
    assert npz.stat().st_mtime_ns == stamp

    # Any option in the key: a new run, not the cache.
    assert run(_args(annotations, images, tokenizer_dir, out, "--geometry", "center-crop", "--max-length", "12")) == 0
    changed = capsys.readouterr().out
    assert not changed.startswith("cached") and "truncated sequences: 12 of 12 (max_length 12)" in changed


def test_prepared_examples_load_back_exactly(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    images, out = vcr_fixtures / "vcr1images", tmp_path / "prepared"
    assert run(_args(annotations, images, tokenizer_dir, out, "--task", "qa2r", "--geometry", "letterbox", task="qa2r")) == 0
    prepared = load_prepared(out)
    assert prepared.config["task"] == "qa2r" and prepared.config["geometry"] == "letterbox"
    # The unlabeled record is expanded over its 4 answers.
    assert [(e["annot_id"], e["answer_index"], e["label"]) for e in prepared] == [
        ("val-1", 2, 3), ("val-1-copy", 2, 3), ("test-1", 0, None), ("test-1", 1, None), ("test-1", 2, None), ("test-1", 3, None)]
    preprocessor = VCRPreprocessor.build(AutoTokenizer.from_pretrained(str(tokenizer_dir)), task="qa2r", geometry="letterbox", images_root=images)
    records = read_vcr(annotations)
    direct = preprocessor.prepare_many([records[0], records[1], *[records[2]] * 4], answer_indices=[None, None, 0, 1, 2, 3])
    assert list(prepared) == direct
    assert load_prepared(out / "val.qa2r.json")[2] == direct[2] and prepared[-1] == direct[-1]

    dataset = VCRDataset.from_prepared(prepared, preprocessor)
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    assert batch["pixel_values"].shape == (6, 3, 224, 224) and "labels" not in batch
    assert torch.equal(batch["pixel_values"][0], preprocessor.load_pixels(records[0]))
    with pytest.raises(ValueError, match="geometry: prepared 'letterbox', preprocessor 'squash'"):
        VCRDataset.from_prepared(prepared, VCRPreprocessor.build(preprocessor.tokenizer, task="qa2r", images_root=images))


def test_load_prepared_needs_one_set(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    images, out = vcr_fixtures / "vcr1images", tmp_path / "prepared"
    with pytest.raises(FileNotFoundError, match="holds 0 prepared sets"):
        load_prepared(tmp_path)
    for task in ("q2a", "qa2r"):
        assert run(_args(annotations, images, tokenizer_dir, out, task=task)) == 0
    with pytest.raises(FileNotFoundError, match=r"holds 2 prepared sets \(val.q2a, val.qa2r\)"):
        load_prepared(out)
    assert len(load_prepared(out / "val.q2a.npz")) == 3


def test_bad_input_exits_2_with_the_message_only(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = annotations.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[1])
    bad["answer_label"] = 9
    annotations.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n", encoding="utf-8")
    images, out = vcr_fixtures / "vcr1images", tmp_path / "prepared"

    assert run(_args(annotations, images, tokenizer_dir, out)) == 2
    captured = capsys.readouterr()
    message = "val.jsonl line 2 (annot_id val-1-copy): field 'answer_label': expected an int in 0..3, got 9"
    assert captured.err == message + "\n" and captured.out == ""
    assert not out.exists()

    assert run(_args(annotations, images, tokenizer_dir, out, "--skip-bad")) == 0
    printed = capsys.readouterr().out
    assert "read 2 records, skipped 1" in printed and "skipped 1 for field 'answer_label'" in printed

    result = subprocess.run(
        [sys.executable, "-m", "data_prep.prep", "--annotations", str(annotations), "--images", str(images),
         "--task", "q2a", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "other")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"annotations": "missing.jsonl"}, "annotation file not found"),
        ({"images": "no-such-folder"}, "images folder not found"),
        ({"tokenizer": "no-such-tokenizer-dir"}, "cannot load tokenizer"),
        ({"extra": ("--image-size", "225")}, "invalid option: image_size=225 is not a multiple of patch_size=16"),
    ],
)
def test_other_bad_input_exits_2(change: dict[str, Any], message: str, annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations_ = tmp_path / change["annotations"] if "annotations" in change else annotations
    images = tmp_path / change["images"] if "images" in change else vcr_fixtures / "vcr1images"
    tokenizer = tmp_path / change["tokenizer"] if "tokenizer" in change else tokenizer_dir
    assert run(_args(annotations_, images, tokenizer, tmp_path / "out", *change.get("extra", ()))) == 2
    assert message in capsys.readouterr().err
