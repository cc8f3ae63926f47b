"""Every command the README shows either runs here, offline, on the demo's kind of data, or is listed
with the reason it cannot (a GPU, a Hub download, an installer) and the test that covers it instead.

A new README command fails ``test_every_readme_command_is_run_or_accounted_for`` until it is put in
one of the two tables. Paths are the README's, mapped onto a tiny synthetic split and tiny runs.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import huggingface_hub
import pytest
from helpers import LocalHub

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.cli import main

REPO = Path(__file__).resolve().parents[1]

# README command -> why it does not run in this test, and what covers it.
NOT_HERE = {
    "make demo": "the whole demo: tests/test_demo_config.py runs it and checks the README's table",
    "make test": "the suite itself",
    "make demo && make test": "the suite and the demo (above)",
    "conda env create -f environment.yml && conda activate vlekit": "no conda here; tests/test_packaging.py and "
                                                                     "tests/test_environment.py check the file",
    "make test-latest": "installs the newest releases from PyPI (minutes)",
    "make lock": "installs the newest releases from PyPI (minutes)",
    "make lab": "a JupyterLab server: tests/test_jupyter_server.py runs 01_quickstart on its kernel",
    "vlekit train --config configs/vle-base-vcr-q2a.yaml train.batch_size=64 train.gradient_accumulation_steps=2":
        "VLE-base weights from the Hub and a GPU",
    "vlekit train --config configs/vle-base-vcr-q2a.yaml --resume": "VLE-base (above); tests/test_run_safety.py resumes",
    "vlekit train --config configs/vle-base-vcr-q2a.yaml --overwrite": "VLE-base (above); tests/test_run_safety.py",
    "accelerate launch --num_processes 8 -m vlekit.cli train --config configs/vle-base-vcr-q2a.yaml":
        "8 GPUs; tests/test_train.py and tests/test_fsdp.py run 2 CPU processes",
    "vlekit check-data --annotations vcr/val.jsonl --images vcr/vcr1images --task q2a --tokenizer "
    "microsoft/deberta-v3-base --geometry letterbox": "a Hub tokenizer; the --run line runs here, and "
                                                      "tests/test_check_data_cli.py runs --tokenizer auto",
    "vlekit eval --checkpoint runs/easy-vqa/tiny --images runs/easy-vqa/data/test --image-pattern '{image_id}.png' "
    "--questions runs/easy-vqa/data/v2_OpenEnded_easyvqa_test_questions.json --annotations "
    "runs/easy-vqa/data/v2_easyvqa_test_annotations.json --out runs/easy-vqa/tiny/eval":
        "the easy-VQA run of the lines before it; tests/test_vqa_train.py evaluates one with the same command",
    "vlekit easy-vqa runs/easy-vqa/data": "the whole easy-VQA set; tests/test_vqa_train.py converts a part",
    "vlekit train --config configs/vqa-easy-tiny.yaml": "4.5 minutes; tests/test_vqa_train.py trains the same loop",
    "python -c 'import vlekit; print(vlekit.load_run(\"you/vcr-q2a\"))'": "the Hub: tests/test_hub.py loads a pushed "
                                                                          "run back by repo id from its cache",
    "tensorboard --logdir runs/": "a viewer; tests/test_tracking.py reads the event files",
    "vlekit bench --preset vle-base --batch-size 16 32 64 --json bench.json": "a GPU",
    "vlekit train --config configs/vle-base-vcr-q2a.yaml train.init_from_vle=hfl/vle-base "
    "'model.adaptation={text: lora, vision: lora}'": "VLE-base from the Hub and a GPU; tests/test_adaptations.py trains "
                                                      "LoRA on a named official-format base, saves adapters only",
    "vlekit export --run runs/lora --merge --out runs/lora-merged": "the LoRA run of the line before; "
                                                                   "tests/test_adaptations.py exports one with --merge",
    "vlekit export --run runs/lora --format vle --out runs/lora-vle": "the LoRA run of the line before; "
                                                                     "tests/test_adaptations.py exports one as VLE's",
    "vlekit bench --preset vle-base --adaptations full frozen-encoders lora dora ia3 loha lokr oft bitfit":
        "minutes per method at VLE-base on a CPU; tests/test_adaptations.py checks the counts",
    "vlekit ablate --grid configs/grids/adaptation.yaml --out runs/adaptation": "27 training runs; notebooks/08_adaptation "
                                                                               "runs a 1-seed grid (tests/test_notebooks.py)",
    "vlekit compare runs/ablation/runs/vle/seed-0/eval runs/ablation/runs/dual-encoder/seed-0/eval --plot compare.png":
        "the ablation grid's runs (73 min); tests/test_compare.py runs the command on what vlekit eval wrote",
    "vlekit compare runs/ablation/runs/vle/seed-{0,1,2,3,4}/eval --against "
    "runs/ablation/runs/dual-encoder/seed-{0,1,2,3,4}/eval": "the ablation grid's runs; tests/test_compare.py compares "
                                                             "a tiny grid's runs and checks the grid's own statistics",
    "vlekit diagnose --run runs/easy-vqa/tiny --questions runs/easy-vqa/data/v2_OpenEnded_easyvqa_test_questions.json "
    "--annotations runs/easy-vqa/data/v2_easyvqa_test_annotations.json --images runs/easy-vqa/data/test "
    "--image-pattern '{image_id}.png' --out runs/easy-vqa/tiny/diagnose":
        "the easy-VQA run (minutes); tests/test_diagnose_vqa.py runs the command on a tiny VQA run",
    "bash scripts/gpu_evidence.sh OUT quick": "a GPU",
    "bash scripts/gpu_evidence.sh OUT notebooks": "a GPU",
    "bash scripts/gpu_evidence.sh OUT quick --dry-run": "minutes of CPU: tests/test_bench_gpu_evidence.py runs it",
}
# Commands whose README paths do not exist here: run as written with these path replacements.
PATHS = {"vcr/val.jsonl": "{data}/val.jsonl", "vcr/vcr1images": "{data}/vcr1images",
         "runs/vle-base-vcr-q2a": "{q2a}", "runs/vle-base-vcr-qa2r": "{qa2r}", "runs/demo/q2a": "{q2a}",
         "runs/eval": "{tmp}/eval"}


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks (continuation lines joined, comments dropped)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if command:
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def test_every_readme_command_is_run_or_accounted_for() -> None:
    unaccounted = [c for c in readme_commands() if c not in NOT_HERE and not c.startswith("vlekit ")]
    assert not unaccounted, f"README commands neither run by this test nor listed in NOT_HERE: {unaccounted}"
    stale = [c for c in NOT_HERE if c not in readme_commands()]
    assert not stale, f"NOT_HERE lists commands the README no longer shows: {stale}"


@pytest.fixture
def places(trained_run, tmp_path) -> dict[str, str]:
    """The shared tiny synthetic split and its Q->A and QA->R runs (conftest.trained_run, read only); what a
    command writes (``--out runs/eval``) goes to this test's own folder."""
    return {"data": str(trained_run.data.root), "q2a": str(trained_run.q2a), "qa2r": str(trained_run.qa2r),
            "tmp": str(tmp_path)}


def as_run_here(command: str, places: dict[str, str]) -> list[str]:
    for readme_path, here in PATHS.items():
        command = command.replace(readme_path, here.format(**places))
    return shlex.split(command)[1:]  # without "vlekit"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("vlekit ") and c not in NOT_HERE])
def test_a_readme_command_runs_offline_as_written(command, places, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    if command.startswith("vlekit push"):
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: LocalHub(tmp_path / "hub"))
    if command.startswith("vlekit train --config configs/demo-tiny.yaml"):
        data = Path("runs/demo/data")  # the config's own relative paths, in this test's folder
        generate_synthetic_vcr(data, num_train=64, num_val=16, num_test=0, seed=0)
        args = as_run_here(command.replace("configs/", f"{REPO}/configs/"), places) + ["train.max_steps=2"]
    else:
        args = as_run_here(command, places)
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, f"`{command}` exited {code}: {captured.err[-2000:]}"
