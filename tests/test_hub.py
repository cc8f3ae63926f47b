"""The Hub round trip, offline: push a trained run, load it back by repo id from huggingface_hub's cache.

The stand-in for the Hub is :class:`helpers.LocalHub`, given where ``HfApi`` would be: it takes the
``create_repo`` / ``create_commit`` calls vlekit makes and writes each commit into a cache folder in
huggingface_hub's own layout (``models--org--name/{blobs,snapshots/<commit>,refs/main}``, snapshot
files linked to content-addressed blobs). Loading then runs huggingface_hub's real
``snapshot_download`` under ``HF_HUB_OFFLINE``: nothing touches the network.
"""
from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from helpers import LocalHub, refused

import vlekit
from data_prep.vcr import read_vcr
from vlekit.cli import main
from vlekit.hub import resolve_folder
from vlekit.model import VCRModel, build_model
from vlekit.runs.manifest import write_manifest
from vlekit.runs.push import push_run

REPO = "vlekit-test/tiny-q2a"


@pytest.fixture
def offline(monkeypatch):
    """huggingface_hub's offline mode (read at import, so its constant is switched too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def demo_run(trained_run):
    """The shared tiny Q->A run of the demo's experiment, evaluated in the demo's layout (OUT/eval)."""
    return trained_run.data, trained_run.q2a


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n")[1])


def test_a_pushed_run_loads_back_offline_with_identical_scores_and_its_model_card(demo_run, tmp_path, monkeypatch, capsys):
    data, run = demo_run
    cache = tmp_path / "hf-cache"
    hub = LocalHub(cache)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)  # what push_folder builds by default
    assert main(["push", "--run", str(run), "--repo", REPO, "--private"]) == 0
    assert REPO in capsys.readouterr().out
    assert hub.created == [{"repo_id": REPO, "repo_type": "model", "private": True, "exist_ok": True, "token": None}]
    files = hub.commits[0]["files"]
    assert {"README.md", "vlekit_config.json", "model.safetensors", "data.json", "config.yaml",
            "tokenizer/tokenizer_config.json"} <= set(files)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    records = read_vcr(data.val)
    local = vlekit.load_run(run, device="cpu").score_batch(records, images_root=data.images_root)
    pushed = vlekit.load_run(REPO, cache_dir=cache, device="cpu")
    assert pushed.task == "q2a"
    assert torch.equal(pushed.score_batch(records, images_root=data.images_root), local)

    card = (pushed.trained.folder / "README.md").read_text()
    meta = front_matter(card)
    metrics = json.loads((run.parent / "eval" / "metrics.json").read_text())["q2a"]
    assert meta["library_name"] == "vlekit"
    resolved = json.loads((run / "model" / "vlekit_config.json").read_text())  # tiny-* resolve to their families
    assert meta["vlekit"] == {"text_encoder": "hf-text", "vision_encoder": "clip-vision", "fusion": "co-attention",
                              "task": "q2a"}
    assert resolved["vision_encoder"]["name"] == "clip-vision" and 'image_size: 32' in card  # its options
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == round(metrics["accuracy"], 4)
    assert f"[{metrics['ci95'][0]:.3f}, {metrics['ci95'][1]:.3f}]" in card  # the evaluation table, with its interval
    assert "lr: 0.001" in card and "vlekit train --config config.yaml" in card
    assert str(data.train) in card  # the data it was trained on


def test_a_card_never_shows_the_results_of_other_weights(demo_run, trained_run, tmp_path, monkeypatch):
    """The evaluation beside a run (OUT/eval) records the weights it scored (inputs.json): pushing another run
    with it as --metrics is refused, naming both; the QA->R run's own evaluation is accepted for it."""
    data, run = demo_run
    hub = LocalHub(tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    other = tmp_path / "other"
    shutil.copytree(run, other)  # the same run retrained: other weights, where its model/ says so
    weights = other / "model" / "model.safetensors"
    state = load_file(str(weights))
    save_file({key: value + 1 if key.endswith("bias") else value for key, value in state.items()}, str(weights))
    write_manifest(other / "model")
    with pytest.raises(ValueError, match=r"holds the results of other weights .* than .*other/model: evaluate this run"):
        push_run(other, REPO, metrics_file=run.parent / "eval" / "metrics.json", api=hub)
    push_run(trained_run.qa2r, REPO, metrics_file=run.parent / "eval" / "metrics.json", api=hub)  # evaluated with it


def test_model_push_to_hub_and_from_pretrained_by_repo_id(tmp_path, offline):
    torch.manual_seed(0)
    model = build_model(vision_encoder={"name": "tiny-clip", "hf_config": {"image_size": 32}})
    hub = LocalHub(tmp_path)
    url = model.push_to_hub("org/bare-model", api=hub)
    assert url.startswith("local://org/bare-model")
    loaded = VCRModel.from_pretrained("org/bare-model", cache_dir=tmp_path, revision="main")
    assert loaded.resolved_config() == model.resolved_config()
    for (name, expected), (_, got) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, got), name
    assert "Not evaluated" in (resolve_folder("org/bare-model", cache_dir=tmp_path) / "README.md").read_text()


def test_a_repo_missing_from_the_offline_cache_says_which_and_what_to_do(tmp_path, offline):
    with pytest.raises(FileNotFoundError, match=r"org/not-cached: no such local folder, and as a Hub repo it is not in the local cache .*HF_HUB_OFFLINE"):
        vlekit.load_run("org/not-cached", cache_dir=tmp_path)


def test_a_private_or_missing_repo_names_the_repo_and_the_token(tmp_path, monkeypatch):
    def hub_refuses(repo_id, **options):
        raise refused(401, repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub_refuses)
    with pytest.raises(FileNotFoundError, match=r"org/private .*private repo, log in .*token="):
        VCRModel.from_pretrained("org/private", cache_dir=tmp_path)


def test_a_refused_upload_names_the_repo_and_the_write_token(tmp_path):
    model = build_model()
    with pytest.raises(PermissionError, match=r"cannot write to Hub repo org/theirs.*write token"):
        model.push_to_hub("org/theirs", api=LocalHub(tmp_path, refuse=401))
    with pytest.raises(PermissionError, match=r"refused the upload to org/theirs \(HTTP 403\)"):
        model.push_to_hub("org/theirs", api=LocalHub(tmp_path, refuse=403))


def test_a_local_path_is_never_taken_for_a_repo_id(tmp_path):
    assert resolve_folder(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="no vlekit_config.json"):
        vlekit.load_run(tmp_path / "missing" / "run")


def test_pushing_in_offline_mode_says_so_instead_of_trying(demo_run, offline, capsys):
    """The real ``HfApi``: offline mode stops it before any request, and the command says why."""
    _, run = demo_run
    assert main(["push", "--run", str(run), "--repo", REPO]) == 2
    assert f"cannot push to Hub repo {REPO}: huggingface_hub is in offline mode" in capsys.readouterr().err
