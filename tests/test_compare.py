"""``vlekit compare``: evaluations of different models on the same questions, paired question for question."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from data_prep.vcr import read_vcr
from vlekit.cli import main as cli_main
from vlekit.diagnose.report import question_types
from vlekit.diagnose.compare import compare_evaluations, labels_for


def write_predictions(folder: Path, rows: list[dict], inputs: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if inputs is not None:
        (folder / "inputs.json").write_text(json.dumps(inputs))
    return folder


def vcr_rows(correct: list[bool]) -> list[dict]:
    return [{"annot_id": f"val-{i}", "answer_pred": 0, "q2a_correct": ok} for i, ok in enumerate(correct)]


def test_the_paired_figures_are_those_of_the_questions_each_gets_right(tmp_path):
    reference = [i < 30 for i in range(40)]  # 30 of 40 right
    other = [i < 20 or i >= 34 for i in range(40)]  # 26 right: 10 only the reference, 6 only the other
    write_predictions(tmp_path / "a" / "eval", vcr_rows(reference))
    write_predictions(tmp_path / "b" / "eval", list(reversed(vcr_rows(other))))  # paired by id, not by line
    result = compare_evaluations([tmp_path / "a" / "eval", tmp_path / "b" / "eval"], resamples=2000)
    assert result["reference"] == "a" and result["others"] == ["b"] and result["tasks"] == ["q2a"]
    (row,) = result["rows"]
    assert row["n"] == 40 and row["reference_accuracy"] == 0.75 and row["accuracy"] == 0.65
    assert row["delta"] == pytest.approx(-0.10) and row["only_reference"] == 10 and row["only_other"] == 6
    expected_mcnemar = 2 * sum(math.comb(16, k) for k in range(7)) / 2**16  # exact binomial on the 16 discordant
    assert row["p_mcnemar"] == pytest.approx(expected_mcnemar)
    low, high = row["delta_ci95"]
    # 16 discordant questions of 40: the difference's standard error is about 0.1, its interval about 0.4 wide
    assert low < -0.10 < high and 0.3 < high - low < 0.5 and 0.05 < row["p_bootstrap"] <= 1
    assert result["by_type"] == [] and result["notes"] == [f"{tmp_path / 'a' / 'eval'} has no inputs.json naming its "
                                                           f"annotations: no per-type rows"]


def test_vqa_evaluations_compare_on_their_soft_scores_per_answer_type(tmp_path):
    kinds = ["yes/no", "number", "other"] * 4
    first = [{"question_id": q, "answer": "x", "accuracy": 1.0, "answer_type": kind} for q, kind in enumerate(kinds)]
    second = [{**row, "accuracy": 0.3 if row["answer_type"] == "number" else 1.0} for row in first]
    write_predictions(tmp_path / "one", first)
    write_predictions(tmp_path / "two", second)
    result = compare_evaluations([tmp_path / "one", tmp_path / "two"], resamples=500)
    (row,) = result["rows"]
    assert result["tasks"] == ["vqa"] and row["delta"] == pytest.approx(-0.7 / 3) and row["p_mcnemar"] is None
    by_type = {entry["type"]: entry for entry in result["by_type"]}
    assert set(by_type) == {"yes/no", "number", "other"} and by_type["number"]["delta"] == pytest.approx(-0.7)
    assert by_type["yes/no"]["delta"] == 0 and by_type["number"]["n"] == 4


def test_evaluations_of_other_questions_or_without_scores_are_refused_with_what_to_do(tmp_path, capsys):
    a = write_predictions(tmp_path / "a", vcr_rows([True] * 10))
    part = write_predictions(tmp_path / "part", vcr_rows([True] * 9))
    test = write_predictions(tmp_path / "test", [{"annot_id": f"test-{i}", "answer_pred": 1} for i in range(10)])
    with pytest.raises(ValueError, match="a scored 10 Q->A questions, part 9, 9 of them the same: evaluations compare "
                                         "only on the same questions"):
        compare_evaluations([a, part])
    with pytest.raises(ValueError, match="no question is scored: an evaluation of an unlabelled split"):
        compare_evaluations([a, test])
    with pytest.raises(ValueError, match="at least two evaluations"):
        compare_evaluations([a])
    run = tmp_path / "run"
    write_predictions(run / "eval", vcr_rows([True] * 10))
    assert cli_main(["compare", str(a), str(run)]) == 2
    assert f"vlekit compare: {run}: no predictions.jsonl; {run / 'eval'} is one" in capsys.readouterr().err
    qa2r = write_predictions(tmp_path / "qa2r", [{"annot_id": f"val-{i}", "qa2r_correct": True} for i in range(10)])
    with pytest.raises(ValueError, match=r"share no scored task \(a: Q->A; qa2r: QA->R\)"):
        compare_evaluations([a, qa2r])


def test_labels_tell_the_folders_apart_without_their_shared_last_part(tmp_path):
    assert labels_for([tmp_path / "x" / "eval", tmp_path / "y" / "eval"]) == ["x", "y"]
    assert labels_for([tmp_path / "x" / "eval", tmp_path / "x" / "eval-test"]) == ["eval", "eval-test"]
    assert labels_for([tmp_path / "x", tmp_path / "x" / "sub"]) == ["x", "x/sub"]


def test_vlekit_compare_on_what_vlekit_eval_wrote(trained_run, tmp_path, capsys):
    """The reference is the shared run's evaluation as vlekit eval wrote it (predictions.jsonl, inputs.json naming
    the val annotations); the other its copy with three Q->A outcomes turned over. Per question type the rows come
    from the annotations the reference's inputs.json names."""
    other = tmp_path / "other"
    shutil.copytree(trained_run.eval, other)
    rows = [json.loads(line) for line in (other / "predictions.jsonl").read_text().splitlines()]
    for row in rows[:3]:
        row["q2a_correct"] = not row["q2a_correct"]
        row["q2ar_correct"] = row["q2a_correct"] and row["qa2r_correct"]
    inputs = json.loads((other / "inputs.json").read_text())
    inputs["data"]["annotations"]["sha256"] = "0" * 64  # as if it read a re-saved copy of the annotations
    write_predictions(other, rows, inputs)
    original = [json.loads(line) for line in (trained_run.eval / "predictions.jsonl").read_text().splitlines()]

    json_file, png = tmp_path / "compare.json", tmp_path / "compare.png"
    assert cli_main(["compare", str(trained_run.eval), str(other), "--min-type-questions", "2", "--resamples", "500",
                     "--json", str(json_file), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "Q->A" in printed and "QA->R" in printed and "Q->AR" in printed and "per question type" in printed
    assert "files that differ in content but hold the same question ids" in printed
    result = json.loads(json_file.read_text())
    rows_by_task = {row["task"]: row for row in result["rows"]}
    assert set(rows_by_task) == {"q2a", "qa2r", "q2ar"} and rows_by_task["qa2r"]["delta"] == 0
    turned_right = sum(not row["q2a_correct"] for row in original[:3])
    q2a = rows_by_task["q2a"]
    assert (q2a["only_other"], q2a["only_reference"]) == (turned_right, 3 - turned_right)
    assert q2a["delta"] == pytest.approx((2 * turned_right - 3) / len(original))
    types = question_types(read_vcr(json.loads((trained_run.eval / "inputs.json").read_text())["data"]["annotations"]["path"]),
                           min_questions=2)
    q2a_types = {row["type"]: row["n"] for row in result["by_type"] if row["task"] == "q2a"}
    assert q2a_types == {kind: types.count(kind) for kind in set(types)} and len(q2a_types) > 1
    assert png.stat().st_size > 5000


def seeded_evaluation(root: Path, name: str, seed, correct: list[bool], weights: str) -> Path:
    """An evaluation folder whose inputs.json names a model folder with a config.yaml (train.seed: seed)."""
    model = root / name / "model"
    model.mkdir(parents=True)
    if seed is not None:
        (model / "config.yaml").write_text(f"train:\n  seed: {seed}\n")
    inputs = {"models": [{"folder": str(model), "task": "q2a", "weights_sha256": weights}]}
    return write_predictions(root / name / "eval", vcr_rows(correct), inputs)


def test_runs_a_side_pair_by_training_seed_and_say_when_they_cannot(tmp_path):
    n = 40
    a = [seeded_evaluation(tmp_path, f"a{s}", s, [i < 20 + 5 * s for i in range(n)], f"a{s}" * 8) for s in (0, 1, 2)]
    b = [seeded_evaluation(tmp_path, f"b{s}", s, [i < 22 + 5 * s for i in range(n)], f"b{s}" * 8) for s in (0, 1, 2)]
    in_order = compare_evaluations(a, against=b, resamples=500)
    shuffled = compare_evaluations(a, against=[b[2], b[0], b[1]], resamples=500)
    pairing = lambda result: [note for note in result["notes"] if "paired" in note]  # the others: no per-type rows
    assert shuffled["rows"] == in_order["rows"] and pairing(in_order) == []
    assert shuffled["pairs"] == [["a0", "b0"], ["a1", "b1"], ["a2", "b2"]]
    assert pairing(shuffled) == ["runs paired by training seed, not in the order given: a0 with b0, a1 with b1, a2 with b2"]
    # Paired otherwise, the nested bootstrap sees other pairs: the pairing is not cosmetic.
    from vlekit.diagnose.compare import paired_row, read_evaluation
    import numpy as np
    scores = lambda folders: np.array([list(read_evaluation(f).scores["q2a"].values()) for f in folders])
    assert paired_row(scores(a), scores([b[2], b[0], b[1]]), resamples=500, seed=0)["delta_ci95"] != in_order["rows"][0]["delta_ci95"]

    other_seeds = [seeded_evaluation(tmp_path, f"c{s}", s, [i < 21 for i in range(n)], f"c{s}" * 8) for s in (3, 4, 5)]
    result = compare_evaluations(a, against=other_seeds[::-1], resamples=500)
    assert result["pairs"] == [["a0", "c5"], ["a1", "c4"], ["a2", "c3"]]  # as given
    assert pairing(result) == ["the sides' training seeds (0, 1, 2 / 5, 4, 3) do not match one for one: runs paired in "
                               "the order given"]
    unknown = seeded_evaluation(tmp_path, "d", None, [True] * n, "d" * 16)
    result = compare_evaluations(a[:2], against=[unknown, b[0]], resamples=500)
    assert result["pairs"] == [["a0", "d"], ["a1", "b0"]] and "no training seed recorded for d" in pairing(result)[0]
    twice = seeded_evaluation(tmp_path, "b0-copy", 0, [True] * n, "b0" * 8)
    with pytest.raises(ValueError, match="b0 and b0-copy are evaluations of the same weights"):
        compare_evaluations(a, against=[b[0], twice, b[2]])


def test_several_runs_a_side_give_the_ablation_grids_own_statistics(tmp_path, capsys):
    """--against: the reference's runs (one per seed) and the other model's, paired in order. The difference, its
    interval and p-values are those vlekit ablate's summary gives for the same runs (bootstrap with the seeds
    nested, Welch over the seeds): a tiny grid of two variants x two seeds, compared both ways."""
    import dataclasses

    from vlekit.ablation import grid as ablation, stats as ablation_stats

    smoke = ablation.smoke_grid(tmp_path / "grid")
    grid = dataclasses.replace(smoke, max_steps=2, seeds=(0, 1),
                               synthetic_data=dataclasses.replace(smoke.synthetic_data, num_train=16, num_val=24))
    results = ablation.run_grid(grid, ablation.smoke_variants(), log=lambda _: None)
    expected = ablation_stats.compare(results, ablation_stats.NO_OBJECT_TOKENS, ablation_stats.REFERENCE, resamples=2000)

    runs = tmp_path / "grid" / "runs"
    reference = [runs / ablation_stats.REFERENCE / f"seed-{s}" / "eval" for s in (0, 1)]
    other = [runs / ablation_stats.NO_OBJECT_TOKENS / f"seed-{s}" / "eval" for s in (0, 1)]
    result = compare_evaluations(reference, against=other, resamples=2000, min_type_questions=4)
    (row,) = result["rows"]
    assert result["reference"] == "vle/seed-*" and result["others"] == ["no-object-tokens/seed-*"]
    assert row["runs"] == 2 and row["n"] == expected.questions == 24 and row["p_mcnemar"] is None
    assert row["delta"] == pytest.approx(expected.difference) and row["accuracy"] == pytest.approx(expected.mean_a)
    assert row["delta_ci95"] == pytest.approx(list(expected.ci95)) and row["p_bootstrap"] == pytest.approx(expected.p_bootstrap)
    assert row["p_welch"] == pytest.approx(expected.p_welch, nan_ok=True)
    assert sum(entry["n"] for entry in result["by_type"]) == 24

    reversed_ = compare_evaluations(reference, against=other[::-1], resamples=2000, min_type_questions=4)
    assert reversed_["rows"] == result["rows"] and reversed_["by_type"] == result["by_type"]  # paired by seed
    assert reversed_["pairs"] == result["pairs"] == [["vle/seed-0", "no-object-tokens/seed-0"],
                                                     ["vle/seed-1", "no-object-tokens/seed-1"]]
    assert result["notes"] == [] and "paired by training seed, not in the order given" in reversed_["notes"][0]
    with pytest.raises(ValueError, match="same weights .* one run counted twice"):
        compare_evaluations([reference[0], reference[0]], against=other)
    with pytest.raises(ValueError, match="give as many runs of each side"):
        compare_evaluations(reference, against=other[:1])
    args = ["compare", *map(str, reference), "--against", *map(str, other), "--resamples", "2000"]
    capsys.readouterr()  # the grid's training output
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "runs" in printed.splitlines()[0] and "p (Welch)" in printed and "p (McNemar)" not in printed
