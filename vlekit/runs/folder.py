"""The run folder: the one definition of what ``vlekit train`` writes, and the loaders that read it back.

Layout (the names below are the constants of this module)::

    RUN/config.yaml              EXPERIMENT_FILE: the resolved experiment config
    RUN/tokenizer/               TOKENIZER_DIR: the tokenizer (built from the data when tokenizer=auto)
    RUN/metrics.jsonl            METRICS_FILE: one JSON object per log step and per evaluation
    RUN/checkpoints/step-N/      CHECKPOINTS_DIR: accelerate state + trainer state (STATE_FILE), to resume;
                                 beside them what loads the model on its own: vlekit_config.json,
                                 tokenizer/, data.json and config.yaml, as in model/
    RUN/model/                   MODEL_DIR: the final model, self-contained:
        vlekit_config.json, model.safetensors   the model (``VCRModel.save_pretrained``)
        tokenizer/                              TOKENIZER_DIR again
        data.json                               PREPROCESS_FILE: the run's preprocessing, resolved, with the image side
        config.yaml                             EXPERIMENT_FILE again
    RUN/best/                    BEST_DIR (train.save_best): the model at the best validation score so far, as
                                 model/, with SELECTION_FILE (the step, epoch and score it was chosen at)
    RUN/curve.png                CURVE_FILE: the training curve (drawn by the caller of ``train``)

``load_trained(RUN, RUN/model or RUN/checkpoints/step-N)`` gives the model, its tokenizer and its
preprocessing options, and
``TrainedModel.preprocessor()`` the data pipeline that matches them; ``vlekit.evaluation.predict.load_run`` wraps
that into a predictor. Sits above the model and the data pipeline and below train / evaluate.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from data_prep.constants import MODEL_DIR, PREPROCESS_FILE, TOKENIZER_DIR, VQA_TASK
from data_prep.options import saved_run_options
from data_prep.preprocess import MODEL_OPTIONS, PreprocessConfig, VCRPreprocessor
from data_prep.vqa import MAX_QUESTION_LENGTH, VQADataset, VQAExample
from data_prep.vqa_answers import AnswerVocabulary
from vlekit.runs.experiment import ExperimentConfig, load_experiment
from vlekit.hub import resolve_folder
from vlekit.runs.manifest import MANIFEST_FILE, folder_problem
from vlekit.model import MODEL_CONFIG_FILE, VCRModel, load_model_config
from vlekit.vle.checkpoint import from_vle_pretrained
from vlekit.vle.processor import is_official_vqa, official_vcr_task, warn_unofficial_inputs

EXPERIMENT_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
CURVE_FILE = "curve.png"
BEST_DIR = "best"
SELECTION_FILE = "selected.json"
STATE_FILE = "trainer_state.json"  # in every checkpoint: where training stands
# What ``vlekit eval --out DIR`` writes beside its predictions (read back by ``vlekit push`` for the model card).
EVAL_METRICS_FILE = "metrics.json"
EVAL_INPUTS_FILE = "inputs.json"  # what the results are of: models (weights' SHA-256), data, options
# What accelerate's save_state writes for the model: a state dict, or FSDP's torch.distributed.checkpoint shards.
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_FSDP_WEIGHTS = "pytorch_model_fsdp_0"
# What only a resume reads (optimizer, scheduler, RNG: most of a checkpoint's bytes): not hashed to load its model.
CHECKPOINT_RESUME_ONLY = ("optimizer", "scheduler", "random_states")
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is read or checked until asked)."""

    root: Path

    @property
    def experiment_file(self) -> Path:
        return self.root / EXPERIMENT_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def metrics_file(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def best_dir(self) -> Path:
        return self.root / BEST_DIR

    @property
    def curve_file(self) -> Path:
        return self.root / CURVE_FILE

    def experiment(self) -> ExperimentConfig:
        """The resolved experiment config the run was trained with (its plugins are imported)."""
        return load_experiment(self.experiment_file)

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``, in order."""
        return read_metrics(self.metrics_file)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The JSON records of a ``metrics.jsonl`` file (blank lines skipped). A last line that is not JSON yet
    is being written (or was cut short by a kill) and is left out; another is an error naming its line."""
    lines = [(number, line) for number, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as error:
            if index == len(lines) - 1:
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({error}); the file is damaged") from error
    return records


def find_model_dir(path: str | Path) -> Path:
    """The final-model folder of ``path``: ``path`` itself when it is one, else ``path/model``."""
    path = Path(path)
    for candidate in (path, path / MODEL_DIR):
        if (candidate / MODEL_CONFIG_FILE).is_file():
            return candidate
    run = path.parent if path.name == CHECKPOINTS_DIR else path  # RUN/checkpoints given for one of its step-N
    newest = latest_checkpoint(run, report=lambda message: None)
    interrupted = (f"this run was interrupted before writing {MODEL_DIR}/: resume it, or load its newest complete "
                   f"checkpoint, {newest}" if newest is not None else
                   f"a run that was interrupted has checkpoints but no {MODEL_DIR}/ yet: resume it, or load one of "
                   f"its {CHECKPOINTS_DIR}/step-N folders")
    raise FileNotFoundError(f"{path}: no {MODEL_CONFIG_FILE} here or in {MODEL_DIR}/; expected a run folder, its "
                            f"{MODEL_DIR}/ folder or one of its checkpoints from vlekit train ({interrupted})")


def image_options(model: VCRModel) -> dict[str, Any]:
    """The image side of the preprocessing (``data_prep.preprocess.MODEL_OPTIONS``), read from the model's
    vision encoder, as timm resolves a model's data config: ``image_size``, ``patch_size``, ``image_mean``,
    ``image_std``."""
    vision = model.vision_encoder  # every vision encoder declares them (vlekit.interfaces.VisionEncoder)
    return {"image_size": vision.image_size, "patch_size": vision.patch_size,
            "image_mean": tuple(vision.image_mean), "image_std": tuple(vision.image_std)}


def saved_preprocessing(options: dict[str, Any], model: VCRModel) -> dict[str, Any]:
    """What a run saves as ``data.json``: its preprocessing ``options`` (``DataConfig.preprocess_options()``,
    resolved: the geometry the mode picked) and the image side its model's vision encoder gave
    (:func:`image_options`), so the folder alone says how its inputs were made (``vlekit check-data --run``
    reads it without building the model)."""
    image = image_options(model)
    if options["task"] == VQA_TASK:  # VQA has no patch grid to map boxes onto
        resolved = {**options, **{name: image[name] for name in ("image_size", "image_mean", "image_std")}}
    else:
        resolved = dataclasses.asdict(PreprocessConfig(**options, **image))
    return {name: list(value) if isinstance(value, tuple) else value for name, value in resolved.items()}


def write_model_companions(folder: Path, model: VCRModel, tokenizer: Any, options: dict[str, Any]) -> None:
    """What ``load_trained`` reads beside a model's weights and config: the tokenizer and the
    preprocessing the model was trained with (``options``: ``DataConfig.preprocess_options()``)."""
    tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    (folder / PREPROCESS_FILE).write_text(json.dumps(saved_preprocessing(options, model)))


def _run_options(saved: dict[str, Any], model: VCRModel, *, where: Path) -> dict[str, Any]:
    """The run-side options of a saved ``data.json``; the image side it records must be the model's."""
    actual = image_options(model)
    for name in MODEL_OPTIONS:
        if name in saved and not np.allclose(saved[name], actual[name], rtol=0, atol=1e-6):
            shown = list(actual[name]) if isinstance(actual[name], tuple) else actual[name]
            raise ValueError(f"{where}: the run was fed {name} {saved[name]}, but the saved model's vision encoder "
                             f"takes {shown}: the folder mixes two runs")
    return {name: value for name, value in saved.items() if name not in MODEL_OPTIONS}


def make_preprocessor(tokenizer, model: VCRModel, *, images_root: str | Path | None, **options) -> VCRPreprocessor:
    """The VCR data pipeline for ``model``: the model supplies image size, patch grid and pixel mean/std.

    ``options``: the run's preprocessing options (``data_prep.options.PreprocessOptions``: task, compat,
    geometry, max_length, pad_to_multiple_of, jpeg_draft, pixel_dtype, person_names), as ``DataConfig.preprocess_options()`` gives.
    """
    owned = sorted(set(options) & set(MODEL_OPTIONS))
    if owned:
        raise TypeError(f"make_preprocessor: {', '.join(owned)} come from the model's vision encoder, not the run's config")
    config = PreprocessConfig(**options, **image_options(model))
    return VCRPreprocessor(tokenizer, config=config, images_root=images_root)


def make_vqa_dataset(examples: Sequence[VQAExample], tokenizer, model: VCRModel, *, task: str = "vqa",
                     **options) -> VQADataset:
    """The VQA data pipeline for a model with the ``vqa`` head: its answers are the labels and its vision
    encoder supplies image size and pixel mean/std.

    ``options``: ``VQADataset``'s run-side options (``geometry``, ``max_length``, ``jpeg_draft``,
    ``pixel_dtype``), as ``DataConfig.preprocess_options()`` gives for ``task: vqa``.
    """
    answers = getattr(model.head.config, "answers", None)
    if task != "vqa" or not answers:
        raise ValueError(f"make_vqa_dataset: the model needs the vqa head with its answers (got the "
                         f"{type(model.head).__name__} head, task {task!r})")
    image = image_options(model)
    return VQADataset(examples, tokenizer=tokenizer, vocabulary=AnswerVocabulary.from_id2label(answers),
                      image_size=image["image_size"], image_mean=image["image_mean"], image_std=image["image_std"],
                      **options)


@dataclass
class TrainedModel:
    """A fine-tuned model folder: weights, tokenizer and the preprocessing options it was trained with."""

    folder: Path
    model: VCRModel
    tokenizer: Any
    data: dict[str, Any]
    mixed_precision: str | None  # the run's train.mixed_precision (None: the folder has no config.yaml)
    official: bool = False  # an official VLE task checkpoint (VCR: fed compat="vle" by default)
    run_task: str | None = None  # the run's data.task when a plugin's task, not its data pipeline's (``task``)
    plugins: tuple[str, ...] = ()  # the run's ``plugins:`` modules (where such a task is registered)

    @property
    def task(self) -> str:
        return self.data["task"]

    def vqa_dataset(self, examples: Sequence[VQAExample], *, decode_images: bool = True) -> VQADataset:
        """A VQA model's data pipeline over ``examples`` (``data_prep.vqa.read_vqa``), as it was trained;
        ``decode_images=False``: zero images instead of the pictures (``VQADataset``)."""
        return make_vqa_dataset(examples, self.tokenizer, self.model, decode_images=decode_images, **self.data)

    def preprocessor(self, *, images_root: str | Path | None = None, compat: str | None = None) -> VCRPreprocessor:
        """The VCR data pipeline this model was trained with, reading images under ``images_root``;
        ``compat`` overrides the trained mode (an official checkpoint fed another mode warns once)."""
        data = {**self.data, **({"compat": compat} if compat is not None else {})}
        if self.official:
            warn_unofficial_inputs(self.folder, data["compat"])
        return make_preprocessor(self.tokenizer, self.model, images_root=images_root, **data)


def load_trained(folder: str | Path) -> TrainedModel:
    """Load ``RUN/model`` (or a run folder ``RUN`` that contains it), a training checkpoint
    ``RUN/checkpoints/step-N``, or an official VLE VCR task checkpoint folder (then fed the official
    pipeline's inputs, ``compat="vle"``, in fp32 as the official pipeline runs), or an official
    ``VLEForVQA`` folder (center crop at its resolution, fp32)."""
    from transformers import AutoTokenizer  # transformers' tokenizer machinery: only when a run is loaded

    folder = resolve_folder(folder)  # a Hub repo id (an official checkpoint, a pushed run) -> its cached snapshot
    if is_official_vqa(folder):
        print(f"{folder}: an official VLE VQA checkpoint, fed center-cropped images at its resolution and questions "
              f"of at most {MAX_QUESTION_LENGTH} tokens, as VLE's processor; fp32", file=sys.stderr)
        return TrainedModel(folder=Path(folder), model=from_vle_pretrained(folder, task="vqa"),
                            tokenizer=AutoTokenizer.from_pretrained(folder), mixed_precision="fp32", official=True,
                            data={"task": VQA_TASK, "max_length": MAX_QUESTION_LENGTH})  # geometry: the vqa default
    official_task = official_vcr_task(folder)
    if official_task is not None:
        print(f"{folder}: an official VLE VCR checkpoint, fed the official pipeline's inputs (compat='vle')", file=sys.stderr)
        return TrainedModel(folder=Path(folder), model=from_vle_pretrained(folder), tokenizer=AutoTokenizer.from_pretrained(folder),
                            data={"task": official_task, "compat": "vle"}, mixed_precision="fp32", official=True)
    if is_checkpoint(folder):
        return _load_checkpoint(Path(folder))
    folder = find_model_dir(folder)
    check_model_folder(folder)
    model = check_finite(VCRModel.from_pretrained(folder), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR)
    data = _run_options(saved_run_options(read_json_file(folder / PREPROCESS_FILE)), model, where=folder / PREPROCESS_FILE)
    return TrainedModel(folder=folder, model=model, tokenizer=tokenizer, data=data, **_experiment_facts(folder, data["task"]))


def _experiment_facts(folder: Path, task: str) -> dict[str, Any]:
    """What a model folder's ``config.yaml`` adds to its ``data.json``: the run's precision, and its task and
    plugins when the task is a plugin's (``data.json`` records the data pipeline's). Empty without one."""
    if not (folder / EXPERIMENT_FILE).is_file():
        return {"mixed_precision": None}
    saved = read_yaml_file(folder / EXPERIMENT_FILE) or {}
    run_task = (saved.get("data") or {}).get("task")
    return {"mixed_precision": (saved.get("train") or {}).get("mixed_precision"),
            "run_task": run_task if run_task not in (None, task) else None, "plugins": tuple(saved.get("plugins") or ())}


def is_checkpoint(folder: str | Path) -> bool:
    """``folder`` is a training checkpoint (``RUN/checkpoints/step-N``)."""
    return (Path(folder) / STATE_FILE).is_file()


def checkpoint_state_dict(folder: Path) -> dict[str, Any]:
    """The model weights a training checkpoint holds, under the model's own parameter names: accelerate's
    ``model.safetensors`` (DDP's ``module.`` prefix dropped), or FSDP's sharded
    ``torch.distributed.checkpoint`` files merged on the CPU (``accelerate.utils.merge_fsdp_weights``)."""
    from safetensors.torch import load_file

    if (folder / CHECKPOINT_WEIGHTS).is_file():
        state = load_file(str(folder / CHECKPOINT_WEIGHTS))
    elif (folder / CHECKPOINT_FSDP_WEIGHTS).is_dir():
        from accelerate.utils import merge_fsdp_weights

        with tempfile.TemporaryDirectory() as merged:
            merge_fsdp_weights(str(folder / CHECKPOINT_FSDP_WEIGHTS), merged, safe_serialization=True)
            state = load_file(str(Path(merged) / CHECKPOINT_WEIGHTS))
    else:
        raise FileNotFoundError(f"{folder}: neither {CHECKPOINT_WEIGHTS} nor {CHECKPOINT_FSDP_WEIGHTS}/ (the model "
                                f"weights accelerate's save_state writes); not a vlekit training checkpoint")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _load_checkpoint(folder: Path) -> TrainedModel:
    """A training checkpoint as a trained model: its weights in the architecture its ``vlekit_config.json``
    records, with the tokenizer and preprocessing saved beside them."""
    from transformers import AutoTokenizer

    problem = folder_problem(folder, skip=CHECKPOINT_RESUME_ONLY)
    if problem is not None:
        raise ValueError(f"{folder} is not a complete checkpoint: {problem}")
    if not (folder / MODEL_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder}: a checkpoint saved before checkpoints recorded the model ({MODEL_CONFIG_FILE}, "
            f"{TOKENIZER_DIR}/, {PREPROCESS_FILE}); resume the run from it to write {MODEL_DIR}/ "
            f"(`vlekit train --config {folder / EXPERIMENT_FILE} --out {folder.parent.parent} --resume-from {folder}`)")
    model = VCRModel(config=load_model_config(folder))
    state = checkpoint_state_dict(folder)
    result = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded = {own[key].data_ptr() for key in state if key in own}
    missing = [key for key in result.missing_keys if own[key].data_ptr() not in loaded]  # not a tied copy
    if missing or result.unexpected_keys:
        raise ValueError(f"{folder}: the checkpoint's weights do not match its {MODEL_CONFIG_FILE}: missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]} (of {len(missing)} and "
                         f"{len(result.unexpected_keys)})")
    check_finite(model, folder)
    data = _run_options(saved_run_options(read_json_file(folder / PREPROCESS_FILE)), model, where=folder / PREPROCESS_FILE)
    return TrainedModel(folder=folder, model=model.eval(), tokenizer=AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR),
                        data=data, **_experiment_facts(folder, data["task"]))


def nonfinite_weights(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the tensors holding a NaN or an inf (of an FSDP-sharded parameter: this process's shard)."""
    bad = []
    for name, tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor: its local shard
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            bad.append(name)
    return bad


def check_finite(model: VCRModel, folder: Path) -> VCRModel:
    """``model`` (loaded from ``folder``) if its weights are finite; else an error: the run diverged before
    they were saved, and every score of the model would be meaningless (argmax of NaN: always choice A)."""
    bad = nonfinite_weights(model.named_parameters())
    if bad:
        run = folder.parent.parent if is_checkpoint(folder) else folder.parent if folder.name in (MODEL_DIR, BEST_DIR) else folder
        raise ValueError(
            f"{folder}: {len(bad)} weight tensors hold NaN or inf values (e.g. {', '.join(bad[:3])}): the run "
            f"diverged before they were saved, and any score of them would be meaningless. Load a checkpoint "
            f"saved before it (under {run / CHECKPOINTS_DIR}; `vlekit runs {run}` shows the run), or train again "
            f"with a lower learning rate")
    return model


def check_model_folder(folder: Path) -> None:
    """A run's final model folder is whole: its manifest (``vlekit train`` writes one) matches every file,
    and the tokenizer and preprocessing options are there. Errors name the file and the way out."""
    if (folder / MANIFEST_FILE).is_file():
        problem = folder_problem(folder)
        if problem is not None:
            run = folder.parent if folder.name == MODEL_DIR else folder
            newest = latest_checkpoint(run, report=lambda message: None)
            advice = (f"the newest complete checkpoint is {newest}: `vlekit train --config {run / EXPERIMENT_FILE} "
                      f"--resume` writes {MODEL_DIR}/ again from it" if newest is not None else
                      "no complete checkpoint is left to write it again from")
            raise ValueError(f"{folder} is damaged: {problem}; {advice}")
    if not (folder / PREPROCESS_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no {PREPROCESS_FILE} (the preprocessing options vlekit train saves "
                                f"with the model); was this folder written by vlekit train?")
    if not (folder / TOKENIZER_DIR).is_dir():
        raise FileNotFoundError(f"{folder}: no {TOKENIZER_DIR}/ folder (vlekit train saves the run's tokenizer "
                                f"there); copy the whole model folder, or resume the run to write it again")


def moved_run(config_file: str | Path | None, out: str | Path) -> Path | None:
    """The run folder holding ``config_file`` when that file is a run's own ``config.yaml`` whose ``train.out`` (``out``)
    names another folder: the run was moved or copied (to another disk or cluster) after it wrote the file. ``None``
    when the file is not in a run folder, or is in the one it names."""
    if config_file is None or Path(config_file).name != EXPERIMENT_FILE:
        return None
    folder = Path(config_file).resolve().parent
    if folder == Path(out).resolve() or not ((folder / CHECKPOINTS_DIR).is_dir() or (folder / METRICS_FILE).is_file()):
        return None
    return folder


def checkpoint_dirs(out: Path) -> list[Path]:
    """The ``step-N`` folders under ``out/checkpoints``, oldest first (complete or not; see
    ``vlekit.runs.manifest.folder_problem``). Unfinished ``step-N.tmp`` and replaced ``step-N.old`` folders are not listed."""
    folder = out / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path, *, report: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint under ``out``; each newer incomplete one is skipped and reported."""
    for folder in reversed(checkpoint_dirs(out)):
        problem = folder_problem(folder)
        if problem is None:
            return folder
        report(f"skipping incomplete checkpoint {folder}: {problem}")
    return None


def read_json_file(path: Path) -> Any:
    """A JSON file, or an error naming it and saying what is wrong with it."""
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}): not a file vlekit wrote, or damaged") from error
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); the file is damaged") from error


def read_yaml_file(path: Path) -> Any:
    """A YAML file, or an error naming it and saying what is wrong with it."""
    try:
        return yaml.safe_load(path.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
