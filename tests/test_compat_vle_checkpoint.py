"""Official checkpoints get official inputs; the official processor reads what vlekit exports.

An official VCR task checkpoint (tiny, random weights, built by tests/helpers.py) exported by
``to_vle_pretrained`` with its tokenizer: ``preprocessor_config.json`` and the tokenizer files are there and
load with the classes ``VLEProcessor.from_pretrained`` uses (CLIPImageProcessor, DebertaV2Tokenizer);
``vle_preprocessor`` and ``vlekit eval`` default to ``compat="vle"`` on it, and another mode warns once.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import IMAGE_SIZE, PATCH_SIZE, task_checkpoint

from data_prep.constants import CLIP_MEAN, CLIP_STD
from data_prep.synthetic import generate_synthetic_vcr
from data_prep.vcr import read_vcr
from vlekit.vle.checkpoint import from_vle_pretrained, to_vle_pretrained
from vlekit.vle.processor import official_vcr_task, vle_preprocessor


def deberta_tokenizer(folder: Path, sentences: list[str]) -> Any:
    import sentencepiece as spm
    from transformers import DebertaV2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(folder / "spm"), vocab_size=90, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    return DebertaV2Tokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("official")
    data = generate_synthetic_vcr(root / "data", num_train=4, num_val=4, num_test=2, seed=3)
    records = list(read_vcr(data.val))
    sentences = [" ".join(w if isinstance(w, str) else "Casey and dog" for w in t)
                 for r in records for t in (r["question"], *r["answer_choices"], *r["rationale_choices"])]
    tokenizer = deberta_tokenizer(root / "tok", sentences * 20)
    directory, _, _ = task_checkpoint(root, "q2a")
    model = from_vle_pretrained(directory, "q2a")
    folder = to_vle_pretrained(model, root / "exported", task="q2a", tokenizer=tokenizer)
    return folder, data


def test_the_export_holds_what_the_official_processor_reads(exported: tuple[Path, Any]) -> None:
    from transformers import DebertaV2Tokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder, _ = exported
    config = json.loads((folder / "preprocessor_config.json").read_text())
    assert config["processor_class"] == "VLEProcessor" and config["image_processor_type"] == "CLIPImageProcessor"
    assert config["crop_size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE} and config["size"] == {"shortest_edge": IMAGE_SIZE}
    assert tuple(config["image_mean"]) == CLIP_MEAN and tuple(config["image_std"]) == CLIP_STD
    image_processor = CLIPImageProcessorPil.from_pretrained(str(folder))
    assert image_processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE} and image_processor.do_center_crop
    tokenizer = DebertaV2Tokenizer.from_pretrained(str(folder))
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (1, 2, 0)


def test_vle_preprocessor_defaults_to_compat_vle_on_a_task_checkpoint(exported: tuple[Path, Any]) -> None:
    folder, _ = exported
    assert official_vcr_task(folder) == "q2a"
    preprocessor = vle_preprocessor(folder)
    settings = preprocessor.config
    assert (settings.task, settings.compat, settings.geometry) == ("q2a", "vle", "vle-compat")
    assert (settings.image_size, settings.patch_size) == (IMAGE_SIZE, PATCH_SIZE)
    with pytest.warns(UserWarning, match="official VLE VCR checkpoint.*compat='none'"):
        other = vle_preprocessor(folder, compat="none")
    assert other.config.compat == "none"


def test_eval_feeds_an_official_checkpoint_compat_vle_and_warns_once_otherwise(exported: tuple[Path, Any]) -> None:
    from vlekit.evaluation.evaluate import evaluate, load_trained

    folder, data = exported
    trained = load_trained(folder)
    assert trained.official and trained.data == {"task": "q2a", "compat": "vle"}
    options = dict(annotations=data.val, images=data.images_root, batch_size=2, num_workers=0, progress=False, resamples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default mode: no warning
        result = evaluate([folder], **options)
    assert result["metrics"]["q2a"]["n"] == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        evaluate([folder], compat="none", **options)
        evaluate([folder], compat="none", **options)
    assert [str(w.message).count("compat='none'") for w in caught if w.category is UserWarning] == [1]
