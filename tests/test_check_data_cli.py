"""The ``vlekit check-data`` command (data_prep/check.py): statistics, bad input, exit status."""
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

from data_prep.check import add_arguments, run
from data_prep.constants import PERSON_NAMES

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


def _args(annotations: Path, images: Path, tokenizer: Path, *extra: str, task: str = "q2a") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([
        "--annotations", str(annotations), "--images", str(images), "--task", task, "--tokenizer", str(tokenizer),
        *extra,
    ])


def test_reports_the_statistics_and_writes_nothing(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = vcr_fixtures / "vcr1images"
    before = sorted(tmp_path.rglob("*"))
    assert run(_args(annotations, images, tokenizer_dir)) == 0
    printed = capsys.readouterr().out
    assert "read 3 records, skipped 0" in printed
    assert "examples: 3 for q2a" in printed
    assert "objects per choice: mean 1.25, max 2" in printed  # val-1: answers name [0], [0], [0], [0 and 1]
    assert "empty object patch sets: 0 of 15 slots" in printed
    assert "truncated sequences: 0 of 12" in printed
    assert sorted(tmp_path.rglob("*")) == before

    # The preprocessing options are the run's: they change the statistics.
    assert run(_args(annotations, images, tokenizer_dir, "--geometry", "center-crop", "--max-length", "12")) == 0
    assert "truncated sequences: 12 of 12 (max_length 12)" in capsys.readouterr().out


def test_unlabeled_qa2r_records_count_one_example_per_candidate_answer(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlekit.cli import main as vlekit_main

    assert vlekit_main(["check-data", "--annotations", str(annotations), "--images", str(vcr_fixtures / "vcr1images"),
                        "--task", "qa2r", "--tokenizer", str(tokenizer_dir)]) == 0
    printed = capsys.readouterr().out
    assert "examples: 6 for qa2r (1 unlabeled records expanded over 4 answers)" in printed
    assert "truncated sequences: 0 of 24" in printed


def test_bad_input_exits_2_with_the_message_only(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = annotations.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[1])
    bad["answer_label"] = 9
    annotations.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n", encoding="utf-8")
    images = vcr_fixtures / "vcr1images"

    assert run(_args(annotations, images, tokenizer_dir)) == 2
    captured = capsys.readouterr()
    message = "val.jsonl line 2 (annot_id val-1-copy): field 'answer_label': expected an int in 0..3, got 9"
    assert captured.err == message + "\n" and captured.out == ""

    assert run(_args(annotations, images, tokenizer_dir, "--skip-bad")) == 0
    printed = capsys.readouterr().out
    assert "read 2 records, skipped 1" in printed and "skipped 1 for field 'answer_label'" in printed

    result = subprocess.run(
        [sys.executable, "-m", "data_prep.check", "--annotations", str(annotations), "--images", str(images),
         "--task", "q2a", "--tokenizer", str(tokenizer_dir)],
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
    assert run(_args(annotations_, images, tokenizer, *change.get("extra", ()))) == 2
    assert message in capsys.readouterr().err
