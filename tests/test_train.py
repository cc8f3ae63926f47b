"""Training: configs, resume to the same weights, interruption, and DDP on two CPU processes."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import NO_DROPOUT, SMALL_IMAGES, final_weights, metric_rows, tiny_overrides, torchrun_train

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


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory):
    """Eight training questions: one batch, which the tiny model learns within a few epochs."""
    return generate_synthetic_vcr(tmp_path_factory.mktemp("one-batch"), num_train=8, num_val=8, num_test=0, seed=1)


LEARN_EPOCHS, WINDOW = 16, 4


def test_training_learns_writes_metrics_checkpoints_and_a_loadable_model(one_batch, tmp_path):
    """The loss falls: the mean of the last four logged losses is well below that of the first four.

    Measured (16 steps at lr 2e-3 on one batch of 8, 32 px images, no dropout, train.seed 0, 1 and 2):
    first four 1.38 each time (chance is ln 4 = 1.386), last four 0.57 to 0.71. The test asks for the
    start at chance and a fall of at least 0.3.
    """
    overrides = tiny_overrides(one_batch, tmp_path / "run", epochs=LEARN_EPOCHS, lr=2e-3, keep=1, save_every_steps=4,
                               eval_every_epochs=LEARN_EPOCHS // 2)
    overrides += [*NO_DROPOUT, SMALL_IMAGES]
    result = train(load_experiment(None, overrides), progress=False)
    assert not result.interrupted and result.global_step == LEARN_EPOCHS  # one step per epoch
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == result.global_step and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:WINDOW]) / WINDOW, sum(losses[-WINDOW:]) / WINDOW
    assert abs(first - math.log(4)) < 0.05, f"not at chance at the start: {losses}"
    assert last < first - 0.3, f"the loss did not fall: first {WINDOW} {first:.3f}, last {WINDOW} {last:.3f}: {losses}"
    assert [r["epoch"] for r in records if "val_accuracy" in r] == [LEARN_EPOCHS // 2, LEARN_EPOCHS]
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


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("ten"), num_train=10, num_val=4, num_test=0, seed=1)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(ten, tmp_path, monkeypatch):
    """2 epochs of 5 steps (batches of 2, 32 px), dropout on: stopped after step 4 (inside epoch 1), resumed
    across the epoch boundary to the uninterrupted run's weights."""
    straight = [*tiny_overrides(ten, tmp_path / "straight", epochs=2, batch_size=2), SMALL_IMAGES]
    train(load_experiment(None, straight), progress=False)

    interrupted = [*tiny_overrides(ten, tmp_path / "interrupted", epochs=2, batch_size=2), SMALL_IMAGES]
    with monkeypatch.context() as patch:
        patch.setattr("vlekit.training.train.StopRequested", StopAfter)
        first = train(load_experiment(None, interrupted), progress=False)
    assert first.interrupted and first.global_step == StopAfter.steps + 1 < 10 // 2
    assert latest_checkpoint(tmp_path / "interrupted").name == f"step-{first.global_step:07d}"
    assert not (tmp_path / "interrupted" / "model").exists()
    second = train(load_experiment(None, interrupted), resume="latest", progress=False)
    assert not second.interrupted and second.global_step == 2 * (10 // 2)

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "interrupted")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)


