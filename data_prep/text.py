"""Text of the default mode: person names, rendering, sub-token alignment, truncation, numbering.

Owns how a VCR token list becomes token ids with exact object mentions (``render_tokens``,
``tokenize_rendered``), the deterministic person names (``person_names``: one mapping per record), the
truncation rule (``longest_first_lengths``) and the assembly of one example's sequences and type ids
(``assemble_texts``). The official VLE text pipeline lives in ``data_prep.vle_text`` (``compat="vle"``).

Person names (the ``person_names`` option), one mapping per example:

* ``by-query`` (the default): the persons of the query (the question; and the answer for QA->R) in order
  of first mention, then every other person of the record in object order. The question's first person is
  always the first name, and no choice's names depend on the other choices or their order.
* ``by-object``: the k-th person among the record's objects gets the k-th name (r2c-like), whatever the texts.
* ``by-first-mention`` (runs saved before the option): in order of first mention over the question, the
  answers and the rationales, so a choice's names depend on the other choices and their order (a choice
  that did not move can read differently when others are reordered).

Layouts: ``q2a`` ``[CLS] question [SEP] answer_i [SEP]``; ``qa2r`` ``[CLS] question [SEP] answer
[SEP] rationale_i [SEP]``. Truncation removes tokens one at a time from the end of the longest part
(the later part on a tie, like Hugging Face's ``longest_first`` for two parts), and never removes a
[SEP] or a whole part. A name with any sub-token cut refers to no object. Referenced objects are
numbered k = 0, 1, ... by first mention; every sub-token of a name gets ``k + 2``.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from data_prep.constants import PERSON_NAMES, PERSON_NAMINGS

__all__ = [
    "NameSpan",
    "Tokenized",
    "first_mention_names",
    "object_person_names",
    "person_names",
    "render_tokens",
    "tokenize_rendered",
    "longest_first_lengths",
    "assemble_texts",
]

# A name's characters in rendered text: (space_start, start, end, object index); space_start
# includes the space before the name (if any), end is exclusive. Plain tuples: this is the hot path.
NameSpan = tuple[int, int, int, int]


class Tokenized(NamedTuple):
    """One text's token ids and its object mentions ``(first token, end token (exclusive), object)``."""

    ids: list[int]
    mentions: list[tuple[int, int, int]]


def person_names(record: Mapping[str, Any], naming: str = "by-query", *, answer: int | None = None) -> dict[int, str]:
    """Person object index -> name under ``naming`` (one of ``PERSON_NAMINGS``; see the module docstring).
    ``answer``: the answer in a QA->R query (None: Q->A), which ``by-query`` names with the question."""
    if naming == "by-query":
        query = [record["question"], *([] if answer is None else [record["answer_choices"][answer]])]
        return object_person_names(record["objects"], first_mention_names(query, record["objects"]))
    if naming == "by-object":
        return object_person_names(record["objects"])
    if naming == "by-first-mention":
        return first_mention_names((record["question"], *record["answer_choices"], *record["rationale_choices"]),
                                   record["objects"])
    raise ValueError(f"person_names={naming!r} is not supported; choose one of {', '.join(map(repr, PERSON_NAMINGS))}")


def first_mention_names(texts: Sequence[Sequence[str | Sequence[int]]], objects: Sequence[str]) -> dict[int, str]:
    """The persons mentioned in ``texts`` -> ``PERSON_NAMES`` in order of first mention (cycling)."""
    names: dict[int, str] = {}
    for tokens in texts:
        for token in tokens:
            if isinstance(token, str):
                continue
            for index in token:
                if index not in names and objects[index] == "person":
                    names[index] = PERSON_NAMES[len(names) % len(PERSON_NAMES)]
    return names


def object_person_names(objects: Sequence[str], names: Mapping[int, str] | None = None) -> dict[int, str]:
    """``names`` continued over every other person of ``objects``, in object order: the k-th name goes to the
    k-th person named (``by-object`` alone: the k-th person among ``objects``)."""
    names = dict(names or {})
    for index, name in enumerate(objects):
        if name == "person" and index not in names:
            names[index] = PERSON_NAMES[len(names) % len(PERSON_NAMES)]
    return names


def render_tokens(
    tokens: Sequence[str | Sequence[int]], objects: Sequence[str], person_names: Mapping[int, str]
) -> tuple[str, list[NameSpan]]:
    """Render VCR tokens to space-joined text and the character spans of the object names.

    Args:
        tokens: words and lists of object indices (``[i, j]`` renders as "name_i and name_j").
        objects: the record's object class names (non-persons are named by their class).
        person_names: person index -> name.

    Returns:
        ``(text, spans)``: spans in text order, one per named object, each
        ``(space_start, start, end, object_index)`` (``end`` exclusive).
    """
    words: list[str] = []
    named: list[tuple[int, int]] = []  # (word position, object index) of every name
    for token in tokens:
        if isinstance(token, str):
            words.append(token)
            continue
        for j, index in enumerate(token):
            if j:
                words.append("and")
            named.append((len(words), index))
            words.append(person_names[index] if objects[index] == "person" else objects[index])
    if not named:
        return " ".join(words), []
    starts = list(itertools.accumulate((len(word) + 1 for word in words), initial=0))
    spans = [(starts[w] - 1 if w else 0, starts[w], starts[w] + len(words[w]), index) for w, index in named]
    return " ".join(words), spans


