"""Runs that fail as real ones do. Divergence: a run whose weights turn NaN stops before saving them, keeps its good
checkpoints, and says how to go on; a resume with a new learning rate uses it; a model or checkpoint holding NaN
weights is refused. Out of memory: the run is saved at its last whole step, and the resume it prints (smaller
micro-batches, the same global batch) goes on as the run would have.

The divergence is made as it happens: from some training step on the loss is NaN (what an overflow gives), and
backward, gradient clipping and AdamW carry it into every weight; nothing else of the loop is touched. Out of memory
is torch's own error, raised by the forward pass of one micro-batch.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers import NO_DROPOUT, SMALL_IMAGES, final_weights, metric_rows, nan_loss_from, tiny_overrides
from safetensors.torch import load_file, save_file

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.cli import main
from vlekit.evaluation.evaluate import check_finite_scores
from vlekit.evaluation.overview import summarize_run
from vlekit.evaluation.plots import plot_training_curve
from vlekit.model import VCRModel
from vlekit.runs.experiment import load_experiment
from vlekit.runs.folder import checkpoint_dirs, checkpoint_state_dict, load_trained
from vlekit.runs.manifest import write_manifest
from vlekit.training.checkpoints import TrainerState
from vlekit.training.monitor import LogWindow, TrainingDiverged, TrainingOutOfMemory, stop_out_of_memory
from vlekit.training.train import train

STEPS_PER_EPOCH = 4  # 32 training questions, batch 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("data"), num_train=32, num_val=8, num_test=4, seed=3)


def scheduled_lr(peak: float, step: int, *, total: int = 8, warmup_ratio: float = 0.1) -> float:
    """The rate the (1-based) ``step`` trains at: vlekit.training.setup.linear_warmup_decay's schedule."""
    warmup, index = max(1, round(total * warmup_ratio)), step - 1
    return peak * ((index + 1) / warmup if index < warmup else (total - index) / (total - warmup))


def all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point())


@pytest.mark.parametrize("log_every, save_every, poisoned, stopped, last_finite", [
    (1, 4, 6, 6, 5),  # caught at the log step after the first NaN step
    (100, 2, 5, 6, 4),  # no log step in between: caught before the checkpoint of step 6
])
def test_a_diverging_run_stops_before_saving_nan_weights(data, tmp_path, monkeypatch, log_every, save_every, poisoned,
                                                         stopped, last_finite):
    out = tmp_path / "run"
    config = load_experiment(None, [*tiny_overrides(data, out, epochs=3, log_every_steps=log_every,
                                                    save_every_steps=save_every, keep=1), SMALL_IMAGES])
    nan_loss_from(monkeypatch, poisoned)
    with pytest.raises(TrainingDiverged, match=rf"became NaN or inf between step {last_finite} .* and step {stopped} "
                                               r"\(learning rate .* of train.lr 0.001\)") as raised:
        train(config, progress=False)
    good = out / "checkpoints" / f"step-{4:07d}"
    assert (raised.value.step, raised.value.last_finite_step, raised.value.checkpoint) == (stopped, last_finite, good)
    # keep=1 still holds the checkpoint of step 4: no NaN checkpoint was saved to push it out.
    assert checkpoint_dirs(out) == [good] and all_finite(checkpoint_state_dict(good))
    assert not (out / "model").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1] == {"step": stopped, "diverged": True, "nonfinite_weights": records[-1]["nonfinite_weights"],
                           "last_finite_step": last_finite}
    assert records[-1]["nonfinite_weights"] > 0
    # The validation after epoch 1 (step 4) ran on finite weights; none ran on NaN ones.
    assert [r["step"] for r in records if "val_accuracy" in r] == [4]
    losses = [r for r in records if "loss" in r]
    assert all(r["loss"] == r["loss"] for r in losses if r["step"] < poisoned)  # finite before
    if log_every == 1:
        assert losses[-1]["step"] == stopped and losses[-1]["nonfinite_losses"] == 1
        assert "1 training loss was NaN / inf meanwhile" in str(raised.value)


