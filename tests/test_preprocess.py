"""VCR records -> multiple-choice examples and batches (data_prep/preprocess.py, data_prep/dataset.py).

Tokenizers are built locally from the fixture text (no model hub): WordPiece (BERT, fast and
slow) from a vocabulary file, and SentencePiece (DeBERTa-v2/v3 style) trained on the fly. Some
person and class names are left out of the WordPiece vocabulary so that they split into several
sub-tokens.

Golden data: tests/golden/preprocess_golden.json pins rendered examples: a hand-written record in
full, real fixture records by tags, objects, patches and a digest of their tokens (VCR text stays
out of the repository). After a reviewed, intended change of the output, regenerate it with

    VLEKIT_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_preprocess.py -k golden

and review the diff before committing.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.constants import CLIP_MEAN, CLIP_STD, GEOMETRY_MODES, PERSON_NAMES
from data_prep.dataset import VCRDataset
from data_prep.bench import benchmark_text_prep
from data_prep.geometry import box_cells, cell_patches, image_transform
from data_prep.preprocess import VCRPreprocessor
from data_prep.text import longest_first_lengths, person_names, render_tokens
from data_prep.vcr import read_vcr

GOLDEN = Path(__file__).parent / "golden" / "preprocess_golden.json"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Left out of the WordPiece vocabulary: they become several sub-tokens ("case", "##y").
SPLIT_WORDS = {"casey", "riley", "jessie", "diningtable", "cellphone"}


# --- tokenizers and records ---------------------------------------------------------------------


def _texts(records: list[dict[str, Any]]) -> list[list[Any]]:
    return [t for r in records for t in (r["question"], *r["answer_choices"], *r["rationale_choices"])]


def wordpiece_vocab(records: list[dict[str, Any]]) -> list[str]:
    words = {w for tokens in _texts(records) for t in tokens if isinstance(t, str) for w in re.findall(r"\w+|[^\w\s]", t.lower())}
    words |= {o.lower() for r in records for o in r["objects"]} | {n.lower() for n in PERSON_NAMES}
    chars = sorted({c for w in words for c in w})
    pieces = [*SPECIALS, *chars, *("##" + c for c in chars if c.isalnum()), *sorted(words - SPLIT_WORDS)]
    return list(dict.fromkeys(pieces))


@pytest.fixture(scope="module")
def records(vcr_fixtures: Path) -> list[dict[str, Any]]:
    return list(read_vcr(vcr_fixtures / "val_samples.jsonl"))


@pytest.fixture(scope="module")
def tokenizers(records: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """WordPiece fast/slow and SentencePiece fast/slow/auto tokenizers built from the fixture text."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, BertTokenizer, DebertaV2Tokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    folder = tmp_path_factory.mktemp("tokenizers")
    vocab = wordpiece_vocab(records)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")

    # Every text under every query's names (Q->A, and QA->R with each answer in the query).
    sentences = [render_tokens(t, r["objects"], _person_map(r, answer))[0] for r in records for answer in (None, 0, 1, 2, 3)
                 for t in (r["question"], *r["answer_choices"], *r["rationale_choices"])]
    spm_dir = folder / "deberta"
    spm_dir.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(spm_dir / "spm"), vocab_size=800, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    sp_fast = DebertaV2Tokenizer.from_pretrained(str(spm_dir))  # converted from spm.model
    sp_fast.save_pretrained(str(folder / "deberta-saved"))
    return {
        "bert-fast": BertTokenizer.from_pretrained(str(folder)),  # reads vocab.txt
        "bert-slow": BertTokenizerLegacy(vocab_file=str(folder / "vocab.txt")),
        "sp-fast": sp_fast,
        "sp-auto": AutoTokenizer.from_pretrained(str(folder / "deberta-saved")),
        "sp-slow": SentencePieceBackend(
            vocab_file=str(spm_dir / "spm.model"), cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
            unk_token="[UNK]", mask_token="[MASK]",
        ),
    }


def _person_map(record: dict[str, Any], answer: int | None = None) -> dict[int, str]:
    """The default (``by-query``) names, written out here: the persons of the query (question; and the answer
    ``answer`` for QA->R) in order of first mention, then the record's other persons in object order."""
    query = [record["question"], *([] if answer is None else [record["answer_choices"][answer]])]
    mentioned = [i for tokens in query for t in tokens if not isinstance(t, str) for i in t]
    persons = [i for i in dict.fromkeys([*mentioned, *range(len(record["objects"]))]) if record["objects"][i] == "person"]
    return {obj: PERSON_NAMES[k % len(PERSON_NAMES)] for k, obj in enumerate(persons)}


def stand_in_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """Boxes for every object of a record whose image is not in the fixtures."""
    boxes = [[40.0 * i, 20.0 * i, 40.0 * i + 300, 20.0 * i + 250, 1.0] for i in range(len(record["objects"]))]
    return {"width": 1920, "height": 797, "boxes": boxes}


