"""Bad data found before a run, not by a crash in it (data_prep/preflight.py, `vlekit check-data`,
the preflight of `vlekit train` / `vlekit eval`, VCRDataset(skip_bad=...)).

One synthetic split (one image per record) is corrupted record by record (`_corrupt`): a truncated
JPEG, an image re-encoded at another size, a file turned with EXIF orientation 6 (fine), a NaN box,
an inverted box, a box slightly out of the image (clipped, warning), a box entirely outside, and a
line with a byte that is not UTF-8.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data_prep.dataset import ImageDecodeError, VCRDataset
from data_prep.pixels import load_pixels
from data_prep.preflight import PreflightError, check_split, preflight
from data_prep.preprocess import VCRPreprocessor
from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
from data_prep.vcr import VCRFormatError, load_geometry, read_vcr
from data_prep.vqa import VQAFormatError, preflight_vqa, read_vqa
from vlekit.cli import main as cli_main
from vlekit.evaluation.evaluate import evaluate
from vlekit.runs.experiment import load_experiment
from vlekit.runs.data import skipped_items_summary
from vlekit.training.train import train

# Line of the corrupted split -> what is wrong with it (the split's records are on lines 1-8).
ERRORS = {3: "size-mismatch", 5: "box-not-finite", 6: "box-inverted", 8: "box-outside"}
TRUNCATED_LINE, TURNED_LINE, CLIPPED_LINE = 2, 4, 7
NOT_UTF8_LINE = {"train": 17, "val": 9}  # a line appended after the split's records


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVCR:
    return generate_synthetic_vcr(tmp_path_factory.mktemp("clean"), num_train=16, num_val=8, num_test=0, seed=3,
                                  questions_per_image=1)


@pytest.fixture(scope="module")
def tokenizer_dir(clean: SyntheticVCR, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_word_tokenizer([clean.train], out_dir=folder)
    return folder


def _copy(clean: SyntheticVCR, folder: Path) -> SyntheticVCR:
    shutil.copytree(clean.root, folder)
    return SyntheticVCR(folder, folder / "vcr1images", folder / "train.jsonl", folder / "val.jsonl",
                        folder / "test.jsonl")


def _set_box(metadata: Path, index: int, box: list[float]) -> None:
    meta = json.loads(metadata.read_text(encoding="utf-8"))
    meta["boxes"][index][:4] = box
    metadata.write_text(json.dumps(meta), encoding="utf-8")  # NaN is written as JSON's NaN, as Python reads it


def _corrupt(data: SyntheticVCR, split: str) -> list[dict]:
    """Corrupt records 2-8 of ``split`` (see the module docstring) and append a record whose text
    holds a Latin-1 byte; returns the records as they were."""
    path = data.split(split)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    image = [data.images_root / r["img_fn"] for r in records]
    metadata = [data.images_root / r["metadata_fn"] for r in records]
    width = [json.loads(m.read_text())["width"] for m in metadata]

    raw = image[1].read_bytes()
    image[1].write_bytes(raw[: len(raw) // 2])  # truncated: the header survives
    with Image.open(image[2]) as frame:
        frame.resize((frame.width, frame.height + 30)).save(image[2])  # re-encoded at another aspect
    with Image.open(image[3]) as frame:
        turned = frame.transpose(Image.Transpose.ROTATE_90)  # stored turned, shown upright by the tag
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.save(image[3], exif=exif.tobytes())
    _set_box(metadata[4], 0, [math.nan, 10, 50, 60])
    _set_box(metadata[5], 1, [80, 10, 40, 60])
    _set_box(metadata[6], 2, [width[6] - 30, 10, width[6] + 5, 60])
    _set_box(metadata[7], 3, [width[7] + 10, 10, width[7] + 50, 60])

    extra = json.loads(json.dumps(records[0]))
    extra["annot_id"] = f"{split}-extra"
    extra["question"][0] = "caf\u00e9"
    with path.open("ab") as handle:
        handle.write(json.dumps(extra, ensure_ascii=False).encode("latin-1") + b"\n")
    return records


@pytest.fixture()
def bad(clean: SyntheticVCR, tmp_path: Path) -> tuple[SyntheticVCR, list[dict]]:
    data = _copy(clean, tmp_path / "bad")
    return data, _corrupt(data, "val")


def _check_data(data: SyntheticVCR, tokenizer: Path, *extra: str, split: str = "val") -> int:
    return cli_main(["check-data", "--annotations", str(data.split(split)), "--images", str(data.images_root),
                     "--task", "q2a", "--tokenizer", str(tokenizer), "--image-size", "32", *extra])


# -- check-data ---------------------------------------------------------------------------------------
def test_check_data_names_every_bad_file_and_line(bad, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, records = bad
    assert _check_data(data, tokenizer_dir) == 1
    out = capsys.readouterr().out
    listed = {int(line.split(":")[1]): line for line in out.splitlines() if line.startswith(f"  {data.val}:")}
    for line, kind in ERRORS.items():
        assert f": error {kind} (annot_id {records[line - 1]['annot_id']})" in listed[line]
    assert records[2]["img_fn"] in listed[3] and "a 192x138 image" in listed[3]  # the file and its size
    assert "expected an image of the metadata's size 192x108" in listed[3]
    for line, field in ((5, "boxes[0]"), (6, "boxes[1]"), (8, "boxes[3]")):
        assert f"field '{field}'" in listed[line] and records[line - 1]["metadata_fn"] in listed[line]
    assert "[nan, 10, 50, 60]" in listed[5]
    assert f": warning box-clipped (annot_id {records[CLIPPED_LINE - 1]['annot_id']})" in listed[CLIPPED_LINE]
    assert "clipped to [" in listed[CLIPPED_LINE]
    assert ": error not-utf8: field '<encoding>'" in listed[NOT_UTF8_LINE["val"]]
    assert "byte 0xe9 at line 9" in listed[NOT_UTF8_LINE["val"]]
    # The EXIF-turned file matches once upright; the truncated JPEG passes a header-only check.
    assert TURNED_LINE not in listed and TRUNCATED_LINE not in listed
    assert "val.jsonl: 9 records read: 5 with errors, 1 with warnings only (image headers read, not decoded)" in out
    for kind in (*ERRORS.values(), "not-utf8"):
        assert f"  {kind}" in out.split("warnings:")[0]  # one count line per kind
    assert "examples: 4 for q2a (from the 4 records without errors)" in out


def test_check_data_decode_finds_the_truncated_jpeg(bad, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, records = bad
    assert _check_data(data, tokenizer_dir, "--decode", "--max-problems", "1") == 1
    out = capsys.readouterr().out
    first = f"  {data.val}:{TRUNCATED_LINE}: error undecodable-image (annot_id {records[1]['annot_id']})"
    assert first in out and "image file is truncated" in out and records[1]["img_fn"] in out
    assert "(images decoded)" in out and "problems 1-1 of 7:" in out


def test_check_data_exits_0_with_warnings_only_and_with_skip_bad(clean: SyntheticVCR, bad, tokenizer_dir: Path,
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = bad
    assert _check_data(data, tokenizer_dir, "--skip-bad") == 0  # a skip_bad run leaves the errors out
    assert "error box-outside" in capsys.readouterr().out
    # Warnings only (a box clipped to the image, a copy downscaled to half its size): status 0.
    warned = _copy(clean, tmp_path / "warned")
    records = [json.loads(line) for line in warned.val.read_text().splitlines()]
    _set_box(warned.images_root / records[0]["metadata_fn"], 2, [-4, 10, 50, 60])
    with Image.open(warned.images_root / records[1]["img_fn"]) as frame:  # 222x120
        frame.resize((111, 60)).save(warned.images_root / records[1]["img_fn"])
    assert _check_data(warned, tokenizer_dir) == 0
    out = capsys.readouterr().out
    assert "2 with warnings only" in out and "0 with errors" in out
    assert f"{warned.val}:1: warning box-clipped" in out and "[-4, 10, 50, 60], clipped to [0, 10, 50, 60]" in out
    assert f"{warned.val}:2: warning image-rescaled" in out and "111x60, the same aspect ratio" in out


def test_the_real_vcr_frame_and_its_boxes_raise_no_false_alarm(vcr_fixtures: Path, tmp_path: Path) -> None:
    line = (vcr_fixtures / "val_samples.jsonl").read_text(encoding="utf-8").splitlines()[0]
    annotations = tmp_path / "val.jsonl"
    annotations.write_text(line + "\n", encoding="utf-8")
    check = check_split(annotations, vcr_fixtures / "vcr1images", decode=True)
    assert check.problems == [] and [r["annot_id"] for r in check.records] == ["val-1"]
    # Its boxes are inside the 1920x797 frame: loading leaves them as they are.
    metadata = json.loads((vcr_fixtures / "vcr1images" / check.records[0]["metadata_fn"]).read_text())
    raw = np.array([b[:4] for b in metadata["boxes"]])
    np.testing.assert_array_equal(load_geometry(vcr_fixtures / "vcr1images", check.records[0]).boxes, raw)


# -- what loading does with them -------------------------------------------------------------------------
def test_loaded_boxes_are_clipped_and_exif_turned_pixels_are_upright(tmp_path: Path) -> None:
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    frame.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    frame.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.png", exif=exif.tobytes())
    options = dict(image_size=32, geometry="letterbox", mean=(0.5,) * 3, std=(0.5,) * 3, dtype="uint8")
    torch.testing.assert_close(load_pixels(tmp_path / "turned.png", **options), load_pixels(tmp_path / "upright.png", **options))

    record = {"metadata_fn": "m.json"}
    (tmp_path / "m.json").write_text(json.dumps({"width": 40, "height": 24, "boxes": [[30, 2, 45, 20, 1], [-1, -1, 3, 3, 1]]}))
    np.testing.assert_array_equal(load_geometry(tmp_path, record).boxes, [[30, 2, 40, 20], [0, 0, 3, 3]])


# -- bytes that are not UTF-8 ---------------------------------------------------------------------------
def test_bytes_that_are_not_utf8_name_file_line_and_offset(clean: SyntheticVCR, tmp_path: Path) -> None:
    data = _copy(clean, tmp_path / "data")
    _corrupt(data, "val")
    with pytest.raises(VCRFormatError) as caught:
        read_vcr(data.val)
    assert (caught.value.line, caught.value.field) == (9, "<encoding>")  # the line is no JSON yet: no annot_id
    raw = data.val.read_bytes()
    offset = raw.index(b"\xe9")
    column = offset - raw.rindex(b"\n", 0, offset)
    assert str(caught.value).startswith(f"val.jsonl line 9: field '<encoding>': expected UTF-8 text")
    assert f"got byte 0xe9 at line 9, byte {column} of the line (offset {offset} in the file)" in str(caught.value)

    questions = tmp_path / "questions.json"
    raw = b'{"data_subtype": "val2014",\n "questions": [{"image_id": 1, "question": "caf\xe9?", "question_id": 7}]}'
    questions.write_bytes(raw)
    offset = raw.index(b"\xe9")
    with pytest.raises(VQAFormatError, match=rf"questions.json: field '<file>': expected UTF-8 JSON text, got byte "
                                             rf"0xe9 at line 2, byte {offset - 27} of the line \(offset {offset} in"):
        read_vqa(questions, image_dir=tmp_path)


def test_vqa_preflight_names_the_question_of_an_unreadable_image(tmp_path: Path) -> None:
    questions = [{"image_id": i, "question": "what is it?", "question_id": 10 + i} for i in range(3)]
    (tmp_path / "questions.json").write_text(json.dumps({"data_subtype": "x", "questions": questions}))
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    (tmp_path / "1.png").write_bytes(b"not an image")  # image 2 is missing
    examples = read_vqa(tmp_path / "questions.json", image_dir=tmp_path, image_pattern="{image_id}.png")
    with pytest.raises(VQAFormatError, match=r"^questions.json \(question_id 11\): field 'image_id': expected an image "
                                             r"file PIL can open, got UnidentifiedImageError: .*1.png"):
        preflight_vqa(examples)
    reports: list[str] = []
    kept = preflight_vqa(examples, skip_bad=True, report=reports.append)
    assert [e.question_id for e in kept] == [10] and kept.questions_file == examples.questions_file
    assert reports == [reports[0]] and reports[0].startswith(
        "questions.json: skipped 2 of 3 questions (data.skip_bad): 1 unreadable-image, 1 missing-image; first: ")

    (tmp_path / "val2014").mkdir()  # the dataset's folder given for the split's image folder
    Image.new("RGB", (8, 8)).save(tmp_path / "val2014" / "2.png")
    (tmp_path / "1.png").unlink()
    examples = read_vqa(tmp_path / "questions.json", image_dir=tmp_path, image_pattern="{image_id}.png")
    with pytest.raises(VQAFormatError, match=rf"question_id 11\): .*got no file .*1.png$"):  # nowhere nearby: no hint
        preflight_vqa(examples)
    Image.new("RGB", (8, 8)).save(tmp_path / "1.png")
    with pytest.raises(VQAFormatError, match=rf"question_id 12\): .*2.png; {tmp_path / 'val2014'} holds it: is that "
                                             r"the split's image folder \(--images / data.images\)\?$"):
        preflight_vqa(examples)


# -- the preflight of a run -----------------------------------------------------------------------------
def _overrides(data: SyntheticVCR, out: Path, *extra: str) -> list[str]:
    return [f"data.train_annotations={data.train}", f"data.images={data.images_root}", "data.num_workers=0",
            "train.epochs=1", "train.batch_size=4", "train.lr=1e-3", "train.mixed_precision=fp32", "train.cpu=true",
            f"train.out={out}", *extra]


def test_preflight_stops_train_before_step_1_naming_the_first_bad_file(clean: SyntheticVCR, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = _copy(clean, tmp_path / "data")
    records = _corrupt(data, "train")
    out = tmp_path / "run"
    assert cli_main(["train", "--no-progress", *_overrides(data, out)]) == 2
    err = capsys.readouterr().err
    first = f"vlekit train: {data.train}:3: error size-mismatch (annot_id {records[2]['annot_id']}): field 'img_fn'"
    message = [line for line in err.splitlines() if line.startswith(first)]
    assert len(message) == 1 and records[2]["img_fn"] in message[0]
    assert "5 of 17 records of train.jsonl have errors" in err and "data.skip_bad=true" in err
    assert "Traceback" not in err and not (out / "metrics.jsonl").exists()


def test_an_images_root_one_folder_off_is_named_with_the_folder_that_holds_the_images(
        clean: SyntheticVCR, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The dataset's folder given for its vcr1images/, or one movie folder: every image is missing, and the
    message names the folder that holds them instead of suggesting data.skip_bad (which would skip them all)."""
    root = clean.images_root
    movie = next(p for p in sorted(root.iterdir()) if p.is_dir())
    for wrong in (root.parent, movie):
        with pytest.raises(PreflightError, match=rf"no image is under {wrong}, but {root} holds them: give that folder "
                                                 r"as the images root \(--images / data.images\)$"):
            preflight(clean.val, wrong)
    with pytest.raises(PreflightError, match=rf"the images root {tmp_path / 'none'} is not a folder: it must be the folder"):
        preflight(clean.val, tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError, match="holds none of the records' images: .* so that ROOT/.*jpg is a file"):
        preflight(clean.val, tmp_path / "empty")
    assert check_split(clean.val, root).images_hint is None

    assert _check_data(dataclasses.replace(clean, images_root=root.parent), tokenizer_dir) == 1
    assert f"but {root} holds them" in capsys.readouterr().out
    assert cli_main(["train", "--no-progress", *_overrides(clean, tmp_path / "run"), f"data.images={root.parent}"]) == 2
    err = capsys.readouterr().err
    assert f"but {root} holds them" in err and "skip_bad" not in err