def test_the_command_line_says_how_to_go_on_and_that_command_finishes_the_run(data, tmp_path, monkeypatch, capsys):
    """`vlekit train` exits 1 with the message and the curve up to the divergence; the command it prints, run
    as printed, resumes from the good checkpoint with a tenth of the learning rate and writes model/."""
    out = tmp_path / "run"
    overrides = [*tiny_overrides(data, out, epochs=2, save_every_steps=2, keep=0), SMALL_IMAGES]
    with monkeypatch.context() as patch:
        nan_loss_from(patch, 4)
        assert main(["train", "--no-progress", *overrides]) == 1
    error = capsys.readouterr().err
    assert f"the training curve up to it: {out / 'curve.png'}" in error and (out / "curve.png").is_file()
    command = re.search(r"\((vlekit train --config \S+ --resume-from \S+ --allow-changes train.lr=0.0001);", error)
    assert command, error
    arguments = shlex.split(command.group(1))
    assert arguments[arguments.index("--resume-from") + 1] == str(out / "checkpoints" / "step-0000002")

    assert summarize_run(out).state == "diverged at step 4: step-0000002"  # vlekit runs

    assert main([*arguments[1:], "--no-progress"]) == 0
    assert summarize_run(out).state == "finished"
    assert all_finite(final_weights(out))
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))  # the NaN steps 3 and 4 are logged again
    # linear decay from the new peak (no warm-up left to do at step 3 of 8): the new rate from the first step on
    assert load_experiment(out / "config.yaml").train.lr == pytest.approx(1e-4)
    assert [r["lr"] for r in rows] == pytest.approx([scheduled_lr(1e-3, step) for step in (1, 2)] +
                                                    [scheduled_lr(1e-4, step) for step in range(3, 9)])


def test_a_resume_with_a_new_learning_rate_trains_at_that_rate(data, tmp_path):
    """--allow-changes train.lr / train.weight_decay used to be reported and then ignored: the optimizer and the
    scheduler state of the checkpoint carried the old rates. The resumed steps follow the new schedule."""
    out = tmp_path / "run"
    overrides = [*tiny_overrides(data, out, epochs=2, save_every_steps=2, keep=0, warmup_ratio=0), SMALL_IMAGES]
    train(load_experiment(None, overrides), progress=False)
    before = [r["lr"] for r in metric_rows(out)]
    assert before == pytest.approx([scheduled_lr(1e-3, step, warmup_ratio=0) for step in range(1, 9)])

    checkpoint = out / "checkpoints" / "step-0000004"
    result = train(load_experiment(None, [*overrides, "train.lr=1e-5", "train.weight_decay=0.5"]),
                   resume=str(checkpoint), allow_changes=True, progress=False)
    assert result.global_step == 8
    after = [r["lr"] for r in metric_rows(out)]
    assert after[:4] == before[:4]
    assert after[4:] == pytest.approx([scheduled_lr(1e-5, step, warmup_ratio=0) for step in range(5, 9)])
    # the new weight decay was used too: the checkpoint of step 8 carries it in every decayed group
    optimizer = torch.load(out / "checkpoints" / "step-0000008" / "optimizer.bin", weights_only=True)
    assert {group["weight_decay"] for group in optimizer["param_groups"]} == {0.0, 0.5}


def poison_weights(file: Path) -> str:
    """Put a NaN into the first floating tensor of a safetensors file; its name."""
    weights = load_file(str(file))
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(file), metadata={"format": "pt"})
    return name


