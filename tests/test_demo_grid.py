"""Ablation grids over any experiment (``vlekit ablate --config --grid``); the demo's grid is one grid file."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from vlekit.ablation import grid as ablation, stats as ablation_stats
from vlekit.cli import main as cli_main
from vlekit.demo import DemoConfig, demo_experiment
from vlekit.runs.experiment import ExperimentConfig


def test_the_demo_grid_file_runs_the_demos_experiment_on_the_grid_device():
    grid = ablation.demo_grid(out="/tmp/grid")
    assert [v.name for v in grid.variants][:2] == [ablation_stats.REFERENCE, ablation_stats.NO_OBJECT_TOKENS]
    assert grid.seeds == (0, 1, 2) and grid.synthetic_data == ablation.SyntheticData(num_train=2000, num_val=300, seed=0)
    root = Path("/tmp/grid/data")
    data = SyntheticVCR(root, root / "vcr1images", root / "train.jsonl", root / "val.jsonl", root / "test.jsonl")
    reference = grid.variants[0]
    config = ablation.variant_config(grid, reference, seed=1, data=data, tokenizer="/tmp/grid/tokenizer")
    folder = str(ablation.run_folder(grid, reference.name, 1))
    expected = demo_experiment(DemoConfig(seed=1, num_workers=2), task="q2a", data=data, tokenizer="/tmp/grid/tokenizer")
    # The grid's runs differ from the demo's only where a grid must: the run folder, the device and its precision.
    expected = dataclasses.replace(expected, train=dataclasses.replace(expected.train, out=folder, cpu=False,
                                                                       mixed_precision="auto"))
    assert config == expected
    letterbox = next(v for v in grid.variants if v.name == "letterbox")
    assert ablation.variant_config(grid, letterbox, seed=1, data=data, tokenizer="t").data.geometry == "letterbox"


@pytest.fixture
def experiment(tmp_path) -> Path:
    """An experiment file of one's own: real-format data on disk (synthetic here), a tiny model."""
    data = generate_synthetic_vcr(tmp_path / "data", num_train=16, num_val=8, num_test=0, seed=4)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"vision_encoder": {"name": "tiny-clip", "hf_config": {"image_size": 32}}},
        "data": {"task": "q2a", "train_annotations": str(data.train), "val_annotations": str(data.val),
                 "images": str(data.images_root), "num_workers": 0},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "lr_multipliers": {}, "mixed_precision": "fp32",
                  "cpu": True, "log_every_steps": 1, "keep": 1},
    }))
    return path


