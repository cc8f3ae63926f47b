"""Tests of the synthetic VCR-format generator: layout, determinism, labels, grounding, no text shortcut."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data_prep.constants import NUM_CHOICES, PERSON_NAMES
from data_prep.synthetic import (
    PALETTE,
    QUESTION_TYPES,
    SPOTLIGHT_COLOUR,
    SyntheticVCR,
    generate_synthetic_vcr,
    main,
)

LABEL_KEYS = ("answer_label", "rationale_label", "answer_match_iter", "rationale_match_iter")
TEXT_KEYS = ("question", "answer_choices", "rationale_choices")
ROWS, COLS = ("top", "bottom"), ("left", "middle", "right")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVCR:
    return generate_synthetic_vcr(tmp_path_factory.mktemp("small"), num_train=60, num_val=30, num_test=12, seed=3)


@pytest.fixture(scope="module")
def default_size(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVCR:
    """The default train split and a large val split, for the statistical checks."""
    return generate_synthetic_vcr(tmp_path_factory.mktemp("default"), num_val=600, num_test=0)


def check_vcr_record(record: dict[str, Any], *, labelled: bool) -> None:
    """The invariants that real VCR records satisfy (see ../shared/fixtures/vcr/README.md)."""
    num_objects = len(record["objects"])
    for key in ("movie", "img_fn", "metadata_fn", "img_id", "annot_id", *TEXT_KEYS):
        assert key in record, key
    assert len(record["answer_choices"]) == NUM_CHOICES
    assert len(record["rationale_choices"]) == NUM_CHOICES
    for text in [record["question"], *record["answer_choices"], *record["rationale_choices"]]:
        assert text, "empty text"
        for token in text:
            if isinstance(token, list):
                assert token and all(0 <= i < num_objects for i in token), token
            else:
                assert isinstance(token, str) and token.strip(), token
    if labelled:
        for kind in ("answer", "rationale"):
            label = record[f"{kind}_label"]
            assert label in range(NUM_CHOICES)
            assert sorted(record[f"{kind}_match_iter"]) == list(range(NUM_CHOICES))
            assert record[f"{kind}_match_iter"][label] == 0
            assert len(record[f"{kind}_sources"]) == NUM_CHOICES


def test_real_and_synthetic_records_pass_the_same_checks(vcr_fixtures: Path, small: SyntheticVCR) -> None:
    real = read_jsonl(vcr_fixtures / "val_samples.jsonl")
    synthetic = read_jsonl(small.train) + read_jsonl(small.val)
    for record in real + synthetic:
        check_vcr_record(record, labelled=True)
    for record in read_jsonl(small.test):
        check_vcr_record(record, labelled=False)
    # Same keys as real records, plus only the documented extra one.
    assert set(synthetic[0]) == set(real[0]) | {"question_type"}


def test_records_pass_the_vcr_reader(small: SyntheticVCR) -> None:
    from data_prep.vcr import read_vcr

    for split in ("train", "val", "test"):
        records = read_vcr(small.split(split), images_root=small.images_root)
        assert len(records) == len(read_jsonl(small.split(split)))


def test_split_sizes_and_paths(small: SyntheticVCR) -> None:
    assert small.images_root == small.root / "vcr1images"
    assert [len(read_jsonl(small.split(s))) for s in ("train", "val", "test")] == [60, 30, 12]
    annot_ids = [r["annot_id"] for s in ("train", "val", "test") for r in read_jsonl(small.split(s))]
    assert len(set(annot_ids)) == len(annot_ids)
    with pytest.raises(ValueError, match="unknown split"):
        small.split("dev")


def test_layout_images_and_metadata(small: SyntheticVCR) -> None:
    ratios = set()
    for split in ("train", "val", "test"):
        for record in read_jsonl(small.split(split)):
            image_path = small.images_root / record["img_fn"]
            metadata = json.loads((small.images_root / record["metadata_fn"]).read_text())
            assert record["img_fn"].split("/")[0] == record["movie"]
            assert set(metadata) == {"boxes", "segms", "names", "width", "height"}
            with Image.open(image_path) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (metadata["width"], metadata["height"])
            width, height = metadata["width"], metadata["height"]
            ratios.add(round(width / height, 2))
            assert metadata["names"] == record["objects"]
            assert len(metadata["boxes"]) == len(metadata["segms"]) == len(record["objects"])
            for (x1, y1, x2, y2, score), polygons in zip(metadata["boxes"], metadata["segms"]):
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
                assert 0 < score <= 1
                for polygon in polygons:
                    assert len(polygon) >= 3
                    assert all(x1 - 1 <= x <= x2 + 1 and y1 - 1 <= y <= y2 + 1 for x, y in polygon)
            assert len(record["objects"]) == 5 and 2 <= record["objects"].count("person") <= 4
    assert {2.4, round(16 / 9, 2)} <= ratios


def test_test_split_has_no_labels(small: SyntheticVCR) -> None:
    for record in read_jsonl(small.test):
        for key in (*LABEL_KEYS, "answer_sources", "rationale_sources", "answer_orig", "rationale_orig"):
            assert key not in record
        assert "question_orig" in record and "question_type" in record


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    sizes = dict(num_train=10, num_val=4, num_test=2)
    first = files(generate_synthetic_vcr(tmp_path / "a", seed=7, **sizes).root)
    again = files(generate_synthetic_vcr(tmp_path / "b", seed=7, **sizes).root)
    other = files(generate_synthetic_vcr(tmp_path / "c", seed=8, **sizes).root)
    assert first == again
    assert first["train.jsonl"] != other["train.jsonl"]
    first_images = [v for k, v in first.items() if k.endswith(".jpg")]
    other_images = [v for k, v in other.items() if k.endswith(".jpg")]
    assert first_images != other_images
    # Splits draw from their own streams: the val split does not depend on the train size.
    bigger = files(generate_synthetic_vcr(tmp_path / "d", seed=7, num_train=20, num_val=4, num_test=2).root)
    assert bigger["val.jsonl"] == first["val.jsonl"]


def test_question_types_labels_and_text_are_balanced(default_size: SyntheticVCR) -> None:
    records = read_jsonl(default_size.train)
    types = Counter(r["question_type"] for r in records)
    assert set(types) == set(QUESTION_TYPES)
    assert min(types.values()) > 0.02 * len(records)
    first_words = {t: {r["question"][0] for r in records if r["question_type"] == t} for t in QUESTION_TYPES}
    assert all(len(words) == 1 for words in first_words.values())
    assert len({next(iter(words)) for words in first_words.values()}) == len(QUESTION_TYPES)
    for key in ("answer_label", "rationale_label"):
        counts = Counter(r[key] for r in records)
        assert all(abs(counts[c] / len(records) - 1 / NUM_CHOICES) < 0.04 for c in range(NUM_CHOICES)), counts
    yes_gold = [r["answer_choices"][r["answer_label"]][0] == "Yes" for r in records if r["question_type"] == "yes_no"]
    assert abs(np.mean(yes_gold) - 1 / NUM_CHOICES) < 0.07


# --------------------------------------------------------------------------- grounding


def measured_colours(image: np.ndarray, boxes: list[list[float]]) -> list[str]:
    """Nearest palette colour to the mean pixel of each box."""
    names, rgb = list(PALETTE), np.array(list(PALETTE.values()), dtype=np.float64)
    colours = []
    for x1, y1, x2, y2, _ in boxes:
        mean = image[round(y1) : round(y2), round(x1) : round(x2)].reshape(-1, 3).mean(axis=0)
        colours.append(names[int(np.argmin(((rgb - mean) ** 2).sum(axis=1)))])
    return colours


def measured_places(boxes: list[list[float]], width: int, height: int) -> list[tuple[str, str]]:
    """(row, column) word of each box centre in the 2 x 3 layout."""
    places = []
    for x1, y1, x2, y2, _ in boxes:
        row = ROWS[int((y1 + y2) / 2 / height * len(ROWS))]
        col = COLS[int((x1 + x2) / 2 / width * len(COLS))]
        places.append((row, col))
    return places


def claims(tokens: list[Any]) -> list[tuple[int, str, Any]]:
    """(object, "colour" | "place", value) for each colour word, "at the ROW COL" and "in the
    spotlight" (= lit, i.e. white) in a text.

    The templates put a claim right after the object it is about, so the claim's object is the
    last one mentioned before it.
    """
    found, last = [], None
    for n, token in enumerate(tokens):
        if isinstance(token, list):
            last = token[-1]
        elif token in PALETTE and last is not None:
            found.append((last, "colour", token))
        elif token == "spotlight" and last is not None:
            found.append((last, "colour", SPOTLIGHT_COLOUR))
        elif token == "at" and tokens[n + 1] == "the":
            found.append((last, "place", (tokens[n + 2], tokens[n + 3])))
    return found


def test_answers_and_rationales_are_grounded_in_the_pixels(default_size: SyntheticVCR) -> None:
    """Gold choices state only what the pixels show; each distractor states something false but
    uses colours (and places) that are in the image, so the image as a whole does not rule it out."""
    checked = Counter()
    for record in read_jsonl(default_size.val):
        metadata = json.loads((default_size.images_root / record["metadata_fn"]).read_text())
        with Image.open(default_size.images_root / record["img_fn"]) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        truth = {
            "colour": measured_colours(pixels, metadata["boxes"]),
            "place": measured_places(metadata["boxes"], metadata["width"], metadata["height"]),
        }
        assert len(set(truth["colour"])) == len(truth["colour"]), "every object has its own colour"
        assert SPOTLIGHT_COLOUR in truth["colour"], "one object is in the spotlight"
        for kind in ("answer", "rationale"):
            for choice_index, choice in enumerate(record[f"{kind}_choices"]):
                said = claims(choice)
                assert said, choice
                holds = [truth[attribute][obj] == value for obj, attribute, value in said]
                if choice_index == record[f"{kind}_label"]:
                    assert all(holds), (record["annot_id"], kind, choice, truth)
                else:
                    assert not all(holds), (record["annot_id"], kind, choice, truth)
                for _, attribute, value in said:
                    assert value in truth[attribute], "distractors use what is in the picture"
        checked[record["question_type"]] += 1
    assert set(checked) == set(QUESTION_TYPES)


# --------------------------------------------------------------------------- no text shortcut


def render(record: dict[str, Any], text: list[Any], names: dict[int, str]) -> list[str]:
    """VLE's text rendering: persons get names in order of first mention, other objects their class."""
    words = []
    for token in text:
        if not isinstance(token, list):
            words.append(token)
            continue
        for n, index in enumerate(token):
            if index not in names:
                persons = sum(name in PERSON_NAMES for name in names.values())
                is_person = record["objects"][index] == "person"
                names[index] = PERSON_NAMES[persons % len(PERSON_NAMES)] if is_person else record["objects"][index]
            words += (["and"] if n else []) + [names[index]]
    return words


