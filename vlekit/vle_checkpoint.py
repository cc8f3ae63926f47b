"""Official VLE checkpoints (HFL / iFLYTEK) in and out of vlekit.

``from_vle_pretrained`` reads a VLE repository (``hfl/vle-base``, ``hfl/vle-base-for-vcr-q2a``, ... or a
local folder of the same layout) into a :class:`~vlekit.model.VCRModel` built through the registry
(``hf-text`` DeBERTa-v2 + ``clip-vision`` + ``co-attention``); ``to_vle_pretrained`` writes a vlekit
model back in the official layout; ``vle_preprocessor`` builds the data pipeline from the
repository's tokenizer and ``preprocessor_config.json``.

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

Task names are vlekit's (``q2a``, ``qa2r``, ``vqa``, ``itm``, ``pbc``); the official ``vcr_q2a`` /
``vcr_qa2r`` are accepted here, at the official-checkpoint boundary, and nowhere else. A checkpoint
that runs at another resolution than its CLIP tower was built for (VQA: 576 px for base, 504 px for
large) is built at the resolution of its ``preprocessor_config.json``, and position embeddings saved
for another grid are interpolated on load (reported).

Every key goes through one explicit map, :data:`VLE_KEY_MAP`; loads are strict (missing, unexpected
and wrongly shaped keys are errors naming the file) unless ``strict=False``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig

from vlekit.fusions import CoAttentionFusion
from vlekit.model import VCRModel, build_model
from vlekit.text_encoders import HFTextEncoder, hf_config_dict
from vlekit.vision_encoders import CLIPVisionEncoder, interpolate_position_embeddings

if TYPE_CHECKING:
    from data_prep.preprocess import VCRPreprocessor

__all__ = [
    "PRETRAINING_HEAD_PREFIXES",
    "TASK_HEADS",
    "VLE_TASKS",
    "VLETask",
    "VLECheckpointError",
    "VLELoadReport",
    "VLE_KEY_MAP",
    "from_vle_pretrained",
    "load_vle_state_dict",
    "official_to_vlekit_key",
    "read_vle_config",
    "read_vle_weights",
    "to_vle_pretrained",
    "vcr_model_from_vle_config",
    "vle_config_dict",
    "official_vcr_task",
    "task_name",
    "vle_preprocessor",
    "vle_preprocessor_config",
    "vle_state_dict",
    "vlekit_to_official_key",
    "warn_unofficial_inputs",
]

logger = logging.getLogger(__name__)

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
VCR_TASKS: tuple[str, ...] = ("q2a", "qa2r")
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

# Token types for VCR: text 0, image 1, referenced objects 2 .. 82 (VLE's VCR checkpoints).
VCR_NUM_TOKEN_TYPES = 83

TEXT_MODEL_TYPE = "deberta-v2"
VISION_MODEL_TYPES = ("clip_vision_model", "clip")
FUSION_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
)
# Keys of a saved HF config that describe the file, not the architecture.
_FILE_KEYS = ("_name_or_path", "_commit_hash", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype")

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
    ("cross_modal_{stream}_layers.{layer}.intermediate.dense.{param}", "fusion.{stream}_layers.{layer}.intermediate.{param}"),
    ("cross_modal_{stream}_layers.{layer}.output.dense.{param}", "fusion.{stream}_layers.{layer}.output.{param}"),
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


# -- reading ------------------------------------------------------------------------------------------

_MODEL_FILES = (
    VLE_CONFIG_FILE, "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin",
)
_PROCESSOR_FILES = (
    VLE_CONFIG_FILE, PREPROCESSOR_FILE, "spm.model", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json",
)


def _local_directory(name_or_path: str | Path, *, files: Sequence[str], revision: str | None) -> Path:
    """A local folder as it is, or a hub repository fetched with ``snapshot_download`` (only ``files``)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a VLE checkpoint folder (config.json + weights) or a hub name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), revision=revision, allow_patterns=list(files)))
    except (OSError, ValueError) as error:
        raise OSError(
            f"{name_or_path!r} is not a local folder, and fetching it from the Hugging Face hub failed: {error}"
        ) from error


