"""``vlekit diagnose`` on a VQA run: the probes that apply to VQA (full, image-blind, question-blind, image-swap)
change what they say and nothing else, questions are scored with the official VQA accuracy, and the command
refuses the VCR-only probes. A tiny random-init model on easy-VQA (offline): the claims are about the inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vlekit
from data_prep.easy_vqa import convert_easy_vqa
from data_prep.tokenizer import build_word_tokenizer
from vlekit.cli import main as cli_main
from vlekit.diagnose import probes as P
from vlekit.diagnose.context import DiagnoseContext
from vlekit.diagnose.report import format_p, probe_row, probes_table
from vlekit.diagnose.run import VQA_PROBES, build_probes, diagnose
from vlekit.evaluation.metrics import evaluate_vqa, majority_answer
from vlekit.registry import PROBES
from vlekit.runs.data import tokenizer_records
from vlekit.runs.folder import TrainedModel, write_model_companions


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """The first 120 questions (12 images) of each easy-VQA split."""
    return convert_easy_vqa(tmp_path_factory.mktemp("easy_vqa"), max_questions=120)


@pytest.fixture(scope="module")
def run(easy, tmp_path_factory):
    """A tiny VQA model (the demo's towers, random init) as a loaded run, its answers easy-VQA's."""
    root = tmp_path_factory.mktemp("vqa_run")
    tokenizer = build_word_tokenizer(tokenizer_records(easy["train"].read()), out_dir=root / "tokenizer")
    answers = sorted({example.multiple_choice_answer for example in easy["train"].read()})
    torch.manual_seed(0)
    model = vlekit.build_model(vision_encoder={"name": "tiny-clip", "hf_config": {"image_size": 32}},
                               head={"name": "vqa", "num_labels": len(answers), "answers": answers})
    return TrainedModel(folder=root, model=model.eval(), tokenizer=tokenizer, data={"task": "vqa"}, mixed_precision="fp32")


@pytest.fixture
def context(run, easy):
    return DiagnoseContext(run, easy["test"].read(), images=easy["test"].image_dir, batch_size=16, num_workers=0,
                           progress=False)


def test_questions_are_scored_with_the_official_vqa_accuracy_and_chance_is_the_majority_answer(run, context):
    logits = context.logits("full")
    predicted = {e.question_id: run.model.head.config.answers[int(i)] for e, i in zip(context.records, logits.argmax(-1))}
    official = evaluate_vqa(predicted, context.records)
    np.testing.assert_allclose(context.score(logits), [official.per_question[e.question_id] / 100 for e in context.records])
    majority = majority_answer(context.records)
    assert context.chance == pytest.approx(evaluate_vqa({e.question_id: majority for e in context.records},
                                                        context.records).overall / 100)
    assert context.labels is None


def test_image_blind_and_question_blind_take_away_the_picture_and_the_question(run, easy, context):
    records = context.records
    other_images = [records[(i + 7) % len(records)].image_path for i in range(len(records))]
    shuffled = [type(e)(**{**e.__dict__, "image_path": path}) for e, path in zip(records, other_images)]
    # Other questions of the same length (the question's length stays visible in [SEP]'s position): words reversed.
    reworded = [type(e)(**{**e.__dict__, "question": " ".join(e.question.rstrip("?").split()[::-1]) + " ?"})
                for e in records]
    assert any(a.image_path != b.image_path for a, b in zip(records, shuffled))
    blind = lambda batch: P.ImageBlind(config=P.NoOptions()).transform(batch, context)
    sep = context.sep_token_id
    deaf = lambda batch: P.question_masked(batch, sep)
    assert not np.allclose(context.logits("full"), context.logits("shuffled", records=shuffled), atol=1e-5)
    np.testing.assert_allclose(context.logits("blind", transform=blind),
                               context.logits("blind, shuffled", transform=blind, records=shuffled), atol=1e-5)
    assert not np.allclose(context.logits("full"), context.logits("reworded", records=reworded), atol=1e-5)
    np.testing.assert_allclose(context.logits("deaf", transform=deaf),
                               context.logits("deaf, reworded", transform=deaf, records=reworded), atol=1e-5)
    # What question-blind leaves of a VQA text: [CLS] and [SEP].
    batch = run.vqa_dataset(records[:4]).collate([run.vqa_dataset(records[:4])[i] for i in range(4)])
    kept = P.question_masked(batch, sep)["attention_mask"]
    assert kept.sum(-1).tolist() == [2, 2, 2, 2] and set(batch) == set(P.question_masked(batch, sep))


def test_image_blind_decodes_no_image_of_its_own(run, context, monkeypatch):
    """image-blind replaces the pixels: its pass reads no picture. The split's images are decoded once, by full
    (which also sums the mean image image-blind shows); image-blind's scores are those of the decoded pass."""
    import data_prep.vqa

    decoded = []
    load = data_prep.vqa.load_pixels
    monkeypatch.setattr(data_prep.vqa, "load_pixels", lambda path, **options: decoded.append(path) or load(path, **options))
    blind = lambda batch: P.ImageBlind(config=P.NoOptions()).transform(batch, context)
    context.prefetch({"full": P.Pass(), "image-blind": P.Pass(transform=blind, pixels=False)})
    assert len(decoded) == len(context.records)
    decoding = DiagnoseContext(run, context.records, images=context.images, batch_size=16, num_workers=0, progress=False)
    decoding.mean_pixels()
    np.testing.assert_allclose(context.logits("image-blind"), decoding.logits("blind, decoded", transform=blind),
                               atol=1e-5)


def test_image_swap_shows_every_question_another_image_of_the_split(context):
    records = context.records
    swapped = P.swap_images(records, rng=np.random.default_rng(0))
    assert all(a.image_path != b.image_path for a, b in zip(records, swapped))
    assert [(a.question_id, a.question) for a in records] == [(b.question_id, b.question) for b in swapped]
    by_image = {}
    for a, b in zip(records, swapped):  # the questions of one image all see the same other image
        assert by_image.setdefault(a.image_path, b.image_path) == b.image_path
    assert sorted(set(by_image.values())) == sorted(set(by_image))  # every image is shown once, elsewhere
    with pytest.raises(ValueError, match="needs two images or more"):
        P.swap_images([r for r in records if r.image_path == records[0].image_path], rng=np.random.default_rng(0))
    outcome = PROBES.build("image-swap").run(context)
    assert len(outcome.scores) == len(records)
    assert not np.allclose(context.logits("image-swap"), context.logits("full"), atol=1e-5)


def test_the_vcr_only_probes_are_refused_for_a_vqa_run_and_image_swap_for_a_vcr_run():
    with pytest.raises(ValueError, match="name-swap, box-swap do not apply to a vqa run; those that do: .*image-swap"):
        build_probes(["image-blind", "name-swap", "box-swap"], "vqa")
    with pytest.raises(ValueError, match="image-swap do not apply to a q2a run"):
        build_probes(["image-swap"], "q2a")
    assert [p.name for p in build_probes(VQA_PROBES, "vqa")] == list(VQA_PROBES)


def test_soft_scores_get_no_mcnemar_test():
    reference = P.ProbeOutcome(scores=np.array([1.0, 0.3, 0.6, 0.0]))
    other = P.ProbeOutcome(scores=np.array([0.9, 0.0, 0.6, 0.0]))
    row = probe_row(other, reference, chance=0.2, resamples=200)
    assert row["p_mcnemar"] is None and row["delta"] == pytest.approx(-0.1)
    table = probes_table({"probes": {"full": probe_row(reference, reference, chance=0.2), "other": row}, "resamples": 200})
    assert "n/a" in table.splitlines()[2]
    assert (format_p(None), format_p(0.0), format_p(0.0, resamples=1000), format_p(0.0123)) == ("n/a", "<1e-300", "<0.001", "0.012")


def test_vlekit_diagnose_on_a_vqa_run(run, easy, tmp_path, capsys):
    model = tmp_path / "model"
    run.model.save_pretrained(model)
    write_model_companions(model, run.model, run.tokenizer, {"task": "vqa"})  # what vlekit train writes beside it
    test, out = easy["test"], tmp_path / "diagnose"
    args = ["diagnose", "--run", str(model), "--questions", str(test.questions_file), "--annotations",
            str(test.annotations_file), "--images", str(test.image_dir), "--image-pattern", test.image_pattern,
            "--num-workers", "0", "--no-progress", "--precision", "fp32", "--out", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "the majority answer" in printed and "per answer type" in printed
    saved = json.loads((out / "diagnose.json").read_text())
    assert list(saved["probes"]) == list(VQA_PROBES) and saved["task"] == "vqa" and saved["type_kind"] == "answer type"
    assert saved["n"] == len(test.read()) and set(saved["by_question_type"]) <= {"yes/no", "number", "other"}
    inputs = json.loads((out / "diagnose-inputs.json").read_text())
    assert inputs["data"]["questions"]["path"] == str(test.questions_file)
    assert "| image-swap |" in (out / "diagnose.md").read_text()

    assert cli_main([*args[:-2], "--out", str(tmp_path / "other"), "--probes", "name-swap"]) == 2
    assert "name-swap do not apply to a vqa run" in capsys.readouterr().err
    no_questions = [a for i, a in enumerate(args) if a != "--questions" and args[i - 1] != "--questions"]
    assert cli_main([*no_questions[:-2], "--out", str(tmp_path / "other")]) == 2
    assert "is a VQA run: give its split's --questions" in capsys.readouterr().err


def test_questions_are_for_a_vqa_run(trained_run, easy, tmp_path):
    with pytest.raises(ValueError, match="is a q2a run: --questions is for a VQA run"):
        diagnose(trained_run.q2a, questions=easy["test"].questions_file, annotations=easy["test"].annotations_file,
                 images=easy["test"].image_dir, progress=False)
