"""Metrics of VLE's other tasks: the official VQA accuracy and image-text retrieval recall@k.

VQA accuracy follows the official evaluation script (GT-Vision-Lab/VQA, ``vqaEval.py``): the
prediction is normalised (``data_prep.vqa_answers.normalize_answer``), the ten human answers are
punctuation-processed when they differ, and a question scores the average over the ten
leave-one-out subsets of nine annotators of ``min(#matches / 3, 1)``. Reported figures are percent,
as the evaluation server gives them (the server rounds to two decimals; we do not).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from data_prep.vqa import VQAExample
from data_prep.vqa_answers import normalize_answer, process_ground_truth

__all__ = [
    "RetrievalRecall",
    "VQAAccuracy",
    "evaluate_vqa",
    "majority_answer",
    "majority_baseline",
    "retrieval_recall",
    "soft_accuracy",
    "vqa_accuracy",
]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official accuracy of one predicted answer against the human answers, in ``[0, 1]``.

    For each annotator held out, ``min(1, m / 3)`` with ``m`` the matches among the others; the mean
    over the annotators. With ten answers of which ``n`` match: 0.3, 0.6, 0.9 for n = 1, 2, 3 and 1
    from n = 4 on.
    """
    if not answers:
        raise ValueError("vqa_accuracy: the question has no human answers (a test split is scored by the server)")
    predicted = normalize_answer(prediction)
    matches = [answer == predicted for answer in process_ground_truth(answers)]
    total = sum(matches)
    # Held-out annotator i leaves total - matches[i] matches among the others.
    return sum(min(1.0, (total - hit) / 3) for hit in matches) / len(matches)


@dataclass(frozen=True)
class VQAAccuracy:
    """Official VQA accuracy in percent: overall, per answer type, per question type, per question."""

    overall: float
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_question: dict[int, float] = field(default_factory=dict)

    @property
    def num_questions(self) -> int:
        return len(self.per_question)


def evaluate_vqa(predictions: Mapping[int, str], examples: Sequence[VQAExample]) -> VQAAccuracy:
    """Score ``{question_id: answer}`` on annotated examples, as ``vqaEval.py`` does.

    The predictions must cover exactly the examples' questions (the script's ``loadRes`` asserts the
    same). Per-type figures average the per-question accuracies of that type.
    """
    if not examples:
        raise ValueError("evaluate_vqa: no examples to score")
    wanted = {example.question_id for example in examples}
    missing, extra = sorted(wanted - set(predictions)), sorted(set(predictions) - wanted)
    if missing or extra:
        raise ValueError(f"evaluate_vqa: predictions must cover the {len(wanted)} questions exactly; "
                         f"{len(missing)} missing (first {missing[:5]}), {len(extra)} extra (first {extra[:5]})")
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for example in examples:
        if not example.annotated:
            raise ValueError(f"evaluate_vqa: question {example.question_id} has no answers (a test split?)")
        accuracy = vqa_accuracy(predictions[example.question_id], example.answers)
        per_question[example.question_id] = 100.0 * accuracy
        by_answer_type[str(example.answer_type)].append(100.0 * accuracy)
        by_question_type[str(example.question_type)].append(100.0 * accuracy)
    return VQAAccuracy(
        overall=sum(per_question.values()) / len(per_question),
        per_answer_type={kind: sum(v) / len(v) for kind, v in sorted(by_answer_type.items())},
        per_question_type={kind: sum(v) / len(v) for kind, v in sorted(by_question_type.items())},
        per_question=per_question,
    )


def majority_answer(examples: Sequence[VQAExample]) -> str:
    """The most frequent normalised ``multiple_choice_answer`` (the majority-answer baseline's
    single prediction); ties go to the answer seen first."""
    counts = Counter(normalize_answer(e.multiple_choice_answer) for e in examples if e.multiple_choice_answer is not None)
    if not counts:
        raise ValueError("majority_answer: no annotated examples")
    return counts.most_common(1)[0][0]


