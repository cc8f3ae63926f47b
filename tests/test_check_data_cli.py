"""The ``vlekit check-data`` command (data_prep/check.py): statistics, bad input, exit status
(bad images and boxes: tests/test_bad_data.py)."""
from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
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
    assert "val.jsonl: 3 records read: 0 with errors, 0 with warnings only" in printed
    assert "problems" not in printed  # the real frame and its boxes raise no false alarm
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


def test_bad_records_are_listed_with_file_and_line_and_exit_1(annotations: Path, vcr_fixtures: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = annotations.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[1])
    bad["answer_label"] = 9
    annotations.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n", encoding="utf-8")
    images = vcr_fixtures / "vcr1images"

    assert run(_args(annotations, images, tokenizer_dir)) == 1
    captured = capsys.readouterr()
    problem = (f"{annotations}:2: error bad-record (annot_id val-1-copy): field 'answer_label': "
               f"expected an int in 0..3, got 9")
    assert "val.jsonl: 3 records read: 1 with errors, 0 with warnings only" in captured.out
    assert "  bad-record  1" in captured.out and "  " + problem in captured.out.splitlines()
    assert "examples: 2 for q2a (from the 2 records without errors)" in captured.out  # the statistics still come
    assert captured.err == ""

    # --skip-bad: the records a data.skip_bad=true run leaves out are listed, the status is 0.
    assert run(_args(annotations, images, tokenizer_dir, "--skip-bad")) == 0
    assert problem in capsys.readouterr().out

    result = subprocess.run(
        [sys.executable, "-m", "data_prep.check", "--annotations", str(annotations), "--images", str(images),
         "--task", "q2a", "--tokenizer", str(tokenizer_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert problem in result.stdout and "Traceback" not in result.stderr


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


def test_check_data_runs_offline_on_a_runs_own_tokenizer_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--run RUN`` takes a trained run's tokenizer, task and preprocessing (its image side included) from
    its folder; ``--tokenizer auto`` builds the word-level tokenizer, as training does; neither is an error
    that says what to give."""
    from data_prep.synthetic import generate_synthetic_vcr
    from vlekit.cli import main as vlekit_main

    data = generate_synthetic_vcr(tmp_path / "data", num_train=16, num_val=8, num_test=0, seed=1)
    run_dir = tmp_path / "run"
    assert vlekit_main(["train", "--no-progress", "--train-annotations", str(data.train), "--images", str(data.images_root),
                        "--out", str(run_dir), "--batch-size", "8", "--epochs", "1", "--task", "qa2r", "train.cpu=true",
                        "data.num_workers=0", "data.geometry=letterbox",
                        "model.vision_encoder.hf_config.image_size=32"]) == 0
    saved = json.loads((run_dir / "model" / "data.json").read_text())
    assert (saved["task"], saved["image_size"], saved["patch_size"], saved["geometry"]) == ("qa2r", 32, 8, "letterbox")
    capsys.readouterr()
    check = ["check-data", "--annotations", str(data.val), "--images", str(data.images_root)]
    assert vlekit_main([*check, "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "examples: 8 for qa2r" in out and "(letterbox, 32/8)" in out
    assert vlekit_main([*check, "--run", str(run_dir / "model"), "--geometry", "squash"]) == 0  # a flag overrides
    assert "(squash, 32/8)" in capsys.readouterr().out
    assert vlekit_main([*check, "--task", "q2a", "--tokenizer", "auto"]) == 0
    assert "examples: 8 for q2a" in capsys.readouterr().out
    assert vlekit_main(check) == 2
    assert "give --run RUN" in capsys.readouterr().err


def test_a_model_folder_whose_image_side_disagrees_with_its_model_is_refused(trained_run, tmp_path: Path) -> None:
    from vlekit.evaluation.predict import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.q2a, run_dir)  # a finished 32 px run, edited below
    path = run_dir / "model" / "data.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "image_size": 224}))
    (run_dir / "model" / "manifest.json").unlink()  # as if hand-assembled: no manifest to catch the edit
    with pytest.raises(ValueError, match=r"data.json: the run was fed image_size 224, but the saved model's vision "
                                         r"encoder takes 32"):
        load_run(run_dir)
