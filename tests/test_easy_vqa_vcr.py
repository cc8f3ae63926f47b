"""easy-VQA written as VCR multiple choice (data_prep/easy_vqa.py, ``vlekit easy-vqa OUT --format vcr``): the
split reads and checks as VCR, the gold answer is among the choices once, distractors are of the question's kind,
rationales follow the box, the box covers the shape, and the output is a pure function of the seed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data_prep.check import main as check_data
from data_prep.easy_vqa import (
    BACKGROUND_TOLERANCE, EASY_VQA_COLOURS, QUADRANTS, EasyVQAVCR, add_arguments, question_kind, run, shape_box,
    write_easy_vqa_vcr,
)
from data_prep.vcr import load_geometry, read_vcr

pytest.importorskip("easy_vqa", reason="easy-vqa is not installed (pip install easy-vqa)")

N = 24  # colour questions per split: a few dozen keep the module to seconds


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> EasyVQAVCR:
    return write_easy_vqa_vcr(tmp_path_factory.mktemp("easy_vqa_vcr"), seed=3, max_questions=N)


def test_the_split_reads_as_vcr_and_passes_check_data(written: EasyVQAVCR) -> None:
    for path in (written.train, written.val):
        records = read_vcr(path, images_root=written.images_root)  # raises on any format or file problem
        assert len(records) == N
        for task in ("q2a", "qa2r"):
            assert check_data(["--annotations", str(path), "--images", str(written.images_root), "--task", task,
                               "--tokenizer", "auto", "--decode"]) == 0
    assert written.test.read_text(encoding="utf-8") == ""  # easy-VQA has no unlabelled third split
    assert {r["img_fn"].split("/")[0] for r in _records(written.train)} == {"easyvqa_train"}
    assert {r["img_fn"].split("/")[0] for r in _records(written.val)} == {"easyvqa_test"}


def test_gold_answer_once_at_answer_label_and_distractors_are_colours(written: EasyVQAVCR) -> None:
    import easy_vqa

    texts, answers, _ = easy_vqa.get_train_questions()
    for record in _records(written.train):
        index = record["easy_vqa_index"]
        gold = answers[index]
        assert question_kind(gold) == "colour" and record["question_orig"] == texts[index]
        choices = record["answer_choices"]
        assert [c == [gold] for c in choices].count(True) == 1 and choices[record["answer_label"]] == [gold]
        words = [c[0] for c in choices]
        assert all(len(c) == 1 for c in choices) and len(set(words)) == 4 and set(words) <= set(EASY_VQA_COLOURS)
        assert record["answer_match_iter"][record["answer_label"]] == 0
        # The question never names a colour, and its subject is the one object's tag.
        words = [t for t in record["question"] if isinstance(t, str)]
        assert not set(words) & set(EASY_VQA_COLOURS) and [0] in record["question"]
        assert record["objects"] == ["shape"]


def test_only_colour_questions_are_kept_and_the_rest_are_counted(written: EasyVQAVCR) -> None:
    assert question_kind("red") == "colour" and question_kind("circle") == "shape" and question_kind("no") == "yes/no"
    with pytest.raises(ValueError, match="purple"):
        question_kind("purple")
    for split in ("train", "test"):
        dropped = written.dropped[split]
        assert set(dropped) == {"shape", "yes/no"} and all(n > 0 for n in dropped.values())


def test_rationales_say_where_the_box_is(written: EasyVQAVCR) -> None:
    for record in _records(written.val):
        geometry = load_geometry(written.images_root, record)
        (x1, y1, x2, y2), = geometry.boxes
        place = ("top" if (y1 + y2) / 2 < geometry.height / 2 else "bottom",
                 "left" if (x1 + x2) / 2 < geometry.width / 2 else "right")
        rationales = record["rationale_choices"]
        assert {tuple(r[8:10]) for r in rationales} == set(QUADRANTS)  # the four places once each
        assert tuple(rationales[record["rationale_label"]][8:10]) == place
        gold = record["answer_choices"][record["answer_label"]][0]
        assert all(r[:4] == ["the", [0], "is", gold] for r in rationales)  # only the place tells them apart


def test_the_box_covers_the_shape(written: EasyVQAVCR) -> None:
    for record in _records(written.train)[:12]:
        pixels = np.asarray(Image.open(written.images_root / record["img_fn"]).convert("RGB"), dtype=np.int16)
        x1, y1, x2, y2 = (int(v) for v in load_geometry(written.images_root, record).boxes[0])
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        off = np.abs(pixels - colours[counts.argmax()]).max(axis=-1) > BACKGROUND_TOLERANCE
        inside = np.zeros_like(off)
        inside[y1:y2, x1:x2] = True
        assert off.any() and not (off & ~inside).any()  # every shape pixel is in the box
        assert off[y1].any() and off[y2 - 1].any() and off[:, x1].any() and off[:, x2 - 1].any()  # and it is tight
        assert (x2 - x1) * (y2 - y1) < 0.9 * pixels.shape[0] * pixels.shape[1]  # not the whole-image fallback


def test_shape_box_on_drawn_images() -> None:
    image = np.full((64, 64, 3), (240, 235, 250), dtype=np.uint8)
    image[10:20, 30:50] = (165, 42, 42)  # a brown rectangle
    image[9, 30] = (236, 238, 247)  # a near-background speck (anti-aliasing) is not the shape
    assert shape_box(Image.fromarray(image)) == [30, 10, 50, 20]
    assert shape_box(Image.fromarray(np.full((64, 48, 3), 250, dtype=np.uint8))) == [0, 0, 48, 64]  # nothing: all


def test_deterministic_for_a_seed(written: EasyVQAVCR, tmp_path: Path) -> None:
    again = write_easy_vqa_vcr(tmp_path / "again", seed=3, max_questions=N)
    for name in ("train.jsonl", "val.jsonl"):
        assert (again.root / name).read_bytes() == (written.root / name).read_bytes()
    first = _records(written.train)[0]
    metadata = first["metadata_fn"]
    assert (again.images_root / metadata).read_bytes() == (written.images_root / metadata).read_bytes()
    # Fewer questions give the same first records (each question draws from its own stream) ...
    fewer = write_easy_vqa_vcr(tmp_path / "fewer", seed=3, splits=("test",), max_questions=N // 2)
    assert _records(fewer.val) == _records(written.val)[: N // 2] and _records(fewer.train) == []
    # ... and another seed other choices for the same questions.
    other = write_easy_vqa_vcr(tmp_path / "other", seed=4, splits=("test",), max_questions=N // 2)
    pairs = list(zip(_records(other.val), _records(fewer.val)))
    assert all(a["question"] == b["question"] for a, b in pairs)
    assert any(a["answer_choices"] != b["answer_choices"] for a, b in pairs)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "vcr"
    assert run(parser.parse_args([str(out), "--format", "vcr", "--splits", "test", "--max-questions", "5"])) == 0
    printed = capsys.readouterr().out
    assert "val.jsonl: 5 questions" in printed and "train.jsonl: 0 questions" in printed and "yes/no" in printed
    assert len(_records(out / "val.jsonl")) == 5 and (out / "test.jsonl").is_file()
    with pytest.raises(ValueError, match="max_questions"):
        write_easy_vqa_vcr(tmp_path / "bad", max_questions=0)
