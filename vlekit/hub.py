"""The Hugging Face Hub side of vlekit: resolve a repo id to a local folder, upload a folder, write its model card.

    VCRModel.from_pretrained("org/vcr-q2a", revision="main")   # a Hub repo id or a local folder
    vlekit.load_run("org/vcr-q2a")                             # a pushed run: model + tokenizer + preprocessing
    vlekit push --run runs/demo/q2a --repo org/vcr-q2a         # upload a trained run with a model card

Downloads go through ``huggingface_hub.snapshot_download`` (its cache, ``revision``, ``token``,
``HF_HUB_OFFLINE``), uploads through ``HfApi.create_repo`` / ``HfApi.create_commit`` (one commit: the
files and the card). The Hub's errors become ``FileNotFoundError`` / ``PermissionError`` / ``ConnectionError`` naming the
repo and what to do. This module sits below the model: it knows files and dicts, not vlekit's classes.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vlekit.tables import METRIC_NAMES, format_metrics_table, markdown_table

MODEL_CARD_FILE = "README.md"
LIBRARY_NAME = "vlekit"
# ``org/name`` or ``name``: the Hub's characters, no leading dot, no ``..`` (huggingface_hub validates the rest).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def looks_like_repo_id(name: str | Path) -> bool:
    """Whether ``name`` is a Hub repo id (``org/name``) rather than a local path: it does not exist on
    disk, is relative, and has at most one ``/``."""
    text = str(name)
    return not Path(text).exists() and not Path(text).is_absolute() and bool(_REPO_ID.match(text)) and ".." not in text


def resolve_folder(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                   token: str | bool | None = None) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or the Hub repo's snapshot in the cache.

    revision: a branch, tag or commit of the repo (default ``main``). cache_dir: the huggingface_hub
    cache (default ``HF_HUB_CACHE``). token: for a private repo (default: the logged-in token).
    With ``HF_HUB_OFFLINE=1`` the cached snapshot is used, never the network.
    """
    if Path(name_or_path).exists() or not looks_like_repo_id(name_or_path):
        if revision is not None:
            raise ValueError(f"{name_or_path}: revision={revision!r} is for Hub repo ids; this is a local path")
        return Path(name_or_path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo_id = str(name_or_path)
    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token))
    except GatedRepoError as error:
        raise PermissionError(f"Hub repo {repo_id} is gated: accept its conditions on its page, then log in "
                              f"(`hf auth login`) or pass token=") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id} is neither a local folder nor a Hub model repo you can read: check the name, or, for a "
            f"private repo, log in (`hf auth login`) or pass token= (vlekit: --token)") from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"Hub repo {repo_id} has no revision {revision!r}: give a branch, tag or commit "
                                f"it has") from error
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id}: no such local folder, and as a Hub repo{at} it is not in the local cache "
            f"({cache_dir or 'HF_HUB_CACHE'}) and the Hub was not reached (offline: HF_HUB_OFFLINE=1, or no "
            f"connection): download it once online, or give cache_dir= the cache that holds it") from error