def _tokenize_fast(tokenizer: Any, rendered: list[tuple[str, list[NameSpan]]]) -> list[Tokenized]:
    """Tokenize whole texts in one batch; map name character spans through the offsets."""
    batch = tokenizer(
        [text for text, _ in rendered], add_special_tokens=False, return_attention_mask=False,
        return_token_type_ids=False,
    )
    result = []
    for (_, spans), encoding in zip(rendered, batch.encodings):
        mentions = []
        if spans:
            offsets = encoding.offsets
            for space_start, start, end, obj in spans:
                first = encoding.char_to_token(start)
                last = encoding.char_to_token(end - 1)
                if first is None or last is None:  # the normaliser removed the name: nothing to tag
                    continue
                # A piece holding only the word-boundary marker before the name (SentencePiece's
                # lone "▁") covers the space: it is a sub-token of the name.
                if first > 0 and offsets[first - 1][1] > space_start:
                    first -= 1
                mentions.append((first, last + 1, obj))
        result.append(Tokenized(encoding.ids, mentions))
    return result


def _tokenize_slow(tokenizer: Any, rendered: list[tuple[str, list[NameSpan]]]) -> list[Tokenized]:
    """Encode each text piece by piece, cutting at name boundaries (always at a space)."""

    def encode(piece: str) -> list[int]:
        return tokenizer.encode(piece, add_special_tokens=False)

    result = []
    for text, spans in rendered:
        ids: list[int] = []
        mentions = []
        position = 0
        for space_start, _, end, obj in spans:
            if space_start > position:
                ids += encode(text[position:space_start])
            name_ids = encode(text[space_start:end])
            if name_ids:
                mentions.append((len(ids), len(ids) + len(name_ids), obj))
            ids += name_ids
            position = end
        if position < len(text):
            ids += encode(text[position:])
        result.append(Tokenized(ids, mentions))
    return result


def tokenize_rendered(tokenizer: Any, rendered: list[tuple[str, list[NameSpan]]]) -> list[Tokenized]:
    """Token ids and exact name mentions of rendered texts.

    Fast tokenizers map the names' character spans through the offsets of the whole text; slow
    tokenizers encode the text piece by piece at the name boundaries (which are spaces), so the
    pieces are the tokens by construction.
    """
    if getattr(tokenizer, "is_fast", False):
        return _tokenize_fast(tokenizer, rendered)
    return _tokenize_slow(tokenizer, rendered)


def longest_first_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Part lengths after removing tokens one at a time from the end of the longest part.

    Ties remove from the later part (Hugging Face's ``longest_first`` for two parts). With
    ``budget >= len(lengths)`` and no empty part, no part is emptied: a part is only cut while it
    is the longest, and the longest has more than one token while the total exceeds the budget.
    """
    kept = list(lengths)
    excess = sum(kept) - budget
    while excess > 0:
        longest = max(kept)
        part = len(kept) - 1 - kept[::-1].index(longest)
        # Cut the longest part down to the next length (or by the excess), in one step.
        others = [n for n in kept if n < longest]
        step = min(excess, longest - max(others, default=0)) if kept.count(longest) == 1 else 1
        kept[part] -= step
        excess -= step
    return kept


def assemble_texts(
    parts: Sequence[Tokenized], choices: Sequence[Tokenized], *, cls: int, sep: int, max_length: int
) -> list[tuple[list[int], list[int], list[int], bool]]:
    """The C sequences of one example: ``[CLS] part_1 [SEP] ... part_n [SEP] choice [SEP]``.

    Args:
        parts: the query parts shared by the choices (question; question and answer for qa2r).
        choices: one text per choice.

    Returns:
        per choice ``(input_ids, text_type_ids, object_ids, truncated)``; ``object_ids`` are the
        referenced VCR objects by first mention, object k tagged ``k + 2`` on its mentions.
    """
    budget = max_length - len(parts) - 2
    result = []
    for choice in choices:
        texts = [*parts, choice]
        kept = longest_first_lengths([len(t.ids) for t in texts], budget)
        ids = [cls]
        bases = []
        for text, keep in zip(texts, kept):
            bases.append(len(ids))
            ids += text.ids[:keep]
            ids.append(sep)
        tags = [0] * len(ids)
        slot_of: dict[int, int] = {}
        for text, keep, base in zip(texts, kept, bases):
            for start, end, obj in text.mentions:
                if end > keep:  # cut (partly or wholly) by truncation, and so is every later mention
                    break
                slot = slot_of.setdefault(obj, len(slot_of))
                tags[base + start : base + end] = [slot + 2] * (end - start)
        truncated = sum(kept) < sum(len(t.ids) for t in texts)
        result.append((ids, tags, list(slot_of), truncated))
    return result
