"""``vlekit push``: upload a trained run to the Hugging Face Hub with a generated model card.

    vlekit push --run runs/demo/q2a --repo org/vcr-q2a [--metrics runs/demo/eval/metrics.json] [--private]
    vlekit.load_run("org/vcr-q2a")   # anywhere, later: the same predictor

What goes up is ``RUN/model/`` as ``vlekit train`` wrote it (weights, ``vlekit_config.json``, the
tokenizer, ``data.json``, ``config.yaml``: all that ``vlekit.load_run`` needs) and ``README.md``, the
model card of :func:`vlekit.hub.model_card`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from vlekit.hub import model_card, push_folder
from vlekit.model import MODEL_CONFIG_FILE, WEIGHTS_FILE
from vlekit.runs.folder import EVAL_INPUTS_FILE, EVAL_METRICS_FILE, EXPERIMENT_FILE, MODEL_DIR, PREPROCESS_FILE, find_model_dir
from vlekit.runs.manifest import MANIFEST_FILE


def find_eval_metrics(run: Path, model_dir: Path) -> Path | None:
    """The evaluation of ``run``, when one sits where vlekit puts it: ``RUN/eval/metrics.json`` or
    ``RUN/metrics.json``, or the demo's ``OUT/eval/metrics.json`` next to ``OUT/q2a``."""
    root = model_dir.parent if model_dir.name == MODEL_DIR else run
    for candidate in (root / "eval" / EVAL_METRICS_FILE, root / EVAL_METRICS_FILE, root.parent / "eval" / EVAL_METRICS_FILE):
        if candidate.is_file():
            return candidate
    return None


def check_metrics_are_of(metrics_path: Path, model_dir: Path) -> None:
    """The evaluation beside ``metrics_path`` (its ``inputs.json``) scored the weights in ``model_dir``: the same
    SHA-256 (where both are recorded), so a card never shows another model's results."""
    inputs_path = metrics_path.with_name(EVAL_INPUTS_FILE)
    manifest = model_dir / MANIFEST_FILE
    if not inputs_path.is_file() or not manifest.is_file():
        return  # an evaluation or a run from before these records: nothing to check against
    weights = (json.loads(manifest.read_text())["files"].get(WEIGHTS_FILE) or {}).get("sha256")
    scored = [model for model in json.loads(inputs_path.read_text()).get("models", [])]
    if weights is not None and weights not in {model.get("weights_sha256") for model in scored}:
        raise ValueError(f"{metrics_path} holds the results of other weights ({', '.join(m['folder'] for m in scored)}, "
                         f"per {inputs_path.name}) than {model_dir}: evaluate this run (vlekit eval --checkpoint "
                         f"{model_dir} --out DIR) and give --metrics DIR/{EVAL_METRICS_FILE}")


def base_section(base: dict[str, Any], adaptation: dict[str, Any]) -> str:
    """The model card's section on a run saved on a named frozen base: what is uploaded, and the base."""
    methods = ", ".join(f"{part}: {spec['name']}" for part, spec in adaptation.items()) or "full"
    return (f"\n## Base model\n\nThis repository holds only the parameters the run trained ({methods}); the frozen "
            f"weights come from the base `{base['source']}` ({base['format']} format, SHA-256 of its frozen weights "
            f"`{base['sha256']}`), which `vlekit.load_run` loads and checks. `vlekit export --merge` writes a "
            f"self-contained model with the adapters merged.\n")


def push_run(run: str | Path, repo_id: str, *, metrics_file: str | Path | None = None, api: Any = None,
             token: str | None = None, private: bool | None = None, revision: str | None = None) -> str:
    """Upload the trained run ``run`` (a run folder or its ``model/``) to the Hub model repo ``repo_id``
    with its model card; returns the commit URL.

    metrics_file: the ``metrics.json`` of ``vlekit eval`` for the card's evaluation table (default:
        :func:`find_eval_metrics`). api / token / private / revision: as :func:`vlekit.hub.push_folder`.
    """
    run = Path(run)
    model_dir = find_model_dir(run)
    if not (model_dir / PREPROCESS_FILE).is_file():
        raise FileNotFoundError(f"{model_dir}: no {PREPROCESS_FILE}; push a run folder written by vlekit train")
    metrics_path = Path(metrics_file) if metrics_file is not None else find_eval_metrics(run, model_dir)
    if metrics_path is not None and not metrics_path.is_file():
        raise FileNotFoundError(f"--metrics {metrics_path} not found (vlekit eval --out DIR writes DIR/{EVAL_METRICS_FILE})")
    if metrics_path is not None:
        check_metrics_are_of(metrics_path, model_dir)
    data = json.loads((model_dir / PREPROCESS_FILE).read_text())
    metrics = json.loads(metrics_path.read_text()) if metrics_path is not None else None
    if metrics is not None and data["task"] not in metrics:
        raise ValueError(f"{metrics_path} has no {data['task']} result (it has {', '.join(metrics)}): give the "
                         f"evaluation of this {data['task']} run")
    if metrics is not None:  # the other rows (QA->R, Q->AR) are other models' or joint results
        metrics = {data["task"]: metrics[data["task"]]}
    experiment = yaml.safe_load((model_dir / EXPERIMENT_FILE).read_text()) if (model_dir / EXPERIMENT_FILE).is_file() else None
    model_config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text())
    card = model_card(repo_id=repo_id, model_config=model_config, data=data,
                      experiment=experiment, metrics=metrics, metrics_source=metrics_path.name if metrics_path else None)
    if model_config.get("base"):
        card += base_section(model_config["base"], model_config.get("adaptation") or {})
    return push_folder(model_dir, repo_id, card=card, api=api, token=token, private=private, revision=revision,
                       commit_message=f"Upload vlekit {data['task']} run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_dir", required=True, metavar="DIR", help="a run folder from vlekit train (or its model/)")
    parser.add_argument("--repo", required=True, metavar="ID", help="the Hub model repo, e.g. your-name/vcr-q2a")
    parser.add_argument("--metrics", help="vlekit eval's metrics.json for the card (default: RUN/eval/, RUN/, or ../eval/)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--revision", help="the branch to commit to (default main)")
    parser.add_argument("--token", help="a Hub write token (default: the one `hf auth login` saved)")


def run(args: argparse.Namespace) -> int:
    try:
        url = push_run(args.run_dir, args.repo, metrics_file=args.metrics, token=args.token, private=args.private,
                       revision=args.revision)
    except (FileNotFoundError, PermissionError, ConnectionError, ValueError) as error:
        print(f"vlekit push: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.run_dir} to {args.repo}: {url}\nload it with vlekit.load_run({args.repo!r})")
    return 0