def push_folder(folder: str | Path, repo_id: str, *, card: str, api: Any = None, token: str | bool | None = None,
                private: bool | None = None, revision: str | None = None,
                commit_message: str = "Upload vlekit model") -> str:
    """Upload every file under ``folder`` and ``card`` (as ``README.md``) to the Hub model repo
    ``repo_id`` in one commit, creating the repo when it does not exist. Returns the commit's URL.

    api: the ``huggingface_hub.HfApi`` to use (default ``HfApi(token=token)``): its ``create_repo``
        and ``create_commit`` are called.
    private: a new repo's visibility (an existing repo keeps its own).
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MODEL_CARD_FILE)
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=path)
                  for path in files]
    operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD_FILE, path_or_fileobj=card.encode()))
    api = api if api is not None else HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
        commit = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                                   repo_type="model", token=token)
    except OfflineModeIsEnabled as error:
        raise ConnectionError(f"cannot push to Hub repo {repo_id}: huggingface_hub is in offline mode "
                              f"(HF_HUB_OFFLINE=1); unset it to upload") from error
    except RepositoryNotFoundError as error:
        raise PermissionError(
            f"cannot write to Hub repo {repo_id}: it does not exist under an account you can write to, or your "
            f"token lacks write access; log in with a write token (`hf auth login`) or pass --token") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PermissionError(f"the Hub refused the upload to {repo_id} (HTTP {status}): log in with a write "
                                  f"token (`hf auth login`) or pass --token") from error
        raise
    return str(getattr(commit, "commit_url", commit))


# -- the model card -------------------------------------------------------------------------------
def _component(spec: Mapping[str, Any] | str) -> str:
    return spec if isinstance(spec, str) else str(spec.get("name"))


def model_card(*, repo_id: str, model_config: Mapping[str, Any], data: Mapping[str, Any] | None = None,
               experiment: Mapping[str, Any] | None = None, metrics: Mapping[str, Mapping[str, Any]] | None = None,
               metrics_source: str | None = None) -> str:
    """The ``README.md`` of a pushed model: YAML metadata (library, tags, components, task, the
    evaluation as ``model-index``) and sections on the components, task, data, recipe, evaluation
    (accuracy with its 95% interval) and the command that reproduces the run.

    model_config: ``vlekit_config.json`` (the resolved ``VCRModelConfig``). data: the run's
    preprocessing options (``data.json``). experiment: the resolved ``config.yaml``. metrics:
    ``{task: {"accuracy", "ci95", "chance", "n"}}`` as ``vlekit eval`` writes to ``metrics.json``.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    components = {kind: _component(model_config[kind]) for kind in ("text_encoder", "vision_encoder", "fusion")}
    task = (data or {}).get("task")
    data_section = (experiment or {}).get("data") or {}
    vqa = task == "vqa"
    eval_results = [
        EvalResult(task_type="visual-question-answering" if vqa else "multiple-choice",
                   task_name=METRIC_NAMES[name] if vqa else f"VCR {METRIC_NAMES[name]}", dataset_type="vqa" if vqa else "vcr",
                   dataset_name=("VQA" if vqa else f"VCR ({Path(str(data_section.get('val_annotations') or 'val')).name})"),
                   metric_type="accuracy", metric_value=round(float(m["accuracy"]), 4),
                   metric_name=f"{METRIC_NAMES[name]} accuracy (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}, n={m['n']})")
        for name, m in (metrics or {}).items() if name in METRIC_NAMES
    ]
    tags = ["visual-question-answering", "vqa"] if vqa else ["visual-commonsense-reasoning", "vcr", "multiple-choice"]
    card_data = ModelCardData(
        library_name=LIBRARY_NAME, tags=[LIBRARY_NAME, *tags],
        model_name=repo_id.rpartition("/")[2], eval_results=eval_results or None,
        vlekit={**components, **({"task": task} if task else {})},
    )
    summary = ("A visual question answering model trained with vlekit (VQA: pick the answer of the head's answer "
               "vocabulary)." if vqa else f"A Visual Commonsense Reasoning model trained with vlekit "
               f"({METRIC_NAMES.get(task, 'multiple choice')}: pick the right one of 4 choices).")
    lines = [f"# {repo_id}", "", summary, "",
             "## Components", "",
             markdown_table([{"kind": kind.replace("_", " "), "component": name} for kind, name in components.items()]),
             "", "<details><summary>the full model config (<code>vlekit_config.json</code>)</summary>", "", "```yaml",
             yaml.safe_dump(dict(model_config), sort_keys=False).rstrip(), "```", "", "</details>", ""]
    if task:
        lines += ["## Task", "", {"q2a": "Q->A: given the image and the question, score the 4 answers.",
                                  "qa2r": "QA->R: given the image, the question and the answer, score the 4 rationales.",
                                  "vqa": "VQA: given the image and the question, score every answer of the vocabulary "
                                         "(`vlekit_config.json`'s `head.answers`)."}.get(task, task), ""]
    if data is not None or data_section:
        lines += ["## Data", ""]
        for key in ("train_questions", "train_annotations", "val_questions", "val_annotations", "images"):
            if data_section.get(key):
                lines.append(f"- {key.replace('_', ' ')}: `{data_section[key]}`")
        if data is not None:
            lines.append(f"- preprocessing (`data.json`): `{json.dumps(dict(data), sort_keys=True)}`")
        lines.append("")
    if experiment:
        lines += ["## Recipe", "", "The `train` section of the resolved `config.yaml` (uploaded with the model):", "",
                  "```yaml", yaml.safe_dump({"train": experiment.get("train") or {}}, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Evaluation", ""]
    if metrics:
        lines += [format_metrics_table(metrics, markdown=True), "",
                  f"95% percentile-bootstrap intervals over questions{f' ({metrics_source})' if metrics_source else ''}.", ""]
    else:
        lines += ["Not evaluated: push with an evaluation (`vlekit eval ... --out DIR`, then `vlekit push --metrics "
                  "DIR/metrics.json`) to show its accuracy here.", ""]
    if vqa:
        lines += ["## Use", "", "```bash", f"hf download {repo_id} --local-dir model",
                  "vlekit eval --checkpoint model --questions QUESTIONS.json --images DIR --out eval", "```", ""]
    else:
        lines += ["## Use", "", "```python", "import vlekit", f'predictor = vlekit.load_run("{repo_id}")',
                  "probabilities = predictor.score_image(image, question=..., choices=[...])", "```", ""]
    if experiment:
        lines += ["## Reproduce", "", "With the data at the paths in `config.yaml`'s `data` section:", "", "```bash",
                  f"hf download {repo_id} config.yaml --local-dir .", "vlekit train --config config.yaml", "```", ""]
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)
