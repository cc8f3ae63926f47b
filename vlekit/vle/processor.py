"""The official VLE preprocessing: ``preprocessor_config.json`` and a ``VCRPreprocessor`` matching a checkpoint.

Owns ``preprocessor_config.json`` both ways (:func:`vle_preprocessor_config` writes CLIPImageProcessor
settings, the loaders read the resolution a checkpoint runs at from it), :func:`vle_preprocessor`
(the repository's tokenizer and image settings as a ``data_prep.preprocess.VCRPreprocessor``),
:func:`official_vcr_task` / :func:`is_official_vqa` (is a folder an official VCR / VQA task checkpoint) and
:func:`warn_unofficial_inputs` (such a checkpoint fed other inputs than the official pipeline's).
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoTokenizer, CLIPVisionConfig

from vlekit.vle.config import _local_directory, read_vle_config, vision_tower_options
from vlekit.vle.keys import PREPROCESSOR_FILE, VLE_CONFIG_FILE, VLE_MODEL_TYPE, VLE_TASKS

if TYPE_CHECKING:
    from data_prep.preprocess import VCRPreprocessor
    from vlekit.model import VCRModel

__all__ = [
    "is_official_vqa",
    "official_vcr_task",
    "vle_preprocessor",
    "vle_preprocessor_config",
    "warn_unofficial_inputs",
]

logger = logging.getLogger(__name__)

_PROCESSOR_FILES = (
    VLE_CONFIG_FILE, PREPROCESSOR_FILE, "spm.model", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json",
)


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


def _official_architectures(directory: str | Path) -> list[str]:
    """The ``architectures`` of an official VLE ``config.json`` in ``directory`` (empty for anything else)."""
    path = Path(directory) / VLE_CONFIG_FILE
    if not path.is_file():
        return []
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    return list(config.get("architectures") or []) if config.get("model_type") == VLE_MODEL_TYPE else []


def official_vcr_task(directory: str | Path) -> str | None:
    """``"q2a"`` / ``"qa2r"`` when ``directory`` is an official VLE VCR task checkpoint, else None."""
    return next((_ARCHITECTURE_TASKS[a] for a in _official_architectures(directory) if a in _ARCHITECTURE_TASKS), None)


def is_official_vqa(directory: str | Path) -> bool:
    """Whether ``directory`` is an official ``VLEForVQA`` checkpoint (``hfl/vle-base-for-vqa``)."""
    return VLE_TASKS["vqa"].architecture in _official_architectures(directory)


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
    vision = CLIPVisionConfig(**vision_tower_options(config, where=str(directory / VLE_CONFIG_FILE)))
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
