"""``compat="vle"``: the text side of the official VLE VCR pipeline, reproduced rule for rule.

The official pipeline (``VLEForVCRQ2APipeline`` / ``VLEForVCRQA2RPipeline`` in iflytek/VLE's
``models/VLE/pipeline_vle.py``) differs from vlekit's default mode on purpose-free details that an
official VCR checkpoint was nevertheless trained with. This module owns them:

- Names (``VLENameCounter``): each call names every person of ``objects``, in ``objects`` order,
  from one counter that is never reset (held by the preprocessor, not by this module).
- Word pieces (``vle_word_pieces``): each word is tokenized on its own with a leading space (not
  the first word of a text); a word holding a private-use character (Unicode ``Co``) is dropped;
  ``[i, j]`` becomes name_i, the first piece of " and", name_j; a name's pieces carry its object.
- Truncation (``truncate_q2a`` / ``truncate_qa2r``): the question (and answer) lists are cut in
  place and shared by the 4 choices, so every choice sees them cut as far as the worst choice
  needed. Q->A pops from the longer of question and answer (the answer on a tie); QA->R pops the
  rationale while it is longer than question + answer, else the question down to one token, then
  the answer.
- Encoding (``reencode``): the pieces' ids are turned back into piece strings, joined with no
  separator and encoded again with the tokenizer (``[CLS] ... [SEP]``, cut to ``max_length``); the
  type ids come from the pieces before that round trip.
- Numbering (``set_order_numbering``): the referenced objects are numbered in the iteration order
  of a Python ``set`` filled with their indices in text order (a real set, so the order is exactly
  CPython's, collisions included).

``vle_texts`` runs these steps for one record, as one official call does.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from data_prep.constants import PERSON_NAMES

__all__ = [
    "NO_OBJECT",
    "VLENameCounter",
    "has_private_use",
    "vle_word_pieces",
    "truncate_q2a",
    "truncate_qa2r",
    "reencode",
    "set_order_numbering",
    "check_vle_tokenizer",
    "vle_texts",
]

NO_OBJECT = -1  # the official tag of a piece that names no object

# (piece string, piece id, object tag): one official "ids_with_tag" entry.
Piece = tuple[str, int, int]


class VLENameCounter:
    """VLE's person-name counter: one name per person of ``objects`` per call, never reset.

    ``position`` is the index into ``PERSON_NAMES`` of the next name (the official
    ``person_name_id``); a fresh counter starts at 0, as a fresh official pipeline does.
    """

    def __init__(self, position: int = 0) -> None:
        self.position = position % len(PERSON_NAMES)

    def names(self, objects: Sequence[str]) -> list[str]:
        """Every object's name (persons from the counter, which advances; others their class)."""
        names = []
        for obj in objects:
            if obj == "person":
                names.append(PERSON_NAMES[self.position])
                self.position = (self.position + 1) % len(PERSON_NAMES)
            else:
                names.append(obj)
        return names

    def __repr__(self) -> str:
        return f"VLENameCounter(position={self.position})"


def has_private_use(word: str) -> bool:
    """True when ``word`` holds a character of Unicode category ``Co`` (private use)."""
    return any(unicodedata.category(character) == "Co" for character in word)


def vle_word_pieces(
    tokens: Sequence[str | Sequence[int]], names: Sequence[str], tokenize: Callable[[str], list[str]],
    convert_tokens_to_ids: Callable[[list[str]], list[int]],
) -> list[Piece]:
    """One text's official pieces ``(piece, id, object tag)`` (tag ``NO_OBJECT`` for words and "and").

    Args:
        tokens: VCR words and object index lists.
        names: every object's name (``VLENameCounter.names``).
        tokenize: the tokenizer's ``tokenize`` (cached by the caller: it is a pure function).
    """
    pieces: list[str] = []
    tags: list[int] = []
    for position, token in enumerate(tokens):
        if isinstance(token, str):
            if has_private_use(token):
                continue
            word_pieces = tokenize(token if position == 0 else " " + token)
            pieces += word_pieces
            tags += [NO_OBJECT] * len(word_pieces)
            continue
        for j, index in enumerate(token):
            name = " " + names[index]
            if j == 0 and position == 0:
                name = name.lstrip()
            if j:
                pieces.append(tokenize(" and")[0])
                tags.append(NO_OBJECT)
            name_pieces = tokenize(name)
            pieces += name_pieces
            tags += [index] * len(name_pieces)
    return list(zip(pieces, convert_tokens_to_ids(pieces), tags))


