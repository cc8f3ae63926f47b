"""VQA v2 data (data_prep/vqa_answers.py, data_prep/vqa.py): official normalisation, reader,
vocabulary, soft scores, submission file, and the easy-VQA conversion."""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from data_prep.easy_vqa import convert_easy_vqa
from data_prep.vqa import VQAExample, VQAFormatError, read_vqa, write_submission
from data_prep.vqa_answers import (
    AnswerVocabulary,
    normalize_answer,
    process_ground_truth,
    process_punctuation,
    soft_score,
    soft_scores,
    soft_target_matrix,
)
from vlekit.evaluation.metrics import vqa_accuracy

# --- the official normalisation (vqaEval.py), case by case --------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, final period dropped
        ("none", "0"),
        ("ten.", "10"),
        ("An apple", "apple"),  # articles dropped
        ("the", ""),
        ("a man's hat", "man's hat"),  # apostrophes are not punctuation here
        ("10:30", "10:30"),  # nor colons
        ("1,000", "1000"),  # comma between digits
        ("the 1,000 birds, maybe", "1000 birds maybe"),  # ... then every mark is deleted, never spaced
        ("red,white", "red white"),  # a mark touching no space becomes a space
        ("red, white", "red white"),  # a mark touching a space is deleted
        ("red / white", "red white"),
        ("t-shirt", "t shirt"),
        ('"quoted"', "quoted"),
        ("yes!", "yes"),
        ("What?", "what"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("pi is 3.14.", "pi is 3.14"),
        ("e.g.", "eg"),
        ("dont", "don't"),  # contractions written without the apostrophe
        ("Isnt", "isn't"),  # lowercased before the table lookup
        ("Im", "im"),  # ... so the table's capitalised keys never match
        ("  yes\n", "yes"),
        ("\tblack\tand white ", "black and white"),
    ],
)
def test_normalize_answer_follows_the_official_rules(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_period_rule_removes_at_most_32_periods_as_the_official_script() -> None:
    # vqaEval passes re.UNICODE (32) as re.sub's count.
    assert process_punctuation("." * 40) == "." * 8


def test_ground_truth_is_punctuation_processed_only_when_answers_differ() -> None:
    assert process_ground_truth(["t-shirt"] * 10) == ["t-shirt"] * 10
    assert process_ground_truth(["t-shirt"] * 9 + ["shirt"]) == ["t shirt"] * 9 + ["shirt"]
    # Consequence in the official accuracy: the same prediction scores 0 against ten identical
    # "t-shirt" answers and 1 when one annotator said something else.
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == 1.0


# --- soft scores ---------------------------------------------------------------------------------


def test_soft_score_table() -> None:
    assert [soft_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="count must be >= 0"):
        soft_score(-1)


def test_soft_scores_equal_the_official_accuracy_of_each_label() -> None:
    vocab = AnswerVocabulary(id2label=("yes", "no", "2", "red white", "dog"))
    rng = random.Random(0)
    pool = ["yes", "no", "2", "red/white", "red white", "dog", "cat"]
    for _ in range(200):
        answers = [rng.choice(pool) for _ in range(10)]
        labels, scores = soft_scores(answers, vocab)
        dense = dict(zip(labels, scores))
        for label, answer in enumerate(vocab.id2label):
            assert dense.get(label, 0.0) == pytest.approx(vqa_accuracy(answer, answers)), (answers, answer)


def test_soft_target_matrix_rows() -> None:
    vocab = AnswerVocabulary(id2label=("yes", "no", "2"))
    examples = [
        _example(1, ["yes"] * 7 + ["no"] * 3),
        _example(2, ["2"] * 2 + ["two"] * 8),  # "two" is no label: only "2" scores
    ]
    targets = soft_target_matrix(examples, vocab)
    assert targets.shape == (2, 3) and targets.dtype == torch.float32
    assert torch.allclose(targets, torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.0, 0.6]]))
    with pytest.raises(ValueError, match="has no answers"):
        soft_target_matrix([VQAExample(question_id=3, image_id=1, question="q?", image_path=Path("x"))], vocab)


# --- vocabulary ----------------------------------------------------------------------------------


