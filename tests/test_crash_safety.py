"""Crash safety: checkpoints vouched for by a manifest written last, SIGKILL at several moments
(one in the middle of a checkpoint write), and ``--resume`` from the last complete checkpoint."""
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

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.cli import main as cli_main
from vlekit.runs.experiment import load_experiment
from vlekit.training.checkpoints import (STALL_ENV, checkpoint_dirs, latest_checkpoint,
                                resume_checkpoint)
from vlekit.runs.manifest import MANIFEST_FILE, folder_problem
from vlekit.training.train import train

from helpers import SMALL_IMAGES, final_weights, tiny_overrides

SAVE_EVERY = 2
TOTAL_STEPS = 2 * (48 // 8)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("synthetic"), num_train=48, num_val=8, num_test=0, seed=6)


def step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def test_a_truncated_corrupted_or_unfinished_checkpoint_is_reported_and_skipped(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [*tiny_overrides(synthetic, out, save_every_steps=SAVE_EVERY, keep=3, max_steps=6), SMALL_IMAGES]
    train(load_experiment(None, overrides), progress=False)
    step2, step4, step6 = checkpoint_dirs(out)
    assert [folder_problem(c) for c in (step2, step4, step6)] == [None, None, None]
    manifest = json.loads((step6 / MANIFEST_FILE).read_text())["files"]
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json", "config.yaml"} <= set(manifest)

    weights = step6 / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # what a crash before the data reached the disk leaves
    assert folder_problem(step6) == (f"model.safetensors has {len(data) // 2} bytes, the manifest says "
                                         f"{len(data)} (truncated or rewritten)")
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one byte flipped
    assert folder_problem(step6) == "model.safetensors does not match its SHA-256 in the manifest (corrupted)"
    (step4 / MANIFEST_FILE).unlink()
    assert "no manifest.json" in folder_problem(step4)

    reports: list[str] = []
    assert latest_checkpoint(out, report=reports.append) == step2
    assert reports == [f"skipping incomplete checkpoint {step6}: {folder_problem(step6)}",
                       f"skipping incomplete checkpoint {step4}: {folder_problem(step4)}"]
    with pytest.raises(ValueError, match=r"--resume-from .*step-0000006: not a complete checkpoint: model.safetensors"):
        resume_checkpoint(str(step6), out)

    code = cli_main(["train", "--no-progress", "--resume-from", str(step4), *overrides])
    assert code == 2 and "not a complete checkpoint: no manifest.json" in capsys.readouterr().err

    resumed = train(load_experiment(None, overrides), resume="latest", progress=False)  # from step 2, to step 6
    assert resumed.global_step == 6 and folder_problem(latest_checkpoint(out)) is None
    assert f"skipping incomplete checkpoint {step6}" in capsys.readouterr().out
    assert not list((out / "checkpoints").glob("*.old")) and not list((out / "checkpoints").glob("*.tmp"))


def _start(overrides: list[str], *, resume: bool, stall_at: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop(STALL_ENV, None)
    if stall_at is not None:
        env[STALL_ENV] = str(stall_at)
    command = [sys.executable, "-m", "vlekit.cli", "train", "--no-progress", *(["--resume"] if resume else []), *overrides]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(process: subprocess.Popen, ready, *, what: str, timeout: float = 300) -> str:
    """SIGKILL ``process`` as soon as ``ready()`` holds; its output."""
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"never reached {what}:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, output
    return output


def _last_logged_step(out: Path) -> int:
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
    return max((json.loads(line).get("step", 0) for line in lines if line.strip().endswith("}")), default=0)


@pytest.mark.slow
def test_sigkill_at_several_moments_then_resume_reaches_the_uninterrupted_weights(synthetic, tmp_path):
    """Kill points: (1) inside the save of step 4, every file but the manifest written; (2) between saves,
    once step 7 is logged; (3) a crash that left the newest checkpoint truncated. Each ``--resume`` starts
    from the last complete checkpoint, loses at most one save interval, and the end result is the
    uninterrupted run's weights."""
    straight = tmp_path / "straight"
    train(load_experiment(None, tiny_overrides(synthetic, straight, save_every_steps=SAVE_EVERY)), progress=False)

    out = tmp_path / "killed"
    overrides = tiny_overrides(synthetic, out, save_every_steps=SAVE_EVERY, keep=3)
    in_save = out / "checkpoints" / "step-0000004.tmp"
    _kill_when(_start(overrides, resume=False, stall_at=4), lambda: (in_save / "config.yaml").is_file(),
               what="the save of step 4")
    assert in_save.is_dir() and not (in_save / MANIFEST_FILE).exists()
    assert [step_of(c) for c in checkpoint_dirs(out)] == [2]

    resumed = _start(overrides, resume=True)
    output = _kill_when(resumed, lambda: _last_logged_step(out) >= 7, what="step 7")
    assert "resumed from" in output and "step-0000002" in output
    killed_at = _last_logged_step(out)
    newest = latest_checkpoint(out)
    assert 0 <= killed_at - step_of(newest) <= SAVE_EVERY, (killed_at, newest)

    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    previous = checkpoint_dirs(out)[-2]
    finished = _start(overrides, resume=True)
    output, _ = finished.communicate(timeout=300)
    assert finished.returncode == 0, output
    assert f"skipping incomplete checkpoint {newest}: model.safetensors has 1000 bytes" in output
    assert f"resumed from {previous}" in output
    assert step_of(latest_checkpoint(out)) == TOTAL_STEPS
    assert not list((out / "checkpoints").glob("*.tmp"))

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("step") for r in logged] == [r.get("step") for r in straight_log]  # one history, no repeats
    assert [r["lr"] for r in logged if "lr" in r] == [r["lr"] for r in straight_log if "lr" in r]

    expected, got = final_weights(straight), final_weights(out)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
