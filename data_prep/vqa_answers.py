"""VQA v2 answers: the official answer normalisation, the answer vocabulary and soft scores.

    normalize_answer("Two dogs.")                                         # "2 dogs"
    vocab = AnswerVocabulary.from_examples(train_examples, min_count=9)   # METER / VLE's rule
    labels, scores = soft_scores(examples[0].answers, vocab)              # sparse soft targets
    targets = soft_target_matrix(examples, vocab)                         # dense [N, num_labels]

Normalisation follows the official evaluation script (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, its Python 3 version) rule for rule, including
its quirks, so that a vocabulary built here and the accuracy in ``vlekit.evaluation.metrics`` agree with
the evaluation server on what counts as the same answer. A prediction gets the full normalisation
(:func:`normalize_answer`); the ten human answers get only :func:`process_punctuation`, and only
when they are not all identical (:func:`process_ground_truth`), exactly as the script does.

Reading questions and annotations (``VQAExample``) is ``data_prep.vqa``'s job, which imports this
module; here an example is anything with ``question_id``, ``answers``, ``multiple_choice_answer``
and ``annotated`` (:class:`AnnotatedQuestion`).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

__all__ = [
    "AnnotatedQuestion",
    "AnswerVocabulary",
    "normalize_answer",
    "process_digit_article",
    "process_ground_truth",
    "process_punctuation",
    "soft_score",
    "soft_scores",
    "soft_target_matrix",
]


class AnnotatedQuestion(Protocol):
    """What this module reads of a question: ``data_prep.vqa.VQAExample`` has it."""

    @property
    def question_id(self) -> int: ...

    @property
    def answers(self) -> tuple[str, ...]: ...

    @property
    def multiple_choice_answer(self) -> str | None: ...

    @property
    def annotated(self) -> bool: ...


# ---------------------------------------------------------------------------------------------
# The official answer normalisation (vqaEval.py)
# ---------------------------------------------------------------------------------------------

# vqaEval.py's contraction table, verbatim. Its keys are looked up after lowercasing, so the few
# capitalised keys ("Im", "Ive", "Id've", "I'dve") never match; kept as the script has them.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophes, colons and periods are not in the list: periods have their own rule below.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The script's pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead for the text "<=digit"
# (a mistyped lookbehind), which always holds in front of a period. So: a period not followed by a digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The script passes re.UNICODE (= 32) positionally, i.e. as sub()'s count: at most 32 periods go.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """vqaEval.py's ``processPunctuation``.

    Each mark in the punctuation list is deleted when it touches a space somewhere in the *original*
    text (``"p "`` or ``" p"``) or when the text has a comma between two digits anywhere (so
    ``"1,000"`` -> ``"1000"``); otherwise it becomes a space (``"red/white"`` -> ``"red white"``).
    Then periods not followed by a digit are deleted (``"3.5"`` keeps its period, ``"etc."`` loses it).
    """
    out = text
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.py's ``processDigitArticle``: lowercase, split on whitespace, number words ``none``,
    ``zero`` .. ``ten`` -> digits, drop ``a``/``an``/``the``, expand contractions written without
    their apostrophe (``"dont"`` -> ``"don't"``), join with single spaces."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The full normalisation vqaEval.py applies to a predicted answer.

    Newlines and tabs become spaces, the ends are stripped, then :func:`process_punctuation`, then
    :func:`process_digit_article`. ``"Two dogs."`` -> ``"2 dogs"``; ``"the 1,000"`` -> ``"1000"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def process_ground_truth(answers: Sequence[str]) -> list[str]:
    """The human answers as vqaEval.py compares them: punctuation-processed only when they are not
    all identical (no lowercasing, no number words: the dataset's answers already are in that form)."""
    if len(set(answers)) > 1:
        return [process_punctuation(answer) for answer in answers]
    return list(answers)


# ---------------------------------------------------------------------------------------------
# Answer vocabulary and soft scores
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnswerVocabulary:
    """The classifier's answers: label ``i`` is ``id2label[i]``.

    Build it from training examples (:meth:`from_examples`) or take a checkpoint's ``id2label``
    (:meth:`from_id2label`, e.g. the 3,129 answers of ``hfl/vle-base-for-vqa``).
    """

    id2label: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.id2label:
            raise ValueError("AnswerVocabulary: id2label is empty; a VQA classifier needs at least one answer")
        counts = Counter(self.id2label)
        repeated = [label for label, count in counts.items() if count > 1]
        if repeated:
            raise ValueError(f"AnswerVocabulary: answers must be distinct, repeated: {repeated[:5]}")
        object.__setattr__(self, "_label2id", {label: i for i, label in enumerate(self.id2label)})

    def __len__(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return dict(self._label2id)  # type: ignore[attr-defined]

    def id_of(self, answer: str) -> int | None:
        """The label of an answer string as stored (no normalisation), or None when it has none."""
        return self._label2id.get(answer)  # type: ignore[attr-defined]

    def to_id2label(self) -> dict[int, str]:
        """``{0: answer, ...}``, the form of a Hugging Face config's ``id2label``."""
        return dict(enumerate(self.id2label))

    @classmethod
    def from_id2label(cls, id2label: Mapping[int | str, str] | Sequence[str]) -> AnswerVocabulary:
        """From a list of answers or a mapping with keys ``0 .. n-1`` (ints or, as in a saved
        ``config.json``, their strings). Labels are taken as given (a checkpoint's are normalised)."""
        if isinstance(id2label, Mapping):
            try:
                keyed = {int(key): value for key, value in id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"AnswerVocabulary.from_id2label: keys must be label ids 0..n-1, got {list(id2label)[:5]}") from None
            if sorted(keyed) != list(range(len(keyed))):
                missing = sorted(set(range(len(keyed))) - set(keyed))[:5]
                raise ValueError(f"AnswerVocabulary.from_id2label: ids must be 0..{len(keyed) - 1} without gaps; missing {missing}")
            labels = [keyed[i] for i in range(len(keyed))]
        else:
            labels = list(id2label)
        if not all(isinstance(label, str) for label in labels):
            raise ValueError("AnswerVocabulary.from_id2label: every answer must be a string")
        return cls(id2label=tuple(labels))

    @classmethod
    def from_examples(
        cls, examples: Iterable[AnnotatedQuestion], *, top_k: int | None = None, min_count: int | None = None
    ) -> AnswerVocabulary:
        """The answers of annotated examples' normalised ``multiple_choice_answer``.

        Give exactly one rule: ``min_count`` keeps every answer seen at least that often, in order of
        first appearance (METER and VLE: ``min_count=9`` over train + val -> 3,129 answers);
        ``top_k`` keeps the k most frequent, ties in order of first appearance.
        METER also deletes every comma after normalising; we keep the official normalisation alone,
        so that the vocabulary and the evaluation agree on what an answer is.
        """
        if (top_k is None) == (min_count is None):
            raise ValueError("AnswerVocabulary.from_examples: give exactly one of top_k or min_count "
                             f"(got top_k={top_k}, min_count={min_count})")
        counts: Counter[str] = Counter()
        for example in examples:
            if example.multiple_choice_answer is not None:
                counts[normalize_answer(example.multiple_choice_answer)] += 1
        if not counts:
            raise ValueError("AnswerVocabulary.from_examples: no annotated examples (test splits have no answers)")
        if min_count is not None:
            labels = [answer for answer, count in counts.items() if count >= min_count]
        else:
            if top_k < 1:
                raise ValueError(f"AnswerVocabulary.from_examples: top_k must be >= 1, got {top_k}")
            labels = [answer for answer, _ in counts.most_common(top_k)]  # stable: ties keep first appearance
        if not labels:
            raise ValueError(f"AnswerVocabulary.from_examples: no answer is seen {min_count} times or more")
        return cls(id2label=tuple(labels))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"id2label": self.to_id2label()}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AnswerVocabulary:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(document, dict) or "id2label" not in document:
            raise ValueError(f"{path}: expected a JSON object with 'id2label' (as written by AnswerVocabulary.save)")
        return cls.from_id2label(document["id2label"])


# METER / VLE (and BAN) soft score of an answer given by `count` of the ten annotators.
_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9)