def read_vle_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a VLE checkpoint folder; anything but ``model_type: "vle"`` is refused."""
    path = Path(directory) / VLE_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a VLE checkpoint folder has config.json with model_type 'vle'")
    config = json.loads(path.read_text())
    found = config.get("model_type")
    if found != VLE_MODEL_TYPE:
        raise VLECheckpointError(
            f"{path}: model_type is {found!r}, expected 'vle' (an official VLE checkpoint such as hfl/vle-base or "
            f"hfl/vle-base-for-vcr-q2a). A vlekit checkpoint (vlekit_config.json) loads with VCRModel.from_pretrained."
        )
    return config


def read_vle_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint folder and, for each key, the file it came from.

    Looks for ``model.safetensors``, ``model.safetensors.index.json`` (sharded), ``pytorch_model.bin``
    and ``pytorch_model.bin.index.json``, in this order, and reads the first one found.
    """
    directory = Path(directory)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"):
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            state = _read_weight_file(path)
            return state, dict.fromkeys(state, name)
        weight_map: dict[str, str] = json.loads(path.read_text())["weight_map"]
        state, files = {}, {}
        for shard in sorted(set(weight_map.values())):
            shard_state = _read_weight_file(directory / shard)
            listed = {key for key, file in weight_map.items() if file == shard}
            if listed != set(shard_state):
                raise VLECheckpointError(
                    f"{path} lists {len(listed)} keys in {shard}, which holds {len(shard_state)}; "
                    f"differences: {_shorten(sorted(listed ^ set(shard_state)))}"
                )
            state.update(shard_state)
            files.update(dict.fromkeys(shard_state, shard))
        return state, files
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
        f"{directory}: no VLE weights; expected model.safetensors, model.safetensors.index.json, pytorch_model.bin "
        f"or pytorch_model.bin.index.json; found {present}"
    )


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (named by the checkpoint's index file)")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


# -- building -----------------------------------------------------------------------------------------


def _hf_config_options(sub_config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in sub_config.items() if key not in _FILE_KEYS}


def _vision_tower_config(config: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """The CLIP vision tower's fields: ``vision_config`` itself, or the ``vision_config`` of a whole CLIP config."""
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        raise VLECheckpointError(f"{where}: no 'vision_config' object; a VLE config nests the CLIP vision config there")
    model_type = vision.get("model_type")
    if model_type == "clip":
        inner = vision.get("vision_config")
        if not isinstance(inner, Mapping):
            raise VLECheckpointError(f"{where}: vision_config is a whole CLIP config (model_type 'clip') without its own 'vision_config'")
        vision = inner
    elif model_type != "clip_vision_model":
        raise VLECheckpointError(
            f"{where}: vision_config has model_type {model_type!r}; vlekit reads VLE's CLIP towers "
            f"({' or '.join(map(repr, VISION_MODEL_TYPES))})"
        )
    return dict(vision)


def vqa_answers(config: Mapping[str, Any], *, where: str = "config.json") -> list[str]:
    """The answers of a ``VLEForVQA`` config in label order: ``id2label`` (ids 0..n-1), checked against ``label2id``."""
    id2label = config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        raise VLECheckpointError(f"{where}: a VQA checkpoint's config has id2label (label id -> answer); none found")
    try:
        by_id = {int(key): str(value) for key, value in id2label.items()}
    except ValueError as error:
        raise VLECheckpointError(f"{where}: id2label keys must be label ids (integers): {error}") from error
    if sorted(by_id) != list(range(len(by_id))):
        raise VLECheckpointError(f"{where}: id2label ids must be 0..{len(by_id) - 1}; got {_shorten([str(i) for i in sorted(by_id)])}")
    answers = [by_id[i] for i in range(len(by_id))]
    label2id = config.get("label2id")
    if isinstance(label2id, Mapping) and label2id:
        wrong = [answer for i, answer in enumerate(answers) if label2id.get(answer) != i]
        if wrong or len(label2id) != len(answers):
            raise VLECheckpointError(f"{where}: label2id disagrees with id2label (e.g. for {_shorten(wrong, 3) or 'its size'})")
    return answers


def _head_spec(task: str | None, answers: Sequence[str] | None) -> dict[str, Any]:
    if task == "vqa":
        if not answers:
            raise ValueError("a VQA model needs its answers (the label vocabulary): pass answers=[...]")
        return {"name": "vqa", "num_labels": len(answers), "answers": list(answers)}
    if answers is not None:
        raise TypeError(f"answers= is for task='vqa' only, not task={task!r}")
    return {"name": VLE_TASKS[task].head if task is not None else VLE_TASKS["q2a"].head}


def vcr_model_from_vle_config(
    config: Mapping[str, Any], *, num_token_types: int | None = None, where: str = "config.json",
    task: str | None = None, image_size: int | None = None, answers: Sequence[str] | None = None, **options: Any
) -> VCRModel:
    """A randomly initialised :class:`VCRModel` with the architecture of a VLE ``config.json``.

    Built through the registry: ``hf-text`` (deberta-v2, ``text_config`` as ``hf_config``),
    ``clip-vision`` (the vision tower's config) and ``co-attention`` (the fusion fields), and the
    task's head (:data:`VLE_TASKS`; None: the VCR head).

    Args:
        config: the parsed ``config.json`` (``model_type`` must be ``"vle"``).
        num_token_types: rows of the token-type table (default: the config's ``num_token_types``).
        where: names the config in error messages.
        task: ``q2a`` / ``qa2r`` / ``vqa`` / ``itm`` / ``pbc`` (or the official ``vcr_*``), or None.
        image_size: build the vision tower at this resolution (default: its config's ``image_size``).
        answers: the VQA head's answers (default for ``task="vqa"``: the config's ``id2label``).
        options: other :class:`~vlekit.model.VCRModelConfig` fields (``use_object_tokens``, ``use_object_types``).
    """
    task = task_name(task)
    if task == "vqa" and answers is None:
        answers = vqa_answers(config, where=where)
    if config.get("model_type") != VLE_MODEL_TYPE:
        raise VLECheckpointError(f"{where}: model_type is {config.get('model_type')!r}, expected 'vle'")
    reserved = sorted(set(options) & {"text_encoder", "vision_encoder", "fusion", "head", "num_token_types", "initializer_range"})
    if reserved:
        raise TypeError(
            f"{where}: {', '.join(reserved)} come from the VLE config.json; options may only set the other "
            f"VCRModelConfig fields (use_object_tokens, use_object_types)"
        )
    text = config.get("text_config")
    if not isinstance(text, Mapping) or text.get("model_type") != TEXT_MODEL_TYPE:
        found = text.get("model_type") if isinstance(text, Mapping) else text
        raise VLECheckpointError(
            f"{where}: text_config has model_type {found!r}; VLE's text encoder is DeBERTa-v3 ('deberta-v2')"
        )
    text_config = AutoConfig.for_model(TEXT_MODEL_TYPE, **_hf_config_options(text))
    vision_options = _hf_config_options(_vision_tower_config(config, where=where))
    if image_size is not None:
        vision_options["image_size"] = image_size
    vision_config = CLIPVisionConfig(**vision_options)
    missing = [name for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if name not in config]
    if missing:
        raise VLECheckpointError(f"{where}: the fusion fields {', '.join(missing)} are missing")
    fusion = {"name": "co-attention", **{name: config[name] for name in FUSION_FIELDS if name in config}}
    model = build_model(
        text_encoder={"name": "hf-text", "model_type": TEXT_MODEL_TYPE, "hf_config": hf_config_dict(text_config)},
        vision_encoder={"name": "clip-vision", "hf_config": hf_config_dict(vision_config)},
        fusion=fusion,
        head=_head_spec(task, answers),
        num_token_types=num_token_types if num_token_types is not None else config.get("num_token_types", 2),
        initializer_range=config.get("initializer_range", 0.02),
        **options,
    )
    return model


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


def _shorten(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


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


def _checkpoint_image_size(directory: Path) -> int | None:
    """The crop size of ``preprocessor_config.json`` (the resolution the checkpoint runs at), if any."""
    path = directory / PREPROCESSOR_FILE
    if not path.is_file():
        return None
    processor = json.loads(path.read_text())
    for name in ("crop_size", "size"):
        if name in processor:
            return _square_size(processor[name], name=name, where=str(path))
    return None


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
    """``model``'s weights under the official names: ``vle.``-prefixed plus the head for a task, bare without."""
    task = task_name(task)
    _check_exportable(model, task)
    prefix = BACKBONE_PREFIX if task is not None else ""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("head."):
            if task is not None:
                state[vlekit_to_official_key(key, task=task)] = tensor
            continue
        official = vlekit_to_official_key(key)
        if official is None:
            raise VLECheckpointError(f"to_vle_pretrained: {key} has no official VLE name in VLE_KEY_MAP")
        state[prefix + official] = tensor
    return {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}


def vle_preprocessor_config(model: VCRModel) -> dict[str, Any]:
    """The official ``preprocessor_config.json`` for ``model``: CLIPImageProcessor settings, VLEProcessor.

    Short side resized to S then a centre crop of S (bicubic), CLIP's rescale and the vision
    encoder's mean / std: what ``VLEProcessor.from_pretrained`` (and :func:`vle_preprocessor`) read.
    """
    vision = model.vision_encoder
    return {
        "processor_class": "VLEProcessor",
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": vision.image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": vision.image_size, "width": vision.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(vision.image_mean),
        "image_std": list(vision.image_std),
        "do_convert_rgb": True,
    }


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


# -- the processor ------------------------------------------------------------------------------------


def _square_size(value: Any, *, name: str, where: str) -> int:
    """``crop_size`` / ``size`` of an HF image processor config as one side length."""
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ValueError(f"{where}: {name} is {dict(value)}; vlekit's square canvas needs height == width")
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    raise ValueError(f"{where}: cannot read an image size from {name}={value!r}")


_PREPROCESSOR_FROM_CHECKPOINT = ("image_size", "patch_size", "image_mean", "image_std")

# What a VCR task checkpoint's architecture says its task is (the preprocessing task names).
_ARCHITECTURE_TASKS = {"VLEForVCRQ2A": "q2a", "VLEForVCRQA2R": "qa2r"}


def official_vcr_task(directory: str | Path) -> str | None:
    """``"q2a"`` / ``"qa2r"`` when ``directory`` is an official VLE VCR task checkpoint, else None."""
    path = Path(directory) / VLE_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if config.get("model_type") != VLE_MODEL_TYPE:
        return None
    return next((_ARCHITECTURE_TASKS[a] for a in config.get("architectures") or [] if a in _ARCHITECTURE_TASKS), None)


def warn_unofficial_inputs(source: Any, compat: str) -> None:
    """Warn (once per source, through ``warnings``) that an official VCR checkpoint gets other inputs."""
    if compat != "vle":
        warnings.warn(
            f"{source} is an official VLE VCR checkpoint, trained on the official pipeline's inputs, but it is fed "
            f"compat={compat!r} examples (other names, object numbering and truncation): its accuracy is not the "
            f"official one. Use compat='vle' to reproduce it.",
            UserWarning,
            stacklevel=3,
        )


def vle_preprocessor(
    name_or_path: str | Path, *, task: str | None = None, compat: str | None = None, revision: str | None = None,
    **options: Any,
) -> VCRPreprocessor:
    """A ``data_prep.preprocess.VCRPreprocessor`` matching a VLE checkpoint.

    Tokenizer: ``AutoTokenizer.from_pretrained`` on the folder (VLE ships DeBERTa-v3's SentencePiece
    ``spm.model`` and ``tokenizer_config.json``). Image side S: ``crop_size`` (else ``size``) of
    ``preprocessor_config.json``, which must equal the vision tower's ``image_size``; patch size from
    ``config.json``; ``image_mean`` / ``image_std`` from the preprocessor config (CLIP's when absent,
    as CLIPImageProcessor does).

    Args:
        task: ``"q2a"`` or ``"qa2r"``; None: the task checkpoint's own (required for a bare model).
        compat: None picks ``"vle"`` for an official VCR task checkpoint (it was trained on the
            official pipeline's inputs; logged) and ``"none"`` otherwise (``hfl/vle-base``: its type
            rows 2..82 are new, either mode fine-tunes). Another mode on a task checkpoint warns.
        options: other VCRPreprocessor options (``max_length``, ``images_root``, ``geometry``,
            ``pad_to_multiple_of``).
    """
    from data_prep.constants import CLIP_MEAN, CLIP_STD
    from data_prep.preprocess import VCRPreprocessor

    clashing = sorted(set(options) & set(_PREPROCESSOR_FROM_CHECKPOINT))
    if clashing:
        raise TypeError(f"vle_preprocessor: {', '.join(clashing)} come from the checkpoint and cannot be overridden")
    directory = _local_directory(name_or_path, files=_PROCESSOR_FILES, revision=revision)
    config = read_vle_config(directory)
    vision = CLIPVisionConfig(**_hf_config_options(_vision_tower_config(config, where=str(directory / VLE_CONFIG_FILE))))
    path = directory / PREPROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: VLE checkpoints ship it (CLIPImageProcessor settings)")
    processor = json.loads(path.read_text())
    if "crop_size" in processor:
        image_size = _square_size(processor["crop_size"], name="crop_size", where=str(path))
    elif "size" in processor:
        image_size = _square_size(processor["size"], name="size", where=str(path))
    else:
        raise ValueError(f"{path}: neither crop_size nor size is set")
    if image_size != vision.image_size:
        raise ValueError(
            f"{path} makes {image_size} px images, but the vision tower in {directory / VLE_CONFIG_FILE} takes "
            f"{vision.image_size} px; the patch grid of the data must be the model's"
        )
    official_task = official_vcr_task(directory)
    if task is None:
        if official_task is None:
            raise ValueError(f"vle_preprocessor: {name_or_path} is not a VCR task checkpoint; pass task='q2a' or 'qa2r'")
        task = official_task
    if compat is None:
        compat = "vle" if official_task is not None else "none"
        if official_task is not None:
            logger.info("%s is an official VLE VCR checkpoint: compat='vle' (the official pipeline's inputs)", name_or_path)
    elif official_task is not None:
        warn_unofficial_inputs(name_or_path, compat)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return VCRPreprocessor.build(
        tokenizer,
        task=task,
        compat=compat,
        image_size=image_size,
        patch_size=vision.patch_size,
        image_mean=tuple(processor.get("image_mean", CLIP_MEAN)),
        image_std=tuple(processor.get("image_std", CLIP_STD)),
        **options,
    )
