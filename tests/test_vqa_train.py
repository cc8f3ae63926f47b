"""VQA runs: ``vlekit train --task vqa`` on easy-VQA converted to the VQA v2 layout, ``vlekit eval
--questions`` (official accuracy, per answer type, the result file), starting from an official-format
VLEForVQA checkpoint, and the config errors a VQA run gives."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from data_prep.easy_vqa import convert_easy_vqa
from data_prep.tokenizer import build_word_tokenizer
from data_prep.vqa_answers import AnswerVocabulary, normalize_answer
from vlekit.cli import main
from vlekit.evaluation.evaluate import evaluate, evaluate_vqa_model
from vlekit.runs.experiment import DataConfig, load_experiment
from vlekit.hub import model_card
from vlekit.model import VCRModel, VCRModelConfig
from vlekit.training.train import train
from vlekit.vle.checkpoint import to_vle_pretrained
from vlekit.runs.data import read_split, tokenizer_records, vqa_head

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "vqa-easy-tiny.yaml"


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """The first 240 questions (24 images) of each easy-VQA split."""
    return convert_easy_vqa(tmp_path_factory.mktemp("easy_vqa"), max_questions=240)


def data_overrides(easy, *, val: bool = True) -> list[str]:
    train, test = easy["train"], easy["test"]
    overrides = [f"data.train_questions={train.questions_file}", f"data.train_annotations={train.annotations_file}",
                 f"data.images={train.image_dir}", "data.num_workers=0"]
    if val:
        overrides += [f"data.val_questions={test.questions_file}", f"data.val_annotations={test.annotations_file}",
                      f"data.val_images={test.image_dir}"]
    return overrides


def run_overrides(easy, out: Path, *extra: str, val: bool = True) -> list[str]:
    return [*data_overrides(easy, val=val), f"train.out={out}", "train.log_every_steps=1", *extra]


def eval_args(easy, run: Path, out: Path, *, annotations: bool = True) -> list[str]:
    test = easy["test"]
    args = ["eval", "--checkpoint", str(run), "--images", str(test.image_dir), "--image-pattern", test.image_pattern,
            "--questions", str(test.questions_file), "--num-workers", "0", "--out", str(out)]
    return [*args, "--annotations", str(test.annotations_file)] if annotations else args


def gold_answers(split) -> dict[int, str]:
    """easy-VQA's single answer per question, straight from the annotations file."""
    annotations = json.loads(split.annotations_file.read_text())["annotations"]
    return {a["question_id"]: a["multiple_choice_answer"] for a in annotations}


