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