def test_a_resume_with_options_that_change_the_run_is_refused_unless_allowed(ten, tmp_path, monkeypatch, capsys):
    """Resuming with another batch size (the data position and schedule of another run) is refused before
    anything is written, naming the options and the ways out; bookkeeping options (logging, workers, where the
    data is) may change and are reported; --allow-changes goes on with the new values and says so."""
    overrides = [*tiny_overrides(ten, tmp_path / "run", epochs=2, batch_size=2), SMALL_IMAGES]
    with monkeypatch.context() as patch:
        patch.setattr("vlekit.training.train.StopRequested", StopAfter)
        assert train(load_experiment(None, overrides), progress=False).interrupted
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"these options differ from its checkpoint step-0000004: train.batch_size: 2 -> 1; "
                                         r"train.lr: 0.001 -> 0.002\. Resume with the run's own config \(vlekit train "
                                         rf"--config {tmp_path / 'run' / 'config.yaml'} --resume\), start afresh"):
        train(load_experiment(None, [*overrides, "train.batch_size=1", "train.lr=2e-3"]), resume="latest", progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # nothing written

    capsys.readouterr()
    free = train(load_experiment(None, [*overrides, "train.log_every_steps=3", "train.save_best=true"]),
                 resume="latest", progress=False)
    assert free.global_step == 10
    assert "resuming with: train.log_every_steps: 1 -> 3; train.save_best: False -> True" in capsys.readouterr().out

    allowed = [*overrides, "train.epochs=3", "train.log_every_steps=3", "train.save_best=true"]
    assert train(load_experiment(None, allowed), resume="latest", progress=False, allow_changes=True).global_step == 15
    assert "resuming with changed options (--allow-changes): train.epochs: 2 -> 3" in capsys.readouterr().out


def test_a_run_saved_before_an_option_existed_resumes_as_it_started(ten, tmp_path, monkeypatch, capsys):
    """A checkpoint whose config.yaml has no data.person_names (written before the option, when persons were
    named by first mention) resumes with that naming, says so, and saves it with the model."""
    import yaml

    from vlekit.runs.manifest import write_manifest

    overrides = [*tiny_overrides(ten, tmp_path / "run", epochs=1, batch_size=2), SMALL_IMAGES]
    with monkeypatch.context() as patch:
        patch.setattr("vlekit.training.train.StopRequested", StopAfter)
        assert train(load_experiment(None, overrides), progress=False).interrupted
    checkpoint = latest_checkpoint(tmp_path / "run")
    saved = yaml.safe_load((checkpoint / "config.yaml").read_text())
    assert saved["data"].pop("person_names") == "by-query"  # as an older vlekit wrote it: no such option
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    write_manifest(checkpoint)
    capsys.readouterr()

    resumed = train(load_experiment(None, overrides), resume="latest", progress=False)
    assert f"{checkpoint} was saved before these options existed: going on as the run started, " \
           f"data.person_names=by-first-mention" in capsys.readouterr().out
    assert json.loads((resumed.model_dir / "data.json").read_text())["person_names"] == "by-first-mention"
    assert load_experiment(tmp_path / "run" / "config.yaml").data.person_names == "by-first-mention"


class StopInEpoch2(StopAfter):
    steps = 13  # stops after step 14: two epochs of 6 steps and their validations are behind


def test_save_best_keeps_the_best_validation_model_across_a_resume(synthetic, tmp_path, monkeypatch):
    """train.save_best with validation scores 0.25, 0.5, 0.375, 0.4 at steps 6, 12, 18, 24: OUT/best/ holds the
    weights of step 12 (its checkpoint's), with selected.json, whether the run went straight or was interrupted
    at step 14 and resumed (the best score so far travels in the checkpoint: else 0.375 would replace it)."""
    from vlekit.runs.folder import load_trained

    SCORES = [0.25, 0.5, 0.375, 0.4]

    def scripted(scores):
        remaining = iter(scores)
        return lambda *args, **kwargs: next(remaining)

    overrides = {name: [*tiny_overrides(synthetic, tmp_path / name, epochs=4, batch_size=8, save_every_steps=6, keep=0),
                        SMALL_IMAGES, "train.save_best=true"] for name in ("straight", "resumed")}
    with monkeypatch.context() as patch:
        patch.setattr("vlekit.training.train.accuracy_on", scripted(SCORES))
        train(load_experiment(None, overrides["straight"]), progress=False)
    with monkeypatch.context() as patch:
        patch.setattr("vlekit.training.train.accuracy_on", scripted(SCORES))
        patch.setattr("vlekit.training.train.StopRequested", StopInEpoch2)
        assert train(load_experiment(None, overrides["resumed"]), progress=False).global_step == 14
        assert json.loads((tmp_path / "resumed" / "best" / "selected.json").read_text())["step"] == 12
        patch.setattr("vlekit.training.train.StopRequested", StopRequested)
        train(load_experiment(None, overrides["resumed"]), resume="latest", progress=False)

    weights = {}
    for name in overrides:
        records = [(r["step"], r["val_accuracy"]) for r in map(json.loads, (tmp_path / name / "metrics.jsonl")
                                                               .read_text().splitlines()) if "val_accuracy" in r]
        assert records == list(zip((6, 12, 18, 24), SCORES)), name
        selected = json.loads((tmp_path / name / "best" / "selected.json").read_text())
        assert selected == {"step": 12, "epoch": 2, "val_accuracy": 0.5}, name
        weights[name] = load_trained(tmp_path / name / "best").model.state_dict()
    at_step_12 = load_trained(tmp_path / "straight" / "checkpoints" / "step-0000012").model.state_dict()
    final = load_trained(tmp_path / "straight").model.state_dict()
    for key in at_step_12:
        torch.testing.assert_close(weights["resumed"][key], weights["straight"][key], rtol=0, atol=1e-6, msg=key)
        assert torch.equal(weights["straight"][key], at_step_12[key]), key
    assert any(not torch.equal(final[key], at_step_12[key]) for key in final)


def test_record_validation_keeps_the_first_best_and_counts_patience():
    from vlekit.training.checkpoints import TrainerState

    state, never = TrainerState(), TrainerState()
    for step, score, best in ((6, 0.5, True), (12, 0.5, False), (18, 0.75, True), (24, 0.7, False), (30, 0.75, False)):
        state.global_step = never.global_step = step
        assert state.record_validation(score, patience=2) is best and never.record_validation(score, patience=0) is best
        assert state.validated_step == step
    assert (state.best_score, state.best_step, state.validations_since_best, state.stopped_early) == (0.75, 18, 2, True)
    assert never.validations_since_best == 2 and not never.stopped_early  # patience 0: no early stopping


@pytest.mark.parametrize("option", ["save_best=true", "early_stopping_patience=2"])
def test_options_that_need_validation_without_a_validation_split_are_an_error(ten, tmp_path, option):
    overrides = [*tiny_overrides(ten, tmp_path / "run", epochs=1, batch_size=2), "data.val_annotations=null",
                 f"train.{option}"]
    name = option.split("=")[0]
    with pytest.raises(ValueError, match=f"train.{name} .* the run has no validation split: set"):
        train(load_experiment(None, overrides), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_early_stopping_stops_after_patience_validations_without_a_better_score_and_stays_stopped(
        synthetic, tmp_path, monkeypatch, capsys):
    """Scores 0.5, 0.25, 0.375 (then 0.4 if it went on) with patience 2: the run stops at the third validation,
    step 18 of 24, and writes model/. Interrupted at step 14 and resumed, it stops at the same step (the count
    travels in the checkpoint); resumed once more, it does not train on."""
    scores = [0.5, 0.25, 0.375, 0.4]
    overrides = {name: [*tiny_overrides(synthetic, tmp_path / name, epochs=4, batch_size=8), SMALL_IMAGES,
                        "train.early_stopping_patience=2"] for name in ("straight", "resumed")}
    with monkeypatch.context() as patch:
        remaining = iter(scores)
        patch.setattr("vlekit.training.train.accuracy_on", lambda *args, **kwargs: next(remaining))
        straight = train(load_experiment(None, overrides["straight"]), progress=False)
    assert (straight.global_step, straight.stopped_early, straight.interrupted) == (18, True, False)
    assert straight.model_dir.is_dir()
    assert "no better validation score in 2 validations (the best, 0.500, at step 6): stopping early" in capsys.readouterr().out
    with monkeypatch.context() as patch:
        remaining = iter(scores)
        patch.setattr("vlekit.training.train.accuracy_on", lambda *args, **kwargs: next(remaining))
        patch.setattr("vlekit.training.train.StopRequested", StopInEpoch2)
        assert train(load_experiment(None, overrides["resumed"]), progress=False).global_step == 14
        patch.setattr("vlekit.training.train.StopRequested", StopRequested)
        resumed = train(load_experiment(None, overrides["resumed"]), resume="latest", progress=False)
        assert (resumed.global_step, resumed.stopped_early) == (18, True)
        again = train(load_experiment(None, overrides["resumed"]), resume="latest", progress=False)
    assert (again.global_step, again.stopped_early) == (18, True)
    for name in overrides:
        assert [r["step"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
                if "val_accuracy" in r] == [6, 12, 18], name
    straight_weights, resumed_weights = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for key in straight_weights:
        torch.testing.assert_close(resumed_weights[key], straight_weights[key], rtol=0, atol=1e-6, msg=key)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlekit.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


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
    resumed = _cli("train", "--no-progress", "--resume", "--allow-changes",  # a shorter run from here: a new schedule
                   *tiny_overrides(synthetic, out, epochs=40, max_steps=stopped_at + 2))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resumed from {checkpoint}" in output and (out / "model" / "model.safetensors").is_file()


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
    # the gradient norm of the synchronised gradients: the one process's, over both processes' halves of the batch
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in two]), torch.tensor([r["grad_norm"] for r in one]),
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("accumulation", [2, 4])
def test_a_resume_with_another_gradient_accumulation_goes_on_as_the_run_would(synthetic, tmp_path, accumulation, capsys):
    """A run of batch 8 in one micro-batch, stopped at step 3 (mid-epoch), resumed in micro-batches of 8 /
    accumulation (a smaller GPU, or fewer processes at the same global batch): allowed without --allow-changes, the
    place in the epoch counted in the new micro-batches, and every later step as the uninterrupted run's: the same
    lr column and the same losses (float-summation tolerance). Before, the resumed run skipped 3 micro-batches instead
    of 3 x accumulation, took its first optimizer step after one of them, and lost count of its epochs."""
    def overrides(name: str, *extra: str) -> list[str]:
        return [*tiny_overrides(synthetic, tmp_path / name, epochs=2, batch_size=8, seed=3, save_every_steps=3, keep=0),
                SMALL_IMAGES, *NO_DROPOUT, *extra]

    train(load_experiment(None, overrides("straight")), progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-0000003", resumed / "checkpoints" / "step-0000003")
    capsys.readouterr()
    result = train(load_experiment(None, overrides("resumed", f"train.gradient_accumulation_steps={accumulation}")),
                   resume="latest", progress=False)
    printed = capsys.readouterr().out
    assert "resuming with: train.gradient_accumulation_steps: 1 -> " + str(accumulation) in printed
    assert (f"step-0000003 stands 24 questions into epoch 0 (3 micro-batches of 8 questions over all processes); going on "
            f"from micro-batch {3 * accumulation} of {8 // accumulation}") in printed
    assert result.global_step == 12
    straight, after = metric_rows(tmp_path / "straight"), metric_rows(resumed)
    assert [r["step"] for r in after] == list(range(4, 13))
    assert [r["lr"] for r in after] == [r["lr"] for r in straight[3:]]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in after]), torch.tensor([r["loss"] for r in straight[3:]]),
                               rtol=1e-4, atol=1e-5)
    validations = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in validations if "val_accuracy" in r] == [(6, 1), (12, 2)]