def _example(question_id: int, answers: list[str], mc: str | None = None, **fields: Any) -> VQAExample:
    return VQAExample(question_id=question_id, image_id=question_id, question="q?", image_path=Path(f"{question_id}.jpg"),
                      answers=tuple(answers), multiple_choice_answer=mc if mc is not None else answers[0], **fields)


def test_vocabulary_min_count_keeps_first_appearance_order_of_normalised_answers() -> None:
    mcs = ["No", "yes", "two", "2", "cat", "yes", "no", "Yes.", "cat"]
    examples = [_example(i, [mc] * 10, mc) for i, mc in enumerate(mcs)]
    vocab = AnswerVocabulary.from_examples(examples, min_count=2)
    assert vocab.id2label == ("no", "yes", "2", "cat")
    assert vocab.label2id == {"no": 0, "yes": 1, "2": 2, "cat": 3}
    top = AnswerVocabulary.from_examples(examples, top_k=2)
    assert top.id2label == ("yes", "no")  # yes x3, then the ties no / 2 / cat (x2) in order of first appearance


def test_vocabulary_errors_and_round_trip(tmp_path: Path) -> None:
    examples = [_example(1, ["yes"] * 10)]
    with pytest.raises(ValueError, match="exactly one of top_k or min_count"):
        AnswerVocabulary.from_examples(examples)
    with pytest.raises(ValueError, match="no answer is seen 2 times"):
        AnswerVocabulary.from_examples(examples, min_count=2)
    with pytest.raises(ValueError, match="repeated"):
        AnswerVocabulary(id2label=("yes", "yes"))
    with pytest.raises(ValueError, match="without gaps"):
        AnswerVocabulary.from_id2label({0: "yes", 2: "no"})
    from_config = AnswerVocabulary.from_id2label({"1": "no", "0": "yes"})  # config.json spells keys as strings
    assert from_config.id2label == ("yes", "no") and from_config.to_id2label() == {0: "yes", 1: "no"}
    assert AnswerVocabulary.load(from_config.save(tmp_path / "answers.json")) == from_config


# --- reader --------------------------------------------------------------------------------------


def _annotation(question_id: int, image_id: int, answers: list[str]) -> dict[str, Any]:
    return {
        "question_id": question_id, "image_id": image_id,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        "multiple_choice_answer": answers[0], "answer_type": "other", "question_type": "what is the",
    }


def _write_split(tmp_path: Path, *, questions: list[Any] | None = None, annotations: list[Any] | None = None,
                 subtype: str = "val2014") -> tuple[Path, Path]:
    if questions is None:
        questions = [{"image_id": 42, "question": "What is the man holding?", "question_id": 42000},
                     {"image_id": 7, "question": "Is it raining?", "question_id": 7001}]
    if annotations is None:
        annotations = [_annotation(7001, 7, ["no"] * 10), _annotation(42000, 42, ["umbrella"] * 4 + ["stick"] * 6)]
    q = tmp_path / "questions.json"
    a = tmp_path / "annotations.json"
    q.write_text(json.dumps({"data_subtype": subtype, "questions": questions}), encoding="utf-8")
    a.write_text(json.dumps({"data_subtype": subtype, "annotations": annotations}), encoding="utf-8")
    return q, a


def test_reads_questions_with_annotations_in_question_order(tmp_path: Path) -> None:
    q, a = _write_split(tmp_path)
    examples = read_vqa(q, a, image_dir=tmp_path / "val2014")
    assert [e.question_id for e in examples] == [42000, 7001]
    first = examples[0]
    assert first.image_path == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert first.answers == ("umbrella",) * 4 + ("stick",) * 6
    assert (first.multiple_choice_answer, first.answer_type, first.question_type) == ("umbrella", "other", "what is the")
    assert first.annotated and examples.data_subtype == "val2014"