def test_an_images_root_that_is_still_an_archive_says_what_to_unpack(
        clean: SyntheticVCR, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """VCR ships its images as vcr1images.zip: given the archive, or the folder's name with only the archive
    beside it, the message says to unpack it (the command), not that a folder is missing or images are bad."""
    import shutil

    archive = Path(shutil.make_archive(str(tmp_path / "vcr1images"), "zip", clean.images_root.parent,
                                       clean.images_root.name))
    unzip = rf"unpack it \(unzip {archive} -d {tmp_path}\) and give the folder it holds \(vcr1images/\)"
    with pytest.raises(PreflightError, match=rf"the images root {archive} is a zip archive: {unzip}"):
        preflight(clean.val, archive)
    with pytest.raises(PreflightError, match=rf"the images root {tmp_path / 'vcr1images'} is not a folder, but {archive} "
                                             rf"is a zip archive: {unzip}"):
        preflight(clean.val, tmp_path / "vcr1images")
    tar = Path(shutil.make_archive(str(tmp_path / "frames"), "gztar", clean.images_root.parent, clean.images_root.name))
    with pytest.raises(PreflightError, match=rf"{tar} is a tar.gzip archive: unpack it \(tar -xf {tar} -C {tmp_path}\)"):
        preflight(clean.val, tar)
    (tmp_path / "notes.txt").write_text("not an archive")  # a file that is no archive: the usual message
    with pytest.raises(PreflightError, match="notes.txt is not a folder: it must be the folder"):
        preflight(clean.val, tmp_path / "notes.txt")

    assert _check_data(dataclasses.replace(clean, images_root=archive), tokenizer_dir) == 2
    assert f"the images root {archive} is a zip archive: unpack it (unzip" in capsys.readouterr().err
    assert cli_main(["train", "--no-progress", *_overrides(clean, tmp_path / "run"), f"data.images={archive}"]) == 2
    err = capsys.readouterr().err
    assert f"{archive} is a zip archive: unpack it" in err and "skip_bad" not in err and "Traceback" not in err

    # VQA: COCO ships val2014.zip; the split's image folder given with only the archive there.
    questions = [{"image_id": 1, "question": "what is it?", "question_id": 10}]
    (tmp_path / "questions.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (tmp_path / "coco").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "coco" / "1.png")
    coco = Path(shutil.make_archive(str(tmp_path / "val2014"), "zip", tmp_path / "coco"))
    examples = read_vqa(tmp_path / "questions.json", image_dir=tmp_path / "val2014", image_pattern="{image_id}.png")
    with pytest.raises(VQAFormatError, match=rf"{coco} is a zip archive: unpack it \(unzip {coco} -d {tmp_path}\) and give "
                                             r"the folder it holds \(the split's image folder\)"):
        preflight_vqa(examples)


def test_annotations_still_in_their_archive_are_refused_with_what_to_unpack(
        clean: SyntheticVCR, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """VCR ships its annotations as vcr1annots.zip. Read as lines, a zip that stores them uncompressed gives most
    records and a couple of bad ones (a run with data.skip_bad would train on them); a compressed file gives only bad
    ones. Either is refused as a whole, whatever skip_bad, with the command that unpacks it."""
    import gzip
    import tarfile
    import zipfile

    stored = tmp_path / "vcr1annots.zip"
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.write(clean.val, "val.jsonl")
    expected = r"field '<file>': expected VCR annotations as UTF-8 JSON lines \(train.jsonl, val.jsonl or test.jsonl\), got "
    for skip_bad in (False, True):
        with pytest.raises(VCRFormatError, match=rf"{expected}a zip file: unpack it \(unzip {stored} -d {tmp_path}\) and "
                                                 r"give the .jsonl file it holds$"):
            read_vcr(stored, skip_bad=skip_bad)
    squeezed = tmp_path / "val.jsonl.gz"
    squeezed.write_bytes(gzip.compress(clean.val.read_bytes()))
    with pytest.raises(VCRFormatError, match=rf"{expected}a gzip file: unpack it \(gunzip -k {squeezed}\)"):
        read_vcr(squeezed)
    with tarfile.open(tmp_path / "annotations.tar.gz", "w:gz") as archive:
        archive.add(clean.val, "val.jsonl")
    with pytest.raises(VCRFormatError, match=rf"a tar.gzip file: unpack it \(tar -xf {tmp_path / 'annotations.tar.gz'} "
                                             rf"-C {tmp_path}\)"):
        read_vcr(tmp_path / "annotations.tar.gz")

    assert cli_main(["check-data", "--annotations", str(stored), "--images", str(clean.images_root), "--task", "q2a",
                     "--tokenizer", "auto"]) == 2
    assert "got a zip file: unpack it (unzip" in capsys.readouterr().err
    overrides = [*_overrides(clean, tmp_path / "run", "data.skip_bad=true"), f"data.train_annotations={stored}"]
    assert cli_main(["train", "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err
    assert "got a zip file: unpack it (unzip" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    questions = tmp_path / "v2_Questions_Val_mscoco.zip"  # VQA v2 ships each JSON file zipped
    with zipfile.ZipFile(questions, "w") as archive:
        archive.writestr("questions.json", json.dumps({"questions": []}))
    with pytest.raises(VQAFormatError, match=rf"expected a VQA JSON file, got a zip file: unpack it \(unzip {questions} "):
        read_vqa(questions, image_dir=tmp_path)


def test_skip_bad_trains_on_the_rest_and_survives_a_truncated_jpeg_in_workers(
    clean: SyntheticVCR, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _copy(clean, tmp_path / "data")
    records = _corrupt(data, "train")
    made: list[VCRDataset] = []

    class Kept(VCRDataset):  # the run's datasets, to read what the workers skipped
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr("vlekit.evaluation.tasks.VCRDataset", Kept)
    overrides = _overrides(data, tmp_path / "run", "data.skip_bad=true", "data.num_workers=2")
    result = train(load_experiment(None, overrides), progress=False)
    # 12 records are left (the truncated JPEG among them: its header is fine): 3 batches of 4, every
    # item loaded once, so the worker that meets the truncated JPEG replaces it and goes on.
    assert not result.interrupted and result.global_step == 3
    skipped = f"{records[1]['annot_id']} ({records[1]['img_fn']})"
    assert made[0].skipped_items() == [skipped]
    assert skipped_items_summary(made[0], None) == (
        f"data.skip_bad: 1 train items failed to load and were replaced by the next item: {skipped}")
    out = capsys.readouterr().out
    assert ("train.jsonl: skipped 5 of 17 records (data.skip_bad): 1 size-mismatch, 1 box-not-finite, "
            "1 box-inverted, 1 box-outside, 1 not-utf8; first: ") in out
    assert "train.jsonl: 1 warnings: 1 box-clipped" in out


@pytest.fixture()
def truncated_set(clean: SyntheticVCR, tokenizer_dir: Path, tmp_path: Path):
    """The clean val split with record 2's JPEG cut in half, and a q2a preprocessor for it."""
    from transformers import AutoTokenizer

    data = _copy(clean, tmp_path / "data")
    records = read_vcr(data.val)
    image = data.images_root / records[1]["img_fn"]
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    preprocessor = VCRPreprocessor.build(AutoTokenizer.from_pretrained(tokenizer_dir), task="q2a", image_size=32,
                                         images_root=data.images_root)
    return data, records, preprocessor


def test_a_jpeg_truncated_past_its_header_is_replaced_in_dataloader_workers(truncated_set) -> None:
    data, records, preprocessor = truncated_set
    assert not preflight(data.val, data.images_root, report=None).skipped  # header-only: it passes
    dataset = VCRDataset(records, preprocessor, skip_bad=True)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=lambda items: [i["annot_id"] for i in items])
    seen = [annot_id for batch in loader for annot_id in batch]
    ids = [r["annot_id"] for r in records]
    assert seen == [ids[0], ids[2], ids[2], *ids[3:]]  # item 1 replaced by the next one, deterministically
    assert dataset.skipped_items() == [f"{ids[1]} ({records[1]['img_fn']})"]  # marked by a worker, read here

    strict = VCRDataset(records, preprocessor)
    batches = iter(DataLoader(strict, batch_size=2, num_workers=2, collate_fn=strict.collate))
    with pytest.raises(ImageDecodeError) as caught:  # re-raised in this process by the DataLoader
        next(batches)
    # Now, not at a later garbage collection (the re-raise leaves a reference cycle), which waits 5 s per worker.
    batches._shutdown_workers()
    message = str(caught.value)
    assert message.startswith(f"cannot load image {data.images_root / records[1]['img_fn']} (annot_id {ids[1]}): ")
    assert "image file is truncated" in message and "Traceback" not in message


def test_eval_stops_on_bad_records_and_names_an_undecodable_image(clean: SyntheticVCR, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = train(load_experiment(None, _overrides(clean, tmp_path / "run", "train.max_steps=1")), progress=False)
    data = _copy(clean, tmp_path / "data")
    records = _corrupt(data, "val")
    with pytest.raises(PreflightError, match=rf"^{data.val}:3: error size-mismatch"):
        evaluate([run.model_dir], annotations=data.val, images=data.images_root, num_workers=0, progress=False)

    # Only the truncated JPEG left: the preflight passes it, decoding names it, without a traceback
    # (from DataLoader workers too: test_a_jpeg_truncated_past_its_header_is_replaced_in_dataloader_workers).
    lines = data.val.read_text(encoding="latin-1").splitlines()
    data.val.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    command = ["eval", "--checkpoint", str(run.model_dir), "--annotations", str(data.val),
               "--images", str(data.images_root), "--batch-size", "1", "--num-workers", "0"]
    assert cli_main(command) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1].split("\r")[-1]  # after the progress bar
    assert last.startswith(f"vlekit eval: cannot load image {data.images_root / records[1]['img_fn']}")
    assert "Traceback" not in err
