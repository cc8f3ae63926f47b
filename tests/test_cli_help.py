"""Every option of every sub-command says what it does (``vlekit SUBCOMMAND --help``)."""
from __future__ import annotations

import argparse
import importlib

import pytest

from vlekit.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_a_help_text(command: str) -> None:
    parser = argparse.ArgumentParser(prog=f"vlekit {command}")
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    silent = [action.option_strings or [action.dest] for action in parser._actions
              if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not silent, f"vlekit {command}: options without a help text: {silent}"
    parser.format_help()  # a '%' in a help text that is not '%%' fails here, not when a user asks


def test_train_without_a_model_section_says_what_it_trains(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.jsonl"
    code = main(["train", "--train-annotations", str(missing), "--images", str(tmp_path), "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and str(missing) in error  # the missing file named, no traceback
    assert "no model section: training the tiny random-init model" in error and "configs/vle-base-vcr-q2a.yaml" in error


def test_a_file_given_where_a_folder_goes_is_named_without_a_traceback(trained_run, tmp_path, capsys) -> None:
    """--out (or train.out) naming an existing file, or a path through one: each command says so and exits 2."""
    data, taken = trained_run.data, tmp_path / "notes.txt"
    taken.write_text("mine")
    common = ["--annotations", str(data.val), "--images", str(data.images_root), "--num-workers", "0"]
    commands = {
        "eval": ["eval", "--checkpoint", str(trained_run.q2a), *common],
        "diagnose": ["diagnose", "--run", str(trained_run.q2a), *common, "--probes", "image-blind", "--no-progress"],
        "train": ["train", "--no-progress", "--config", str(trained_run.q2a / "config.yaml")],
    }
    for name, args in commands.items():
        for out, said in ((taken, f"{taken} is a file where a folder is needed"),
                          (taken / "sub", f"{taken / 'sub'}: a part of this path is a file, not a folder")):
            where = [f"train.out={out}"] if name == "train" else ["--out", str(out)]
            assert main([*args, *where]) == 2, name
            error = capsys.readouterr().err
            assert error.startswith(f"vlekit {name}: ") and said in error and "Traceback" not in error, (name, error)
    assert taken.read_text() == "mine"