def test_a_model_or_checkpoint_holding_nan_weights_is_refused(trained_run, tmp_path, capsys):
    """What an older vlekit saved of a diverged run: loading it for evaluation fails naming the tensor (its scores
    would be those of always answering A), and a resume from such a checkpoint stops before training on it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run.q2a, run)
    name = poison_weights(run / "model" / "model.safetensors")
    write_manifest(run / "model")
    with pytest.raises(ValueError, match=rf"1 weight tensors hold NaN or inf values \(e.g. {re.escape(name)}\): the run "
                                         rf"diverged .* \(under {re.escape(str(run / 'checkpoints'))}"):
        load_trained(run)
    assert main(["eval", "--checkpoint", str(run), "--annotations", str(trained_run.data.val), "--images",
                 str(trained_run.data.images_root), "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    assert "hold NaN or inf values" in capsys.readouterr().err

    checkpoint = checkpoint_dirs(run)[-1]
    poison_weights(checkpoint / "model.safetensors")
    write_manifest(checkpoint)
    with pytest.raises(ValueError, match="hold NaN or inf"):
        load_trained(checkpoint)
    config = load_experiment(run / "config.yaml", ["train.epochs=2", f"train.out={run}"])
    with pytest.raises(TrainingDiverged, match=rf"{re.escape(str(checkpoint))} holds NaN or inf in 1 trainable weight "
                                               r"tensors .* Resume from an earlier one"):
        train(config, resume=str(checkpoint), allow_changes=True, progress=False)


def test_the_log_window_averages_the_finite_losses_and_counts_the_others():
    window = LogWindow(Accelerator(cpu=True))
    for loss in (1.0, float("nan"), 3.0, float("inf")):
        window.add(torch.tensor(loss), questions=8)
    record = window.flush(step=4)
    assert (record["loss"], record["nonfinite_losses"]) == (2.0, 2)
    window.add(torch.tensor(float("nan")), questions=8)
    assert window.flush(step=5)["loss"] != window.flush(step=5)["loss"]  # NaN: no finite loss in the window
    window.add(torch.tensor(0.5), questions=8)
    assert "nonfinite_losses" not in window.flush(step=6)


def test_the_curve_marks_where_the_run_diverged_and_draws_the_gradient_norms_below(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 1.4}, {"step": 2, "loss": 1.3}, {"step": 3, "diverged": True, "nonfinite_weights": 9}]))
    figure = plot_training_curve(metrics)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["train loss", "diverged (weights NaN / inf)"]
    assert len(figure.axes) == 2  # loss and its twin accuracy axis: no gradient norms were logged

    metrics.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 1.4, "grad_norm": 0.5, "grad_norm_max": 0.5},
        {"step": 3, "loss": 1.3, "grad_norm": 2.0, "grad_norm_max": 8.0}, {"step": 4, "diverged": True}]))
    norms = plot_training_curve(metrics).axes[1]  # the panel below the loss
    assert norms.get_yscale() == "log"
    assert [line.get_ydata().tolist() for line in norms.get_lines()] == [[0.5, 2.0], [0.5, 8.0]]


# -- out of memory ---------------------------------------------------------------------------------------
def out_of_memory_at(patch: pytest.MonkeyPatch, call: int) -> None:
    """The ``call``-th training forward pass (1-based: micro-batches) raises torch's out-of-memory error."""
    forward, calls = VCRModel.forward, [0]

    def forward_or_out_of_memory(self, **batch):
        if self.training:
            calls[0] += 1
            if calls[0] == call:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.19 GiB total)")
        return forward(self, **batch)

    patch.setattr(VCRModel, "forward", forward_or_out_of_memory)


@pytest.mark.parametrize("accumulation, call, smaller, as_printed", [(1, 4, 2, True), (2, 8, 4, True), (2, 7, 4, False)])
def test_out_of_memory_saves_the_last_whole_step_and_the_printed_resume_goes_on_as_the_run_would(
        data, tmp_path, monkeypatch, capsys, accumulation, call, smaller, as_printed):
    """Batch 8 in micro-batches of 8 / accumulation; the micro-batch ``call`` (in step 4; with accumulation 2 its first
    or second half) runs out of memory. `vlekit train` exits 1 with a checkpoint of step 3 and the command that goes
    on in micro-batches half as large; run as printed (or as a plain --resume: the memory was short once), it reaches
    the uninterrupted run's losses step by step."""
    def overrides(name: str) -> list[str]:
        return [*tiny_overrides(data, tmp_path / name, epochs=2, batch_size=8, seed=3, save_every_steps=100,
                                gradient_accumulation_steps=accumulation), SMALL_IMAGES, *NO_DROPOUT]

    train(load_experiment(None, overrides("straight")), progress=False)
    with monkeypatch.context() as patch:
        out_of_memory_at(patch, call)
        assert main(["train", "--no-progress", *overrides("run")]) == 1
    error = capsys.readouterr().err
    out = tmp_path / "run"
    assert (f"out of memory on cpu in step 4 (micro-batches of {8 // accumulation} questions): a checkpoint of step 3, "
            f"the last whole step, was saved: {out / 'checkpoints' / 'step-0000003'}. Go on in micro-batches of "
            f"{8 // smaller} at the same global batch of 8 (the same run): vlekit train --config {out / 'config.yaml'} "
            f"--resume train.gradient_accumulation_steps={smaller}; or recomputing activations") in error, error
    assert error.rstrip().endswith("The error: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.19 GiB total)")
    assert checkpoint_dirs(out) == [out / "checkpoints" / "step-0000003"] and not (out / "model").exists()

    command = re.search(r"\(the same run\): (vlekit train .*?);", error).group(1)
    if not as_printed:
        command = f"vlekit train --config {out / 'config.yaml'} --resume"
    assert main([*shlex.split(command)[1:], "--no-progress"]) == 0
    straight, resumed = metric_rows(tmp_path / "straight"), metric_rows(out)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, 9))
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in resumed]), torch.tensor([r["loss"] for r in straight]),
                               rtol=1e-4, atol=1e-5)