def truncate_q2a(question: list[Piece], answers: Sequence[list[Piece]], *, max_length: int) -> None:
    """Official Q->A truncation, in place, answer by answer, on one shared question list."""
    budget = max_length - 3
    for answer in answers:
        while len(question) + len(answer) > budget:
            if len(question) > len(answer):
                question.pop()
            else:
                answer.pop()


def truncate_qa2r(
    question: list[Piece], answer: list[Piece], rationales: Sequence[list[Piece]], *, max_length: int
) -> None:
    """Official QA->R truncation, in place, rationale by rationale, on shared question and answer lists."""
    budget = max_length - 4
    for rationale in rationales:
        while len(question) + len(answer) + len(rationale) > budget:
            if len(rationale) > len(question) + len(answer):
                rationale.pop()
            elif len(question) > 1:
                question.pop()
            else:
                answer.pop()


def reencode(tokenizer: Any, ids: list[int], *, max_length: int) -> list[int]:
    """The official round trip: ids -> piece strings -> one joined string -> ``[CLS] ids [SEP]``."""
    text = "".join(tokenizer.convert_ids_to_tokens(ids))
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def set_order_numbering(tags: Sequence[int]) -> dict[int, int]:
    """Object index -> type id ``k + 2``, k the position in a Python set filled in text order."""
    referenced = set()
    for tag in tags:
        if tag != NO_OBJECT:
            referenced.add(tag)
    return {obj: k + 2 for k, obj in enumerate(referenced)}


def check_vle_tokenizer(tokenizer: Any) -> None:
    """Fail fast on a tokenizer whose pieces do not mark word starts (the round trip would glue words).

    The official pipeline joins piece strings with no separator and encodes the result again; only
    SentencePiece pieces (DeBERTa-v3's, as VLE ships) keep the word boundaries through that.
    """
    piece = (tokenizer.tokenize(" and") or [""])[0]
    if not piece.startswith("\u2581"):
        raise ValueError(
            f"compat='vle' reproduces VLE's pipeline, which joins the tokenizer's pieces with no separator and "
            f"encodes them again; {type(tokenizer).__name__} gives {piece!r} for ' and', without SentencePiece's "
            f"'\u2581' word mark, so words would run together. Use the checkpoint's DeBERTa-v3 (SentencePiece) "
            f"tokenizer, or compat='none'"
        )



def vle_texts(
    record: Mapping[str, Any], answer: int | None, *, names: Sequence[str], tokenizer: Any,
    tokenize: Callable[[str], list[str]], max_length: int,
) -> list[tuple[list[int], list[int], list[int], bool]]:
    """One official call on ``record``: per choice ``(input_ids, text_type_ids, object_ids, truncated)``.

    Args:
        answer: the answer in a qa2r query (None: q2a).
        names: every object's name for this call (``VLENameCounter.names``, which advances the counter).
        tokenize: ``tokenizer.tokenize`` of one word (cached by the caller: it is a pure function).
    """
    sep_id = tokenizer.sep_token_id

    def pieces(tokens: Sequence[Any]) -> list[Piece]:
        return vle_word_pieces(tokens, names, tokenize, tokenizer.convert_tokens_to_ids)

    question = pieces(record["question"])
    if answer is None:
        parts, choices = [question], [pieces(c) for c in record["answer_choices"]]
        before = [len(question) + len(c) for c in choices]
        truncate_q2a(question, choices, max_length=max_length)
    else:
        query_answer = pieces(record["answer_choices"][answer])
        parts, choices = [question, query_answer], [pieces(c) for c in record["rationale_choices"]]
        before = [len(question) + len(query_answer) + len(c) for c in choices]
        truncate_qa2r(question, query_answer, choices, max_length=max_length)
    result = []
    for choice, length_before in zip(choices, before):
        ids, tags = [], [NO_OBJECT]  # the official tags hold the [CLS] and [SEP] as "no object"
        for part in (*parts, choice):
            if ids:
                ids.append(sep_id)
                tags.append(NO_OBJECT)
            ids += [piece_id for _, piece_id, _ in part]
            tags += [tag for _, _, tag in part]
        tags.append(NO_OBJECT)
        input_ids = reencode(tokenizer, ids, max_length=max_length)
        numbering = set_order_numbering(tags)
        # The official model pads the type ids with 0 to the text length (or they run past it).
        type_ids = ([numbering[t] if t != NO_OBJECT else 0 for t in tags] + [0] * len(input_ids))[: len(input_ids)]
        truncated = sum(map(len, parts)) + len(choice) < length_before
        result.append((input_ids, type_ids, list(numbering), truncated))
    return result
