"""``configs/demo-tiny.yaml`` is the demo's Q->A run, and the README shows what the demo prints."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlekit.demo import DemoConfig, demo_experiment, run_demo
from vlekit.runs.experiment import load_experiment

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_config_file_is_the_demos_q2a_run() -> None:
    data = SimpleNamespace(train=Path("runs/demo/data/train.jsonl"), val=Path("runs/demo/data/val.jsonl"),
                           images_root=Path("runs/demo/data/vcr1images"))
    demo = demo_experiment(DemoConfig(), task="q2a", data=data, tokenizer="auto")
    from_file = load_experiment(REPO / "configs" / "demo-tiny.yaml")
    assert from_file.train.out == "runs/demo-tiny/q2a"  # its own folder: it never collides with make demo's runs
    assert dataclasses.replace(from_file, train=dataclasses.replace(from_file.train, out=demo.train.out)) == demo


def readme_demo_table() -> list[str]:
    """The metric rows of the README's "What `make demo` does" output block."""
    section = (REPO / "README.md").read_text().split("## What `make demo` does", 1)[1]
    block = section.split("```", 2)[1]
    return [line.strip() for line in block.splitlines() if re.match(r"(Q->A|QA->R|Q->AR)\s", line)]


@pytest.mark.slow
def test_the_readme_shows_what_the_demo_prints(tmp_path, capsys) -> None:
    """The whole demo at its defaults (seed 0; about 1.5 minutes on 2 cores): its table is the README's."""
    run_demo(DemoConfig(out=str(tmp_path / "demo")), progress=False)
    printed = [line.strip() for line in capsys.readouterr().out.splitlines() if re.match(r"(Q->A|QA->R|Q->AR)\s", line)]
    assert len(printed) == 3 and printed == readme_demo_table(), "update the README's demo output to what make demo prints"