def test_a_resume_with_another_batch_size_starts_at_the_last_whole_batch_and_says_what_is_seen_again(tmp_path):
    from vlekit.training.checkpoints import TrainerState, resumed_position

    checkpoint = tmp_path / "step-0000003"
    checkpoint.mkdir()
    (checkpoint / "config.yaml").write_text("train: {batch_size: 8, gradient_accumulation_steps: 2}\n")
    state = TrainerState(epoch=1, batches_in_epoch=6, global_step=9)  # 3 optimizer steps of 8 into epoch 1
    said = []
    config = load_experiment(None, ["train.batch_size=16", "train.gradient_accumulation_steps=4"])
    moved = resumed_position(state, checkpoint, config, report=said.append)
    assert (moved.batches_in_epoch, moved.epoch, moved.global_step) == (4, 1, 9)  # 1 step of 16 = 4 micro-batches of 4
    assert said == ["step-0000003 stands 24 questions into epoch 1 (6 micro-batches of 4 questions over all processes); "
                    "going on from micro-batch 4 of 4: the last 8 of those questions are trained on again"]
    same = load_experiment(None, ["train.batch_size=8", "train.gradient_accumulation_steps=2"])
    assert resumed_position(state, checkpoint, same, report=said.append) is state and len(said) == 1