def soft_score(count: int) -> float:
    """``min(1, 0.3 * count)`` as METER's table writes it: 0, 0.3, 0.6, 0.9, then 1.0 for 4 or more.

    With ten annotators this is exactly the official accuracy of predicting an answer that
    ``count`` of them gave (the leave-one-out average): 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1.
    """
    if count < 0:
        raise ValueError(f"soft_score: count must be >= 0, got {count}")
    return _SOFT_SCORES[count] if count < len(_SOFT_SCORES) else 1.0


def soft_scores(answers: Sequence[str], vocabulary: AnswerVocabulary) -> tuple[list[int], list[float]]:
    """Sparse soft targets of one question: the labels its annotators gave and their scores.

    Answers are counted as the official script compares them (:func:`process_ground_truth`), so the
    score of label ``a`` equals the official accuracy of predicting ``a``. (METER counts the raw
    strings; the two differ only on answers that punctuation processing changes.) Answers outside
    the vocabulary are dropped; labels come in order of first appearance.
    """
    counts = Counter(process_ground_truth(answers))
    labels, scores = [], []
    for answer, count in counts.items():
        label = vocabulary.id_of(answer)
        if label is not None:
            labels.append(label)
            scores.append(soft_score(count))
    return labels, scores


def soft_target_matrix(examples: Sequence[AnnotatedQuestion], vocabulary: AnswerVocabulary) -> torch.Tensor:
    """Dense soft targets ``[N, num_labels]`` (float32) of annotated examples, for the VQA loss."""
    targets = torch.zeros(len(examples), len(vocabulary))
    for row, example in enumerate(examples):
        if not example.annotated:
            raise ValueError(f"soft_target_matrix: question {example.question_id} has no answers (a test split?)")
        labels, scores = soft_scores(example.answers, vocabulary)
        targets[row, labels] = torch.tensor(scores)
    return targets
