"""Reading and validating VCR annotation files (data_prep/vcr.py) on the real fixtures."""
from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from data_prep.vcr import VCRFormatError, load_metadata, read_vcr

VAL = "val_samples.jsonl"


def _records(fixtures: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (fixtures / VAL).read_text(encoding="utf-8").splitlines()]


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def _unlabeled(record: dict[str, Any]) -> dict[str, Any]:
    """A test-split record: text, objects, paths and ids only."""
    keep = ("question", "answer_choices", "rationale_choices", "objects", "img_fn", "metadata_fn", "annot_id")
    return {k: copy.deepcopy(record[k]) for k in keep}


# --- valid input ------------------------------------------------------------------------------


def test_reads_every_fixture_record(vcr_fixtures: Path) -> None:
    records = read_vcr(vcr_fixtures / VAL)
    assert len(records) == 130
    assert records.skipped == []
    assert records[0]["annot_id"] == "val-1"
    assert records[0] == _records(vcr_fixtures)[0]  # dicts exactly as in the file
    assert "read 130 records, skipped 0" in records.summary()


def test_reads_train_sample(vcr_fixtures: Path) -> None:
    (record,) = read_vcr(vcr_fixtures / "train_sample.jsonl")
    assert record["annot_id"] == "train-0"


def test_unlabeled_records_and_blank_lines_are_valid(vcr_fixtures: Path, tmp_path: Path) -> None:
    rows = [_unlabeled(r) for r in _records(vcr_fixtures)[:5]]
    rows[1]["answer_label"] = None  # null labels count as absent
    records = read_vcr(_write(tmp_path / "test.jsonl", [rows[0], "", *rows[1:]]))
    assert [r["annot_id"] for r in records] == [r["annot_id"] for r in rows]


def test_checks_image_files_of_val1(vcr_fixtures: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "val.jsonl", [_records(vcr_fixtures)[0]])
    (record,) = read_vcr(path, images_root=vcr_fixtures / "vcr1images")
    meta = load_metadata(vcr_fixtures / "vcr1images", record)
    assert (meta["width"], meta["height"]) == (1920, 797)
    assert len(meta["boxes"]) == len(record["objects"]) == 6


# --- bad input: every kind, with the whole message ----------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(record: dict[str, Any]) -> dict[str, Any]:
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return record

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], Any]:
    def mutate(record: dict[str, Any]) -> dict[str, Any]:
        del record[key]
        return record

    return mutate