def test_out_of_memory_in_one_question_micro_batches_with_checkpointing_asks_for_a_smaller_model(tmp_path):
    config = load_experiment(None, [f"train.out={tmp_path}", "train.batch_size=4", "train.gradient_accumulation_steps=4",
                                    "train.gradient_checkpointing=true"])
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.ones(2)
    optimizer = torch.optim.AdamW([parameter])
    state = TrainerState(epoch=0, batches_in_epoch=7, global_step=1)  # 3 micro-batches into step 2
    with pytest.raises(TrainingOutOfMemory, match=r"in step 2 \(micro-batches of 1 questions\): a checkpoint of step 1, "
                                                  r"the last whole step, was saved: SAVED. Each process trains on one "
                                                  r"question at a time with gradient checkpointing already"):
        stop_out_of_memory("CUDA out of memory.", accelerator=Accelerator(cpu=True), optimizer=optimizer, state=state,
                           config=config, save=lambda: Path("SAVED"))
    assert state.batches_in_epoch == 4 and parameter.grad is None  # back at the end of step 1, its gradients dropped


@pytest.mark.parametrize("command", ["eval", "diagnose"])
def test_eval_and_diagnose_out_of_memory_say_which_batch_size_to_try(trained_run, tmp_path, monkeypatch, capsys, command):
    def out_of_memory(self, **batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(VCRModel, "forward", out_of_memory)
    data = ["--annotations", str(trained_run.data.val), "--images", str(trained_run.data.images_root), "--num-workers", "0",
            "--batch-size", "12", "--no-progress"]
    arguments = ["eval", "--checkpoint", str(trained_run.q2a)] if command == "eval" else ["diagnose", "--run", str(trained_run.q2a)]
    assert main([*arguments, *data]) == 1
    assert capsys.readouterr().err == (f"vlekit {command}: out of memory at --batch-size 12 (CUDA out of memory. Tried to "
                                       f"allocate 1.00 GiB): try --batch-size 6 (the results do not depend on it)\n")


def test_an_evaluation_whose_scores_overflow_is_an_error_not_a_score(trained_run, tmp_path, monkeypatch, capsys):
    """Finite weights, but NaN scores for some questions (fp16 autocast overflowing, as it can on a GPU): argmax would
    call them choice A; `vlekit eval` stops naming how many, the first, and the precision to use."""
    forward = VCRModel.forward

    def overflowing(self, **batch):
        output = forward(self, **batch)
        output["logits"] = output["logits"].clone()
        output["logits"][1::3] = float("nan")  # every third question of each batch
        return output

    monkeypatch.setattr(VCRModel, "forward", overflowing)
    arguments = ["eval", "--checkpoint", str(trained_run.q2a), "--annotations", str(trained_run.data.val), "--images",
                 str(trained_run.data.images_root), "--num-workers", "0", "--batch-size", "6", "--no-progress"]
    assert main([*arguments, "--precision", "fp32"]) == 2
    assert capsys.readouterr().err == ("vlekit eval: 4 of 12 questions got NaN / inf scores under fp32 (the first: number 1 "
                                       "of the split, 0-based); their predictions would be meaningless: the model computes "
                                       "them from finite weights (load_trained checks those): an overflow; inspect those "
                                       "questions\n")
    with pytest.raises(ValueError, match=r"under fp16 .* fp16 overflows where bf16 does not: evaluate with --precision bf16"):
        check_finite_scores(torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]), precision="fp16")
    check_finite_scores(torch.tensor([[0.0, 1.0]]), precision="fp16")  # finite: nothing to say


