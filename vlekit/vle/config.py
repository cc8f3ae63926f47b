"""Reading an official VLE checkpoint folder: ``config.json``, the weight files, and the model they describe.

Owns the folder (a local one, or a hub repository fetched with ``snapshot_download``),
``config.json`` (refused unless ``model_type: "vle"``; nested ``text_config`` deberta-v2 and
``vision_config`` CLIP tower, the fusion fields, ``num_token_types``, a VQA config's answers), the
weights (``model.safetensors`` / ``pytorch_model.bin``, single or sharded with an index) and
:func:`vcr_model_from_vle_config`, the randomly initialised :class:`~vlekit.model.VCRModel` of a config.
Loading the weights into it is :mod:`vlekit.vle.checkpoint`'s.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import CONFIG_MAPPING, AutoConfig, CLIPVisionConfig

from vlekit.model import VCRModel, build_model
from vlekit.hf_configs import keys_from_file, saved_hf_config
from vlekit.vle.keys import VLE_CONFIG_FILE, VLE_MODEL_TYPE, VLE_TASKS, VLECheckpointError, _shorten, task_name

__all__ = [
    "FUSION_FIELDS",
    "TEXT_MODEL_TYPE",
    "VCR_NUM_TOKEN_TYPES",
    "VISION_MODEL_TYPES",
    "read_vle_config",
    "read_vle_weights",
    "vcr_model_from_vle_config",
    "vision_tower_options",
    "vqa_answers",
]

# Token types for VCR: text 0, image 1, referenced objects 2 .. 82 (VLE's VCR checkpoints).
VCR_NUM_TOKEN_TYPES = 83

TEXT_MODEL_TYPE = "deberta-v2"
VISION_MODEL_TYPES = ("clip_vision_model", "clip")
FUSION_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
)

# -- reading ------------------------------------------------------------------------------------------

_MODEL_FILES = (
    VLE_CONFIG_FILE, "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin",
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


def vision_tower_options(config: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """The ``CLIPVisionConfig`` fields of a VLE config's vision tower, read as transformers reads them."""
    return keys_from_file(CLIPVisionConfig, _vision_tower_config(config, where=where), where=f"{where}: vision_config")


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
    # Written by the official code under transformers 4.26: read as transformers reads it (vlekit.hf_configs).
    text_config = AutoConfig.for_model(
        TEXT_MODEL_TYPE, **keys_from_file(CONFIG_MAPPING[TEXT_MODEL_TYPE], text, where=f"{where}: text_config")
    )
    vision_options = vision_tower_options(config, where=where)
    if image_size is not None:
        vision_options["image_size"] = image_size
    vision_config = CLIPVisionConfig(**vision_options)
    missing = [name for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if name not in config]
    if missing:
        raise VLECheckpointError(f"{where}: the fusion fields {', '.join(missing)} are missing")
    fusion = {"name": "co-attention", **{name: config[name] for name in FUSION_FIELDS if name in config}}
    model = build_model(
        text_encoder={"name": "hf-text", "model_type": TEXT_MODEL_TYPE, "hf_config": saved_hf_config(text_config)},
        vision_encoder={"name": "clip-vision", "hf_config": saved_hf_config(vision_config)},
        fusion=fusion,
        head=_head_spec(task, answers),
        num_token_types=num_token_types if num_token_types is not None else config.get("num_token_types", 2),
        initializer_range=config.get("initializer_range", 0.02),
        **options,
    )
    return model
