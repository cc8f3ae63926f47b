"""``vlekit runs``: the run folders under a folder, where each stands, its scores and the options that differ."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from vlekit.cli import main as cli_main
from vlekit.evaluation.overview import find_runs, summarize_run


def _copy_run(source: Path, target: Path, adaptation: object = None, **train: object) -> Path:
    """A copy of a finished run with ``train`` options and ``model.adaptation`` changed in its config.yaml."""
    shutil.copytree(source, target)
    saved = yaml.safe_load((target / "config.yaml").read_text())
    saved["train"].update(train, out=str(target))
    saved["model"]["adaptation"] = adaptation or {}
    (target / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return target


def test_runs_are_found_summarised_and_their_differences_tabled(trained_run, tmp_path, capsys):
    root = tmp_path / "runs"
    finished = _copy_run(trained_run.q2a, root / "lr-1e-3", adaptation={"text": "bitfit"})
    stopped = _copy_run(trained_run.q2a, root / "sweep" / "lr-3e-3", adaptation={"text": {"name": "lora", "r": 4}}, lr=3e-3)
    shutil.rmtree(stopped / "model")  # a run a time limit cut short: checkpoints, no model/
    running = _copy_run(trained_run.q2a, root / "sweep" / "lr-1e-2", lr=1e-2)
    shutil.rmtree(running / "model")
    (running / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}))
    with (running / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # a line being written
    (root / "sweep" / "notes").mkdir()  # not a run
    (root / "sweep" / "up").symlink_to(root)  # a link back up: read once, no loop
    shutil.copytree(trained_run.q2a / "model", root / "exported")  # a model folder is not a run either

    assert find_runs([root]) == [root / "lr-1e-3", root / "sweep" / "lr-1e-2", root / "sweep" / "lr-3e-3"]
    logged = [json.loads(line) for line in (trained_run.q2a / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in logged if "val_accuracy" in r]
    summary = summarize_run(finished)
    assert (summary.task, summary.state, summary.step) == ("q2a", "finished", logged[-1]["step"])
    assert summary.val == summary.best_val == val[-1]["val_accuracy"] and summary.best_step == val[-1]["step"]
    assert summary.train_loss == [r for r in logged if "loss" in r][-1]["loss"]
    assert summarize_run(stopped).state == f"stopped: {next((stopped / 'checkpoints').iterdir()).name}"
    assert summarize_run(running).state == f"running (pid {os.getpid()})"
    (running / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))  # a killed run's
    assert summarize_run(running).state.startswith("stopped: step-")

    assert cli_main(["runs", str(root), "--plot", str(tmp_path / "runs.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "task", "state", "step", "train", "loss", "val", "%", "best", "val", "%", "(step)",
                                "model.adaptation.text", "train.lr"]  # every run has its own train.out: not a column
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert rows.keys() == {"lr-1e-3", "sweep/lr-1e-2", "sweep/lr-3e-3"}
    assert rows["lr-1e-3"].split()[-2:] == ["bitfit", "0.001"] and rows["sweep/lr-3e-3"].split()[-2:] == ["lora(r=4)", "0.003"]
    assert rows["sweep/lr-1e-2"].split()[-2:] == ["-", "0.01"]  # a component spec is one column, whatever its form
    assert "finished" in rows["lr-1e-3"] and "stopped: step-" in rows["sweep/lr-3e-3"]
    assert f"{100 * val[-1]['val_accuracy']:.1f} ({val[-1]['step']})" in rows["lr-1e-3"]
    assert lines[4] == f"curves: {tmp_path / 'runs.png'}" and (tmp_path / "runs.png").stat().st_size > 10_000

    assert cli_main(["runs", str(finished), "--markdown"]) == 0  # one run: its own name, no option columns
    assert capsys.readouterr().out.splitlines()[2].startswith("| lr-1e-3 | q2a | finished |")
    assert cli_main(["runs", str(root / "sweep" / "notes")]) == 1
    assert "no run folder" in capsys.readouterr().err
    assert cli_main(["runs", str(tmp_path / "missing")]) == 2


def test_metrics_being_written_are_read_as_far_as_they_go_and_damage_is_named(tmp_path):
    import pytest

    from vlekit.runs.folder import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.5}\n\n{"step": 2, "loss": 1.4}\n{"step": 3, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.4}]
    path.write_text('{"step": 1, "loss": 1.5}\n{"step": 2, "lo\n{"step": 3, "loss": 1.3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record .* damaged"):
        read_metrics(path)