def write_grid(path: Path, **content) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_vlekit_ablate_runs_a_grid_file_over_any_experiment_and_resumes(experiment, tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", reference="base", seeds=[0], variants=[
        {"name": "base", "description": "the experiment as it is"},
        {"name": "letterbox", "changes": {"data.geometry": "letterbox"}},
    ])
    out = tmp_path / "out"
    args = ["ablate", "--config", str(experiment), "--grid", str(grid), "--out", str(out), "--max-steps", "1"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "2 variants x 1 seeds" in printed and "| base | 1 |" in printed and "| letterbox | 1 |" in printed
    results = {r.variant: r for r in ablation_stats.load_results(out)}
    assert set(results) == {"base", "letterbox"} and all(r.steps == 1 and len(r.correct) == 8 for r in results.values())
    saved = json.loads((out / "runs" / "letterbox" / "seed-0" / ablation_stats.RESULT_FILE).read_text())["config"]
    assert saved["data"]["geometry"] == "letterbox" and saved["train"]["max_steps"] == 1
    assert saved["data"]["tokenizer"] == str(out / "tokenizer")  # tokenizer=auto: built once, shared
    assert saved["synthetic_data"] is None and not (out / "data").exists()  # the experiment's own data

    stamp = (out / "runs" / "base" / "seed-0" / ablation_stats.RESULT_FILE).stat().st_mtime_ns
    assert cli_main(args) == 0  # finished runs are loaded, not trained again
    assert (out / "runs" / "base" / "seed-0" / ablation_stats.RESULT_FILE).stat().st_mtime_ns == stamp
    assert {r.variant: r for r in ablation_stats.load_results(out)} == results


def test_grid_files_and_flags_that_do_not_fit_say_why(experiment, tmp_path, capsys):
    rows = [{"name": "base"}]
    with pytest.raises(TypeError, match="unknown key 'variant'; did you mean 'variants'"):
        ablation.load_grid(write_grid(tmp_path / "a.yaml", variant=rows, reference="base"), experiment=experiment)
    with pytest.raises(ValueError, match="the reference 'vle' is not a variant; variants: base"):
        ablation.load_grid(write_grid(tmp_path / "b.yaml", variants=rows), experiment=experiment)
    with pytest.raises(ValueError, match="no base experiment"):
        ablation.load_grid(write_grid(tmp_path / "c.yaml", variants=rows, reference="base"))
    with pytest.raises(TypeError, match="unknown option 'change'"):
        ablation.load_grid(write_grid(tmp_path / "d.yaml", variants=[{"name": "base", "change": {}}], reference="base"),
                           experiment=experiment)
    grid = write_grid(tmp_path / "e.yaml", variants=rows, reference="base")
    assert cli_main(["ablate", "--config", str(experiment), "--out", str(tmp_path / "o")]) == 2
    assert "--config needs --grid" in capsys.readouterr().err
    assert cli_main(["ablate", "--config", str(experiment), "--grid", str(grid), "--num-train", "8"]) == 2
    assert "has no synthetic_data" in capsys.readouterr().err
    assert cli_main(["ablate", "--config", str(experiment), "--grid", str(grid), "--variants", "nope"]) == 2
    assert "unknown variant 'nope'; known: base" in capsys.readouterr().err


def test_variant_changes_are_applied_and_checked():
    config = ablation.with_changes(ExperimentConfig(), {"model.fusion": "tiny-merged-attention",
                                                        "data.geometry": "letterbox", "model.use_object_tokens": False})
    assert config.model.fusion == {"name": "tiny-merged-attention"}
    assert config.data.geometry == "letterbox" and config.model.use_object_tokens is False
    with pytest.raises(TypeError, match="unknown option 'use_object_type'; did you mean 'use_object_types'"):
        ablation.with_changes(ExperimentConfig(), {"model.use_object_type": False})
    with pytest.raises(TypeError, match="use_object_tokens"):
        ablation.with_changes(ExperimentConfig(), {"model.use_object_tokens": "no"})


def test_a_grid_reuses_finished_runs_unless_what_they_depend_on_changed(tmp_path):
    smoke = ablation.smoke_grid(tmp_path)  # the notebooks' smoke grid, cut to one step on 16 questions
    grid = dataclasses.replace(smoke, max_steps=1, synthetic_data=dataclasses.replace(smoke.synthetic_data, num_train=16,
                                                                                       num_val=8))
    variant = [v for v in ablation.smoke_variants() if v.name == ablation_stats.REFERENCE]
    first = ablation.run_grid(grid, variant, log=lambda _: None)[0]
    assert first.steps == 1 and len(first.correct) == 8
    result_file = Path(first.folder) / ablation_stats.RESULT_FILE
    stamp = result_file.stat().st_mtime_ns
    again = ablation.run_grid(dataclasses.replace(grid, num_workers=1), variant, log=lambda _: None)[0]
    assert result_file.stat().st_mtime_ns == stamp and again == first  # workers: loaded, not re-run
    other = dataclasses.replace(grid, lr=grid.lr / 2)  # another grid in the same folder: refused before any work
    with pytest.raises(ValueError, match=rf"--out {grid.out} holds finished runs of another grid, which this one would "
                                         rf"replace: vle seed 0 \(train.lr {grid.lr} there, {grid.lr / 2} here\); "
                                         r"choose another --out, or --overwrite"):
        ablation.run_grid(other, variant, log=lambda _: None)
    assert result_file.stat().st_mtime_ns == stamp
    changed = ablation.run_grid(other, variant, log=lambda _: None, overwrite=True)[0]
    assert result_file.stat().st_mtime_ns != stamp and changed.seconds != first.seconds  # lr: trained again


def test_a_grid_folder_holding_another_grids_runs_is_refused_and_a_moved_one_is_reused(tmp_path, capsys):
    """A smoke grid run into a full grid's folder would have replaced its data and runs one by one; now it is
    refused, naming what differs. The same grid in a moved (or copied) folder reuses its runs: the identity
    writes the grid folder's paths relative to it."""
    import shutil

    smoke = ablation.smoke_grid(tmp_path / "grid")
    grid = dataclasses.replace(smoke, max_steps=1, synthetic_data=dataclasses.replace(smoke.synthetic_data, num_train=16,
                                                                                       num_val=8))
    variant = [v for v in ablation.smoke_variants() if v.name == ablation_stats.REFERENCE]
    first = ablation.run_grid(grid, variant, log=lambda _: None)[0]
    data_stamp = (tmp_path / "grid" / "data" / "options.json").read_text()

    bigger = dataclasses.replace(grid, synthetic_data=dataclasses.replace(grid.synthetic_data, num_train=24))
    with pytest.raises(ValueError, match=r"vle seed 0 \(synthetic_data.num_train 16 there, 24 here\), the synthetic "
                                         r"data its runs were evaluated on"):
        ablation.run_grid(bigger, variant, log=lambda _: None)
    assert (tmp_path / "grid" / "data" / "options.json").read_text() == data_stamp  # the data was not rewritten

    args = ["ablate", "--out", str(tmp_path / "grid"), "--smoke"]  # the smoke grid's own sizes: other data and steps
    assert cli_main(args) == 2
    assert f"vlekit ablate: --out {tmp_path / 'grid'} holds finished runs of another grid" in capsys.readouterr().err

    # A run an older vlekit finished: an option added since is not recorded, and is no difference (new options
    # default to what runs did before); a preprocessing option it did not record counts at what it was fed.
    result_file = Path(first.folder) / ablation_stats.RESULT_FILE
    saved = json.loads(result_file.read_text())
    older = json.loads(json.dumps(saved))
    del older["config"]["train"]["save_best"], older["config"]["train"]["early_stopping_patience"]
    result_file.write_text(json.dumps(older))
    assert ablation.run_grid(grid, variant, log=lambda _: None)[0].seconds == first.seconds  # reused
    del older["config"]["data"]["person_names"]  # before the option: persons named by first mention
    result_file.write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"vle seed 0 \(data.person_names by-first-mention there, by-query here\)"):
        ablation.run_grid(grid, variant, log=lambda _: None)
    result_file.write_text(json.dumps(saved))

    shutil.move(tmp_path / "grid", tmp_path / "moved")
    moved = dataclasses.replace(grid, out=str(tmp_path / "moved"))
    again = ablation.run_grid(moved, variant, log=lambda _: None)[0]
    assert again.seconds == first.seconds and again.correct == first.correct  # loaded, not trained again
    assert again.folder == str(tmp_path / "moved" / "runs" / "vle" / "seed-0")  # where it is now


