"""Tracked runs: ``train.report_to`` sends the metrics.jsonl scalars and the resolved config to
Accelerate's trackers; the TensorBoard event files of a tiny CPU run are read back here."""
from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.demo import DemoConfig, demo_experiment
from vlekit.runs.experiment import load_experiment
from vlekit.runs.folder import RunFolder
from vlekit.training.tracking import TRACKING_DIR, check_trackers
from vlekit.training.train import train


def test_a_tensorboard_run_holds_the_metrics_jsonl_scalars_and_the_config(tmp_path):
    demo = DemoConfig(out=str(tmp_path), num_train=32, num_val=12, epochs=1, batch_size=8, num_workers=0)
    data = generate_synthetic_vcr(tmp_path / "data", num_train=demo.num_train, num_val=demo.num_val, num_test=0, seed=5)
    config = demo_experiment(demo, task="q2a", data=data, tokenizer="auto")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, report_to=["tensorboard"], log_every_steps=2))
    result = train(config, progress=False)

    records = RunFolder(result.out).metrics()
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4]
    run_dir = result.out / TRACKING_DIR / result.out.name
    events = EventAccumulator(str(run_dir)).Reload()
    for key in ("loss", "lr", "questions_per_s", "data_time_fraction", "epoch"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [2, 4], key
        assert [e.value for e in logged] == pytest.approx([r[key] for r in steps], rel=1e-5), key
    validation = events.Scalars("val/accuracy")
    assert [(e.step, e.value) for e in validation] == [(4, pytest.approx(records[-1]["val_accuracy"], rel=1e-5))]

    # The hyper-parameters: TensorBoard's hparams plugin, in the sub-run add_hparams writes.
    (hparams_dir,) = [path for path in run_dir.iterdir() if path.is_dir() and any(path.glob("events.out.tfevents.*"))]
    content = EventAccumulator(str(hparams_dir)).Reload().PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(1e-3)
    assert hparams["data.task"].string_value == "q2a"
    assert hparams["train.report_to"].string_value == '["tensorboard"]'
    assert hparams["model.fusion.name"].string_value == "tiny-co-attention"


def test_report_to_takes_one_name_or_a_list_from_the_config():
    assert load_experiment(overrides=["train.report_to=tensorboard"]).train.report_to == "tensorboard"
    assert check_trackers("tensorboard") == ["tensorboard"]
    assert check_trackers(load_experiment(overrides=["train.report_to=[tensorboard]"]).train.report_to) == ["tensorboard"]
    assert check_trackers([]) == []


def test_an_unknown_tracker_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"unknown tracker 'tensorbord'; supported: .*tensorboard.*wandb"):
        check_trackers(["tensorbord"])


def test_a_tracker_without_its_package_names_the_pip_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "comet_ml" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"tracker 'comet_ml' needs its package: pip install comet-ml"):
        check_trackers(["tensorboard", "comet_ml"])
