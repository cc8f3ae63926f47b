"""The official VLE checkpoint names: file names, task classes, the explicit key map and its translation.

Owns what a VLE checkpoint calls things and nothing that reads or writes one: the file names
(``config.json``, ``preprocessor_config.json``), the ``vle.`` backbone prefix, the task classes
(:data:`VLE_TASKS`: head attribute, architecture, vlekit head, head key map), the pretraining heads a
load skips, the dropped position-id buffers, :data:`VLE_KEY_MAP` (every backbone key goes through it)
with :func:`official_to_vlekit_key` / :func:`vlekit_to_official_key`, :func:`task_name` (vlekit's task
names; the official ``vcr_q2a`` / ``vcr_qa2r`` accepted here, at the official-checkpoint boundary, and
nowhere else) and :class:`VLECheckpointError`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from data_prep.constants import TASKS

__all__ = [
    "BACKBONE_PREFIX",
    "DROPPED_BUFFERS",
    "OFFICIAL_TASK_NAMES",
    "POSITION_EMBEDDING_KEY",
    "PREPROCESSOR_FILE",
    "PRETRAINING_HEAD_PREFIXES",
    "TASK_ARCHITECTURES",
    "TASK_HEADS",
    "VCR_TASKS",
    "VLE_CONFIG_FILE",
    "VLE_KEY_MAP",
    "VLE_MODEL_TYPE",
    "VLE_TASKS",
    "VLECheckpointError",
    "VLETask",
    "official_to_vlekit_key",
    "task_name",
    "vlekit_to_official_key",
]

VLE_MODEL_TYPE = "vle"
VLE_CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
BACKBONE_PREFIX = "vle."


@dataclass(frozen=True)
class VLETask:
    """One official task class: its head attribute (next to ``vle``), architecture name, the vlekit
    head it loads into (a registered head) and the head's key map ``(official, vlekit)``."""

    head_attribute: str
    architecture: str
    head: str
    head_key_map: tuple[str, str]


# vlekit task name -> the official task class. Head keys are never under ``vle.``.
VLE_TASKS: dict[str, VLETask] = {
    "q2a": VLETask("vcr_q2a_logit", "VLEForVCRQ2A", "vcr-multiple-choice", ("vcr_q2a_logit.{index}.{param}", "head.{index}.{param}")),
    "qa2r": VLETask("vcr_qa2r_logit", "VLEForVCRQA2R", "vcr-multiple-choice", ("vcr_qa2r_logit.{index}.{param}", "head.{index}.{param}")),
    "vqa": VLETask("vqa_classifier", "VLEForVQA", "vqa", ("vqa_classifier.{index}.{param}", "head.{index}.{param}")),
    "itm": VLETask("itm_score", "VLEForITM", "itm", ("itm_score.fc.{param}", "head.fc.{param}")),
    "pbc": VLETask("pbc_classifier", "VLEForPBC", "pbc", ("pbc_classifier.{index}.{param}", "head.{index}.{param}")),
}
VCR_TASKS: tuple[str, ...] = TASKS  # data_prep's VCR tasks
# The official task names, accepted for vlekit's at this boundary only.
OFFICIAL_TASK_NAMES: dict[str, str] = {"vcr_q2a": "q2a", "vcr_qa2r": "qa2r"}
# Task name -> the official head attribute; architecture names (None: a bare VLEModel).
TASK_HEADS: dict[str, str] = {name: task.head_attribute for name, task in VLE_TASKS.items()}
TASK_ARCHITECTURES: dict[str | None, str] = {None: "VLEModel", **{name: task.architecture for name, task in VLE_TASKS.items()}}
_ARCHITECTURE_TO_TASK = {task.architecture: name for name, task in VLE_TASKS.items()}

# Heads of the official classes other than the one loaded, all top-level attributes next to ``vle``:
# VLEForITM.itm_score (fc), VLEForMLM.mlm_score (transform Linear + DebertaV2OnlyMLMHead),
# VLEForPBC.pbc_classifier and VLEForVQA.vqa_classifier (pretraining checkpoints hold several). The
# strict check skips exactly these prefixes, except the loaded task's own head, and reports every skipped key.
PRETRAINING_HEAD_PREFIXES: tuple[str, ...] = ("itm_score.", "mlm_score.", "pbc_classifier.", "vqa_classifier.")
POSITION_EMBEDDING_KEY = "vision_model.vision_model.embeddings.position_embedding.weight"

# Buffers that transformers 4.x saved in older checkpoints; recomputed on load, so dropped.
DROPPED_BUFFERS: tuple[str, ...] = (
    "text_model.embeddings.position_ids",
    "vision_model.vision_model.embeddings.position_ids",
)