def test_a_diverging_run_stops_the_grid_naming_it_and_the_finished_runs_are_kept(experiment, tmp_path, monkeypatch,
                                                                                 capsys):
    """A variant whose weights turn NaN (its loss NaN from the first step here) stops `vlekit ablate` with exit 1,
    naming the variant, the seed and what to change; the runs finished before it keep their results."""
    from helpers import nan_loss_from

    grid = write_grid(tmp_path / "grid.yaml", reference="base", seeds=[0], variants=[
        {"name": "base"}, {"name": "hot", "changes": {"train.lr": 1.0}}])
    train = ablation.train

    def train_diverging_when_hot(config, **options):
        with pytest.MonkeyPatch.context() as patch:
            if config.train.lr == 1.0:
                nan_loss_from(patch, 1)
            return train(config, **options)

    monkeypatch.setattr(ablation, "train", train_diverging_when_hot)
    out = tmp_path / "out"
    assert cli_main(["ablate", "--config", str(experiment), "--grid", str(grid), "--out", str(out), "--max-steps", "2"]) == 1
    error = capsys.readouterr().err
    assert "vlekit ablate: run hot seed 0: training diverged:" in error
    assert "lower the variant's learning rate in the grid file and run the grid again" in error
    assert [r.variant for r in ablation_stats.load_results(out)] == ["base"]