def test_the_log_carries_each_windows_mean_and_largest_gradient_norm(data, tmp_path):
    """Gradient norms (before clipping: what diverging runs show first) per log line: logging every 2 steps gives the
    mean and the max of what logging every step gives, step for step; without clipping none is computed."""
    rows = {}
    for every in (1, 2):
        train(load_experiment(None, [*tiny_overrides(data, tmp_path / f"every-{every}", epochs=1, log_every_steps=every),
                                     SMALL_IMAGES, *NO_DROPOUT]), progress=False)
        rows[every] = metric_rows(tmp_path / f"every-{every}")
    single = [r["grad_norm"] for r in rows[1]]
    assert len(single) == 4 and all(0 < norm < float("inf") for norm in single)
    assert [r["grad_norm"] for r in rows[1]] == [r["grad_norm_max"] for r in rows[1]]
    assert [r["grad_norm"] for r in rows[2]] == pytest.approx([(single[0] + single[1]) / 2, (single[2] + single[3]) / 2])
    assert [r["grad_norm_max"] for r in rows[2]] == pytest.approx([max(single[:2]), max(single[2:])])
    train(load_experiment(None, [*tiny_overrides(data, tmp_path / "unclipped", epochs=1, max_grad_norm=0), SMALL_IMAGES]),
          progress=False)
    assert not any("grad_norm" in r for r in metric_rows(tmp_path / "unclipped"))


# -- the data loader fails ---------------------------------------------------------------------------------
UNREADABLE_FRAME = """\
import errno, sys

from data_prep.dataset import VCRDataset

getitem = VCRDataset.__getitem__


def unreadable(self, index):
    if len(self) == 32 and index == 5:  # one training question's picture
        raise OSError(errno.EIO, "Input/output error", "vcr1images/movie/frame.jpg")
    return getitem(self, index)


VCRDataset.__getitem__ = unreadable
from vlekit.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_data_loader_failure_saves_the_last_whole_step_exits_and_the_run_goes_on_from_it(data, tmp_path):
    """`vlekit train` whose DataLoader worker cannot read a training image any more (a network disk failing): the error
    goes up as it was (a traceback, exit 1) with a note naming the checkpoint of the last whole step, written then, and
    the resume; and the process ends. Before, it never did: the failed loader's workers, which ignore SIGTERM so that a
    cluster's signal to the process group reaches the main process first, outlived the error, and multiprocessing
    waited for them at exit for ever. Once the file reads again the resumed run follows the uninterrupted one."""
    def overrides(name: str) -> list[str]:
        return [*tiny_overrides(data, tmp_path / name, epochs=2, save_every_steps=100), SMALL_IMAGES, *NO_DROPOUT,
                "data.num_workers=2"]

    train(load_experiment(None, overrides("straight")), progress=False)
    out = tmp_path / "run"
    launcher = tmp_path / "unreadable_frame.py"
    launcher.write_text(UNREADABLE_FRAME)
    failed = subprocess.run([sys.executable, str(launcher), "train", "--no-progress", *overrides("run")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert failed.returncode == 1, failed.stderr[-3000:]
    saved = checkpoint_dirs(out)
    assert len(saved) == 1 and not (out / "model").exists()
    step = json.loads((saved[0] / "trainer_state.json").read_text())["global_step"]
    assert 0 < step < 8  # question 5 is in a batch of each epoch: the first one failed
    assert "OSError: [Errno 5] Input/output error: 'vcr1images/movie/frame.jpg'" in failed.stderr
    assert (f"vlekit train: loading the training data failed in step {step + 1}; the run was saved as it stood after "
            f"step {step}, its last whole step: {saved[0]}. Once the data can be read again (data.skip_bad=true leaves "
            f"out images that cannot be decoded), go on with: vlekit train --config {out / 'config.yaml'} --resume"
            ) in failed.stderr

    assert main(["train", "--no-progress", "--config", str(out / "config.yaml"), "--resume"]) == 0
    straight, resumed = metric_rows(tmp_path / "straight"), metric_rows(out)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    torch.testing.assert_close(torch.tensor([r["loss"] for r in resumed]), torch.tensor([r["loss"] for r in straight]),
                               rtol=1e-5, atol=1e-6)