def test_vqa_train_cli_then_eval_agree_with_the_official_rules(easy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(CONFIG), *run_overrides(easy, run, "train.max_steps=6", "train.batch_size=16"),
                 "--image-pattern", "{image_id}.png", "--no-progress"]) == 0  # a flag value YAML would misread
    assert (run / "curve.png").is_file()
    saved = json.loads((run / "model" / "vlekit_config.json").read_text())
    train_answers = {normalize_answer(a) for a in gold_answers(easy["train"]).values()}
    assert saved["head"]["name"] == "vqa" and set(saved["head"]["answers"]) == train_answers  # min_count 1
    assert saved["head"]["num_labels"] == len(train_answers)
    assert json.loads((run / "model" / "data.json").read_text())["task"] == "vqa"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val_accuracy = [r["val_accuracy"] for r in records if "val_accuracy" in r][-1]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))

    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(eval_args(easy, run, out)) == 0
    printed = capsys.readouterr().out
    assert "VQA yes/no" in printed and "majority answer" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    submission = json.loads((out / "vqa_submission.json").read_text())
    questions = json.loads(easy["test"].questions_file.read_text())["questions"]
    assert [row["question_id"] for row in submission] == [q["question_id"] for q in questions]
    # easy-VQA's ten answers are identical: the official accuracy of a question is 1 or 0.
    gold = gold_answers(easy["test"])
    correct = [normalize_answer(row["answer"]) == gold[row["question_id"]] for row in submission]
    assert metrics["vqa"]["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert metrics["vqa"]["n"] == len(questions)
    # The validation figure the training loop logged (soft scores) is the same model on the same split.
    assert metrics["vqa"]["accuracy"] == pytest.approx(val_accuracy, abs=1e-6)
    kinds = {q: a["answer_type"] for q, a in ((a["question_id"], a) for a in
                                              json.loads(easy["test"].annotations_file.read_text())["annotations"])}
    for kind in ("yes/no", "other"):
        rows = [ok for row, ok in zip(submission, correct) if kinds[row["question_id"]] == kind]
        assert metrics[f"vqa {kind}"]["accuracy"] == pytest.approx(sum(rows) / len(rows))
        assert metrics[f"vqa {kind}"]["n"] == len(rows)
    majority = metrics["vqa"]["majority_answer"]
    assert metrics["vqa"]["chance"] == pytest.approx(sum(g == majority for g in gold.values()) / len(gold))
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len(questions) and len(predictions[0]["top_answers"]) == 5
    assert all(p["top_probs"] == sorted(p["top_probs"], reverse=True) for p in predictions)

    # The model card `vlekit push` writes says VQA, with the evaluation.
    card = model_card(repo_id="you/easy-vqa", model_config=saved, data=json.loads((run / "model" / "data.json").read_text()),
                      experiment=yaml.safe_load((run / "config.yaml").read_text()), metrics=metrics)
    assert "visual question answering model" in card and "| VQA yes/no |" in card and "vcr" not in card.lower()


def test_test_dev_style_questions_give_the_result_file_only(easy, tmp_path):
    run = tmp_path / "run"
    train(load_experiment(CONFIG, run_overrides(easy, run, "train.max_steps=2", "train.batch_size=8", val=False)),
          progress=False)
    out = tmp_path / "eval"
    assert main(eval_args(easy, run, out, annotations=False)) == 0
    assert (out / "vqa_submission.json").is_file() and not (out / "metrics.json").exists()
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs["data"]["questions"]["path"] == str(Path(easy["test"].questions_file).resolve())
    assert "annotations" not in inputs["data"] and inputs["options"]["image_pattern"] == easy["test"].image_pattern
    result = evaluate_vqa_model(run, questions=easy["test"].questions_file, annotations=None,
                                images=easy["test"].image_dir, image_pattern=easy["test"].image_pattern,
                                num_workers=0, progress=False)
    assert result["metrics"] == {} and len(result["predictions"]) == 240


@pytest.mark.slow
def test_vqa_learns_easy_vqa_well_above_the_majority_answer(easy, tmp_path):
    """Trained on its 240 training questions, the tiny model answers them far better than the majority
    answer does (measured, seeds 0-3: 0.65, 0.65, 0.65, 0.69 against 0.37 after 300 steps, ~18 s)."""
    run = tmp_path / "run"
    train_split = easy["train"]
    overrides = [f"data.val_questions={train_split.questions_file}", f"data.val_annotations={train_split.annotations_file}",
                 f"data.val_images={train_split.image_dir}", "train.epochs=20", "train.batch_size=16",
                 "train.eval_every_epochs=20"]
    result = train(load_experiment(CONFIG, run_overrides(easy, run, *overrides, val=False)), progress=False)
    gold = gold_answers(train_split)
    majority = max(set(gold.values()), key=list(gold.values()).count)
    baseline = sum(answer == majority for answer in gold.values()) / len(gold)
    assert result.val_accuracy > baseline + 0.15, (result.val_accuracy, baseline)


@pytest.fixture(scope="module")
def official_vqa(tmp_path_factory, easy):
    """A tiny official-format VLEForVQA checkpoint with easy-VQA's answers and a tokenizer covering its questions."""
    root = tmp_path_factory.mktemp("official_vqa")
    tokenizer = build_word_tokenizer(tokenizer_records(easy["train"].read()), out_dir=root / "tokenizer")
    answers = ["yes", "no", "circle", "rectangle", "triangle", "red", "blue", "green"]
    torch.manual_seed(0)
    model = VCRModel(config=VCRModelConfig(head={"name": "vqa", "num_labels": len(answers), "answers": answers},
                                           num_token_types=2))
    assert len(tokenizer) <= 1024
    to_vle_pretrained(model, root / "vle-base", task=None)  # a bare VLEModel, as hfl/vle-base (without its pretraining heads)
    return Path(to_vle_pretrained(model, root / "vle-vqa", task="vqa", tokenizer=tokenizer)), root / "tokenizer", answers


def test_a_run_from_an_official_vqa_checkpoint_keeps_its_answers(easy, official_vqa, tmp_path):
    folder, tokenizer, answers = official_vqa
    run = tmp_path / "run"
    overrides = run_overrides(easy, run, "data.task=vqa", "train.max_steps=2", "train.batch_size=8",
                              "train.mixed_precision=fp32", f"train.init_from_vle={folder}", f"data.tokenizer={tokenizer}", val=False)
    config = load_experiment(None, [*overrides, f'data.image_pattern="{easy["train"].image_pattern}"'])  # no model section
    train(config, progress=False)
    saved = json.loads((run / "model" / "vlekit_config.json").read_text())
    assert saved["head"]["answers"] == answers  # the checkpoint's vocabulary, not the data's
    # Another vocabulary would need another head: an error that says what to do.
    vocab = AnswerVocabulary.from_id2label(["yes", "no", "circle"]).save(tmp_path / "answers.json")
    with pytest.raises(ValueError, match=r"data.answers \(.*: 3 answers\) is not the answer vocabulary of the VLEForVQA "
                                         r"checkpoint .* \(8 answers\).*leave data.answers out"):
        train(load_experiment(None, [*overrides, f'data.image_pattern="{easy["train"].image_pattern}"',
                                     f"data.answers={vocab}", f"train.out={tmp_path / 'other'}"]), progress=False)


def test_vqa_config_errors_say_what_is_wrong(easy, tmp_path):
    with pytest.raises(ValueError, match=r"data.train_questions is a VQA option \(data.task: vqa\)"):
        DataConfig(task="q2a", train_questions="q.json")
    with pytest.raises(ValueError, match=r"data.compat='vle' is the official VCR pipeline's"):
        DataConfig(task="vqa", compat="vle")
    with pytest.raises(ValueError, match=r"data.task='vqa2' is not supported"):
        DataConfig(task="vqa2")
    with pytest.raises(ValueError, match="data.train_questions is not set"):
        read_split(DataConfig(task="vqa"), "train")
    with pytest.raises(ValueError, match=r"data.val_annotations is not set"):
        read_split(DataConfig(task="vqa", val_questions="q.json", images="x"), "val")
    vocabulary = AnswerVocabulary.from_id2label(["yes", "no"])
    with pytest.raises(ValueError, match=r"data.task=vqa trains the 'vqa' head, but model.head is 'itm'"):
        vqa_head({"name": "itm"}, vocabulary)
    with pytest.raises(ValueError, match="model.head sets num_labels / answers other than the run's"):
        vqa_head({"name": "vqa", "num_labels": 3}, vocabulary)
    assert vqa_head({"name": "vqa", "initializer_range": 0.01}, vocabulary) == {
        "name": "vqa", "initializer_range": 0.01, "num_labels": 2, "answers": ["yes", "no"]}
    # A VCR model given to the VQA evaluation, and a VQA run given to the VCR evaluation.
    run = tmp_path / "run"
    train(load_experiment(CONFIG, run_overrides(easy, run, "train.max_steps=1", "train.batch_size=8", val=False)),
          progress=False)
    assert main(["eval", "--checkpoint", str(run), "--images", str(easy["test"].image_dir)]) == 2
    with pytest.raises(ValueError, match=r"is a VQA model: evaluate it with --questions"):
        evaluate([run], annotations=tmp_path / "val.jsonl", images=easy["test"].image_dir)


def test_a_run_from_a_checkpoint_without_a_vqa_head_gets_one_for_the_data(easy, official_vqa, tmp_path):
    folder, tokenizer, _ = official_vqa
    run = tmp_path / "run"
    overrides = run_overrides(easy, run, "data.task=vqa", "train.max_steps=1", "train.batch_size=8", "data.answer_min_count=1",
                              "train.mixed_precision=fp32", f"train.init_from_vle={folder.parent / 'vle-base'}",
                              f"data.tokenizer={tokenizer}", f'data.image_pattern="{easy["train"].image_pattern}"', val=False)
    train(load_experiment(None, overrides), progress=False)
    saved = json.loads((run / "model" / "vlekit_config.json").read_text())
    assert set(saved["head"]["answers"]) == {normalize_answer(a) for a in gold_answers(easy["train"]).values()}


def test_an_official_vqa_checkpoint_evaluates_as_vle_feeds_it(easy, official_vqa, tmp_path):
    from transformers import AutoTokenizer

    from data_prep.vqa import VQADataset
    from vlekit.vle.checkpoint import from_vle_pretrained

    folder, _, answers = official_vqa
    test = easy["test"]
    result = evaluate_vqa_model(folder, questions=test.questions_file, annotations=test.annotations_file,
                                images=test.image_dir, image_pattern=test.image_pattern, num_workers=0, progress=False)
    # By hand: the official model at its resolution, VLE's processor (center crop), its tokenizer, fp32.
    model = from_vle_pretrained(folder)
    examples = test.read()[:16]
    dataset = VQADataset(examples, tokenizer=AutoTokenizer.from_pretrained(folder), vocabulary=None,
                         image_size=model.vision_encoder.image_size, geometry="center-crop")
    batch = dataset.collate([dataset[i] for i in range(len(examples))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"])["logits"]
    assert [result["predictions"][e.question_id] for e in examples] == [answers[i] for i in logits.argmax(-1).tolist()]
    assert 0 <= result["metrics"]["vqa"]["accuracy"] <= 1


@pytest.mark.slow
def test_two_cpu_processes_validate_vqa_on_every_question_once(easy, tmp_path):
    """DDP (gloo, 2 processes) with a micro-batch of 7 that leaves the last validation batch uneven: the
    accuracy the loop gathers over processes equals the single-process evaluation of the saved model."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    overrides = run_overrides(easy, run, "train.max_steps=3", "train.batch_size=14", "train.mixed_precision=fp32")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlekit.cli",
               "train", "--config", str(CONFIG), "--no-progress", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["processes"] for r in records if "loss" in r} == {2}
    logged = [r["val_accuracy"] for r in records if "val_accuracy" in r][-1]
    test = easy["test"]
    scored = evaluate_vqa_model(run, questions=test.questions_file, annotations=test.annotations_file, images=test.image_dir,
                                image_pattern=test.image_pattern, num_workers=0, progress=False)
    assert logged == pytest.approx(scored["metrics"]["vqa"]["accuracy"], abs=1e-6)
