"""Official VLE checkpoints (HFL / iFLYTEK) in and out of vlekit.

``from_vle_pretrained`` reads a VLE repository (``hfl/vle-base``, ``hfl/vle-base-for-vcr-q2a``, ... or a
local folder of the same layout) into a :class:`~vlekit.model.VCRModel` built through the registry
(``hf-text`` DeBERTa-v2 + ``clip-vision`` + ``co-attention``) and reports what the load did
(:class:`VLELoadReport`); ``to_vle_pretrained`` writes a vlekit model back in the official layout.
This module owns loading and export; the names and key map are :mod:`vlekit.vle.keys`'s, reading
the folder and building the model from ``config.json`` :mod:`vlekit.vle.config`'s, and the official
preprocessing (``vle_preprocessor``, ``preprocessor_config.json``) :mod:`vlekit.vle.processor`'s.

The official layout (``models/VLE`` in github.com/iflytek/VLE):

* ``config.json``: ``model_type: "vle"``, nested ``text_config`` (deberta-v2) and ``vision_config``
  (``clip_vision_model``, or a whole ``clip`` config whose ``vision_config`` is the tower), the
  fusion fields (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
  ``intermediate_size``, ``hidden_act``, dropouts, ``layer_norm_eps``, ``initializer_range``) and
  ``num_token_types`` (2 in the pretrained models, 83 in the VCR ones);
* weights in ``model.safetensors`` / ``pytorch_model.bin``, single or sharded with an index;
* task models put the backbone under ``vle.`` and the head next to it (:data:`VLE_TASKS`):
  ``VLEForVCRQ2A`` / ``VLEForVCRQA2R`` in ``vcr_q2a_logit`` / ``vcr_qa2r_logit``, ``VLEForVQA`` in
  ``vqa_classifier`` (its config's ``id2label`` / ``label2id`` hold the answers), ``VLEForITM`` in
  ``itm_score.fc`` and ``VLEForPBC`` in ``pbc_classifier``; a bare ``VLEModel`` has no prefix and no head.

A checkpoint that runs at another resolution than its CLIP tower was built for (VQA: 576 px for
base, 504 px for large) is built at the resolution of its ``preprocessor_config.json``, and position
embeddings saved for another grid are interpolated on load (reported).

Every key goes through one explicit map, :data:`VLE_KEY_MAP`; loads are strict (missing, unexpected
and wrongly shaped keys are errors naming the file) unless ``strict=False``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlekit.components.fusions import CoAttentionFusion
from vlekit.model import VCRModel
from vlekit.components.text_encoders import HFTextEncoder
from vlekit.components.vision_encoders import CLIPVisionEncoder, interpolate_position_embeddings
from vlekit.vle.config import (
    _MODEL_FILES,
    FUSION_FIELDS,
    TEXT_MODEL_TYPE,
    VCR_NUM_TOKEN_TYPES,
    _local_directory,
    read_vle_config,
    read_vle_weights,
    vcr_model_from_vle_config,
)
from vlekit.vle.keys import (
    _ARCHITECTURE_TO_TASK,
    _HEAD_TO_VLEKIT,
    BACKBONE_PREFIX,
    DROPPED_BUFFERS,
    POSITION_EMBEDDING_KEY,
    PREPROCESSOR_FILE,
    PRETRAINING_HEAD_PREFIXES,
    TASK_ARCHITECTURES,
    TASK_HEADS,
    VCR_TASKS,
    VLE_CONFIG_FILE,
    VLE_MODEL_TYPE,
    VLE_TASKS,
    VLECheckpointError,
    _shorten,
    _translate,
    official_to_vlekit_key,
    task_name,
    vlekit_to_official_key,
)
from vlekit.vle.processor import _checkpoint_image_size, vle_preprocessor_config

__all__ = [
    "VLELoadReport",
    "from_vle_pretrained",
    "load_vle_state_dict",
    "to_vle_pretrained",
    "vle_config_dict",
    "vle_state_dict",
]

logger = logging.getLogger(__name__)

# -- loading ------------------------------------------------------------------------------------------


@dataclass
class VLELoadReport:
    """What a VLE load did. Key lists use official names, with the vlekit name after ``->`` where known."""

    source: str
    layout: str  # "task (vle. prefix)" or "bare"
    task: str | None
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model tensor was loaded or deliberately initialised and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        lines = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {_shorten(keys)}")
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [f"VLE checkpoint {self.source}: layout {self.layout}, task {self.task}, {self.loaded} tensors loaded"]
        for title, keys in (
            ("dropped (position-id buffers)", self.dropped),
            ("ignored (pretraining heads)", self.ignored),
            ("initialised", self.initialised),
            ("interpolated (position embeddings to the model's grid)", self.interpolated),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {_shorten(keys)}")
        if not self.ok:
            lines.append(self.problems())
        return "\n".join(lines)


def load_vle_state_dict(
    model: VCRModel,
    state: Mapping[str, torch.Tensor],
    *,
    task: str | None = None,
    strict: bool = True,
    files: Mapping[str, str] | None = None,
    source: str = "state dict",
) -> VLELoadReport:
    """Copy an official VLE state dict into ``model`` through :data:`VLE_KEY_MAP` and the task's head map.

    Layout: if any key starts with ``vle.`` every backbone key must (a task checkpoint); otherwise none
    may (a bare ``VLEModel``). Heads: ``task=None`` loads the checkpoint's VCR head if it has exactly
    one; a checkpoint without the task's head keeps the model's new head. The heads of the other
    official classes (:data:`PRETRAINING_HEAD_PREFIXES`, but the task's own) are skipped and reported,
    position-id buffers dropped. A token-type table with fewer rows than the model's fills the first
    rows (rows 0 and 1 of a pretrained table); the other rows keep their initialisation. Position
    embeddings saved for another patch grid are interpolated to the model's (bicubic, CLS row kept).

    Args:
        files: the file each key came from (error messages name it).
        source: names the checkpoint in messages.

    Raises:
        VLECheckpointError: with ``strict``, listing every missing, unexpected or wrongly shaped key.
    """
    task = task_name(task)
    files = files or {}

    def named(key: str) -> str:
        return f"{key} ({files[key]})" if key in files else key

    prefix = BACKBONE_PREFIX if any(key.startswith(BACKBONE_PREFIX) for key in state) else ""
    heads_found = {name for name in VCR_TASKS if any(key.startswith(TASK_HEADS[name] + ".") for key in state)}
    if task is None and len(heads_found) > 1:
        raise VLECheckpointError(f"{source} has both VCR heads ({', '.join(sorted(heads_found))}); pass task= to choose one")
    if task is None and heads_found:
        task = next(iter(heads_found))
    expected_head = VLE_TASKS[task].head if task is not None else VLE_TASKS["q2a"].head
    if getattr(model.head, "registered_name", None) != expected_head:
        raise VLECheckpointError(
            f"{source}: task {task!r} loads into a {expected_head!r} head, but the model has a "
            f"{getattr(model.head, 'registered_name', type(model.head).__name__)!r} head"
        )
    report = VLELoadReport(source=source, layout="task (vle. prefix)" if prefix else "bare", task=task)
    head = TASK_HEADS[task] if task is not None else None
    skipped_heads = tuple(p for p in PRETRAINING_HEAD_PREFIXES if p != f"{head}.")

    targets: dict[str, tuple[str, torch.Tensor]] = {}  # vlekit key -> (official key, tensor)
    for key, tensor in state.items():
        if key.startswith(skipped_heads):
            report.ignored.append(key)
            continue
        if key.startswith(prefix) and key[len(prefix):] in DROPPED_BUFFERS:
            report.dropped.append(key)
            continue
        if head is not None and key.startswith(head + "."):
            vlekit_key = _translate(key, (_HEAD_TO_VLEKIT[task],))
        elif key.startswith(prefix):
            vlekit_key = official_to_vlekit_key(key[len(prefix):])
            # Head names map too; here (another task's head, or one under vle.) they are left over.
            vlekit_key = None if vlekit_key is not None and vlekit_key.startswith("head.") else vlekit_key
        else:
            vlekit_key = None
        if vlekit_key is None:
            report.unexpected.append(named(key))
        else:
            targets[vlekit_key] = (key, tensor)

    model_state = model.state_dict()
    positions = "vision_encoder.model." + POSITION_EMBEDDING_KEY.removeprefix("vision_model.vision_model.")
    loadable: dict[str, torch.Tensor] = {}
    for vlekit_key, (key, tensor) in targets.items():
        if vlekit_key not in model_state:
            report.unexpected.append(f"{named(key)} -> {vlekit_key} (not in the model)")
            continue
        expected = model_state[vlekit_key].shape
        grows = (
            vlekit_key == "token_type_embeddings.weight"
            and tensor.shape[0] < expected[0] and tensor.shape[1:] == expected[1:]
        )
        if vlekit_key == positions and tensor.shape != expected and tensor.shape[1:] == expected[1:]:
            new_grid = model.vision_encoder.grid
            try:
                resized = interpolate_position_embeddings(tensor, new_grid)
            except ValueError:
                resized = tensor  # not 1 + a square grid: reported as a wrong shape below
            if resized.shape == expected:
                report.interpolated.append(
                    f"{named(key)}: {tensor.shape[0]} -> {expected[0]} rows ({new_grid}x{new_grid} patches)")
                tensor = resized
        if tensor.shape != expected and not grows:
            report.mismatched.append(f"{named(key)} has shape {list(tensor.shape)}, the model ({vlekit_key}) has {list(expected)}")
            continue
        if grows:
            report.initialised.append(f"token_type_embeddings rows {tensor.shape[0]}..{expected[0] - 1} (new, normal init)")
        loadable[vlekit_key] = tensor
    new_head = not any(key.startswith("head.") for key in targets)
    if new_head:
        report.initialised.append(f"head.* (new {expected_head} head; {source} has no {head or 'VCR head'})")
    for vlekit_key in model_state:
        if vlekit_key not in targets and not (new_head and vlekit_key.startswith("head.")):
            official = vlekit_to_official_key(vlekit_key, task=task)
            if official is None:
                report.missing.append(vlekit_key)
            else:
                official = official if vlekit_key.startswith("head.") else prefix + official
                report.missing.append(f"{official} -> {vlekit_key}")

    if strict and not report.ok:
        other_heads = sorted(heads_found - {task})
        hint = f"The checkpoint carries the {other_heads[0]} head: pass task={other_heads[0]!r} to load it. " if other_heads else ""
        raise VLECheckpointError(
            f"{source}: the weights do not match the VLE model built from its config (layout {report.layout}, "
            f"task {task}):\n{report.problems()}\n{hint}Pass strict=False to load what matches "
            f"(output_loading_info=True returns this report)."
        )
    with torch.no_grad():
        for vlekit_key, tensor in loadable.items():
            model_state[vlekit_key][: tensor.shape[0]].copy_(tensor)
    report.loaded = len(loadable)
    return report


def from_vle_pretrained(
    name_or_path: str | Path,
    task: str | None = None,
    *,
    strict: bool = True,
    num_token_types: int | None = None,
    image_size: int | None = None,
    answers: Sequence[str] | None = None,
    revision: str | None = None,
    output_loading_info: bool = False,
    **options: Any,
) -> VCRModel | tuple[VCRModel, VLELoadReport]:
    """Load an official VLE checkpoint (hub name or local folder) as a :class:`VCRModel` in eval mode.

    VCR (``q2a`` / ``qa2r``): the model takes the batch contract (``input_ids, attention_mask,
    text_type_ids [B, C, L]``, ``pixel_values [B, 3, S, S]``, ``object_patch_mask [B, C, K, P]``,
    ``object_type_ids, object_mask [B, C, K]``) and returns ``logits [B, C]``: VLE's ``VLEForVCRQ2A``
    / ``VLEForVCRQA2R`` scores, computed once per image and with the choices folded into the batch.

    ``vqa`` / ``itm`` / ``pbc``: the model takes ``input_ids, attention_mask [B, L]`` and
    ``pixel_values [B, 3, S, S]`` and returns ``logits`` ``[B, num_labels]`` (``VLEForVQA``; the
    answers in ``model.head.config.answers``), ``[B, 2]`` (``VLEForITM``) or ``[B, P, 2]``
    (``VLEForPBC``, one row per patch, CLS excluded).

    Args:
        name_or_path: ``hfl/vle-base-for-vcr-q2a``-style hub name, or a folder with ``config.json`` and weights.
        task: ``"q2a"`` / ``"qa2r"`` / ``"vqa"`` / ``"itm"`` / ``"pbc"`` (the official ``"vcr_q2a"`` /
            ``"vcr_qa2r"`` too) / None. None: the task of the checkpoint's architecture
            (``VLEForVQA``, ...), else its VCR head if it has one; a checkpoint without the task's head
            (``hfl/vle-base``) gets a new head.
        strict: missing, unexpected or wrongly shaped keys are errors; ``False`` loads what matches and logs the report.
        num_token_types: grow the token-type table, e.g. 83 for VCR from a pretrained (2-row) table:
            rows 0 and 1 are kept, the new rows drawn from normal(0, initializer_range).
        image_size: the resolution to run at; default: ``preprocessor_config.json``'s crop size (576
            for ``hfl/vle-base-for-vqa``), else the vision config's. Saved position embeddings of
            another grid are interpolated.
        answers: VQA only: the answer vocabulary for a new VQA head (default: the config's ``id2label``).
        revision: hub revision (branch, tag or commit).
        output_loading_info: also return the :class:`VLELoadReport`.
        options: other VCRModelConfig fields (``use_object_tokens``, ``use_object_types``; VCR only).
    """
    task = task_name(task)
    directory = _local_directory(name_or_path, files=(*_MODEL_FILES, PREPROCESSOR_FILE), revision=revision)
    config = read_vle_config(directory)
    where = str(directory / VLE_CONFIG_FILE)
    if task is None:
        task = next((_ARCHITECTURE_TO_TASK[a] for a in config.get("architectures") or []
                     if _ARCHITECTURE_TO_TASK.get(a) not in (None, *VCR_TASKS)), None)
    vcr = task is None or task in VCR_TASKS
    if not vcr and options:
        raise TypeError(f"from_vle_pretrained: {', '.join(sorted(options))} are VCR options; task {task!r} takes none")
    file_types = config.get("num_token_types", 2)
    if num_token_types is not None and num_token_types < file_types:
        raise ValueError(f"num_token_types={num_token_types} would drop rows of the checkpoint's {file_types}-row token-type table; use {file_types} or more")
    rows = num_token_types if num_token_types is not None else file_types
    if vcr and options.get("use_object_types", True) and rows < VCR_NUM_TOKEN_TYPES:
        raise ValueError(
            f"{where}: the token-type table has {rows} rows, but VCR object types need {VCR_NUM_TOKEN_TYPES} (text 0, image 1, "
            f"objects 2..82); pass num_token_types={VCR_NUM_TOKEN_TYPES} (rows 0..{file_types - 1} are kept, the new rows "
            f"initialised) or use_object_types=False"
        )
    if task == "vqa" and answers is None and config.get("architectures") != [VLE_TASKS["vqa"].architecture]:
        raise ValueError(f"{where} is not a VLEForVQA checkpoint (no answer vocabulary): pass answers=[...] for the new VQA head")
    state, files = read_vle_weights(directory)
    prefix = BACKBONE_PREFIX if any(key.startswith(BACKBONE_PREFIX) for key in state) else ""
    table = state.get(prefix + "token_type_embeddings.weight")
    if table is not None and table.shape[0] != file_types:
        key = prefix + "token_type_embeddings.weight"
        raise VLECheckpointError(
            f"{where} says num_token_types={file_types}, but {key} in {files[key]} has {table.shape[0]} rows"
        )
    if image_size is None:
        image_size = _checkpoint_image_size(directory)
    model = vcr_model_from_vle_config(
        config, num_token_types=rows, where=where, task=task, image_size=image_size, answers=answers, **options
    )
    weight_files = sorted(set(files.values()))
    report = load_vle_state_dict(
        model, state, task=task, strict=strict, files=files, source=f"{directory} ({', '.join(weight_files)})"
    )
    logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
    model.eval()
    return (model, report) if output_loading_info else model


# -- writing ------------------------------------------------------------------------------------------


def _check_exportable(model: VCRModel, task: str | None) -> None:
    if not isinstance(model, VCRModel):
        raise TypeError(f"to_vle_pretrained: expected a vlekit VCRModel, got {type(model).__name__}")
    head = getattr(model.head, "registered_name", type(model.head).__name__)
    if task is not None and head != VLE_TASKS[task].head:
        raise ValueError(
            f"to_vle_pretrained: task={task!r} writes a {VLE_TASKS[task].architecture} with a {VLE_TASKS[task].head!r} "
            f"head, but the model has a {head!r} head; pass the model's task, or task=None for the backbone alone"
        )
    if task == "vqa" and not model.head.config.answers:
        raise ValueError(
            "to_vle_pretrained: a VLEForVQA config carries the answers (id2label); build the VQA head with "
            "answers=[...] (one per label)"
        )
    parts = {
        "text encoder": (model.text_encoder, HFTextEncoder, "hf-text with a deberta-v2 model"),
        "vision encoder": (model.vision_encoder, CLIPVisionEncoder, "clip-vision"),
        "fusion": (model.fusion, CoAttentionFusion, "co-attention"),
    }
    for role, (module, cls, wanted) in parts.items():
        if not isinstance(module, cls):
            raise TypeError(
                f"to_vle_pretrained: the {role} is {type(module).__name__} ({getattr(module, 'registered_name', '?')}); "
                f"VLE's format holds {wanted} only. Save other models with model.save_pretrained (vlekit format)."
            )
    if model.text_encoder.model.config.model_type != TEXT_MODEL_TYPE:
        raise TypeError(
            f"to_vle_pretrained: the text encoder is a {model.text_encoder.model.config.model_type!r} model; VLE's "
            f"format holds DeBERTa ('deberta-v2') only. Save other models with model.save_pretrained (vlekit format)."
        )
    if model.head.multiple_choice and not (model.config.use_object_tokens and model.config.use_object_types):
        raise ValueError(
            "to_vle_pretrained: VLE's VCR code always appends object tokens and tags them with types k+2; a model "
            "built with use_object_tokens=False or use_object_types=False would compute something else there. "
            "Save it with model.save_pretrained (vlekit format)."
        )


def vle_config_dict(model: VCRModel, *, task: str | None = None) -> dict[str, Any]:
    """The official ``config.json`` content for ``model`` (nested ``text_config`` / ``vision_config``)."""
    task = task_name(task)
    _check_exportable(model, task)
    fusion = dataclasses.asdict(model.fusion.config)
    labels = {}
    if task == "vqa":
        answers = list(model.head.config.answers)
        labels = {"id2label": {str(i): a for i, a in enumerate(answers)}, "label2id": {a: i for i, a in enumerate(answers)}}
    return {
        "architectures": [TASK_ARCHITECTURES[task]],
        **labels,
        "model_type": VLE_MODEL_TYPE,
        **{name: fusion[name] for name in FUSION_FIELDS},
        "initializer_range": model.config.initializer_range,
        "classifier_dropout": None,
        "num_token_types": model.token_type_embeddings.num_embeddings,
        "text_config": model.text_encoder.model.config.to_dict(),
        "vision_config": model.vision_encoder.model.config.to_dict(),
    }


def vle_state_dict(model: VCRModel, *, task: str | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official names: ``vle.``-prefixed plus the head for a task, bare without.
    A model with adapters (``model.adaptation``: LoRA, DoRA, IA3) gives its merged weights, which the official
    format holds (``vlekit.components.adaptations.merged_state_dict``)."""
    task = task_name(task)
    _check_exportable(model, task)
    prefix = BACKBONE_PREFIX if task is not None else ""
    if model.resolved_config().adaptation:
        from vlekit.components.adaptations import merged_state_dict  # PEFT: only for an adapted model

        weights = merged_state_dict(model)
    else:
        weights = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        if key.startswith("head."):
            if task is not None:
                state[vlekit_to_official_key(key, task=task)] = tensor
            continue
        official = vlekit_to_official_key(key)
        if official is None:
            raise VLECheckpointError(f"to_vle_pretrained: {key} has no official VLE name in VLE_KEY_MAP")
        state[prefix + official] = tensor
    return {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}


def to_vle_pretrained(
    model: VCRModel, directory: str | Path, *, task: str | None = None, tokenizer: Any = None,
    safe_serialization: bool = True,
) -> Path:
    """Write ``model`` as an official VLE checkpoint folder.

    Writes ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``), ``preprocessor_config.json``
    (:func:`vle_preprocessor_config`) and, given ``tokenizer``, the tokenizer's files, so the
    official ``VLEProcessor.from_pretrained`` and :func:`vle_preprocessor` both read the folder.
    ``task`` (``"q2a"``, ``"qa2r"``, ``"vqa"``, ``"itm"``, ``"pbc"``; the official ``"vcr_q2a"`` /
    ``"vcr_qa2r"`` too) writes that class's checkpoint (``VLEForVCRQ2A``, ..., ``VLEForVQA`` with
    ``id2label`` / ``label2id``; ``vle.`` prefix, head), and must be the task of the model's head;
    ``task=None`` a bare ``VLEModel`` (no head). Only hf-text (deberta-v2) + clip-vision +
    co-attention models are accepted, VCR ones with object tokens and types.
    """
    config = vle_config_dict(model, task=task)
    state = vle_state_dict(model, task=task)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VLE_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if safe_serialization:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(vle_preprocessor_config(model), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