@pytest.mark.slow
def test_a_two_process_run_resumed_on_one_process_with_twice_the_accumulation_matches_it(synthetic, tmp_path):
    """The cluster case: a DDP run on 2 processes (micro-batches of 4) stopped at step 3 goes on in one process with
    gradient_accumulation_steps=2 (the same micro-batches of 4, the same global batch of 8) to the 2-process run's
    losses and weights (DDP against one process: float-summation tolerance)."""
    def overrides(name: str, *extra: str) -> list[str]:
        return [*tiny_overrides(synthetic, tmp_path / name, epochs=2, batch_size=8, seed=3, save_every_steps=3, keep=0),
                SMALL_IMAGES, *NO_DROPOUT, *extra]

    torchrun_train(2, overrides("two"))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two" / "checkpoints" / "step-0000003", resumed / "checkpoints" / "step-0000003")
    train(load_experiment(None, overrides("resumed", "train.gradient_accumulation_steps=2")), resume="latest",
          progress=False)
    two, after = metric_rows(tmp_path / "two"), metric_rows(resumed)
    assert [r["processes"] for r in after] == [1] * 9 and [r["lr"] for r in after] == [r["lr"] for r in two[3:]]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in after]), torch.tensor([r["loss"] for r in two[3:]]),
                               rtol=1e-3, atol=1e-4)
    weights, reference = final_weights(resumed), final_weights(tmp_path / "two")
    assert max(float((weights[k] - reference[k]).abs().max()) for k in weights) <= 1e-4