def pair_features(query: list[str], choice: list[str], position: int) -> dict[str, float]:
    """Bag of words of the choice, crossed with the question type and with every query word,
    plus word overlap and the choice position: enough to catch answer priors and echo tricks."""
    features: dict[str, float] = {f"pos={position}": 1.0, "overlap": len(set(query) & set(choice))}
    for word in set(choice):
        features[f"c={word}"] = 1.0
        features[f"type={query[0]}|c={word}"] = 1.0
        for query_word in set(query):
            features[f"q={query_word}|c={word}"] = 1.0
    return features


def text_only_examples(records: list[dict[str, Any]], task: str) -> tuple[list[dict[str, float]], list[int]]:
    features, labels = [], []
    for record in records:
        names: dict[int, str] = {}
        query = render(record, record["question"], names)
        if task == "q2a":
            choices, label = record["answer_choices"], record["answer_label"]
        else:
            query += render(record, record["answer_choices"][record["answer_label"]], names)
            choices, label = record["rationale_choices"], record["rationale_label"]
        for position, choice in enumerate(choices):
            features.append(pair_features(query, render(record, choice, names), position))
            labels.append(int(position == label))
    return features, labels


@pytest.mark.slow  # an accuracy threshold on a probe trained on 2000 questions
@pytest.mark.parametrize("task", ["q2a", "qa2r"])
def test_text_alone_is_at_chance(default_size: SyntheticVCR, task: str) -> None:
    """A logistic regression on the rendered text (no image) must not beat chance by much."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    train, val = read_jsonl(default_size.train), read_jsonl(default_size.val)
    train_x, train_y = text_only_examples(train, task)
    val_x, val_y = text_only_examples(val, task)
    vectorizer = DictVectorizer()
    classifier = LogisticRegression(C=1.0, max_iter=2000).fit(vectorizer.fit_transform(train_x), train_y)
    scores = classifier.decision_function(vectorizer.transform(val_x)).reshape(-1, NUM_CHOICES)
    gold = np.asarray(val_y).reshape(-1, NUM_CHOICES).argmax(axis=1)
    accuracy = float((scores.argmax(axis=1) == gold).mean())
    # Chance is 0.25; with 600 questions its standard error is 0.018, so 0.32 is ~4 sigma.
    assert accuracy < 0.32, f"text-only {task} accuracy {accuracy:.3f}: the text gives the answer away"
    # The probe itself works: it fits its own training data.
    train_scores = classifier.decision_function(vectorizer.transform(train_x)).reshape(-1, NUM_CHOICES)
    train_gold = np.asarray(train_y).reshape(-1, NUM_CHOICES).argmax(axis=1)
    assert (train_scores.argmax(axis=1) == train_gold).mean() > accuracy


# --------------------------------------------------------------------------- API


def test_cli_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlekit.cli import main as vlekit_main

    options = ["--num-train", "4", "--num-val", "2", "--num-test", "0", "--seed", "1"]
    assert main([str(tmp_path / "cli"), *options]) == 0
    assert len(read_jsonl(tmp_path / "cli" / "train.jsonl")) == 4
    assert (tmp_path / "cli" / "test.jsonl").read_text() == ""
    assert "wrote" in capsys.readouterr().out
    assert vlekit_main(["synthetic", str(tmp_path / "via-vlekit"), *options]) == 0  # `vlekit synthetic`: same bytes
    assert (tmp_path / "via-vlekit" / "train.jsonl").read_bytes() == (tmp_path / "cli" / "train.jsonl").read_bytes()


def test_frame_scale_enlarges_the_frames_and_their_boxes_and_keeps_the_records(tmp_path: Path) -> None:
    options = dict(num_train=0, num_val=6, num_test=0, seed=3)
    plain = generate_synthetic_vcr(tmp_path / "plain", **options)
    large = generate_synthetic_vcr(tmp_path / "large", frame_scale=3, **options)
    assert large.val.read_bytes() == plain.val.read_bytes()
    for record in read_jsonl(plain.val):
        small_meta = json.loads((plain.images_root / record["metadata_fn"]).read_text())
        large_meta = json.loads((large.images_root / record["metadata_fn"]).read_text())
        assert (large_meta["width"], large_meta["height"]) == (3 * small_meta["width"], 3 * small_meta["height"])
        np.testing.assert_allclose(np.array(large_meta["boxes"])[:, :4], 3 * np.array(small_meta["boxes"])[:, :4])
        assert [b[4] for b in large_meta["boxes"]] == [b[4] for b in small_meta["boxes"]]
        assert large_meta["segms"][0][0][0] == [3 * c for c in small_meta["segms"][0][0][0]]
        with Image.open(large.images_root / record["img_fn"]) as image:
            assert image.size == (large_meta["width"], large_meta["height"])


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_train=-1), "num_train"),
        (dict(questions_per_image=0), "questions_per_image"),
        (dict(jpeg_quality=100), "jpeg_quality"),
        (dict(frame_scale=0), "frame_scale"),
        (dict(frame_scale=1.5), "frame_scale"),
    ],
)
def test_bad_options_are_errors(tmp_path: Path, options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_synthetic_vcr(tmp_path, **options)
