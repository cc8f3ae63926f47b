"""What a run starts from: Accelerate's precision, the tokenizer, the model (its config, or an official
VLE checkpoint) and the optimizer with its learning-rate schedule."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from data_prep.vqa_answers import AnswerVocabulary
from vlekit.components.adaptations import load_base_state
from vlekit.model import VCRModel, VCRModelConfig
from vlekit.registry import registry_for
from vlekit.runs.data import vqa_model_config
from vlekit.runs.experiment import ExperimentConfig
from vlekit.runs.folder import TOKENIZER_DIR


def resolve_mixed_precision(value: str) -> str:
    """``train.mixed_precision`` -> Accelerate's setting (``fp32`` is Accelerate's ``no``)."""
    if value == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if value not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision {value!r}: expected auto, bf16, fp16 or fp32")
    return "no" if value == "fp32" else value


def load_or_build_tokenizer(config: ExperimentConfig, out: Path, accelerator: Accelerator, text: Any, *,
                            checkpoint: Path | None = None):
    """The run's tokenizer: a name or path, or ``auto`` (word-level, built once from ``text``, the
    training records :class:`vlekit.runs.data.RunData` holds). A resumed run takes the one its ``checkpoint`` holds
    (the one it trained with, wherever ``data.tokenizer`` was: a run moved to another machine still has it)."""
    from transformers import AutoTokenizer

    if checkpoint is not None and (checkpoint / TOKENIZER_DIR / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(checkpoint / TOKENIZER_DIR)
    if config.data.tokenizer != "auto":
        return AutoTokenizer.from_pretrained(config.data.tokenizer)
    folder = out / TOKENIZER_DIR
    if accelerator.is_main_process and not (folder / "tokenizer_config.json").is_file():
        from data_prep.tokenizer import build_word_tokenizer

        build_word_tokenizer(text, out_dir=folder)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder)


def with_component_option(spec: dict[str, Any], kind: str, key: str, value: Any, *, why: str) -> dict[str, Any]:
    """``spec`` with ``key=value`` unless the spec sets ``key`` itself; an error naming the component
    when its config has no such field (``why``: the run-level option that asks for it)."""
    _, config = registry_for(kind).resolve(spec["name"], {k: v for k, v in spec.items() if k != "name"})
    if key in spec:  # set on the component explicitly: that wins
        return spec
    if key not in {f.name for f in dataclasses.fields(config)}:
        raise ValueError(
            f"{why}, but {kind} {spec['name']!r} ({type(config).__name__}) has no {key!r} option; "
            f"use a {kind} that has one, or change the run-level option"
        )
    return {**spec, key: value}


def model_config_for_run(config: ExperimentConfig, tokenizer, model: VCRModelConfig | None = None) -> VCRModelConfig:
    """``model`` (default: the experiment's model section) sized to a data-built tokenizer and with
    ``train.gradient_checkpointing`` passed to every component."""
    model = model if model is not None else config.model
    text, vision, fusion = model.text_encoder, model.vision_encoder, model.fusion
    if config.data.tokenizer == "auto":
        why = f"data.tokenizer=auto builds a {len(tokenizer)}-token tokenizer the text encoder must be resized to"
        text = with_component_option(text, "text_encoder", "vocab_size", len(tokenizer), why=why)
    if config.train.gradient_checkpointing:
        why = "train.gradient_checkpointing is on"
        text = with_component_option(text, "text_encoder", "gradient_checkpointing", True, why=why)
        vision = with_component_option(vision, "vision_encoder", "gradient_checkpointing", True, why=why)
        fusion = with_component_option(fusion, "fusion", "gradient_checkpointing", True, why=why)
    return dataclasses.replace(model, text_encoder=text, vision_encoder=vision, fusion=fusion)


_COMPONENTS = ("text_encoder", "vision_encoder", "fusion")


def build_run_model(config: ExperimentConfig, tokenizer, vocabulary: AnswerVocabulary | None = None) -> VCRModel:
    """The model a run starts from: the ``model`` section, or an official VLE checkpoint.

    With ``train.init_from_vle`` the checkpoint's architecture makes the components: the ``model``
    section may leave them at their defaults (or repeat exactly what the checkpoint builds, as the
    run's saved ``config.yaml`` does); ``num_token_types``, the object options and
    ``train.gradient_checkpointing`` apply (VCR). ``vocabulary``: a VQA run's answers, for the
    ``vqa`` head (kept from a ``VLEForVQA`` checkpoint when they are its own, else a new head).
    ``model.config`` is what was built.
    """
    if config.train.init_from_vle is None:
        model = config.model if vocabulary is None else vqa_model_config(config.model, vocabulary)
        return VCRModel(config=model_config_for_run(config, tokenizer, model))
    if config.data.tokenizer == "auto":
        raise ValueError("train.init_from_vle needs the checkpoint's tokenizer: set data.tokenizer to the same name")
    from vlekit.vle.checkpoint import from_vle_pretrained

    if vocabulary is not None:
        loaded = from_vle_pretrained(config.train.init_from_vle, task="vqa", answers=list(vocabulary.id2label))
    else:
        loaded = from_vle_pretrained(
            config.train.init_from_vle, num_token_types=config.model.num_token_types,
            use_object_tokens=config.model.use_object_tokens, use_object_types=config.model.use_object_types,
        )
    built = dataclasses.replace(model_config_for_run(config, tokenizer, loaded.config), adaptation=config.model.adaptation)
    defaults = VCRModelConfig()
    for part in _COMPONENTS:
        asked = getattr(config.model, part)
        if asked != getattr(defaults, part) and asked not in (getattr(loaded.config, part), getattr(built, part)):
            raise ValueError(
                f"train.init_from_vle={config.train.init_from_vle!r} builds model.{part} from the checkpoint "
                f"({getattr(loaded.config, part)['name']!r}), but the model section asks for {asked!r}: remove "
                f"model.{part} from the config (the run's config.yaml then records the checkpoint's), or drop init_from_vle"
            )
    if built == loaded.config:
        return loaded.train()
    model = VCRModel(config=built)  # the same architecture with the run's options (gradient checkpointing, adaptation)
    if built.adaptation:  # a named frozen base: the run saves what it trains and the base's reference
        source = config.train.init_from_vle
        options = {"task": "vqa", "answers": list(vocabulary.id2label)} if vocabulary is not None else {
            "num_token_types": config.model.num_token_types, "use_object_tokens": config.model.use_object_tokens,
            "use_object_types": config.model.use_object_types}
        load_base_state(model, loaded.state_dict(), where=f"train.init_from_vle={source}")
        model.base_reference = {"format": "vle", "options": options,
                                "source": str(Path(source).resolve()) if Path(source).is_dir() else source}
    else:
        model.load_state_dict(loaded.state_dict())
    return model.train()


_LAYER_INDEX = re.compile(r"\.(?:layer|layers|blocks)\.(\d+)\.")


def encoder_depths(named: list[tuple[str, torch.nn.Parameter]]) -> tuple[dict[str, int], int]:
    """Each parameter's depth in its encoder: 0 for the embeddings, ``k + 1`` in layer ``k``
    (``layer.k`` / ``layers.k`` / ``blocks.k``: Hugging Face, CLIP, timm), ``top`` after the last layer."""
    indices = {name: int(m.group(1)) for name, _ in named if (m := _LAYER_INDEX.search(name))}
    top = max(indices.values(), default=-1) + 2
    depths, seen_layer = {}, False
    for name, _ in named:  # registration order: embeddings, layers, then the final norms
        seen_layer = seen_layer or name in indices
        depths[name] = indices[name] + 1 if name in indices else (top if seen_layer else 0)
    return depths, top


def make_optimizer(model: VCRModel, config: ExperimentConfig) -> torch.optim.Optimizer:
    """AdamW over role groups with learning-rate multipliers; no weight decay on biases and norms. With
    ``train.layer_lr_decay`` d < 1 an encoder parameter at depth i (of ``top``) gets ``lr * d ** (top - i)``."""
    train = config.train
    unknown = set(train.lr_multipliers) - {"text_encoder", "vision_encoder", "fusion", "head"}
    if unknown:
        raise ValueError(f"train.lr_multipliers: unknown groups {sorted(unknown)}; use text_encoder, vision_encoder, fusion, head")
    groups = []
    for role, named in model.parameter_groups().items():
        lr = train.lr * train.lr_multipliers.get(role, 1.0)
        depths, top = encoder_depths(named) if train.layer_lr_decay != 1 and role.endswith("_encoder") else ({}, 0)
        for depth in sorted(set(depths.values())) or [top]:
            trainable = [(n, p) for n, p in named if p.requires_grad and depths.get(n, top) == depth]
            scale, suffix = train.layer_lr_decay ** (top - depth), f"/depth{depth}" if depths else ""
            groups += [
                {"params": [p for _, p in trainable if p.ndim >= 2], "lr": lr * scale, "weight_decay": train.weight_decay,
                 "name": f"{role}{suffix}"},
                {"params": [p for _, p in trainable if p.ndim < 2], "lr": lr * scale, "weight_decay": 0.0,
                 "name": f"{role}{suffix}/no_decay"},
            ]
    groups = [g for g in groups if g["params"]]
    fused = torch.cuda.is_available() and not train.cpu
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def planned_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, float]]:
    """Each parameter group's peak learning rate and weight decay as this run's config sets them (read after
    the scheduler is made, before a checkpoint is loaded): :func:`apply_planned_hyperparameters` puts them back."""
    return [{"initial_lr": group["initial_lr"], "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]


def apply_planned_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any, planned: list[dict[str, float]]) -> None:
    """After a resume: the config's learning rates and weight decay instead of those the checkpoint's optimizer and
    scheduler state carried (``--allow-changes train.lr=...`` would otherwise change nothing), the rate of the
    current step set from the (possibly new) schedule. Unchanged options leave everything as loaded."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # Accelerate's wrapper
    for group, plan in zip(optimizer.param_groups, planned, strict=True):
        group.update(plan)
    scheduler.base_lrs = [plan["initial_lr"] for plan in planned]
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