# -- the key map --------------------------------------------------------------------------------------
# (official name in a bare VLEModel, vlekit name in VCRModel). Placeholders: {hf} any Hugging Face
# parameter name (the encoders are HF models on both sides: DebertaV2Model, CLIPVisionModel; vlekit's
# transformers 5 CLIPVisionModel has no inner ``vision_model.``), {stream} text|image, {layer} a
# fusion layer, {param} weight|bias. Task checkpoints add ``vle.`` in front of every one of these.
VLE_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("text_model.{hf}", "text_encoder.model.{hf}"),
    ("vision_model.vision_model.{hf}", "vision_encoder.model.{hf}"),
    ("text_projection_layer.{param}", "text_projection.{param}"),
    ("image_projection_layer.{param}", "image_projection.{param}"),
    ("token_type_embeddings.weight", "token_type_embeddings.weight"),
    ("cross_modal_{stream}_layers.{layer}.attention.self.query.{param}", "fusion.{stream}_layers.{layer}.self_attention.query.{param}"),
    ("cross_modal_{stream}_layers.{layer}.attention.self.key.{param}", "fusion.{stream}_layers.{layer}.self_attention.key.{param}"),
    ("cross_modal_{stream}_layers.{layer}.attention.self.value.{param}", "fusion.{stream}_layers.{layer}.self_attention.value.{param}"),
    ("cross_modal_{stream}_layers.{layer}.attention.output.dense.{param}", "fusion.{stream}_layers.{layer}.self_attention.dense.{param}"),
    ("cross_modal_{stream}_layers.{layer}.attention.output.LayerNorm.{param}", "fusion.{stream}_layers.{layer}.self_attention.layer_norm.{param}"),
    ("cross_modal_{stream}_layers.{layer}.crossattention.self.query.{param}", "fusion.{stream}_layers.{layer}.cross_attention.query.{param}"),
    ("cross_modal_{stream}_layers.{layer}.crossattention.self.key.{param}", "fusion.{stream}_layers.{layer}.cross_attention.key.{param}"),
    ("cross_modal_{stream}_layers.{layer}.crossattention.self.value.{param}", "fusion.{stream}_layers.{layer}.cross_attention.value.{param}"),
    ("cross_modal_{stream}_layers.{layer}.crossattention.output.dense.{param}", "fusion.{stream}_layers.{layer}.cross_attention.dense.{param}"),
    ("cross_modal_{stream}_layers.{layer}.crossattention.output.LayerNorm.{param}", "fusion.{stream}_layers.{layer}.cross_attention.layer_norm.{param}"),
    ("cross_modal_{stream}_layers.{layer}.intermediate.dense.{param}", "fusion.{stream}_layers.{layer}.feed_forward.intermediate.{param}"),
    ("cross_modal_{stream}_layers.{layer}.output.dense.{param}", "fusion.{stream}_layers.{layer}.feed_forward.output.{param}"),
    ("cross_modal_{stream}_layers.{layer}.output.LayerNorm.{param}", "fusion.{stream}_layers.{layer}.output_norm.{param}"),
    ("cross_modal_{stream}_pooler.dense.{param}", "fusion.{stream}_pooler.{param}"),
)
_FIELDS = {"hf": r".+", "stream": r"text|image", "layer": r"\d+", "param": r"weight|bias", "index": r"0|1|3"}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})" for i, part in enumerate(parts)
    ))


_TO_VLEKIT = tuple((_compile(official), vlekit) for official, vlekit in VLE_KEY_MAP)
_TO_OFFICIAL = tuple((_compile(vlekit), official) for official, vlekit in VLE_KEY_MAP)
_HEAD_TO_VLEKIT = {name: (_compile(task.head_key_map[0]), task.head_key_map[1]) for name, task in VLE_TASKS.items()}
_HEAD_TO_OFFICIAL = {name: (_compile(task.head_key_map[1]), task.head_key_map[0]) for name, task in VLE_TASKS.items()}


def _translate(key: str, rules: Sequence[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.fullmatch(key)
        if match:
            return target.format(**match.groupdict())
    return None


def official_to_vlekit_key(key: str) -> str | None:
    """The vlekit name of an official key (bare ``VLEModel`` naming, or any task's head key); None if unmapped."""
    return _translate(key, (*_TO_VLEKIT, *_HEAD_TO_VLEKIT.values()))


def vlekit_to_official_key(key: str, *, task: str | None = None) -> str | None:
    """The official name of a vlekit key (bare naming; head keys need ``task``); None if unmapped."""
    official = _translate(key, _TO_OFFICIAL)
    if official is None and task is not None:
        official = _translate(key, (_HEAD_TO_OFFICIAL[task_name(task)],))
    return official


def task_name(task: str | None) -> str | None:
    """vlekit's name of a task (``q2a``, ``qa2r``, ``vqa``, ``itm``, ``pbc``; the official ``vcr_q2a`` /
    ``vcr_qa2r`` accepted for the first two), or None (no head)."""
    if task is None or task in VLE_TASKS:
        return task
    if task in OFFICIAL_TASK_NAMES:
        return OFFICIAL_TASK_NAMES[task]
    raise ValueError(
        f"task={task!r} is not a VLE task; choose one of {', '.join(map(repr, VLE_TASKS))} (or the official "
        f"'vcr_q2a' / 'vcr_qa2r'), or None (no head)"
    )


class VLECheckpointError(ValueError):
    """An official VLE checkpoint does not match what vlekit can build; the message lists every problem."""


def _shorten(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")
