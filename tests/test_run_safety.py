"""Safe runs in the situations users create (issue 20, parts 2, 3 and 5).

* a run folder belongs to one run: a reused ``--out`` is refused unless ``--resume`` / ``--overwrite``, a lock
  keeps a second process out and a stale lock is taken over, ``model/`` is verified against its manifest;
* a full disk fails with a message and ``--resume`` goes on once there is room;
* SIGTERM to the whole process group (``docker stop``, SLURM, Kubernetes) saves, exits 143, and the resumed
  run ends with the weights of an uninterrupted one;
* options that cannot make sense and damaged files fail before any work, naming the option or the file.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers import SMALL_IMAGES, final_weights, tiny_overrides

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.training.checkpoints import checkpoint_dirs, latest_checkpoint
from vlekit.cli import main
from vlekit.runs.experiment import load_experiment
from vlekit.runs.lock import LOCK_FILE, RunFolderError, RunLock, claim_run_folder
from vlekit.training.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("data"), num_train=32, num_val=8, num_test=4, seed=3)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlekit.cli", *args]


def metric_steps(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


# -- one run per folder ----------------------------------------------------------------------------------
def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run.q2a, out)  # a finished run
    files = [out / "config.yaml", out / "metrics.jsonl", out / "tokenizer" / "tokenizer.json", out / "model" / "model.safetensors"]
    before = [path.read_bytes() for path in files]

    # Another run into the same folder: refused before any work, the folder untouched.
    other = generate_synthetic_vcr(tmp_path / "other", num_train=16, num_val=8, num_test=4, seed=9)
    second = [*tiny_overrides(other, out, epochs=1), SMALL_IMAGES]
    assert main(["train", "--no-progress", *second]) == 2
    error = capsys.readouterr().err
    assert f"{out} already holds a run (config.yaml, checkpoints, model, metrics.jsonl, tokenizer)" in error
    assert "--resume" in error and "--overwrite" in error
    assert [path.read_bytes() for path in files] == before

    # --overwrite: the old run moves aside (said so), the new one starts from nothing: its own tokenizer and log.
    assert main(["train", "--no-progress", "--overwrite", *second]) == 0
    said = capsys.readouterr().out
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and f"moved the previous run in {out} to {moved[0]}" in said
    assert [(moved[0] / path.relative_to(out)).read_bytes() for path in files] == before
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() != before[2]  # built from the new data
    assert metric_steps(out) == [1, 2] and [p.name for p in checkpoint_dirs(out)] == ["step-0000002"]
    assert not (out / LOCK_FILE).exists()  # released at the end

    with pytest.raises(RunFolderError, match="choose one"):
        claim_run_folder(out, resume=True, overwrite=True)


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_run_moved_or_copied_elsewhere_resumes_where_it_is_now(data, trained_run, tmp_path, capsys, how):
    """A run's config.yaml names the folder it was written in (train.out) and the tokenizer it started from
    (data.tokenizer, here a folder beside it). `--config NEW/config.yaml --resume` (the command the run printed, in
    its new place) goes on in NEW, saying so, with the tokenizer its checkpoint holds; before, it went on in the old
    folder, or started afresh there when the run had been moved away (and failed without the tokenizer)."""
    old = tmp_path / "scratch" / "run"
    tokenizer = shutil.copytree(trained_run.q2a / "tokenizer", tmp_path / "scratch" / "tokenizer")
    assert main(["train", "--no-progress", *tiny_overrides(data, old, epochs=1, save_every_steps=2), SMALL_IMAGES,
                 f"data.tokenizer={tokenizer}"]) == 0
    shutil.rmtree(old / "model")
    shutil.rmtree(old / "checkpoints" / "step-0000004")  # as if stopped after step 2
    new = tmp_path / "home" / "run"
    (shutil.move if how == "moved" else shutil.copytree)(str(old.parent), str(new.parent))
    before = sorted(p for p in old.rglob("*")) if how == "copied" else None
    capsys.readouterr()

    assert main(["train", "--no-progress", "--config", str(new / "config.yaml"), "--resume"]) == 0
    assert (f"{new / 'config.yaml'} is the config of the run in {new}, and names train.out {old}: the run was moved or "
            f"copied. Going on in {new}") in capsys.readouterr().err
    assert (new / "model" / "model.safetensors").is_file() and metric_steps(new) == [1, 2, 3, 4]
    assert load_experiment(new / "config.yaml").train.out == str(new)
    if how == "moved":
        assert not old.exists()  # not started afresh where the run was
    else:
        assert sorted(p for p in old.rglob("*")) == before and not (old / "model").exists()  # the original untouched


def test_a_second_process_is_locked_out_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "then"}))
        with pytest.raises(RunFolderError, match=rf"{out} is in use by process {sleeper.pid} on this host \(since then\)"):
            claim_run_folder(out, resume=False, overwrite=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The owner is gone: its lock is taken over, with a warning.
    with pytest.warns(UserWarning, match=f"taking over the lock of process {sleeper.pid}"):
        lock = claim_run_folder(out, resume=False, overwrite=False)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_FILE).exists()
    # A lock held from another host cannot be checked from here: refused, with the way out.
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node-17", "started": "then"}))
    with pytest.raises(RunFolderError, match=rf"process 1 on host node-17 .* delete {out / LOCK_FILE}"):
        RunLock(out).acquire()


@pytest.mark.slow
def test_two_trainings_at_once_one_is_refused(data, tmp_path):
    out = tmp_path / "run"
    slow = subprocess.Popen(cli("train", "--no-progress", *tiny_overrides(data, out, epochs=40)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / LOCK_FILE).exists():
            time.sleep(0.1)
        second = subprocess.run(cli("train", "--no-progress", "--resume", *tiny_overrides(data, out, epochs=1)),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"is in use by process {slow.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        slow.send_signal(signal.SIGINT)
        slow.communicate(timeout=120)
    assert slow.returncode == 130


# -- the final model is verified -------------------------------------------------------------------------
def test_a_damaged_model_folder_is_refused_and_points_at_the_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *tiny_overrides(data, out, epochs=1), SMALL_IMAGES]) == 0
    assert (out / "model" / "manifest.json").is_file()
    weights = out / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100] + bytes(100))  # same size, other bytes
    args = ["eval", "--checkpoint", str(out), "--annotations", str(data.val), "--images", str(data.images_root),
            "--num-workers", "0"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{out / 'model'} is damaged: model.safetensors does not match its SHA-256" in error
    assert f"the newest complete checkpoint is {latest_checkpoint(out)}" in error and "--resume" in error
    # Resuming the finished run writes model/ again from its last checkpoint.
    assert main(["train", "--no-progress", "--resume", *tiny_overrides(data, out, epochs=1), SMALL_IMAGES]) == 0
    assert main(args) == 0


# -- a full disk -----------------------------------------------------------------------------------------
def test_a_full_disk_fails_with_a_message_and_the_run_resumes_when_there_is_room(data, tmp_path, monkeypatch, capsys):
    straight, full = tmp_path / "straight", tmp_path / "full"
    options = dict(epochs=2, save_every_steps=2, keep=2)
    train(load_experiment(None, [*tiny_overrides(data, straight, **options), SMALL_IMAGES]), progress=False)

    real_save = Accelerator.save_state

    def disk_fills_at_step_6(self, output_dir=None, **options):
        if Path(output_dir).name.startswith("step-0000006"):
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **options)

    monkeypatch.setattr(Accelerator, "save_state", disk_fills_at_step_6)
    assert main(["train", "--no-progress", *tiny_overrides(data, full, **options), SMALL_IMAGES]) == 1
    error = capsys.readouterr().err
    assert f"no space left on the device of {full} while saving checkpoint step 6" in error
    assert f"The newest complete checkpoint is {full / 'checkpoints' / 'step-0000004'}" in error and "--resume" in error
    # Pruned to keep - 1 before the save, the partial save removed: room was made, nothing half-written stays.
    assert [p.name for p in (full / "checkpoints").iterdir()] == ["step-0000004"]

    monkeypatch.setattr(Accelerator, "save_state", real_save)  # space freed
    assert main(["train", "--no-progress", "--resume", *tiny_overrides(data, full, **options), SMALL_IMAGES]) == 0
    expected, resumed = final_weights(straight), final_weights(full)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


# -- signals as clusters send them -----------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_exits_143_and_resumes_to_the_same_weights(data, tmp_path):
    """``setsid`` starts the run in its own process group with 2 DataLoader workers; ``kill -TERM -- -PGID``
    signals all of them at once, as ``docker stop`` or SLURM do."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    options = {"epochs": 3, "save_every_steps": 0}
    workers = ["data.num_workers=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: the same float sums
    subprocess.run(cli("train", "--no-progress", *tiny_overrides(data, straight, **options), *workers), env=env, check=True,
                   capture_output=True, timeout=300)

    process = subprocess.Popen(["setsid", *cli("train", "--no-progress", *tiny_overrides(data, stopped, **options), *workers)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    group = os.getpgid(process.pid)
    assert group == process.pid and group != os.getpgid(0)  # its own group: the signal reaches only the run
    subprocess.run(["kill", "-TERM", "--", f"-{group}"], check=True)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "interrupted by SIGTERM" in output and "resume with: vlekit train --config" in output
    assert "killed by signal" not in output and "Traceback" not in output
    checkpoint = latest_checkpoint(stopped)
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert 2 <= stopped_at < 12 and not (stopped / "model").exists()

    resumed = subprocess.run(cli("train", "--no-progress", "--resume", *tiny_overrides(data, stopped, **options), *workers),
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    expected, got = final_weights(straight), final_weights(stopped)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# -- options and files that would crash late -------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=0", "train.lr=0 must be > 0"),
    ("train.epochs=0", "train.epochs=0 must be > 0"),
    ("train.max_steps=-1", "train.max_steps=-1 must be >= 0"),
    ("train.log_every_steps=0", "train.log_every_steps=0 must be >= 1"),
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps=0 must be >= 1"),
    ("train.eval_every_epochs=0", "train.eval_every_epochs=0 must be >= 1"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio=1.5 must be in [0, 1)"),
    ("model.fusion.hiden_size=32", "unknown option 'hiden_size'; did you mean 'hidden_size'"),
    ("model.text_encoder.hf_config.hidden_dropout_prop=0", "'hidden_dropout_prop' (did you mean 'hidden_dropout_prob'?)"),
    ("plugins=os", "plugins: expected a list of module names"),
])
def test_options_that_cannot_work_fail_before_the_data_is_read(tmp_path, capsys, override, message):
    missing = tmp_path / "missing.jsonl"  # never read: the option fails first
    code = main(["train", "--train-annotations", str(missing), "--images", str(tmp_path), "--out", str(tmp_path / "run"),
                 override])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "missing.jsonl" not in error
    assert not (tmp_path / "run").exists()


def test_data_files_that_are_not_there_are_listed_with_their_options_before_the_run_folder_is_made(tmp_path, capsys):
    """What a run moved to another machine meets: its config names the old machine's files. One error lists each."""
    code = main(["train", "--no-progress", "--train-annotations", str(tmp_path / "gone" / "train.jsonl"),
                 "--val-annotations", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"vlekit train: the data options name files that are not there: data.train_annotations={tmp_path / 'gone' / 'train.jsonl'} "
        f"does not exist: it names the training annotations (VCR: train.jsonl); data.val_annotations={tmp_path} is a folder: "
        f"it names the validation annotations (VCR: val.jsonl). Give each its place here: vlekit train ... "
        f"data.OPTION=FILE (on a resume too)")


def test_a_plugin_that_fails_on_import_is_named_with_its_cause(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text("import math\nvalue = math.sqrt(-1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--out", str(tmp_path / "run"), "plugins=[broken_plugin]"]) == 2
    error = capsys.readouterr().err
    assert "plugin module 'broken_plugin' listed in the config failed while importing: ValueError: math domain error" in error
    assert f"{tmp_path / 'broken_plugin.py'}:2" in error


def test_damaged_run_files_are_named(trained_run, tmp_path, capsys):
    out, data = tmp_path / "run", trained_run.data
    shutil.copytree(trained_run.q2a, out)  # a finished run, damaged below
    evaluate = ["eval", "--checkpoint", str(out), "--annotations", str(data.val), "--images", str(data.images_root),
                "--num-workers", "0"]
    assert main(evaluate) == 0

    (out / "config.yaml").write_text("model: [unclosed\n")
    assert main(["train", "--config", str(out / "config.yaml"), "--resume"]) == 2
    assert f"{out / 'config.yaml'}: not a readable YAML experiment config" in capsys.readouterr().err

    model = out / "model"
    damaged = [(model / "vlekit_config.json", b"{not json", "vlekit_config.json: not the JSON"),
               (model / "model.safetensors", None, "model.safetensors: unreadable safetensors file")]
    for path, content, message in damaged:
        original = path.read_bytes()
        path.write_bytes(content if content is not None else original[: len(original) // 2])
        (model / "manifest.json").rename(model / "manifest.saved")  # as a folder from before manifests
        assert main(evaluate) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, error
        path.write_bytes(original)
        (model / "manifest.saved").rename(model / "manifest.json")

    (model / "tokenizer").rename(model / "tokenizer.moved")
    (model / "manifest.json").unlink()
    assert main(evaluate) == 2
    assert f"{model}: no tokenizer/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_to_a_torchrun_group_stops_every_process_at_one_step_and_resumes_exactly(data, tmp_path):
    """DDP on 2 CPU processes under torchrun: ``kill -TERM -- -PGID`` reaches torchrun, whose agent forwards it to
    each worker (torch's elastic starts them in sessions of their own: ``start_new_session``). The workers agree
    on one step, save, and the resumed run ends with the weights of an uninterrupted one."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    options = {"epochs": 3, "save_every_steps": 0}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def torchrun(*args: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "vlekit.cli", "train", "--no-progress", *args]

    subprocess.run(torchrun(*tiny_overrides(data, straight, **options)), env=env, check=True, capture_output=True,
                   timeout=600)
    process = subprocess.Popen(["setsid", *torchrun(*tiny_overrides(data, stopped, **options))],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    subprocess.run(["kill", "-TERM", "--", f"-{os.getpgid(process.pid)}"], check=True)
    output, _ = process.communicate(timeout=300)
    assert output.count("interrupted by SIGTERM") == 2, output[-3000:]  # both workers, at the same step
    # torchrun itself ends with its SignalException traceback; no worker fails (no vlekit frame, no killed worker).
    assert "vlekit/" not in output.replace(str(stopped), "") and "killed by signal" not in output, output[-3000:]
    checkpoint = latest_checkpoint(stopped)
    assert checkpoint is not None and not (stopped / "model").exists(), output[-3000:]

    resumed = subprocess.run(torchrun("--resume", *tiny_overrides(data, stopped, **options)), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    expected, got = final_weights(straight), final_weights(stopped)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