# (mutation of val-1, field, words of `expected`, words of `got`, annot_id in the error)
BAD_RECORDS = {
    "invalid json": (lambda r: '{"annot_id": "val-1", "question": [', "<line>", "a JSON object", "invalid JSON", None),
    "not an object": (lambda r: [1, 2], "<record>", "a JSON object", "list of length 2", None),
    "annot_id missing": (_delete("annot_id"), "annot_id", "non-empty string", "field missing", None),
    "img_fn not a string": (_set(("img_fn",), 3), "img_fn", "non-empty string", "3", "val-1"),
    "metadata_fn missing": (_delete("metadata_fn"), "metadata_fn", "non-empty string", "field missing", "val-1"),
    "objects not names": (_set(("objects",), ["person", 7]), "objects", "object class names", "list of length 2", "val-1"),
    "question missing": (_delete("question"), "question", "non-empty list of VCR tokens", "field missing", "val-1"),
    "question empty": (_set(("question",), []), "question", "non-empty list of VCR tokens", "list of length 0", "val-1"),
    "token is an int": (_set(("question", 1), 0), "question[1]", "a word (str) or a non-empty list", "0", "val-1"),
    "token empty list": (_set(("question", 1), []), "question[1]", "non-empty list of object indices", "list of length 0", "val-1"),
    "index not int": (_set(("answer_choices", 0, 2), ["0"]), "answer_choices[0][2]", "object indices in 0..5", "'0'", "val-1"),
    "index out of range": (_set(("answer_choices", 0, 2), [6]), "answer_choices[0][2]", "object indices in 0..5 (the record has 6 objects)", "6", "val-1"),
    "negative index": (_set(("rationale_choices", 3, 0), [-1]), "rationale_choices[3][0]", "object indices in 0..5", "-1", "val-1"),
    "three answers": (lambda r: _set(("answer_choices",), r["answer_choices"][:3])(r), "answer_choices", "a list of 4 token lists", "list of length 3", "val-1"),
    "five rationales": (lambda r: _set(("rationale_choices",), r["rationale_choices"] + [["x"]])(r), "rationale_choices", "a list of 4 token lists", "list of length 5", "val-1"),
    "empty answer": (_set(("answer_choices", 2), []), "answer_choices[2]", "non-empty list of VCR tokens", "list of length 0", "val-1"),
    "answer_label out of range": (_set(("answer_label",), 5), "answer_label", "an int in 0..3", "5", "val-1"),
    "answer_label a string": (_set(("answer_label",), "2"), "answer_label", "an int in 0..3", "'2'", "val-1"),
    "rationale_label a bool": (_set(("rationale_label",), True), "rationale_label", "an int in 0..3", "True", "val-1"),
    "answer not gold": (_set(("answer_label",), 0), "answer_match_iter", "answer_match_iter[answer_label] == 0", "the labelled choice is not the gold one", "val-1"),
    "rationale not gold": (_set(("rationale_label",), 1), "rationale_match_iter", "rationale_match_iter[rationale_label] == 0", "3", "val-1"),
    "match_iter length": (_set(("answer_match_iter",), [2, 3, 0]), "answer_match_iter", "a list of 4 ints", "list of length 3", "val-1"),
    "movie not a string": (_set(("movie",), 1054), "movie", "a string (optional field)", "1054", "val-1"),
    "question_number a float": (_set(("question_number",), 1.5), "question_number", "an int (optional field)", "1.5", "val-1"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_message(case: str, vcr_fixtures: Path, tmp_path: Path) -> None:
    mutate, field, expected, got, annot_id = BAD_RECORDS[case]
    good = _records(vcr_fixtures)[1:3]
    path = _write(tmp_path / "val.jsonl", [*good, mutate(copy.deepcopy(_records(vcr_fixtures)[0]))])
    with pytest.raises(VCRFormatError) as info:
        read_vcr(path)
    error = info.value
    assert (error.file, error.line, error.annot_id, error.field) == (str(path), 3, annot_id, field)
    assert expected in error.expected and got in error.got
    where = "val.jsonl line 3" + (f" (annot_id {annot_id})" if annot_id else "")
    assert str(error) == f"{where}: field '{field}': expected {error.expected}, got {error.got}"


def test_message_format_matches_the_documented_example(vcr_fixtures: Path, tmp_path: Path) -> None:
    rows = _records(vcr_fixtures)[:7]
    rows[6] = _set(("answer_label",), 5)(rows[6])
    with pytest.raises(VCRFormatError) as info:
        read_vcr(_write(tmp_path / "val.jsonl", rows))
    annot_id = rows[6]["annot_id"]
    assert str(info.value) == f"val.jsonl line 7 (annot_id {annot_id}): field 'answer_label': expected an int in 0..3, got 5"


def test_duplicate_annot_id(vcr_fixtures: Path, tmp_path: Path) -> None:
    rows = _records(vcr_fixtures)[:2]
    with pytest.raises(VCRFormatError) as info:
        read_vcr(_write(tmp_path / "val.jsonl", [rows[0], rows[1], rows[0]]))
    assert (info.value.line, info.value.field, info.value.annot_id) == (3, "annot_id", "val-1")
    assert "first used on line 1" in info.value.expected


@pytest.fixture()
def images_root(vcr_fixtures: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture image folder that tests may break."""
    root = tmp_path / "vcr1images"
    shutil.copytree(vcr_fixtures / "vcr1images", root)
    return root


def _break_metadata(root: Path, record: dict[str, Any], content: str | dict[str, Any]) -> None:
    path = root / record["metadata_fn"]
    path.chmod(0o644)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")


BAD_FILES = {
    "image missing": ("img_fn", "an existing image file under images_root", "no file"),
    "metadata missing": ("metadata_fn", "an existing metadata JSON file", "no file"),
    "metadata not JSON": ("metadata_fn", "a metadata file holding valid JSON", "invalid JSON"),
    "metadata without boxes": ("metadata_fn", "metadata 'boxes'", "nothing in"),  # a missing key: nothing
    "metadata without width": ("metadata_fn", "positive number 'width'", "nothing in"),
    "too few boxes": ("metadata_fn", "a box for each of the record's 6 objects", "5 boxes"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_image_files(case: str, vcr_fixtures: Path, images_root: Path, tmp_path: Path) -> None:
    field, expected, got = BAD_FILES[case]
    record = _records(vcr_fixtures)[0]
    meta = json.loads((vcr_fixtures / "vcr1images" / record["metadata_fn"]).read_text())
    if case == "image missing":
        (images_root / record["img_fn"]).unlink()
    elif case == "metadata missing":
        (images_root / record["metadata_fn"]).unlink()
    elif case == "metadata not JSON":
        _break_metadata(images_root, record, "{not json")
    elif case == "metadata without boxes":
        _break_metadata(images_root, record, {k: v for k, v in meta.items() if k != "boxes"})
    elif case == "metadata without width":
        _break_metadata(images_root, record, {k: v for k, v in meta.items() if k != "width"})
    else:
        _break_metadata(images_root, record, {**meta, "boxes": meta["boxes"][:5]})
    path = _write(tmp_path / "val.jsonl", [record])
    with pytest.raises(VCRFormatError) as info:
        read_vcr(path, images_root=images_root)
    error = info.value
    assert (error.line, error.annot_id, error.field) == (1, "val-1", field)
    assert expected in error.expected and got in error.got
    assert str(error).startswith(f"val.jsonl line 1 (annot_id val-1): field '{field}': expected ")
    if case not in ("image missing", "too few boxes"):
        with pytest.raises(VCRFormatError, match="field 'metadata_fn'"):
            load_metadata(images_root, record)


def test_skip_bad_collects_and_summarises(vcr_fixtures: Path, tmp_path: Path) -> None:
    rows = _records(vcr_fixtures)[:6]
    rows[1] = _set(("answer_label",), 7)(rows[1])
    rows[3] = _set(("answer_label",), "x")(rows[3])
    rows[4] = _set(("question", 0), [99])(rows[4])
    path = _write(tmp_path / "val.jsonl", [*rows, "not json"])
    records = read_vcr(path, skip_bad=True)
    assert [r["annot_id"] for r in records] == [rows[i]["annot_id"] for i in (0, 2, 5)]
    assert [(e.line, e.field) for e in records.skipped] == [(2, "answer_label"), (4, "answer_label"), (5, "question[0]"), (7, "<line>")]
    summary = records.summary()
    assert "read 3 records, skipped 4" in summary
    assert "skipped 2 for field 'answer_label'" in summary
    assert "skipped 1 for field 'question'" in summary
    assert "skipped 1 for field '<line>'" in summary


def test_skip_bad_with_images_reports_missing_files(vcr_fixtures: Path, tmp_path: Path) -> None:
    records = read_vcr(vcr_fixtures / VAL, images_root=vcr_fixtures / "vcr1images", skip_bad=True)
    assert [r["annot_id"] for r in records] == ["val-1"]  # the only record whose image is in the fixtures
    assert len(records.skipped) == 129 and {e.field for e in records.skipped} == {"img_fn"}
    assert "skipped 129 for field 'img_fn'" in records.summary()


def test_error_pickles() -> None:
    error = VCRFormatError(file="val.jsonl", line=3, annot_id="val-9", field="answer_label", expected="an int in 0..3", got="5")
    copy_ = pickle.loads(pickle.dumps(error))
    assert str(copy_) == str(error) and copy_.field == "answer_label" and copy_.line == 3
