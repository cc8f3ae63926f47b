"""A run folder loads back as a predictor: ``vlekit.load_run`` and ``vlekit predict`` on tiny demo-style runs."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

import vlekit
from data_prep.vcr import read_vcr
from vlekit.cli import main as cli_main
from vlekit.evaluation.evaluate import evaluate
from vlekit.evaluation.predict import parse_text


@pytest.fixture(scope="module")
def runs(trained_run):
    """The shared tiny Q->A and QA->R runs of the demo's experiment (conftest.trained_run)."""
    return trained_run.data, {"q2a": trained_run.q2a, "qa2r": trained_run.qa2r}


def typed(tokens) -> str:
    """VCR tokens as a user would type them: ``[0]`` for object references."""
    return " ".join(t if isinstance(t, str) else "[" + ", ".join(map(str, t)) + "]" for t in tokens)


def test_parse_text_reads_object_references_words_and_punctuation():
    assert parse_text("Why is [0] next to [1,2] ?") == ["Why", "is", [0], "next", "to", [1, 2], "?"]
    assert parse_text("[ 3 ] isn't here.") == [[3], "isn't", "here", "."]
    with pytest.raises(ValueError, match="no words"):
        parse_text("   ")


def test_loaded_run_scores_records_as_evaluate_does(runs):
    data, folders = runs
    predictor = vlekit.load_run(folders["q2a"], device="cpu", batch_size=5)  # 12 records: batches of 5, 5, 2
    assert predictor.task == "q2a" and predictor.trained.folder == folders["q2a"] / "model"
    records = read_vcr(data.val)
    scores = predictor.score_batch(records, images_root=data.images_root)
    assert scores.shape == (12, 4) and torch.allclose(scores.sum(-1), torch.ones(12), atol=1e-5)
    evaluated = evaluate([folders["q2a"]], annotations=data.val, images=data.images_root, num_workers=0, progress=False)
    expected = torch.tensor([row["answer_probs"] for row in evaluated["predictions"]])
    assert torch.allclose(scores, expected, atol=1e-4)
    assert torch.allclose(predictor.score_record(records[3], images_root=data.images_root), scores[3], atol=1e-6)


def test_a_typed_question_about_an_image_scores_like_its_record(runs):
    data, folders = runs
    predictor = vlekit.load_run(folders["q2a"], device="cpu")
    record = next(r for r in read_vcr(data.val) if any(not isinstance(t, str) for t in r["question"]))
    image = data.images_root / record["img_fn"]
    metadata = data.images_root / record["metadata_fn"]
    scores = predictor.score_image(image, question=typed(record["question"]),
                                   choices=[typed(c) for c in record["answer_choices"]], metadata=metadata)
    assert torch.allclose(scores, predictor.score_record(record, images_root=data.images_root), atol=1e-6)

    # The same objects given as class names and boxes instead of a metadata file.
    meta = json.loads(metadata.read_text())
    boxed = predictor.score_image(image, question=typed(record["question"]),
                                  choices=[typed(c) for c in record["answer_choices"]],
                                  objects=meta["names"], boxes=[b[:4] for b in meta["boxes"]])
    assert torch.allclose(boxed, scores, atol=1e-6)

    with pytest.raises(ValueError, match=r"refers to object \[0\].*boxes="):
        predictor.score_image(image, question="What colour is [0] ?", choices=["red", "blue", "green", "grey"])
    with pytest.raises(ValueError, match="give 4 choices"):
        predictor.score_image(image, question="What is it ?", choices=["red", "blue"])
    with pytest.raises(ValueError, match="answer= is for QA->R"):
        predictor.score_image(image, question="Why ?", choices=list("abcd"), answer="yes")


def scores_printed(output: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^\s*\d\s+(\d\.\d{3})\s", output, flags=re.MULTILINE)]


def test_vlekit_predict_prints_the_four_scores_of_a_typed_question(runs, tmp_path, capsys):
    data, folders = runs
    record = next(r for r in read_vcr(data.val) if any(not isinstance(t, str) for t in r["question"]))
    image = data.images_root / record["img_fn"]
    answers = [typed(c) for c in record["answer_choices"]]
    # The frame's own metadata file (next to it, as in VCR) names and places the objects.
    code = cli_main(["predict", "--run", str(folders["q2a"]), "--image", str(image), "--device", "cpu",
                     "--question", typed(record["question"]), "--answers", *answers])
    out = capsys.readouterr().out
    scores = scores_printed(out)
    assert code == 0 and len(scores) == 4 and sum(scores) == pytest.approx(1, abs=0.01), out
    expected = vlekit.load_run(folders["q2a"], device="cpu").score_record(record, images_root=data.images_root)
    assert scores == pytest.approx(expected.tolist(), abs=1e-3) and out.count("<- best") == 1

    lone = tmp_path / "frame.jpg"  # no metadata next to it: [0] needs --boxes
    shutil.copy(image, lone)
    args = ["predict", "--run", str(folders["q2a"]), "--image", str(lone), "--device", "cpu",
            "--question", "What colour is [0] ?", "--answers", "red", "blue", "green", "grey"]
    assert cli_main(args) == 2
    error = capsys.readouterr().err
    assert "[0]" in error and "--boxes" in error and "--metadata" in error
    assert cli_main([*args, "--boxes", "dog:10,10,60,60"]) == 0
    assert len(scores_printed(capsys.readouterr().out)) == 4
    assert cli_main([*args, "--boxes", "dog:10,10"]) == 2 and "CLASS:x1,y1,x2,y2" in capsys.readouterr().err


def test_vlekit_predict_on_a_qa2r_run_scores_rationales_for_a_given_answer(runs, capsys):
    data, folders = runs
    record = read_vcr(data.val)[0]
    image = data.images_root / record["img_fn"]
    answer = typed(record["answer_choices"][record["answer_label"]])
    rationales = [typed(c) for c in record["rationale_choices"]]
    base = ["predict", "--run", str(folders["qa2r"] / "model"), "--image", str(image), "--device", "cpu",
            "--question", typed(record["question"])]
    assert cli_main([*base, "--answer", answer, "--rationales", *rationales]) == 0
    scores = scores_printed(capsys.readouterr().out)
    expected = vlekit.load_run(folders["qa2r"], device="cpu").score_record(record, images_root=data.images_root)
    assert scores == pytest.approx(expected.tolist(), abs=1e-3)
    assert cli_main([*base, "--answers", *rationales]) == 2
    assert "QA->R run: give --answer" in capsys.readouterr().err