def test_test_split_without_annotations_and_image_subtype_override(tmp_path: Path) -> None:
    q, _ = _write_split(tmp_path, subtype="test-dev2015")
    examples = read_vqa(q, image_dir=tmp_path, data_subtype="test2015")
    assert examples[0].image_path.name == "COCO_test2015_000000000042.jpg"
    assert not examples[0].annotated and examples[0].answer_type is None
    custom = read_vqa(q, image_dir=tmp_path, image_pattern="{image_id}.png")
    assert custom[1].image_path == tmp_path / "7.png"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda qs, anns: anns[0]["answers"].pop(), r"question_id 7001\): field 'answers': expected a list of 10 answers, got a list of length 9"),
        (lambda qs, anns: anns.pop(0), r"question_id 7001\): field 'annotations': expected an annotation for every question"),
        (lambda qs, anns: qs.pop(0), r"question_id 42000\): field 'question_id': expected a question id of questions.json, got 1 annotations"),
        (lambda qs, anns: anns[0].update(image_id=8), r"question_id 7001\): field 'image_id': expected 7"),
        (lambda qs, anns: qs[1].pop("question"), r"question_id 7001\): field 'question': expected a str, got nothing \(field missing\)"),
        (lambda qs, anns: qs[1].update(question_id=42000), r"field 'question_id': expected a question id used once"),
        (lambda qs, anns: anns[1]["answers"].__setitem__(3, {"answer": 3}), r"field 'answers\[3\]'"),
        (lambda qs, anns: anns[1].pop("answer_type"), r"field 'answer_type': expected a str"),
    ],
)
def test_format_errors_name_file_question_and_field(tmp_path: Path, change: Any, message: str) -> None:
    questions = [{"image_id": 42, "question": "What?", "question_id": 42000},
                 {"image_id": 7, "question": "Is it?", "question_id": 7001}]
    annotations = [_annotation(7001, 7, ["no"] * 10), _annotation(42000, 42, ["yes"] * 10)]
    change(questions, annotations)
    q, a = _write_split(tmp_path, questions=questions, annotations=annotations)
    with pytest.raises(VQAFormatError, match=message):
        read_vqa(q, a, image_dir=tmp_path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="VQA file not found"):
        read_vqa(tmp_path / "missing.json", image_dir=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(VQAFormatError, match="bad.json: field '<file>': expected a JSON document"):
        read_vqa(bad, image_dir=tmp_path)
    bad.write_text(json.dumps({"annotations": []}), encoding="utf-8")
    with pytest.raises(VQAFormatError, match="expected an object with a list 'questions'"):
        read_vqa(bad, image_dir=tmp_path)
    q, _ = _write_split(tmp_path)
    with pytest.raises(ValueError, match="image_pattern '{image}.jpg' does not format"):
        read_vqa(q, image_dir=tmp_path, image_pattern="{image}.jpg")


def test_format_error_pickles() -> None:
    error = VQAFormatError(file="a.json", question_id=3, field="answers", expected="x", got="y")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.question_id == 3


# --- submission ----------------------------------------------------------------------------------


def test_submission_file_in_split_order(tmp_path: Path) -> None:
    examples = [_example(5, ["yes"] * 10), _example(2, ["no"] * 10)]
    path = write_submission({2: "no", 5: "yes"}, tmp_path / "submit.json", examples=examples)
    assert json.loads(path.read_text()) == [{"question_id": 5, "answer": "yes"}, {"question_id": 2, "answer": "no"}]
    with pytest.raises(ValueError, match="1 missing \\(first \\[2\\]\\), 1 extra \\(first \\[9\\]\\)"):
        write_submission({5: "yes", 9: "no"}, tmp_path / "s.json", examples=examples)
    with pytest.raises(ValueError, match="int question ids and str answers"):
        write_submission({"5": "yes"}, tmp_path / "s.json")


# --- easy-VQA in the VQA v2 layout ----------------------------------------------------------------


@pytest.fixture(scope="module")
def easy_vqa_splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("easy_vqa", reason="easy-vqa is not installed (pip install easy-vqa)")
    return convert_easy_vqa(tmp_path_factory.mktemp("easy_vqa"))


def test_easy_vqa_conversion_reads_back_as_vqa_v2(easy_vqa_splits: dict[str, Any]) -> None:
    import easy_vqa

    for split, (texts, answers, image_ids) in (("train", easy_vqa.get_train_questions()),
                                               ("test", easy_vqa.get_test_questions())):
        examples = easy_vqa_splits[split].read()
        assert len(examples) == len(texts)
        assert [e.question for e in examples] == texts
        assert [e.answers for e in examples] == [(a,) * 10 for a in answers]
        assert [e.image_id for e in examples] == image_ids
        assert len({e.question_id for e in examples}) == len(examples)
        assert {e.answer_type for e in examples} == {"yes/no", "other"}
        for e in examples[:: max(1, len(examples) // 20)]:
            assert e.image_path.is_file(), e.image_path
        assert len(examples) == {"train": 38575, "test": 9673}[split]  # the package's published counts


def test_easy_vqa_unknown_split(tmp_path: Path) -> None:
    pytest.importorskip("easy_vqa", reason="easy-vqa is not installed (pip install easy-vqa)")
    with pytest.raises(ValueError, match="unknown splits \\['val'\\]"):
        convert_easy_vqa(tmp_path, splits=["val"])


# --- dataset and batches --------------------------------------------------------------------------


def _question_tokenizer(questions: list[str]) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for q in questions for w in q.replace("?", " ?").split()})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def test_dataset_items_and_batch(tmp_path: Path) -> None:
    from PIL import Image

    from data_prep.constants import CLIP_MEAN, CLIP_STD
    from data_prep.vqa import VQADataset

    colour = (200, 40, 10)
    Image.new("RGB", (48, 32), colour).save(tmp_path / "1.png")
    Image.new("RGB", (32, 32), colour).save(tmp_path / "2.png")
    examples = [
        VQAExample(question_id=10, image_id=1, question="What colour is it?", image_path=tmp_path / "1.png",
                   answers=("red",) * 3 + ("orange",) * 7, multiple_choice_answer="orange"),
        VQAExample(question_id=20, image_id=2, question="Is it red?", image_path=tmp_path / "2.png",
                   answers=("yes",) * 10, multiple_choice_answer="yes"),
    ]
    vocab = AnswerVocabulary(id2label=("yes", "red", "orange"))
    tokenizer = _question_tokenizer([e.question for e in examples])
    dataset = VQADataset(examples, tokenizer=tokenizer, vocabulary=vocab, image_size=32)
    batch = dataset.collate([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 7) and batch["attention_mask"].tolist() == [[1] * 7, [1] * 6 + [0]]
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][1, :6].tolist()) == ["[CLS]", "Is", "it", "red", "?", "[SEP]"]
    assert batch["question_id"].tolist() == [10, 20]
    assert torch.allclose(batch["labels"], torch.tensor([[0.0, 0.9, 1.0], [1.0, 0.0, 0.0]]))
    expected = (torch.tensor(colour) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert torch.allclose(batch["pixel_values"][0], expected[:, None, None].expand(3, 32, 32), atol=1e-4)

    letterbox = VQADataset(examples, tokenizer=tokenizer, vocabulary=None, image_size=32, geometry="letterbox")
    item = letterbox[0]
    assert "labels" not in item
    pixels = item["pixel_values"]  # 48 x 32 -> 32 x 21, centred: rows 0..4 are padding (CLIP's mean in 8 bits)
    padding = (torch.tensor((123, 117, 104)) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pixels[:, :5], padding[:, None, None].expand(3, 5, 32), atol=1e-6)
    assert torch.allclose(pixels[:, 16, 16], expected, atol=1e-4)
    truncated = VQADataset(examples, tokenizer=tokenizer, vocabulary=vocab, image_size=32, max_length=4)
    assert len(truncated[0]["input_ids"]) == 4


def test_dataset_errors(tmp_path: Path) -> None:
    from data_prep.vqa import VQADataset

    tokenizer = _question_tokenizer(["q ?"])
    missing = [VQAExample(question_id=1, image_id=7, question="q?", image_path=tmp_path / "7.png")]
    with pytest.raises(ValueError, match="geometry='fisheye' is not supported"):
        VQADataset(missing, tokenizer=tokenizer, vocabulary=None, image_size=32, geometry="fisheye")
    with pytest.raises(VQAFormatError, match=r"7.png \(question_id 1\): field 'image_id': expected a readable image"):
        VQADataset(missing, tokenizer=tokenizer, vocabulary=None, image_size=32)[0]
