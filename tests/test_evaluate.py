"""Evaluation: Q->A / QA->R / Q->AR with bootstrap intervals, predictions, the leaderboard CSV, the demo."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vlekit.cli import main as cli_main
from vlekit.evaluation.evaluate import bootstrap_interval, evaluate, format_metrics_table


@pytest.fixture(scope="module")
def trained(trained_run):
    """The shared tiny Q->A and QA->R runs (conftest.trained_run): their data and model folders."""
    return trained_run.data, {"q2a": trained_run.q2a / "model", "qa2r": trained_run.qa2r / "model"}


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_questions():
    rng = np.random.default_rng(0)
    small = (rng.random(50) < 0.7).astype(float)
    large = (rng.random(5000) < 0.7).astype(float)
    low, high = bootstrap_interval(small)
    assert low <= small.mean() <= high and high - low > 0.1
    low_l, high_l = bootstrap_interval(large)
    assert low_l <= large.mean() <= high_l and (high_l - low_l) < (high - low) / 5
    assert bootstrap_interval(np.ones(20)) == (1.0, 1.0)


def test_q2a_qa2r_and_q2ar_on_labelled_data(trained, tmp_path):
    data, folders = trained
    result = evaluate([folders["q2a"], folders["qa2r"]], annotations=data.val, images=data.images_root,
                      out=tmp_path, num_workers=0, progress=False)
    metrics = result["metrics"]
    assert set(metrics) == {"q2a", "qa2r", "q2ar"}
    for task, chance in (("q2a", 0.25), ("qa2r", 0.25), ("q2ar", 0.0625)):
        m = metrics[task]
        assert m["n"] == 12 and m["chance"] == chance and m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in data.val.read_text().splitlines()]
    assert [r["annot_id"] for r in rows] == [r["annot_id"] for r in records]
    for row, record in zip(rows, records):  # Q->AR counts a question only when both are right
        assert row["q2a_correct"] == (row["answer_pred"] == record["answer_label"])
        assert row["q2ar_correct"] == (row["q2a_correct"] and row["qa2r_correct"])
    assert metrics["q2ar"]["accuracy"] == pytest.approx(np.mean([r["q2ar_correct"] for r in rows]))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    table = format_metrics_table(metrics)
    assert "Q->A" in table and "QA->R" in table and "Q->AR" in table


def test_leaderboard_csv_on_unlabelled_test_records(trained, tmp_path):
    data, folders = trained
    result = evaluate([folders["q2a"], folders["qa2r"]], annotations=data.test, images=data.images_root,
                      out=tmp_path, num_workers=0, progress=False)
    assert result["metrics"] == {}
    with open(result["leaderboard"]) as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    assert header[:5] == ["annot_id", "answer_0", "answer_1", "answer_2", "answer_3"]
    assert header[5:] == [f"rationale_conditioned_on_a{i}_{j}" for i in range(4) for j in range(4)]
    test_ids = [json.loads(line)["annot_id"] for line in data.test.read_text().splitlines()]
    assert [row[0] for row in rows[1:]] == test_ids
    for row in rows[1:]:
        values = np.array(row[1:], dtype=float)
        assert values[:4].sum() == pytest.approx(1, abs=1e-4)  # answer probabilities
        assert values[4:].reshape(4, 4).sum(axis=1) == pytest.approx(np.ones(4), abs=1e-4)  # per answer


def test_an_out_holding_another_evaluation_is_refused_and_a_rerun_or_overwrite_leaves_no_stale_file(
        trained, tmp_path, capsys):
    """inputs.json records what the results are of (models with their weights' SHA-256, data files with theirs);
    the same evaluation may run again into its --out, another is refused before any work (the test split's
    leaderboard would sit beside the val split's metrics) unless --overwrite, which removes the old files."""
    from vlekit.runs.manifest import file_sha256

    data, folders = trained
    both = [str(folders["q2a"]), str(folders["qa2r"])]
    out = tmp_path / "eval"
    evaluate(both, annotations=data.test, images=data.images_root, out=out, num_workers=0, progress=False)
    inputs = json.loads((out / "inputs.json").read_text())
    manifest = json.loads((folders["q2a"] / "manifest.json").read_text())["files"]
    assert inputs["models"][0] == {"folder": str(folders["q2a"].resolve()), "task": "q2a",
                                   "weights_sha256": manifest["model.safetensors"]["sha256"]}
    assert inputs["data"]["annotations"] == {"path": str(data.test.resolve()), "sha256": file_sha256(data.test)}
    assert inputs["options"]["precision"] == {"q2a": "fp32", "qa2r": "fp32"}
    assert sorted(p.name for p in out.iterdir()) == ["inputs.json", "leaderboard.csv", "metrics.json", "predictions.jsonl"]
    evaluate(both, annotations=data.test, images=data.images_root, out=out, num_workers=0, progress=False)  # a rerun

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    arguments = ["eval", "--checkpoint", both[0], "--checkpoint", both[1], "--annotations", str(data.val),
                 "--images", str(data.images_root), "--num-workers", "0", "--out", str(out)]
    assert cli_main(arguments) == 2
    error = capsys.readouterr().err
    assert f"--out {out} holds the results of another evaluation" in error and str(data.test.resolve()) in error
    assert "--overwrite to replace them" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert cli_main([*arguments, "--overwrite"]) == 0
    assert f"written to {out}: inputs.json, metrics.json, predictions.jsonl" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["inputs.json", "metrics.json", "predictions.jsonl"]  # no stale CSV
    assert json.loads((out / "inputs.json").read_text())["data"]["annotations"]["path"] == str(data.val.resolve())

    (out / "inputs.json").unlink()  # results an older vlekit wrote: what they are of is unknown
    with pytest.raises(ValueError, match="no inputs.json: results of an older vlekit"):
        evaluate(both, annotations=data.val, images=data.images_root, out=out, num_workers=0, progress=False)


def test_eval_cli_refuses_two_models_of_one_task_and_bad_paths(trained, tmp_path, capsys):
    data, folders = trained
    code = cli_main(["eval", "--checkpoint", str(folders["q2a"]), "--checkpoint", str(folders["q2a"]),
                     "--annotations", str(data.val), "--images", str(data.images_root), "--num-workers", "0"])
    assert code == 2 and "two q2a checkpoints" in capsys.readouterr().err
    code = cli_main(["eval", "--checkpoint", str(tmp_path / "missing"), "--annotations", str(data.val),
                     "--images", str(data.images_root)])
    assert code == 2 and "expected a run folder" in capsys.readouterr().err
    code = cli_main(["eval", "--checkpoint", str(folders["q2a"].parent), "--annotations", str(data.val),
                     "--images", str(data.images_root), "--num-workers", "0"])
    assert code == 0 and "Q->A" in capsys.readouterr().out  # a run folder works too


def test_demo_smoke_writes_results_table_and_curve(tmp_path):
    from vlekit.demo import DemoConfig, run_demo

    (tmp_path / "eval").mkdir()  # what a demo of an older vlekit left: results without inputs.json
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    (tmp_path / "eval" / "leaderboard.csv").write_text("annot_id\n")
    result = run_demo(DemoConfig(out=str(tmp_path), num_train=16, num_val=8, epochs=1, batch_size=8, num_workers=0),
                      progress=False)
    assert set(result["metrics"]) == {"q2a", "qa2r", "q2ar"}
    assert "| Q->AR |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == result["metrics"]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["inputs.json", "metrics.json", "predictions.jsonl"]