def majority_baseline(examples: Sequence[VQAExample]) -> tuple[str, VQAAccuracy]:
    """The majority answer of annotated ``examples`` and its accuracy on them when given to every question:
    the best any constant answer does on the split, VQA's chance level."""
    answer = majority_answer(examples)
    return answer, evaluate_vqa({example.question_id: answer for example in examples}, examples)


def soft_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """METER / VLE's training-time VQA score: the soft target of each row's arg-max label, averaged.

    ``logits, targets [B, num_labels]`` -> scalar in ``[0, 1]``. With targets from
    ``data_prep.vqa_answers.soft_target_matrix`` and labels in normalised form it equals the official
    accuracy of the arg-max answers: a label's soft score is the accuracy of predicting it.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"soft_accuracy: logits {list(logits.shape)} and targets {list(targets.shape)} "
                         "must both be [B, num_labels]")
    chosen = logits.argmax(dim=-1, keepdim=True)
    return targets.float().gather(1, chosen).mean()


@dataclass(frozen=True)
class RetrievalRecall:
    """Recall@k in percent for both directions, keyed by k."""

    image_to_text: dict[int, float]
    text_to_image: dict[int, float]

    def as_row(self) -> dict[str, float]:
        """``{"i2t_r1": ..., "t2i_r1": ..., ...}`` for a results table."""
        row = {f"i2t_r{k}": v for k, v in self.image_to_text.items()}
        row.update({f"t2i_r{k}": v for k, v in self.text_to_image.items()})
        return row


def retrieval_recall(
    scores: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor, *, ks: Sequence[int] = (1, 5, 10)
) -> RetrievalRecall:
    """Image->text and text->image recall@k from a score matrix (e.g. the ITM head's match logit).

    Args:
        scores: ``[I, T]``, higher = better match of image i and text t.
        text_to_image: ``[T]``, the index of each text's own image (an image may have several texts,
            as COCO and Flickr30k have five captions per image).
        ks: the cut-offs; a k beyond the candidates available counts every candidate.

    Image->text: an image is a hit when any of its texts ranks in its top k of all T texts (images
    without a text are left out of this direction).
    Text->image: a text is a hit when its image ranks in its top k of all I images. Equal scores are
    ranked by index (``torch.topk`` order), so a constant scorer is not rewarded.
    """
    if scores.dim() != 2:
        raise ValueError(f"retrieval_recall: scores must be [I, T], got {list(scores.shape)}")
    num_images, num_texts = scores.shape
    owners = torch.as_tensor(text_to_image, dtype=torch.long, device=scores.device)
    if owners.shape != (num_texts,):
        raise ValueError(f"retrieval_recall: text_to_image must have one image index per text ({num_texts}), "
                         f"got shape {list(owners.shape)}")
    if num_texts and (owners.min() < 0 or owners.max() >= num_images):
        raise ValueError(f"retrieval_recall: text_to_image indices must be in 0..{num_images - 1}")
    if not num_images or not num_texts:
        raise ValueError("retrieval_recall: needs at least one image and one text")
    if any(k < 1 for k in ks):
        raise ValueError(f"retrieval_recall: every k must be >= 1, got {list(ks)}")
    has_text = torch.zeros(num_images, dtype=torch.bool, device=scores.device)
    has_text[owners] = True
    # Stable descending order, so ties rank by index.
    text_order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [I, T]
    image_order = torch.sort(scores.t(), dim=1, descending=True, stable=True).indices  # [T, I]
    image_to_text, text_to_image_recall = {}, {}
    for k in ks:
        top_texts = text_order[:, : min(k, num_texts)]
        image_hits = (owners[top_texts] == torch.arange(num_images, device=scores.device)[:, None]).any(dim=1)
        image_to_text[k] = 100.0 * image_hits[has_text].float().mean().item()
        top_images = image_order[:, : min(k, num_images)]
        text_hits = (top_images == owners[:, None]).any(dim=1)
        text_to_image_recall[k] = 100.0 * text_hits.float().mean().item()
    return RetrievalRecall(image_to_text=image_to_text, text_to_image=text_to_image_recall)
