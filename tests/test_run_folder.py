"""The run folder: what ``vlekit train`` writes is what ``vlekit.runs.folder`` names and loads."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from data_prep.preprocess import MODEL_OPTIONS
from data_prep.synthetic import generate_synthetic_vcr
from vlekit.cli import main as cli_main
from vlekit.runs.folder import PREPROCESS_FILE, RunFolder, find_model_dir, load_trained, read_metrics
from vlekit.runs.manifest import write_manifest


def test_a_trained_run_has_the_layout_run_folder_names_and_loads_back(trained_run):
    data, config = trained_run.data, trained_run.experiment("q2a")
    steps = trained_run.demo.num_train // trained_run.demo.batch_size  # one epoch
    run = RunFolder(trained_run.q2a)
    assert run.root == Path(config.train.out)
    assert run.experiment_file.is_file() and (run.tokenizer_dir / "tokenizer_config.json").is_file()
    assert run.model_dir == run.root / "model" and [p.name for p in run.checkpoints_dir.iterdir()] == [f"step-{steps:07d}"]
    assert not run.curve_file.exists()  # train() leaves drawing to its caller
    recorded = run.experiment()  # what was built: the text encoder sized to the data-built tokenizer
    assert dataclasses.replace(recorded, model=config.model) == config
    assert recorded.model.text_encoder == {**config.model.text_encoder, "vocab_size": len(load_trained(run.root).tokenizer)}
    metrics = run.metrics()
    assert config.train.log_every_steps > steps  # so the one loss row is the final step's
    assert metrics == read_metrics(run.metrics_file) and [m["step"] for m in metrics if "loss" in m] == [steps]
    assert find_model_dir(run.root) == find_model_dir(run.model_dir) == run.model_dir

    trained = load_trained(run.root)
    saved = json.loads((run.model_dir / PREPROCESS_FILE).read_text())  # resolved, with the image side the run was fed
    assert trained.task == "q2a" and trained.data == {k: v for k, v in saved.items() if k not in MODEL_OPTIONS}
    assert saved["geometry"] == "squash"  # the mode's default, saved as used (not null)
    preprocessor = trained.preprocessor(images_root=data.images_root)
    encoder = trained.model.vision_encoder
    assert (preprocessor.config.image_size, preprocessor.config.patch_size) == (encoder.image_size, encoder.patch_size)
    assert (saved["image_size"], saved["patch_size"]) == (encoder.image_size, encoder.patch_size) == (32, 8)
    assert preprocessor.config.max_length == config.data.max_length and preprocessor.images_root == data.images_root


def test_a_checkpoint_loads_and_evaluates_as_the_model_saved_at_its_step(trained_run, tmp_path):
    """A run's last checkpoint is taken at the step ``model/`` is saved at: loaded on its own (``vlekit eval
    --checkpoint RUN/checkpoints/step-N``) it is the same model, tokenizer, preprocessing and predictions."""
    run = RunFolder(trained_run.q2a)
    [checkpoint] = run.checkpoints_dir.iterdir()
    from_checkpoint, final = load_trained(checkpoint), load_trained(run.root)
    assert from_checkpoint.folder == checkpoint and not from_checkpoint.model.training
    assert from_checkpoint.model.resolved_config() == final.model.resolved_config()
    ours, theirs = from_checkpoint.model.state_dict(), final.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert from_checkpoint.data == final.data and from_checkpoint.mixed_precision == final.mixed_precision == "fp32"
    assert from_checkpoint.tokenizer.get_vocab() == final.tokenizer.get_vocab()

    data = trained_run.data
    for name, folder in (("checkpoint", checkpoint), ("model", run.root)):
        assert cli_main(["eval", "--checkpoint", str(folder), "--annotations", str(data.val), "--images",
                         str(data.images_root), "--out", str(tmp_path / name), "--num-workers", "0"]) == 0
    assert (tmp_path / "checkpoint" / "predictions.jsonl").read_text() == (tmp_path / "model" / "predictions.jsonl").read_text()


def test_an_interrupted_run_points_at_its_checkpoint_and_an_old_checkpoint_at_resuming(trained_run, tmp_path, capsys):
    """A run stopped before ``model/`` names its newest complete checkpoint, which loads. A checkpoint saved
    before checkpoints recorded the model says how to write ``model/`` from it, and that command works."""
    run = tmp_path / "run"
    shutil.copytree(trained_run.q2a, run)
    shutil.rmtree(run / "model")
    [checkpoint] = (run / "checkpoints").iterdir()
    with pytest.raises(FileNotFoundError, match=f"interrupted before writing model/.*newest complete checkpoint, {checkpoint}\\)$"):
        load_trained(run)
    assert load_trained(checkpoint).task == "q2a"
    optimizer = checkpoint / "optimizer.bin"  # what only a resume reads is not checked to load the model
    saved_optimizer = optimizer.read_bytes()
    optimizer.write_bytes(saved_optimizer[:-1] + bytes([saved_optimizer[-1] ^ 1]))
    assert load_trained(checkpoint).task == "q2a"
    optimizer.write_bytes(saved_optimizer)
    weights = checkpoint / "model.safetensors"
    saved_weights = weights.read_bytes()
    weights.write_bytes(saved_weights[:-1] + bytes([saved_weights[-1] ^ 1]))
    with pytest.raises(ValueError, match="is not a complete checkpoint: model.safetensors does not match its SHA-256"):
        load_trained(checkpoint)
    weights.write_bytes(saved_weights)
    with pytest.raises(FileNotFoundError, match=f"newest complete checkpoint, {checkpoint}\\)$"):
        load_trained(run / "checkpoints")  # the folder of checkpoints given for one of them

    for name in ("vlekit_config.json", "data.json", "tokenizer", "manifest.json"):  # as an older vlekit saved it
        (shutil.rmtree if (checkpoint / name).is_dir() else Path.unlink)(checkpoint / name)
    write_manifest(checkpoint)
    with pytest.raises(FileNotFoundError, match="saved before checkpoints recorded the model") as error:
        load_trained(checkpoint)
    command = re.search(r"`vlekit (train [^`]+)`", str(error.value)).group(1).split()
    assert cli_main([*command, "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert torch.equal(_flat(load_trained(run)), _flat(load_trained(trained_run.q2a)))  # model/ written again


def _flat(trained) -> torch.Tensor:
    return torch.cat([value.flatten().float() for value in trained.model.state_dict().values()])


def test_a_folder_without_a_model_says_what_it_expected(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="expected a run folder, its model/ folder or one of its checkpoints.*interrupted"):
        find_model_dir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vlekit_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"no {PREPROCESS_FILE}"):
        load_trained(tmp_path)


def test_vlekit_train_draws_the_curve_train_leaves_out(tmp_path, capsys):
    data = generate_synthetic_vcr(tmp_path / "data", num_train=16, num_val=8, num_test=0, seed=1)
    code = cli_main(["train", "--train-annotations", str(data.train), "--images", str(data.images_root),
                     "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--no-progress",
                     "data.num_workers=0", "train.mixed_precision=fp32", "train.cpu=true", f"data.val_annotations={data.val}",
                     "train.save_best=true"])
    printed = capsys.readouterr().out
    assert code == 0 and "curve" in printed
    selected = json.loads((tmp_path / "run" / "best" / "selected.json").read_text())
    assert f"best validation score {selected['val_accuracy']:.3f} at step 2: model in {tmp_path / 'run' / 'best'}" in printed
    assert RunFolder(tmp_path / "run").curve_file.stat().st_size > 1000
