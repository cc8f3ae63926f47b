"""A word-level tokenizer built from a dataset's own text, for tiny random-initialised models.

The machines here reach no model hub, so tests and the demo cannot download DeBERTa's
SentencePiece vocabulary. `build_word_tokenizer` makes a small fast tokenizer instead: one id per
word of the VCR records, plus every name the VCR text rendering can produce (the object class
names, VCR's person names and the "and" that joins index lists). It is an ordinary
`transformers.PreTrainedTokenizerFast`: it pads, gives offsets, builds ``[CLS] A [SEP] B [SEP]``
pairs, saves with ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained``.

`build_sentencepiece_tokenizer` makes a DeBERTa-v3-style one instead (SentencePiece pieces with the
"▁" word mark, DeBERTa's special ids): what ``compat="vle"`` needs, since the official VLE
pipeline joins pieces and encodes them again.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from data_prep.constants import PERSON_NAMES
from data_prep.vcr import check_not_packed

__all__ = ["SPECIAL_TOKENS", "build_sentencepiece_tokenizer", "build_word_tokenizer"]

# Order fixes the ids: [PAD] = 0, as embedding tables with padding_idx=0 expect.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TEXT_KEYS: tuple[str, ...] = ("question", "answer_choices", "rationale_choices")
# The word that VCR's text rendering puts between the names of an index list ("Casey and Riley").
_LIST_JOINER = "and"

RecordSource = str | Path | Mapping[str, Any] | Iterable[Mapping[str, Any]]


def build_word_tokenizer(
    sources: RecordSource | Iterable[RecordSource],
    *,
    out_dir: str | Path | None = None,
    lowercase: bool = False,
) -> PreTrainedTokenizerFast:
    """Build a word-level fast tokenizer whose vocabulary covers the given VCR records.

    Args:
        sources: VCR ``.jsonl`` paths, record dicts, lists of record dicts, or a list mixing them.
        out_dir: when given, the tokenizer is saved there with ``save_pretrained``.
        lowercase: lowercase the text (vocabulary included) before splitting it into words.

    Returns:
        A `PreTrainedTokenizerFast` with ``[PAD]`` = 0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``,
        then the words, most frequent first (ties alphabetical, so the ids are deterministic).
        Text is split on whitespace and punctuation (BERT's pre-tokenizer); a word never seen
        becomes ``[UNK]``. Single texts encode as ``[CLS] A [SEP]``, pairs as
        ``[CLS] A [SEP] B [SEP]`` with token type 1 on the ``B [SEP]`` part.
    """
    normalizer = normalizers.Lowercase() if lowercase else None
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def words(text: str) -> list[str]:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]

    counts: Counter[str] = Counter()
    num_records = 0
    for record in _iter_records(sources):
        num_records += 1
        for text in _record_strings(record):
            counts.update(words(text))
        # Class names and person names are counted zero times: they only need to be in the vocabulary.
        for name in record.get("objects", ()):
            counts.update({word: 0 for word in words(name)})
    if num_records == 0:
        raise ValueError("build_word_tokenizer got no records: pass VCR .jsonl paths or record dicts")
    for name in (*PERSON_NAMES, _LIST_JOINER):
        counts.update({word: 0 for word in words(name)})

    ordered = sorted((word for word in counts if word not in SPECIAL_TOKENS), key=lambda w: (-counts[w], w))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *ordered])}

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_sentencepiece_tokenizer(
    sources: RecordSource | Iterable[RecordSource], *, out_dir: str | Path | None = None
) -> Any:
    """A DeBERTa-v3-style SentencePiece tokenizer (one piece per word) trained on the records' text.

    Ids as DeBERTa-v3: ``[PAD]`` 0, ``[CLS]`` 1, ``[SEP]`` 2, ``[UNK]`` 3. The vocabulary covers the
    records' words, their object class names and VCR's person names. Saved to ``out_dir`` (a
    temporary folder when None) and loaded back as ``DebertaV2Tokenizer``.
    """
    import tempfile

    import sentencepiece
    from transformers import DebertaV2Tokenizer

    # The names are never in the text (it holds object indices): frequent lines keep them in the vocabulary.
    lines: list[str] = [" ".join((*PERSON_NAMES, _LIST_JOINER))] * 100
    for record in _iter_records(sources):
        lines += list(_record_strings(record))
        lines.append(" ".join(record.get("objects", ())))
    if len(lines) == 100:
        raise ValueError("build_sentencepiece_tokenizer got no records: pass VCR .jsonl paths or record dicts")
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="vlekit-spm-"))
    folder.mkdir(parents=True, exist_ok=True)
    num_words = len({word for line in lines for word in line.split()})
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(folder / "spm"), vocab_size=num_words + 16, model_type="word",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    return DebertaV2Tokenizer.from_pretrained(str(folder))


def _iter_records(sources: RecordSource | Iterable[RecordSource]) -> Iterator[Mapping[str, Any]]:
    """Yield records from paths, dicts and (nested) iterables of them."""
    if isinstance(sources, (str, Path)):
        yield from _read_jsonl(Path(sources))
    elif isinstance(sources, Mapping):
        yield sources
    elif isinstance(sources, Iterable):
        for source in sources:
            yield from _iter_records(source)
    else:
        raise TypeError(
            f"expected a VCR .jsonl path, a record dict or a list of them, got {type(sources).__name__}"
        )


def _read_jsonl(path: Path) -> Iterator[Mapping[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"VCR annotation file not found: {path}")
    check_not_packed(path)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None


def _record_strings(record: Mapping[str, Any]) -> Iterator[str]:
    """The string tokens of a record's question, answers and rationales (object references skipped)."""
    if "question" not in record:
        raise KeyError(f"record {record.get('annot_id', '?')!r} has no 'question'; is this a VCR record?")
    texts = [record["question"], *record.get("answer_choices", ()), *record.get("rationale_choices", ())]
    for text in texts:
        for token in text:
            if isinstance(token, str):
                yield token