def unlabeled(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("question", "answer_choices", "rationale_choices", "objects", "img_fn", "metadata_fn", "annot_id")
    return {k: copy.deepcopy(record[k]) for k in keep}


def prepare_all(preprocessor: VCRPreprocessor, records: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    return preprocessor.prepare_many(records, metadata=[stand_in_metadata(r) for r in records], **kwargs)


def expected_name(record: dict[str, Any], names: dict[int, str], obj: int, lowercase: bool) -> str:
    name = names[obj] if record["objects"][obj] == "person" else record["objects"][obj]
    return name.lower() if lowercase else name


def tagged_runs(tags: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of one non-zero tag: (tag, start, end)."""
    runs, position = [], 0
    for tag, group in itertools.groupby(tags):
        size = len(list(group))
        if tag:
            runs.append((tag, position, position + size))
        position += size
    return runs


def check_example(example: dict[str, Any], record: dict[str, Any], tokenizer: Any, *, max_length: int, names: bool = True) -> None:
    """The invariants every example must hold, checked independently of the implementation."""
    lowercase = bool(getattr(tokenizer, "do_lower_case", False))
    assert len(example["input_ids"]) == len(example["text_type_ids"]) == len(example["object_ids"]) == 4
    for ids, tags, objects, patches in zip(
        example["input_ids"], example["text_type_ids"], example["object_ids"], example["object_patches"]
    ):
        assert len(ids) == len(tags) <= max_length
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert all(tag == 0 for tag, i in zip(tags, ids) if i in (tokenizer.cls_token_id, tokenizer.sep_token_id))
        assert len(set(objects)) == len(objects) == len(patches)
        assert all(0 <= o < len(record["objects"]) for o in objects)
        # Every used tag has its slot, every slot is named in the text, numbered by first mention.
        runs = tagged_runs(tags)
        assert {tag for tag, _, _ in runs} == {k + 2 for k in range(len(objects))}
        first_seen = list(dict.fromkeys(tag for tag, _, _ in runs))
        assert first_seen == [k + 2 for k in range(len(objects))]
        if names:  # each run spells its object's name (several names only if the same object repeats)
            for tag, start, end in runs:
                text = tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids[start:end])).strip()
                name = expected_name(record, _person_map(record, example["answer_index"]), objects[tag - 2], lowercase)
                assert text.replace(" ", "") in {name * n for n in range(1, 4)}, (text, name)
        for patch_list in patches:
            assert patch_list == sorted(set(patch_list)) and all(0 <= p < 196 for p in patch_list)


# --- all real records ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert-fast", "bert-slow", "sp-fast", "sp-slow", "sp-auto"])
@pytest.mark.parametrize("task", ["q2a", "qa2r"])
def test_every_fixture_record_prepares(kind: str, task: str, records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers[kind]
    preprocessor = VCRPreprocessor.build(tokenizer, task=task)
    examples = prepare_all(preprocessor, records)
    assert [e["annot_id"] for e in examples] == [r["annot_id"] for r in records]
    for example, record in zip(examples, records):
        check_example(example, record, tokenizer, max_length=80)
        assert example["label"] == record["answer_label" if task == "q2a" else "rationale_label"]
        assert example["answer_index"] == (None if task == "q2a" else record["answer_label"])


@pytest.mark.parametrize("kind", ["bert-fast", "sp-fast"])
def test_unlabeled_records_prepare(kind: str, records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers[kind]
    test_records = [unlabeled(r) for r in records]
    for example, record in zip(prepare_all(VCRPreprocessor.build(tokenizer, task="q2a"), test_records), test_records):
        check_example(example, record, tokenizer, max_length=80)
        assert example["label"] is None
    expanded = [r for r in test_records for _ in range(4)]
    qa2r = prepare_all(VCRPreprocessor.build(tokenizer, task="qa2r"), expanded, answer_indices=[a for _ in test_records for a in range(4)])
    assert [e["answer_index"] for e in qa2r[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    for example, record in zip(qa2r, expanded):
        check_example(example, record, tokenizer, max_length=80)
        assert example["label"] is None
    with pytest.raises(ValueError, match="expand_answers=True"):
        VCRPreprocessor.build(tokenizer, task="qa2r").prepare_text(test_records[0], metadata=stand_in_metadata(test_records[0]))


@pytest.mark.parametrize("family", ["bert", "sp"])
@pytest.mark.parametrize("task", ["q2a", "qa2r"])
@pytest.mark.parametrize("max_length", [80, 24])
def test_fast_and_slow_tokenizers_agree(family: str, task: str, max_length: int, records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    fast = prepare_all(VCRPreprocessor.build(tokenizers[f"{family}-fast"], task=task, max_length=max_length), records)
    slow = prepare_all(VCRPreprocessor.build(tokenizers[f"{family}-slow"], task=task, max_length=max_length), records)
    assert fast == slow
    if max_length == 24:
        assert sum(sum(e["truncated"]) for e in fast) > 100


def test_layout_matches_the_tokenizers_own_pair_encoding(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["sp-fast"]
    examples = prepare_all(VCRPreprocessor.build(tokenizer, task="q2a"), records)
    for example, record in zip(examples, records):
        names = _person_map(record)
        question = render_tokens(record["question"], record["objects"], names)[0]
        for c in range(4):
            answer = render_tokens(record["answer_choices"][c], record["objects"], names)[0]
            assert example["input_ids"][c] == tokenizer(question, answer)["input_ids"]


def test_qa2r_layout(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["bert-fast"]
    record = records[0]
    example = VCRPreprocessor.build(tokenizer, task="qa2r").prepare_text(record, answer_index=1, metadata=stand_in_metadata(record))
    names = _person_map(record, 1)

    def ids(tokens: list[Any]) -> list[int]:
        return tokenizer(render_tokens(tokens, record["objects"], names)[0], add_special_tokens=False)["input_ids"]

    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for c in range(4):
        question, answer, rationale = ids(record["question"]), ids(record["answer_choices"][1]), ids(record["rationale_choices"][c])
        assert example["input_ids"][c] == [cls, *question, sep, *answer, sep, *rationale, sep]
    assert example["answer_index"] == 1 and example["label"] == record["rationale_label"]


# --- names, tags and truncation -----------------------------------------------------------------


def test_names_follow_the_query_then_the_objects_or_for_older_runs_the_first_mention(records: list[dict[str, Any]]) -> None:
    record = records[0]  # persons 0, 1, 2: question [0], answer 3 [1], rationale 1 [2]
    assert person_names(record) == _person_map(record) == {0: "Casey", 1: "Riley", 2: "Jessie"}
    many = {"objects": ["dog", *["person"] * 19], "question": ["Is", [12], "with", [5], "?"],
            "answer_choices": [[[19 - i], "."] for i in range(4)], "rationale_choices": [[[17 - i], "."] for i in range(4)]}
    by_query, by_object, by_first_mention = (person_names(many, naming) for naming in ("by-query", "by-object", "by-first-mention"))
    rest = [i for i in range(1, 20) if i not in (12, 5)]
    assert [by_query[i] for i in (12, 5, *rest)] == [PERSON_NAMES[k % 15] for k in range(19)]  # cycles past 15
    answered = person_names(many, answer=2)  # QA->R: the answer is in the query
    assert [answered[i] for i in (12, 5, 17)] == ["Casey", "Riley", "Jessie"] and answered[1] == "Jackie"
    assert [by_object[i] for i in range(1, 20)] == [PERSON_NAMES[k % 15] for k in range(19)]
    assert [by_first_mention[i] for i in (12, 5, 19, 18, 17, 16, 15, 14)] == list(PERSON_NAMES[:8])
    assert 1 not in by_first_mention  # never mentioned
    with pytest.raises(ValueError, match=r"person_names='by-name' is not supported; choose one of 'by-query', 'by-object', "
                                         r"'by-first-mention'"):
        person_names(many, "by-name")


PER_CHOICE_KEYS = ("input_ids", "text_type_ids", "object_ids", "object_patches", "truncated")


def reordered(record: dict[str, Any], task: str, order: list[int]) -> dict[str, Any]:
    """``record`` with the task's choices in ``order`` (choice i of the result is choice order[i]), label moved."""
    key, label = ("answer_choices", "answer_label") if task == "q2a" else ("rationale_choices", "rationale_label")
    return {**record, key: [record[key][i] for i in order], label: order.index(record[label])}


@pytest.mark.parametrize("task", ["q2a", "qa2r"])
def test_a_choice_reads_the_same_whatever_the_order_of_the_choices(task: str, records: list[dict[str, Any]],
                                                                   tokenizers: dict[str, Any]) -> None:
    """Reordering the choices reorders the examples' choices and nothing else (by-query names, the default, and
    by-object names); naming persons by first mention over the record (what older runs saved) renames a person
    in a choice that did not move in some real records, which is why it is no longer the default."""
    tokenizer = tokenizers["bert-fast"]
    orders = [[3, 2, 1, 0], [1, 2, 3, 0], [2, 0, 3, 1]]
    changed = {}
    for naming in ("by-query", "by-object", "by-first-mention"):
        preprocessor = VCRPreprocessor.build(tokenizer, task=task, person_names=naming)
        original = prepare_all(preprocessor, records)
        changed[naming] = set()
        for order in orders:
            for example, moved in zip(original, prepare_all(preprocessor, [reordered(r, task, order) for r in records])):
                assert moved["label"] == order.index(example["label"])
                if any(moved[key] != [example[key][i] for i in order] for key in PER_CHOICE_KEYS):
                    changed[naming].add(example["annot_id"])
    assert changed["by-query"] == changed["by-object"] == set()
    assert len(changed["by-first-mention"]) >= 3, changed["by-first-mention"]  # of 130 real records: 4 (QA->R) to 12 (Q->A)


def test_names_identical_across_calls_in_the_default_mode(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["bert-fast"]
    record, metadata = records[0], stand_in_metadata(records[0])
    deterministic = VCRPreprocessor.build(tokenizer)
    assert deterministic.prepare_text(record, metadata=metadata) == deterministic.prepare_text(record, metadata=metadata)


def test_and_carries_no_tag(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["bert-fast"]
    record = next(r for r in records if r["annot_id"] == "val-6292")
    c = next(i for i, a in enumerate(record["answer_choices"]) if any(isinstance(t, list) and len(t) == 4 for t in a))
    example = VCRPreprocessor.build(tokenizer).prepare_text(record, metadata=stand_in_metadata(record))
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"][c])
    tags = example["text_type_ids"][c]
    ands = [i for i, t in enumerate(tokens) if t == "and"]
    assert len(ands) >= 3
    for i in ands:
        assert tags[i] == 0 and tags[i - 1] > 0 and tags[i + 1] > 0 and tags[i - 1] != tags[i + 1]


def _cut_record() -> dict[str, Any]:
    return {
        "annot_id": "cut-1", "img_fn": "x.jpg", "metadata_fn": "x.json", "objects": ["person", "dog"],
        "question": ["what", "is", "this", "?"],
        "answer_choices": [["it", "is", [0]]] * 3 + [["it", "is", [1]]],
        "rationale_choices": [["because"]] * 4,
        "answer_label": 0,
    }


def test_a_mention_cut_by_truncation_refers_to_no_object(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["bert-fast"]
    record = _cut_record()
    metadata = {"width": 100, "height": 100, "boxes": [[0, 0, 10, 10, 1], [50, 50, 60, 60, 1]]}
    whole = VCRPreprocessor.build(tokenizer, max_length=11).prepare_text(record, metadata=metadata)
    assert tokenizer.convert_ids_to_tokens(whole["input_ids"][0]) == ["[CLS]", "what", "is", "this", "?", "[SEP]", "it", "is", "case", "##y", "[SEP]"]
    assert whole["text_type_ids"][0] == [0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0] and whole["object_ids"][0] == [0]
    assert whole["truncated"] == [False] * 4
    # One token over: parts tie at 4, so the answer loses its last token, "##y" of "Casey".
    cut = VCRPreprocessor.build(tokenizer, max_length=10).prepare_text(record, metadata=metadata)
    assert tokenizer.convert_ids_to_tokens(cut["input_ids"][0]) == ["[CLS]", "what", "is", "this", "?", "[SEP]", "it", "is", "case", "[SEP]"]
    assert cut["text_type_ids"][0] == [0] * 10
    assert cut["object_ids"][0] == [] and cut["object_patches"][0] == []
    assert cut["truncated"] == [True, True, True, False]  # "dog" is one token: nothing cut
    assert cut["object_ids"][3] == [1]


def test_truncation_matches_the_longest_first_loop() -> None:
    def reference(lengths: tuple[int, ...], budget: int) -> list[int]:
        kept = list(lengths)
        while sum(kept) > budget:  # Hugging Face's longest_first: ties cut the later part
            longest = max(kept)
            kept[len(kept) - 1 - kept[::-1].index(longest)] -= 1
        return kept

    for first, second, budget in itertools.product(range(12), range(12), range(2, 20)):
        assert longest_first_lengths([first, second], budget) == reference((first, second), budget)
    for lengths in itertools.product(range(1, 9), repeat=3):
        for budget in range(3, 20):
            kept = longest_first_lengths(lengths, budget)
            assert kept == reference(lengths, budget) and min(kept) >= 1


def test_lone_word_boundary_piece_belongs_to_the_name(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    record = copy.deepcopy(records[0])
    record["objects"][3] = "qxzvkj"  # unseen characters: SentencePiece gives "▁" + single characters
    record["answer_choices"][0] = ["a", [3], "and", [0]]
    metadata = stand_in_metadata(record)
    fast, slow = tokenizers["sp-fast"], tokenizers["sp-slow"]
    example = VCRPreprocessor.build(fast).prepare_text(record, metadata=metadata)
    assert example == VCRPreprocessor.build(slow).prepare_text(record, metadata=metadata)
    tokens = fast.convert_ids_to_tokens(example["input_ids"][0])
    start = tokens.index("▁", tokens.index("[SEP]"))
    slot = example["object_ids"][0].index(3) + 2
    assert example["text_type_ids"][0][start] == slot and "".join(tokens[start:start + 7]).startswith("▁")


# --- geometry -----------------------------------------------------------------------------------


def reference_patches(box: list[float], width: int, height: int, mode: str, size: int, patch: int) -> set[int]:
    """The box rule, written out independently: transform, clip, floor, row-major."""
    grid = size // patch
    if mode in ("squash", "vle-compat"):
        sx, sy, ox, oy = size / width, size / height, 0.0, 0.0
    elif mode == "letterbox":
        new_w, new_h = round(width * size / max(width, height)), round(height * size / max(width, height))
        sx, sy, ox, oy = new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2
    else:  # center-crop: short side to size (long side floored), centred crop
        new_w, new_h = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        sx, sy, ox, oy = new_w / width, new_h / height, -((new_w - size) // 2), -((new_h - size) // 2)
    x1, y1, x2, y2 = box[0] * sx + ox, box[1] * sy + oy, box[2] * sx + ox, box[3] * sy + oy
    if x2 < 0 or y2 < 0 or x1 > size or y1 > size:
        return set()
    cell = size / grid
    cols = range(min(max(math.floor(x1 / cell), 0), grid - 1), min(max(math.floor(x2 / cell), 0), grid - 1) + 1)
    rows = range(min(max(math.floor(y1 / cell), 0), grid - 1), min(max(math.floor(y2 / cell), 0), grid - 1) + 1)
    return {r * grid + c for r in rows for c in cols}


@pytest.fixture(scope="module")
def val1(vcr_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    lines = (vcr_fixtures / "val_samples.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("val1") / "val.jsonl"
    path.write_text(lines[0] + "\n", encoding="utf-8")
    (record,) = read_vcr(path, images_root=vcr_fixtures / "vcr1images")
    return record, vcr_fixtures / "vcr1images"


@pytest.mark.parametrize("geometry", GEOMETRY_MODES)
@pytest.mark.parametrize(("size", "patch"), [(224, 16), (224, 32), (336, 14)])
def test_val1_patches_follow_the_box_rule(geometry: str, size: int, patch: int, val1: tuple[dict[str, Any], Path], tokenizers: dict[str, Any]) -> None:
    record, root = val1
    meta = json.loads((root / record["metadata_fn"]).read_text())
    for task in ("q2a", "qa2r"):
        example = VCRPreprocessor.build(tokenizers["bert-fast"], task=task, geometry=geometry, image_size=size, patch_size=patch, images_root=root).prepare_text(record)
        seen = set()
        for objects, patches in zip(example["object_ids"], example["object_patches"]):
            for obj, patch_list in zip(objects, patches):
                assert set(patch_list) == reference_patches(meta["boxes"][obj], meta["width"], meta["height"], geometry, size, patch)
                seen.add(obj)
        assert seen == ({0, 1} if task == "q2a" else {0, 1, 2})
    cells = box_cells(np.array(meta["boxes"]), width=1920, height=797, image_size=size, patch_size=patch, geometry=geometry)
    for obj, box in enumerate(meta["boxes"]):  # every box, referenced or not
        assert set(cell_patches(cells[obj].tolist(), size // patch)) == reference_patches(box, 1920, 797, geometry, size, patch)


def test_val1_hand_checked_cells(val1: tuple[dict[str, Any], Path]) -> None:
    record, root = val1
    boxes = np.array(json.loads((root / record["metadata_fn"]).read_text())["boxes"])

    def patches(obj: int, geometry: str) -> list[int]:
        cells = box_cells(boxes, width=1920, height=797, image_size=224, patch_size=16, geometry=geometry)
        return cell_patches(cells[obj].tolist(), 14)

    # Person 0, x 955.7..1551.6, y 52.3..789.0 on 1920x797:
    # squash: x * 224/1920 = 111.5..181.0 -> cols 6..11; y * 224/797 = 14.7..221.8 -> rows 0..13.
    assert patches(0, "squash") == [r * 14 + c for r in range(14) for c in range(6, 12)]
    # letterbox: 1920x797 -> 224x93 placed at y 65; y 71.1..157.1 -> rows 4..9, cols as squash.
    assert patches(0, "letterbox") == [r * 14 + c for r in range(4, 10) for c in range(6, 12)]
    # The clock (object 5, x 366.8..487.2, y 0..79.3): centre-crop keeps x 157..381 of the 539-wide
    # resize, the clock lands at x -54.0..-20.2: cropped away. vle-compat still points at cols 2..3.
    assert patches(5, "center-crop") == []
    assert patches(5, "vle-compat") == [2, 3, 16, 17]
    transform = image_transform(1920, 797, image_size=224, geometry="center-crop")
    assert transform.resized == (539, 224) and transform.offset == (-157, 0)


# --- pixels -------------------------------------------------------------------------------------


def _normalise(image: Image.Image) -> torch.Tensor:
    array = (np.asarray(image, dtype=np.float32) / 255.0 - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)


def test_val1_pixels_under_each_geometry(val1: tuple[dict[str, Any], Path], tokenizers: dict[str, Any]) -> None:
    record, root = val1
    image = Image.open(root / record["img_fn"]).convert("RGB")
    pixels = {g: VCRPreprocessor.build(tokenizers["bert-fast"], geometry=g, images_root=root).load_pixels(record) for g in GEOMETRY_MODES}
    for tensor in pixels.values():
        assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    assert torch.allclose(pixels["squash"], _normalise(image.resize((224, 224), Image.Resampling.BICUBIC)), atol=1e-5)
    crop = image.resize((539, 224), Image.Resampling.BICUBIC).crop((157, 0, 381, 224))
    assert torch.allclose(pixels["center-crop"], _normalise(crop), atol=1e-5)
    assert torch.equal(pixels["vle-compat"], pixels["center-crop"])
    letterbox = pixels["letterbox"]
    padding = _normalise(Image.new("RGB", (224, 224), (123, 117, 104)))  # CLIP's mean as the nearest 8-bit colour
    assert torch.allclose(letterbox[:, :65], padding[:, :65], atol=1e-6)
    assert torch.allclose(letterbox[:, 65 + 93 :], padding[:, 65 + 93 :], atol=1e-6)
    assert torch.allclose(letterbox[:, 65 : 65 + 93], _normalise(image.resize((224, 93), Image.Resampling.BICUBIC)), atol=1e-5)


# --- collate ------------------------------------------------------------------------------------


def _with_pixels(examples: list[dict[str, Any]], size: int = 224) -> list[dict[str, Any]]:
    return [{**e, "pixel_values": torch.full((3, size, size), float(i))} for i, e in enumerate(examples)]


def test_collate_shapes_dtypes_and_padding(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["bert-fast"]
    preprocessor = VCRPreprocessor.build(tokenizer)
    examples = _with_pixels(prepare_all(preprocessor, records[:6]))
    batch = preprocessor.collate(examples)
    longest = max(len(ids) for e in examples for ids in e["input_ids"])
    slots = max(len(o) for e in examples for o in e["object_ids"])
    length = batch["input_ids"].shape[-1]
    assert length % 8 == 0 and longest <= length < longest + 8
    expected = {
        "input_ids": ((6, 4, length), torch.long),
        "attention_mask": ((6, 4, length), torch.long),
        "text_type_ids": ((6, 4, length), torch.long),
        "pixel_values": ((6, 3, 224, 224), torch.float32),
        "object_patch_mask": ((6, 4, slots, 196), torch.bool),
        "object_type_ids": ((6, 4, slots), torch.long),
        "object_mask": ((6, 4, slots), torch.long),
        "labels": ((6,), torch.long),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
    assert batch["labels"].tolist() == [r["answer_label"] for r in records[:6]]
    assert torch.equal(batch["pixel_values"][:, 0, 0, 0], torch.arange(6, dtype=torch.float32))
    for b, example in enumerate(examples):
        for c in range(4):
            ids, k = example["input_ids"][c], len(example["object_ids"][c])
            n = len(ids)
            assert batch["input_ids"][b, c, :n].tolist() == ids
            assert batch["input_ids"][b, c, n:].eq(tokenizer.pad_token_id).all()
            assert batch["attention_mask"][b, c].sum() == n and batch["attention_mask"][b, c, :n].all()
            assert batch["text_type_ids"][b, c, :n].tolist() == example["text_type_ids"][c]
            assert batch["object_mask"][b, c].tolist() == [1] * k + [0] * (slots - k)
            assert batch["object_type_ids"][b, c].tolist() == [i + 2 for i in range(k)] + [0] * (slots - k)
            for slot in range(slots):
                mask = batch["object_patch_mask"][b, c, slot]
                want = example["object_patches"][c][slot] if slot < k else []
                assert mask.nonzero().flatten().tolist() == want


def test_collate_unlabeled_no_objects_and_no_rounding(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["bert-fast"]
    record = {**_cut_record(), "objects": ["dog"], "answer_choices": [["it", "is", "a", "dog"]] * 4}
    del record["answer_label"]
    metadata = {"width": 100, "height": 100, "boxes": [[0, 0, 10, 10, 1]]}
    preprocessor = VCRPreprocessor.build(tokenizer, pad_to_multiple_of=None)
    batch = preprocessor.collate(_with_pixels([preprocessor.prepare_text(record, metadata=metadata)]))
    assert "labels" not in batch
    assert batch["input_ids"].shape == (1, 4, 11)  # [CLS] what is this ? [SEP] it is a dog [SEP]
    assert batch["object_patch_mask"].shape == (1, 4, 1, 196) and not batch["object_patch_mask"].any()
    assert batch["object_mask"].sum() == 0 and batch["object_type_ids"].sum() == 0


def test_collate_errors(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    preprocessor = VCRPreprocessor.build(tokenizers["bert-fast"])
    examples = prepare_all(preprocessor, records[:2])
    with pytest.raises(ValueError, match="has no 'pixel_values'"):
        preprocessor.collate(examples)
    with pytest.raises(ValueError, match=r"expected \(3, 224, 224\)"):
        preprocessor.collate(_with_pixels(examples, size=112))
    with pytest.raises(ValueError, match="outside the 7x7 grid"):
        VCRPreprocessor.build(tokenizers["bert-fast"], patch_size=32).collate(_with_pixels(examples))
    with pytest.raises(ValueError, match="at least one example"):
        preprocessor.collate([])


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "q2ar"}, "task='q2ar' is not supported; choose one of 'q2a', 'qa2r'"),
        ({"geometry": "crop"}, "geometry='crop' is not supported"),
        ({"compat": "official"}, "compat='official' is not supported; choose one of 'none', 'vle'"),
        ({"compat": "vle", "geometry": "squash"}, "compat='vle' reproduces the official pipeline, whose geometry is 'vle-compat'"),
        ({"task": "qa2r", "max_length": 6}, "use at least 7"),
        ({"image_size": 225}, "not a multiple of patch_size=16"),
        ({"patch_size": 0}, "patch_size must be a positive int"),
        ({"max_length": 4}, "use at least 5"),
        ({"image_std": (1.0, 0.0, 1.0)}, "image_std must be positive"),
        ({"image_mean": (0.5, 0.5)}, "image_mean must be 3 numbers"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be a positive int or None"),
    ],
)
def test_invalid_options(options: dict[str, Any], message: str, tokenizers: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        VCRPreprocessor.build(tokenizers["bert-fast"], **options)


def test_tokenizer_without_cls_is_rejected(tokenizers: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from transformers import BertTokenizer

    bare = BertTokenizer(vocab={p: i for i, p in enumerate(wordpiece_vocab(records))}, cls_token=None)
    with pytest.raises(ValueError, match="has no cls_token"):
        VCRPreprocessor.build(bare)


def test_missing_metadata_and_misused_answer_index(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    preprocessor = VCRPreprocessor.build(tokenizers["bert-fast"])
    with pytest.raises(ValueError, match="images_root="):
        preprocessor.prepare_text(records[0])
    with pytest.raises(ValueError, match="only meaningful for task='qa2r'"):
        preprocessor.prepare_text(records[0], answer_index=1, metadata=stand_in_metadata(records[0]))
    with pytest.raises(ValueError, match="answer_index must be an int in 0..3"):
        VCRPreprocessor.build(tokenizers["bert-fast"], task="qa2r").prepare_text(records[0], answer_index=4, metadata=stand_in_metadata(records[0]))


# --- full examples and the dataset on the real image --------------------------------------------


def test_call_and_dataset_on_val1(val1: tuple[dict[str, Any], Path], tokenizers: dict[str, Any]) -> None:
    record, root = val1
    preprocessor = VCRPreprocessor.build(tokenizers["bert-fast"], task="qa2r", images_root=root, geometry="letterbox")
    example = preprocessor(record)
    assert example["pixel_values"].shape == (3, 224, 224)
    dataset = VCRDataset([unlabeled(record)], preprocessor, expand_answers=True)
    assert len(dataset) == 4 and [dataset[i]["answer_index"] for i in range(4)] == [0, 1, 2, 3]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate)
    batch = next(iter(loader))
    assert batch["input_ids"].shape[:2] == (4, 4) and "labels" not in batch
    labeled = VCRDataset([record], preprocessor)
    assert len(labeled) == 1 and preprocessor.collate([labeled[0]])["labels"].tolist() == [3]
    with pytest.raises(ValueError, match="expand_answers=True"):
        VCRDataset([unlabeled(record)], preprocessor)
    with pytest.raises(ValueError, match="only applies to task='qa2r'"):
        VCRDataset([record], VCRPreprocessor.build(tokenizers["bert-fast"], images_root=root), expand_answers=True)


def test_benchmark_reports_throughput(records: list[dict[str, Any]], tokenizers: dict[str, Any]) -> None:
    result = benchmark_text_prep(records[:10], tokenizers["bert-fast"], task="qa2r", repeat=1)
    assert result["questions"] == 10 and result["questions_per_s"] > 0 and result["fast"] is True


# --- golden examples ----------------------------------------------------------------------------

# A hand-written record (VCR text stays out of the repository): multi-object mentions, persons and
# classes, a multi-piece class name ("diningtable"), and a choice that loses a name to truncation.
SYNTHETIC = {
    "annot_id": "synthetic-1",
    "img_fn": "synthetic/frame.jpg",
    "metadata_fn": "synthetic/frame.json",
    "objects": ["person", "person", "dog", "person", "diningtable", "cup"],
    "question": ["Why", "is", [0], "looking", "at", [1, 3], "?"],
    "answer_choices": [
        [[0], "wants", "the", [5], "on", "the", [4], "."],
        [[1], "and", [3], "are", "arguing", "."],
        ["The", [2], "is", "barking", "."],
        [[3, 1, 0], "are", "friends", "."],
    ],
    "rationale_choices": [
        [[0], "is", "pointing", "at", "the", [5], "."],
        ["Nothing", "happens", "."],
        [[2], "looks", "hungry", "and", [1], "holds", "food", "."],
        [[4], "is", "empty", "and", "everyone", "stands", "near", [3], "."],
    ],
    "answer_label": 0,
    "rationale_label": 0,
}
SYNTHETIC_METADATA = {
    "width": 640,
    "height": 360,
    "boxes": [[10, 20, 200, 350, 0.9], [300, 0, 420, 300, 0.9], [500, 250, 630, 359, 0.8],
              [0, 0, 639, 359, 0.7], [150, 200, 500, 359, 0.9], [0, 300, 60, 359, 0.6]],
}


def _golden_view(example: dict[str, Any], tokenizer: Any, *, text: bool) -> dict[str, Any]:
    """What a regression would change. Real VCR text is pinned by digest only (it may not enter the repo)."""
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in example["input_ids"]]
    view = {"label": example["label"], "answer_index": example["answer_index"]}
    if text:
        view["tokens"] = tokens
    else:
        view["tokens_sha1"] = [hashlib.sha1("\x1f".join(t).encode()).hexdigest() for t in tokens]
    view.update({
        "text_type_ids": example["text_type_ids"],
        "object_ids": example["object_ids"],
        "object_type_ids": [[k + 2 for k in range(len(o))] for o in example["object_ids"]],
        "object_patches": example["object_patches"],
        "truncated": example["truncated"],
    })
    return view


def _golden_cases(records: list[dict[str, Any]], val1: tuple[dict[str, Any], Path], tokenizer: Any) -> dict[str, Any]:
    record, root = val1
    by_id = {r["annot_id"]: r for r in records}
    synthetic = {
        "synthetic/q2a/squash": VCRPreprocessor.build(tokenizer).prepare_text(SYNTHETIC, metadata=SYNTHETIC_METADATA),
        "synthetic/qa2r/max-length-24": VCRPreprocessor.build(tokenizer, task="qa2r", max_length=24).prepare_text(SYNTHETIC, metadata=SYNTHETIC_METADATA),
        "synthetic/qa2r/answer-3/center-crop": VCRPreprocessor.build(tokenizer, task="qa2r", geometry="center-crop").prepare_text(
            SYNTHETIC, answer_index=3, metadata=SYNTHETIC_METADATA),
        "synthetic/q2a/letterbox-336-14": VCRPreprocessor.build(tokenizer, geometry="letterbox", image_size=336, patch_size=14).prepare_text(
            SYNTHETIC, metadata=SYNTHETIC_METADATA),
    }
    real = {}
    for task in ("q2a", "qa2r"):
        real[f"val-1/{task}/squash"] = VCRPreprocessor.build(tokenizer, task=task, images_root=root).prepare_text(record)
        for annot_id in ("val-6292", "val-41"):
            real[f"{annot_id}/{task}/stand-in"] = VCRPreprocessor.build(tokenizer, task=task).prepare_text(
                by_id[annot_id], metadata=stand_in_metadata(by_id[annot_id]))
    real["val-1/q2a/center-crop"] = VCRPreprocessor.build(tokenizer, geometry="center-crop", images_root=root).prepare_text(record)
    real["val-1/qa2r/answer-0"] = VCRPreprocessor.build(tokenizer, task="qa2r", images_root=root).prepare_text(record, answer_index=0)
    return {
        **{name: _golden_view(example, tokenizer, text=True) for name, example in synthetic.items()},
        **{name: _golden_view(example, tokenizer, text=False) for name, example in real.items()},
    }


def test_golden_examples(records: list[dict[str, Any]], val1: tuple[dict[str, Any], Path], tokenizers: dict[str, Any]) -> None:
    cases = _golden_cases(records, val1, tokenizers["bert-fast"])
    if os.environ.get("VLEKIT_REGEN_GOLDEN"):
        # One line per field, so a diff shows which case and field changed.
        blocks = [
            f"  {json.dumps(name)}: {{\n" + ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in view.items()) + "\n  }"
            for name, view in cases.items()
        ]
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("{\n" + ",\n".join(blocks) + "\n}\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert cases.keys() == golden.keys()
    for name in golden:
        assert cases[name] == golden[name], f"golden case {name} changed (see the module docstring to regenerate)"
