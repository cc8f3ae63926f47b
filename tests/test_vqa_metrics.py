"""The official VQA accuracy, the majority baseline and retrieval recall (vlekit/evaluation/metrics.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.easy_vqa import convert_easy_vqa
from data_prep.vqa import VQAExample
from data_prep.vqa_answers import AnswerVocabulary, soft_target_matrix
from vlekit.evaluation.metrics import evaluate_vqa, majority_answer, retrieval_recall, soft_accuracy, vqa_accuracy


def _example(qid: int, answers: list[str], *, answer_type: str = "other", question_type: str = "what is") -> VQAExample:
    return VQAExample(question_id=qid, image_id=qid, question="q?", image_path=Path("x.jpg"), answers=tuple(answers),
                      multiple_choice_answer=answers[0], answer_type=answer_type, question_type=question_type)


# --- leave-one-out accuracy, worked by hand --------------------------------------------------------


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        (0, 0.0),
        (1, 0.3),  # the matching annotator held out: 0 matches left; the other 9 held out: 1/3 each -> 9/30
        (2, 0.6),  # 2 x (1/3) + 8 x (2/3) = 6, / 10
        (3, 0.9),  # 3 x (2/3) + 7 x 1 = 9, / 10
        (4, 1.0),  # 4 x 1 (3 left) + 6 x 1
        (10, 1.0),
    ],
)
def test_leave_one_out_average_of_ten(matches: int, expected: float) -> None:
    answers = ["dog"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_leave_one_out_with_other_counts_of_answers() -> None:
    # 5 answers, 1 match: held-out match -> 0; four others -> 1/3 each: (4/3) / 5.
    assert vqa_accuracy("dog", ["dog", "cat", "cat", "cow", "cow"]) == pytest.approx(4 / 15)
    with pytest.raises(ValueError, match="no human answers"):
        vqa_accuracy("dog", [])


def test_prediction_is_normalised_before_matching() -> None:
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)
    assert vqa_accuracy("The three", answers) == pytest.approx(1.0)
    # Ground truth is never lowercased or number-mapped: "Two" among the answers cannot match.
    assert vqa_accuracy("two", ["Two"] * 4 + ["2"] * 6) == pytest.approx(1.0)  # matches the six "2"
    assert vqa_accuracy("two", ["Two"] * 10) == 0.0


def test_evaluate_vqa_overall_and_per_type_in_percent() -> None:
    examples = [
        _example(1, ["yes"] * 10, answer_type="yes/no", question_type="is the"),
        _example(2, ["no"] * 10, answer_type="yes/no", question_type="is the"),
        _example(3, ["2"] * 3 + ["3"] * 7, answer_type="number", question_type="how many"),
        _example(4, ["red"] * 1 + ["blue"] * 9, answer_type="other", question_type="what color is the"),
    ]
    result = evaluate_vqa({1: "yes", 2: "yes", 3: "two", 4: "red"}, examples)
    assert result.per_question == pytest.approx({1: 100.0, 2: 0.0, 3: 90.0, 4: 30.0})
    assert result.overall == pytest.approx(55.0)
    assert result.per_answer_type == pytest.approx({"number": 90.0, "other": 30.0, "yes/no": 50.0})
    assert result.per_question_type == pytest.approx({"how many": 90.0, "is the": 50.0, "what color is the": 30.0})
    assert result.num_questions == 4
    with pytest.raises(ValueError, match="1 missing \\(first \\[4\\]\\), 1 extra \\(first \\[5\\]\\)"):
        evaluate_vqa({1: "yes", 2: "yes", 3: "two", 5: "red"}, examples)


def test_soft_accuracy_equals_official_accuracy_of_argmax_labels() -> None:
    vocab = AnswerVocabulary(id2label=("yes", "no", "2", "blue"))
    examples = [
        _example(1, ["yes"] * 10),
        _example(2, ["2"] * 3 + ["3"] * 7),
        _example(3, ["blue"] * 2 + ["navy"] * 8),
    ]
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 1.0, 0, 0]])  # yes, 2, no
    targets = soft_target_matrix(examples, vocab)
    official = evaluate_vqa({1: "yes", 2: "2", 3: "no"}, examples).overall
    assert soft_accuracy(logits, targets).item() * 100 == pytest.approx(official)
    assert official == pytest.approx((100 + 90 + 0) / 3)
    with pytest.raises(ValueError, match="must both be \\[B, num_labels\\]"):
        soft_accuracy(logits, targets[:, :2])


def test_majority_answer_counts_normalised_answers() -> None:
    examples = [_example(1, ["Yes"] * 10), _example(2, ["yes."] * 10), _example(3, ["no"] * 10)]
    assert majority_answer(examples) == "yes"


# --- easy-VQA: the majority-answer baseline on the test split --------------------------------------


EASY_VQA_QUESTIONS = 1000  # the first 1000 of each split (about 100 images each): the whole set copies ~10,000 images


def test_easy_vqa_majority_baseline(tmp_path: Path) -> None:
    easy_vqa = pytest.importorskip("easy_vqa", reason="easy-vqa is not installed (pip install easy-vqa)")
    splits = convert_easy_vqa(tmp_path, max_questions=EASY_VQA_QUESTIONS)
    train, test = splits["train"].read(), splits["test"].read()
    assert len(train) == len(test) == EASY_VQA_QUESTIONS
    answer = majority_answer(train)
    result = evaluate_vqa({e.question_id: answer for e in test}, test)
    # Independent count from the package itself (the same first questions): ten identical answers score 1 or 0.
    train_answers = easy_vqa.get_train_questions()[1][:EASY_VQA_QUESTIONS]
    test_answers = easy_vqa.get_test_questions()[1][:EASY_VQA_QUESTIONS]
    assert answer == max(set(train_answers), key=train_answers.count) == "yes"
    assert result.overall == pytest.approx(100 * test_answers.count("yes") / len(test_answers))
    assert 30.0 < result.overall < 45.0  # yes/no questions are ~74% of easy-VQA, split about evenly
    assert result.per_answer_type["other"] == 0.0
    assert result.per_answer_type["yes/no"] == pytest.approx(
        100 * test_answers.count("yes") / sum(a in ("yes", "no") for a in test_answers))


# --- retrieval recall ------------------------------------------------------------------------------


def test_retrieval_recall_by_hand() -> None:
    # 3 images, 4 texts; texts 0, 1 belong to image 0, text 2 to image 1, text 3 to image 2.
    scores = torch.tensor([
        [0.9, 0.1, 0.5, 0.2],  # image 0: best text 0 (its own) -> i2t hit at 1
        [0.8, 0.3, 0.7, 0.1],  # image 1: ranks 0, 2 -> own text 2 at rank 2
        [0.6, 0.5, 0.4, 0.3],  # image 2: own text 3 last (rank 4)
    ])
    recall = retrieval_recall(scores, [0, 0, 1, 2], ks=(1, 2, 5))
    assert recall.image_to_text == pytest.approx({1: 100 / 3, 2: 200 / 3, 5: 100.0})
    # t2i: text 0 -> images by 0.9, 0.8, 0.6: own image 0 at rank 1; text 1 -> 0.5 (img 2), 0.3, 0.1: image 0 at 3;
    # text 2 -> 0.7 (img 1) at 1; text 3 -> 0.3 (img 2) at 1.
    assert recall.text_to_image == pytest.approx({1: 75.0, 2: 75.0, 5: 100.0})
    assert recall.as_row()["t2i_r1"] == pytest.approx(75.0)


def test_retrieval_recall_ties_do_not_reward_a_constant_scorer() -> None:
    recall = retrieval_recall(torch.zeros(4, 4), list(range(4)), ks=(1,))
    assert recall.image_to_text[1] == pytest.approx(25.0) and recall.text_to_image[1] == pytest.approx(25.0)


def test_retrieval_recall_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="one image index per text \\(3\\)"):
        retrieval_recall(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="indices must be in 0..1"):
        retrieval_recall(torch.zeros(2, 2), [0, 2])
    with pytest.raises(ValueError, match="every k must be >= 1"):
        retrieval_recall(torch.zeros(2, 2), [0, 1], ks=(0,))
