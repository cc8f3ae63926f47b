"""Tests of the word-level tokenizer built from VCR records."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data_prep.constants import PERSON_NAMES
from data_prep.synthetic import generate_synthetic_vcr
from data_prep.tokenizer import SPECIAL_TOKENS, build_word_tokenizer


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def string_tokens(records: list[dict[str, Any]]) -> set[str]:
    texts = [t for r in records for t in [r["question"], *r["answer_choices"], *r["rationale_choices"]]]
    return {token for text in texts for token in text if isinstance(token, str)}


@pytest.fixture(scope="module")
def fixture_tokenizer(vcr_fixtures: Path) -> PreTrainedTokenizerFast:
    return build_word_tokenizer([vcr_fixtures / "val_samples.jsonl", vcr_fixtures / "train_sample.jsonl"])


def test_special_tokens_and_ids(fixture_tokenizer: PreTrainedTokenizerFast) -> None:
    assert [fixture_tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert fixture_tokenizer.pad_token == "[PAD]" and fixture_tokenizer.pad_token_id == 0
    assert (fixture_tokenizer.cls_token, fixture_tokenizer.sep_token) == ("[CLS]", "[SEP]")
    assert (fixture_tokenizer.unk_token, fixture_tokenizer.mask_token) == ("[UNK]", "[MASK]")


def test_real_vocabulary_is_covered(vcr_fixtures: Path, fixture_tokenizer: PreTrainedTokenizerFast) -> None:
    records = read_jsonl(vcr_fixtures / "val_samples.jsonl")
    unk = fixture_tokenizer.unk_token_id
    for word in sorted(string_tokens(records)):
        ids = fixture_tokenizer(word, add_special_tokens=False)["input_ids"]
        assert ids and unk not in ids, f"{word!r} -> {ids}"
    for name in {name for r in records for name in r["objects"]} | {"and"}:
        assert unk not in fixture_tokenizer(name, add_special_tokens=False)["input_ids"], name
    assert fixture_tokenizer("zyzzyva", add_special_tokens=False)["input_ids"] == [unk]


def test_person_names_are_single_tokens(fixture_tokenizer: PreTrainedTokenizerFast) -> None:
    ids = [fixture_tokenizer(name, add_special_tokens=False)["input_ids"] for name in PERSON_NAMES]
    assert all(len(i) == 1 and i[0] != fixture_tokenizer.unk_token_id for i in ids)
    assert len({i[0] for i in ids}) == len(PERSON_NAMES)


def test_single_and_pair_layout(fixture_tokenizer: PreTrainedTokenizerFast) -> None:
    single = fixture_tokenizer("Does Casey live here ?")
    assert fixture_tokenizer.convert_ids_to_tokens(single["input_ids"]) == [
        "[CLS]", "Does", "Casey", "live", "here", "?", "[SEP]"
    ]
    pair = fixture_tokenizer("Does Casey live here ?", "No , Casey is a visitor .", return_token_type_ids=True)
    tokens = fixture_tokenizer.convert_ids_to_tokens(pair["input_ids"])
    assert tokens == ["[CLS]", "Does", "Casey", "live", "here", "?", "[SEP]",
                      "No", ",", "Casey", "is", "a", "visitor", ".", "[SEP]"]
    assert pair["token_type_ids"] == [0] * 7 + [1] * 8
    batch = fixture_tokenizer(["Does Casey live here ?", "No ."], padding=True)
    assert batch["input_ids"][1][-1] == 0 and batch["attention_mask"][1][-1] == 0


def test_offsets_map_tokens_to_characters(fixture_tokenizer: PreTrainedTokenizerFast) -> None:
    text = "Casey can't find Riley's umbrella."
    encoding = fixture_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = [text[start:end] for start, end in encoding["offset_mapping"]]
    assert pieces == fixture_tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert pieces[:5] == ["Casey", "can", "'", "t", "find"]


def test_save_and_load_round_trip(vcr_fixtures: Path, tmp_path: Path) -> None:
    built = build_word_tokenizer([vcr_fixtures / "val_samples.jsonl"], out_dir=tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.is_fast
    assert loaded.get_vocab() == built.get_vocab()
    text, pair = "What is Casey thinking ?", "Casey is thinking about Riley ."
    assert loaded(text, pair)["input_ids"] == built(text, pair)["input_ids"]
    assert (loaded.pad_token_id, loaded.cls_token, loaded.sep_token) == (0, "[CLS]", "[SEP]")


def test_sources_forms_and_determinism(vcr_fixtures: Path) -> None:
    path = vcr_fixtures / "val_samples.jsonl"
    records = read_jsonl(path)
    from_path = build_word_tokenizer(path).get_vocab()
    assert build_word_tokenizer(records).get_vocab() == from_path
    # Counted twice, the first 50 records change the frequency order, not the words.
    assert set(build_word_tokenizer([records[:50], str(path)]).get_vocab()) == set(from_path)
    assert build_word_tokenizer([path]).get_vocab() == from_path


def test_lowercase(vcr_fixtures: Path) -> None:
    tokenizer = build_word_tokenizer(vcr_fixtures / "val_samples.jsonl", lowercase=True)
    assert "casey" in tokenizer.get_vocab() and "Casey" not in tokenizer.get_vocab()
    assert tokenizer("WHAT Is")["input_ids"] == tokenizer("what is")["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer("what is", add_special_tokens=False)["input_ids"]


def test_synthetic_text_has_no_unknown_words(tmp_path: Path) -> None:
    data = generate_synthetic_vcr(tmp_path, num_train=40, num_val=10, num_test=0)
    tokenizer = build_word_tokenizer([data.train])
    words = sorted(string_tokens(read_jsonl(data.val)) | {"person", "car", "dog", "chair", "bottle", "umbrella"})
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert len(tokenizer) < 100, "a small vocabulary, as tiny models need"


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no records"):
        build_word_tokenizer([])
    with pytest.raises(FileNotFoundError, match="not found"):
        build_word_tokenizer(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        build_word_tokenizer(bad)
    with pytest.raises(TypeError, match="path"):
        build_word_tokenizer(42)  # type: ignore[arg-type]
