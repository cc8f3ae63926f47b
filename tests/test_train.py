"""Training: configs, resume to the same weights, interruption, and DDP on two CPU processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.training.checkpoints import checkpoint_dirs, latest_checkpoint
from vlekit.runs.experiment import ExperimentConfig, load_experiment
from vlekit.model import VCRModel
from vlekit.training.stopping import StopRequested
from vlekit.training.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("synthetic"), num_train=48, num_val=16, num_test=8, seed=1)


def tiny_overrides(data, out: Path, **train: object) -> list[str]:
    options = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "lr_multipliers": "{}", "mixed_precision": "fp32", "cpu": "true",
               "log_every_steps": 1, "out": str(out), **train}
    return [f"data.train_annotations={data.train}", f"data.val_annotations={data.val}",
            f"data.images={data.images_root}", "data.num_workers=0",
            *(f"train.{key}={value}" for key, value in options.items())]


# Dropout masks depend on how the batch is split over processes; without dropout the maths is equal.
NO_DROPOUT = [
    "model.text_encoder.hf_config.hidden_dropout_prob=0", "model.text_encoder.hf_config.attention_probs_dropout_prob=0",
    "model.fusion.hidden_dropout_prob=0", "model.fusion.attention_probs_dropout_prob=0",
]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def test_config_overrides_and_unknown_keys(tmp_path):
    config = load_experiment(None, ["train.lr=3e-5", "model.fusion=co-attention", "model.fusion.hidden_size=32"])
    assert config.train.lr == 3e-5
    assert config.model.fusion == {"name": "co-attention", "hidden_size": 32}
    with pytest.raises(TypeError, match=r"unknown option 'lr_multiplier'; did you mean 'lr_multipliers'"):
        load_experiment(None, ["train.lr_multiplier=2"])
    with pytest.raises(TypeError, match=r"unknown section 'trian'; did you mean 'train'"):
        load_experiment(None, ["trian.lr=1"])
    path = config.save(tmp_path / "config.yaml")
    assert load_experiment(path) == config


def test_example_configs_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert isinstance(load_experiment(path), ExperimentConfig), path


def test_training_learns_writes_metrics_checkpoints_and_a_loadable_model(synthetic, tmp_path):
    config = load_experiment(None, tiny_overrides(synthetic, tmp_path / "run", keep=1, save_every_steps=2))
    result = train(config, progress=False)
    assert not result.interrupted and result.global_step == 2 * (48 // 8)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == result.global_step and all(torch.isfinite(torch.tensor(losses)))
    assert [r["epoch"] for r in records if "val_accuracy" in r] == [1, 2]
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == [f"step-{result.global_step:07d}"]  # keep=1
    assert not (tmp_path / "run" / "curve.png").exists()  # train() draws nothing; `vlekit train` does
    model = VCRModel.from_pretrained(tmp_path / "run" / "model")
    assert model.text_encoder.model.config.vocab_size == len(
        __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "run" / "model" / "tokenizer"))


class StopAfter(StopRequested):
    """Acts as if SIGTERM arrived after ``steps`` optimizer steps."""

    steps = 3

    def __enter__(self):
        self.checks = 0
        return self

    @property
    def requested(self) -> bool:
        self.checks += 1
        return self.checks > self.steps

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(synthetic, tmp_path, monkeypatch):
    overrides = tiny_overrides(synthetic, tmp_path / "straight", epochs=2)
    train(load_experiment(None, overrides), progress=False)

    interrupted = tiny_overrides(synthetic, tmp_path / "interrupted", epochs=2)
    with monkeypatch.context() as patch:
        patch.setattr("vlekit.training.train.StopRequested", StopAfter)
        first = train(load_experiment(None, interrupted), progress=False)
    assert first.interrupted and first.global_step == StopAfter.steps + 1
    assert latest_checkpoint(tmp_path / "interrupted").name == f"step-{first.global_step:07d}"
    assert not (tmp_path / "interrupted" / "model").exists()
    second = train(load_experiment(None, interrupted), resume="latest", progress=False)
    assert not second.interrupted and second.global_step == 2 * (48 // 8)

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "interrupted")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlekit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_that_resumes(synthetic, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(synthetic, out, epochs=40)
    process = _cli("train", "--no-progress", *overrides)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output  # 128 + SIGTERM, the shell's convention
    assert "resume with" in output
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None and (checkpoint / "trainer_state.json").is_file()
    assert not list((out / "checkpoints").glob("*.tmp"))
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    resumed = _cli("train", "--no-progress", "--resume", *tiny_overrides(synthetic, out, epochs=40, max_steps=stopped_at + 2))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resumed from {checkpoint}" in output and (out / "model" / "model.safetensors").is_file()


def metric_rows(out: Path) -> list[dict]:
    """The training log lines (those with a loss) of a run folder's ``metrics.jsonl``."""
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def torchrun_train(processes: int, overrides: list[str]) -> subprocess.CompletedProcess:
    """``vlekit train`` in ``processes`` CPU processes (gloo). ``torchrun`` really starts them; here
    ``accelerate launch --cpu --num_processes 2`` starts one, so the tests use torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "vlekit.cli", "train", "--no-progress", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_cpu_processes_follow_the_one_process_run_step_by_step(synthetic, tmp_path):
    """DDP (gloo) on 2 processes with the same global batch: the same lr column, exactly, and the
    same loss curve as one process (2 epochs of 6 steps: warm-up, then the decay the 1-process run has)."""
    overrides = {p: tiny_overrides(synthetic, tmp_path / f"p{p}", epochs=2, batch_size=8, seed=3) + NO_DROPOUT
                 for p in (1, 2)}
    train(load_experiment(None, overrides[1]), progress=False)
    torchrun_train(2, overrides[2])
    one, two = metric_rows(tmp_path / "p1"), metric_rows(tmp_path / "p2")
    assert [r["processes"] for r in one] == [1] * 12 and [r["processes"] for r in two] == [2] * 12
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 13))
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    assert one[-1]["lr"] > 0  # the schedule reaches 0 only after the last step
    torch.testing.assert_close(torch.tensor([r["loss"] for r in two]), torch.tensor([r["loss"] for r in one]),
                               rtol=1e-3, atol=1e-4)
