"""Experiment configs: one YAML file (or dict) with sections ``plugins``, ``model``, ``data``, ``train``.

Every section is a frozen dataclass, so a misspelled key is an error with suggestions. Command-line
overrides use dotted paths: ``train.lr=3e-5 model.fusion.name=merged-attention``. The resolved config
is written into every run folder and checkpoint, so a run is reproducible from its folder.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from data_prep.constants import VQA_TASK
from data_prep.options import VQA_OPTIONS, PreprocessOptions
from vlekit.model import VCRModelConfig, component_spec
from vlekit.options import make_config
from vlekit.registry import TASKS, import_plugins, registry_for


# Fields only a VQA run reads (a VCR run that sets one is told so).
_VQA_FIELDS = ("train_questions", "val_questions", "val_images", "image_pattern", "answers")


@dataclass(frozen=True)
class DataConfig(PreprocessOptions):
    """Where the data is and how it becomes model inputs.

    The preprocessing options (``task``, ``compat``, ``geometry``, ``max_length``,
    ``pad_to_multiple_of``, ``jpeg_draft``, ``pixel_dtype``, ``person_names``) are ``data_prep.options.PreprocessOptions``',
    inherited, so the YAML keys stay flat: one default and one validation each, and an unset
    ``geometry`` is resolved on construction (the run's ``config.yaml`` holds the geometry that was used:
    ``squash``, ``vle-compat`` under ``compat: vle``, ``center-crop`` for ``vqa``). The image side (image
    size, patch size, pixel mean and std) is the model's vision encoder's; the run saves it, resolved, in
    ``model/data.json``.

    task: ``q2a`` / ``qa2r`` (VCR multiple choice) or ``vqa`` (VQA v2 layout, the ``vqa`` head).

    VCR: ``train_annotations`` / ``val_annotations`` are VCR ``.jsonl`` files and ``images`` the
    ``vcr1images`` folder.

    VQA (``data_prep.vqa``): ``train_questions`` + ``train_annotations`` (and ``val_questions`` +
    ``val_annotations``) are VQA v2 questions / annotations JSON files; ``images`` holds the training
    images and ``val_images`` the validation split's (default: ``images``), named by
    ``image_pattern`` (``str.format`` with ``{image_id}``, ``{data_subtype}``; default COCO's). The
    answer vocabulary is ``answers`` (an ``id2label`` JSON, ``AnswerVocabulary.save``), else the
    checkpoint's when ``train.init_from_vle`` is a ``VLEForVQA`` checkpoint, else every training
    answer seen ``answer_min_count`` times (METER / VLE: 9). ``max_length`` applies to the question
    (VLE: 50); ``compat`` is VCR's and stays ``none``.

    tokenizer: a hub name, a local folder, or ``auto`` (build a word-level tokenizer from the
        training text; for tiny random-init models).
    compat: ``none`` (vlekit's deterministic preprocessing) or ``vle`` (the official VLE VCR
        pipeline, exactly; for official VCR task checkpoints; fine-tuning from ``hfl/vle-base`` may
        use either). See ``data_prep.preprocess``.
    """

    option_prefix: ClassVar[str] = "data."

    @classmethod
    def known_tasks(cls) -> tuple[str, ...]:
        """Every registered task (``vlekit.register_task``, plugins' included): a new task is one class and
        one registration, not a name added here."""
        return tuple(entry.name for entry in TASKS.entries())

    def pipeline_task(self) -> str:
        """The data pipeline of ``task`` (``q2a``, ``qa2r`` or ``vqa``): a registered task's ``data_task``, else
        its own name (the core tasks)."""
        return getattr(TASKS.get(self.task).component, "data_task", None) or self.task

    train_annotations: str | None = None
    val_annotations: str | None = None
    images: str | None = None
    train_questions: str | None = None
    val_questions: str | None = None
    val_images: str | None = None
    image_pattern: str | None = None
    answers: str | None = None
    answer_min_count: int = 9
    tokenizer: str = "auto"
    num_workers: int = 2
    skip_bad: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()  # the preprocessing options: validated, geometry resolved
        if self.pipeline_task() == VQA_TASK:
            if self.answer_min_count < 1:
                raise ValueError(f"data.answer_min_count must be >= 1, got {self.answer_min_count}")
            return
        stray = [name for name in _VQA_FIELDS if getattr(self, name) is not None]
        if stray:
            raise ValueError(f"data.{stray[0]} is a VQA option (data.task: vqa); a {self.task} run reads VCR "
                             f"train_annotations / val_annotations (.jsonl) and images")

    def preprocess_options(self) -> dict[str, Any]:
        """The run's preprocessing options, resolved, saved with the model (``data.json``). VCR: all of
        them (``data_prep.preprocess.PreprocessConfig`` adds the model's image side); VQA: the task and
        ``data_prep.vqa.VQADataset``'s options."""
        if self.pipeline_task() == VQA_TASK:
            return {"task": VQA_TASK, **{name: getattr(self, name) for name in VQA_OPTIONS}}
        return self.run_options()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. Defaults follow VLE's VCR recipe (lr 1e-5, batch 128, 5 epochs).

    lr_multipliers: per parameter group (``text_encoder``, ``vision_encoder``, ``fusion`` (fusion,
        projections, token types), ``head``); VLE trains the head and the fusion faster.
    batch_size: questions per optimizer step over all processes (micro-batch x accumulation x processes).
    mixed_precision: ``auto`` (bf16 where the GPU has it, else fp32), ``bf16``, ``fp16`` or ``fp32``.
    init_from_vle: start from an official VLE checkpoint (hub name or folder, e.g. ``hfl/vle-base``);
        its architecture replaces the ``model`` section's components (``num_token_types`` and the
        object options still apply), and ``data.tokenizer`` should name the same checkpoint.
    report_to: experiment trackers that also get the ``metrics.jsonl`` scalars and the resolved config
        (Accelerate's: ``tensorboard``, ``wandb``, ``mlflow``, ...), logging under ``OUT/tracking/``.
    layer_lr_decay: layer-wise learning-rate decay d of the encoders (1: off): layer i of n gets ``lr * d ** (n - i)``,
        the embeddings the smallest (ELECTRA / BEiT fine-tuning; 0.65-0.9 is usual).
    save_every_steps: a checkpoint every N optimizer steps, bounding what a crash loses (1000 steps of VLE's
        batch 128 is about 15 minutes of VLE-base on one H100-class GPU); 0: only at the end and on a stop.
    save_best: after each validation that beats every earlier one of the run (resumes included), write the
        model to ``OUT/best/`` as ``model/`` is written, with ``selected.json`` (step, epoch, score). The
        score it was chosen on is then no longer an unbiased estimate: report a held-out split.
    early_stopping_patience: stop once this many validations in a row have not beaten the best score of
        the run (0: off); the run then ends as at its last step (a checkpoint, ``model/``), and
        ``save_best`` keeps the best model.
    """

    out: str = "runs/vcr"
    epochs: float = 5.0
    batch_size: int = 128
    gradient_accumulation_steps: int = 1
    lr: float = 1e-5
    lr_multipliers: dict[str, float] = field(default_factory=lambda: {"fusion": 5.0, "head": 5.0})
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    freeze_text_encoder: bool = False
    freeze_vision_encoder: bool = False
    compile: bool = False
    seed: int = 0
    save_every_steps: int = 1000
    keep: int = 2
    save_best: bool = False
    early_stopping_patience: int = 0
    log_every_steps: int = 10
    eval_every_epochs: int = 1
    max_steps: int = 0
    cpu: bool = False
    init_from_vle: str | None = None
    report_to: list[str] = field(default_factory=list)
    layer_lr_decay: float = 1.0

    def __post_init__(self) -> None:
        """Options that cannot make sense fail here, before any data is read or any step is taken."""
        at_least = {"batch_size": 1, "gradient_accumulation_steps": 1, "log_every_steps": 1, "eval_every_epochs": 1,
                    "max_steps": 0, "save_every_steps": 0, "keep": 0, "early_stopping_patience": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= {low}" + _ZERO_MEANS.get(name, ""))
        if not self.epochs > 0:
            raise ValueError(f"train.epochs={self.epochs} must be > 0 (fractions of an epoch are fine; "
                             f"train.max_steps bounds the steps)")
        if not self.lr > 0:
            raise ValueError(f"train.lr={self.lr} must be > 0 (to train no part, use freeze_text_encoder / "
                             f"freeze_vision_encoder, or evaluate with vlekit eval)")
        bad = {group: value for group, value in self.lr_multipliers.items() if not value > 0}
        if bad:
            raise ValueError(f"train.lr_multipliers {bad}: multipliers must be > 0 (freeze a tower with freeze_*)")
        if not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"train.layer_lr_decay={self.layer_lr_decay} must be in (0, 1] (1: no decay; 0.65-0.9 is usual)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio={self.warmup_ratio} must be in [0, 1) (VLE: 0.1)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(f"train.weight_decay={self.weight_decay} and train.max_grad_norm={self.max_grad_norm} "
                             f"must be >= 0 (max_grad_norm 0: no clipping)")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"train.mixed_precision={self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISIONS)}")


MIXED_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# What 0 means for the options where it is allowed.
_ZERO_MEANS = {"max_steps": " (0: no limit but epochs)", "save_every_steps": " (0: a checkpoint only at the end)",
               "keep": " (0: keep every checkpoint)", "early_stopping_patience": " (0: no early stopping)"}


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: plugin modules to import first, the model, the data and the training options."""

    plugins: tuple[str, ...] = ()
    model: VCRModelConfig = field(default_factory=VCRModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["plugins"] = list(self.plugins)
        return raw

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


_SECTIONS = {"model": VCRModelConfig, "data": DataConfig, "train": TrainConfig}


def flat_options(raw: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A config as ``{"train.lr": 1e-5, "model.fusion.name": "co-attention", ...}`` (``raw``: a saved
    ``config.yaml`` or :meth:`ExperimentConfig.to_dict`): scalars as they are, lists as JSON text,
    ``None`` as ``"None"``."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    walk("", raw)
    return flat


def experiment_from_dict(raw: Mapping[str, Any], *, where: str = "config") -> ExperimentConfig:
    """Validate a nested dict into an :class:`ExperimentConfig` (plugins are imported first)."""
    raw = dict(raw or {})
    unknown = [k for k in raw if k not in ("plugins", *_SECTIONS)]
    if unknown:
        close = difflib.get_close_matches(unknown[0], ["plugins", *_SECTIONS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{where}: unknown section {unknown[0]!r}{hint} Sections: plugins, model, data, train")
    plugins = raw.get("plugins") or ()
    import_plugins(plugins)  # components they register must exist before the model is validated
    plugins = tuple(plugins)
    sections = {}
    for name, config_class in _SECTIONS.items():
        values = dict(raw.get(name) or {})
        if name == "model":
            defaults = VCRModelConfig()
            for kind in ("text_encoder", "vision_encoder", "fusion", "head"):
                if kind in values:
                    spec = values[kind] if isinstance(values[kind], str) else dict(values[kind])
                    if isinstance(spec, dict) and "name" not in spec:  # options for the default component
                        spec = {**getattr(defaults, kind), **spec}
                    values[kind] = component_spec(spec)
        sections[name] = make_config(config_class, values, where=f"{where}: section {name!r}")
    check_components(sections["model"], where=f"{where}: section 'model'")
    return ExperimentConfig(plugins=plugins, **sections)


def check_components(model: VCRModelConfig, *, where: str) -> None:
    """Every component's options against its config class (unknown or misspelled options, wrong types, a
    component's own checks such as ``hf_config`` keys), before any data is read or any weight is built."""
    for kind in ("text_encoder", "vision_encoder", "fusion", "head"):
        spec = getattr(model, kind)
        options = {key: value for key, value in spec.items() if key != "name"}
        try:
            if kind == "head":  # its widths come from the fusion at build time: check the option names only
                fields = {f.name for f in dataclasses.fields(registry_for(kind).config_class_of(spec["name"]))}
                unknown = sorted(set(options) - fields)
                if unknown:
                    raise TypeError(f"head {spec['name']!r}: unknown options {unknown}; accepted: {', '.join(sorted(fields))}")
            else:
                registry_for(kind).resolve(spec["name"], options)
        except (TypeError, ValueError, LookupError) as error:
            raise type(error)(f"{where}: {kind}: {error}") from error


def apply_changes(raw: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted ``section.key`` paths (``{"train.lr": 3e-5, "model.fusion": "merged-attention"}``) in a
    nested config dict, in place; validation happens when the dict becomes a config."""
    for path, value in changes.items():
        keys = path.split(".")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if isinstance(child, str):  # a named spec's short form (fusion: X, adaptation.text: lora) = {name: X}
                child = {"name": child}
            elif child is not None and not isinstance(child, Mapping):
                raise ValueError(f"cannot set {path}: {'.'.join(keys[:depth + 1])} is a value ({child!r}), not a section")
            node[key] = child = dict(child or {})
            node = child
        node[keys[-1]] = value
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply command-line ``section.key=value`` overrides (values parsed as YAML) to a nested dict."""
    changes = {}
    for override in overrides:
        path, sep, value = override.partition("=")
        if not sep or not path:
            raise ValueError(f"override {override!r} is not of the form section.key=value (e.g. train.lr=3e-5)")
        changes[path] = yaml.safe_load(value)
    return apply_changes(raw, changes)


def load_experiment(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file (or start from defaults) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"experiment config {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a readable YAML experiment config: {error}") from error
        if not isinstance(raw, dict):
            raise TypeError(f"{path}: expected a mapping with sections plugins/model/data/train")
        where = str(path)
    return experiment_from_dict(apply_overrides(raw, overrides), where=where)
