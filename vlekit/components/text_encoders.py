"""Text encoders: any Hugging Face encoder (DeBERTa-v3 for VLE, BERT, RoBERTa, ...)."""
from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import CONFIG_MAPPING, MODEL_MAPPING, AutoConfig, AutoModel, PretrainedConfig

from vlekit.hf_configs import check_typed_keys, keys_from_file, saved_hf_config
from vlekit.interfaces import TextEncoder, check_shape
from vlekit.options import thaw
from vlekit.registry import TEXT_ENCODERS, register_text_encoder


def load_pretrained_strictly(
    model_class: Any, model_name: str, *, config: PretrainedConfig, strict: bool, ignore_unexpected: Sequence[str],
    where: str, **model_options: Any,
) -> nn.Module:
    """``model_class.from_pretrained`` that treats missing and unexpected weights as errors.

    ``ignore_unexpected``: prefixes of checkpoint keys that belong to parts the encoder does not use
    (a masked-LM head, CLIP's text tower). With ``strict=False`` the mismatch is warned with the
    full lists instead; Hugging Face itself would only log it. ``model_options``: further constructor
    arguments (``add_pooling_layer``).
    """
    model, info = model_class.from_pretrained(model_name, config=config, output_loading_info=True, **model_options)
    missing = sorted(info["missing_keys"])
    unexpected = sorted(key for key in info["unexpected_keys"] if not key.startswith(tuple(ignore_unexpected)))
    if missing or unexpected:
        message = f"{where}: the weights of {model_name!r} do not match the model: missing {missing}, unexpected {unexpected}"
        if strict:
            raise ValueError(
                f"{message}. Pass strict=False to load them anyway (the lists are then warned), or list the "
                "prefixes of unused parts of the checkpoint in ignore_unexpected."
            )
        warnings.warn(message, stacklevel=3)
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute a Hugging Face model's layer activations in the backward pass (non-reentrant).

    ``activation_checkpointing_enable`` where the installed transformers has it (5.24: the older name is
    deprecated there), else ``gradient_checkpointing_enable`` (earlier 5.x releases, e.g. the GPU image's).
    """
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


# DeBERTa-v3 as VLE uses it (relative attention, no absolute positions).
_DEBERTA_V3_ARCHITECTURE = dict(
    relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
    max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
)


@dataclass(frozen=True)
class HFTextConfig:
    """Options of ``hf-text``.

    model_name: hub name or local directory; with ``pretrained`` its weights are loaded, otherwise
        only its config (random init). ``None`` builds ``model_type`` from ``hf_config`` alone.
    hf_config: architecture fields, overriding the named model's config (or all of it); keys the
        Hugging Face config class does not read are errors when typed, dropped when read from a saved
        file (:mod:`vlekit.hf_configs`).
    vocab_size: resize the token embeddings to a tokenizer's size.
    attention: DeBERTa's disentangled attention, ``eager`` (Hugging Face's) or ``sdpa`` (fused, same
        results: `vlekit.components.deberta_attention`).
    strict: pretrained weights must fill every parameter and be used entirely (apart from
        ``ignore_unexpected``); ``False`` loads what matches and warns with the lists.
    ignore_unexpected: prefixes of checkpoint keys the encoder does not use (the presets list their
        pretraining heads, e.g. ``cls.`` for BERT).
    """

    model_name: str | None = None
    pretrained: bool = True
    model_type: str = "deberta-v2"
    hf_config: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    gradient_checkpointing: bool = False
    attention: str = "eager"
    strict: bool = True
    ignore_unexpected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checked when the config is made (a YAML file is validated before any data is read); the keys of a
        # named model are checked against its folder's config class when the encoder is built.
        if self.model_name is None:
            if self.model_type not in CONFIG_MAPPING:
                raise ValueError(f"hf-text: unknown model_type {self.model_type!r}; e.g. 'deberta-v2', 'bert', 'roberta'")
            check_typed_keys(CONFIG_MAPPING[self.model_type], self.hf_config, where=f"hf-text ({self.model_type})")


_TINY_DEBERTA = dict(
    _DEBERTA_V3_ARCHITECTURE, vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=128, max_position_embeddings=128, position_buckets=32,
)


@register_text_encoder("hf-text", config=HFTextConfig, tiny=dict(hf_config=_TINY_DEBERTA))
class HFTextEncoder(TextEncoder):
    """Any Hugging Face encoder (AutoModel) by hub name, local path or config; last hidden states."""

    def __init__(self, *, config: HFTextConfig) -> None:
        super().__init__()
        self.config = config
        if config.model_name is not None:
            check_typed_keys(type(AutoConfig.from_pretrained(config.model_name)), config.hf_config,
                             where=f"hf-text ({config.model_name})")
            hf_config = AutoConfig.from_pretrained(config.model_name, **thaw(config.hf_config))
        else:  # model_type and the hf_config keys were checked by HFTextConfig
            hf_config = AutoConfig.for_model(config.model_type, **thaw(config.hf_config))
        # Only the last hidden states are used: an unused pooler (BERT, RoBERTa) would get no gradient,
        # which DDP rejects. It is not built where the model class can leave it out (a checkpoint's pooler
        # weights are then ignored, and a masked-LM checkpoint without one loads strictly), else removed.
        model_class = MODEL_MAPPING[type(hf_config)]
        no_pooler = "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
        model_options = {"add_pooling_layer": False} if no_pooler else {}
        pooler_keys = ("pooler.", f"{model_class.base_model_prefix}.pooler.") if no_pooler else ()
        if config.model_name is not None and config.pretrained:
            self.model = load_pretrained_strictly(
                AutoModel, config.model_name, config=hf_config, strict=config.strict,
                ignore_unexpected=(*config.ignore_unexpected, *pooler_keys), where="hf-text",
                **model_options,
            )
        else:
            self.model = AutoModel.from_config(hf_config, **model_options)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        if config.vocab_size is not None and config.vocab_size != self.model.config.vocab_size:
            self.model.resize_token_embeddings(config.vocab_size)
        if config.gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        if config.attention != "eager":  # DeBERTa's SDPA attention, imported only for a model that uses it
            from vlekit.components.deberta_attention import use_deberta_attention

            if use_deberta_attention(self.model, config.attention) == 0:
                raise ValueError(f"hf-text: attention {config.attention!r} is for DeBERTa-v2/v3, not {self.model.config.model_type}")
        self.hidden_size: int = self.model.config.hidden_size

    @classmethod
    def options_from_file(cls, options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
        """Saved options as transformers would read them: ``hf_config`` keys the installed config class
        of ``model_type`` does not read are dropped (:func:`vlekit.hf_configs.keys_from_file`)."""
        model_type = options.get("model_type", HFTextConfig.model_type)
        if options.get("model_name") is not None or model_type not in CONFIG_MAPPING:
            return dict(options)  # a named folder is read by transformers itself; an unknown type fails at build
        hf_config = keys_from_file(CONFIG_MAPPING[model_type], options.get("hf_config") or {}, where=where)
        return {**options, "hf_config": hf_config}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids, attention_mask [N, L]`` -> last hidden states ``[N, L, hidden_size]``."""
        check_shape(input_ids, ("N", "L"), name="input_ids", where="hf-text")
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def resolved_config(self) -> HFTextConfig:
        return dataclasses.replace(
            self.config,
            model_name=None,
            pretrained=False,
            model_type=self.model.config.model_type,
            hf_config=saved_hf_config(self.model.config),
            vocab_size=None,
        )


# The pretraining heads stored in the hub checkpoints next to the encoder (replaced-token detection).
_DEBERTA_V3_HEADS = ("lm_predictions.", "mask_predictions.")

TEXT_ENCODERS.register_preset(
    "deberta-v3-base", base="hf-text", model_name="microsoft/deberta-v3-base", ignore_unexpected=_DEBERTA_V3_HEADS,
    description="DeBERTa-v3-base (VLE-base's text encoder), 768 wide, 12 layers",
)
TEXT_ENCODERS.register_preset(
    "deberta-v3-large", base="hf-text", model_name="microsoft/deberta-v3-large", ignore_unexpected=_DEBERTA_V3_HEADS,
    description="DeBERTa-v3-large (VLE-large's text encoder), 1024 wide, 24 layers",
)
TEXT_ENCODERS.register_preset(
    "tiny-deberta", base="hf-text", model_type="deberta-v2", hf_config=_TINY_DEBERTA,
    description="tiny random-init DeBERTa-v3-architecture encoder (64 wide, 2 layers) for tests and the demo",
)
TEXT_ENCODERS.register_preset(
    "deberta-v3-base-random", base="hf-text", model_type="deberta-v2",
    hf_config=dict(
        _DEBERTA_V3_ARCHITECTURE, vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, position_buckets=256,
    ),
    description="DeBERTa-v3-base shape, random init (benchmarks, no download)",
)
TEXT_ENCODERS.register_preset(
    "deberta-v3-large-random", base="hf-text", model_type="deberta-v2",
    hf_config=dict(
        _DEBERTA_V3_ARCHITECTURE, vocab_size=128100, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=512, position_buckets=256,
    ),
    description="DeBERTa-v3-large shape, random init (benchmarks, no download)",
)
TEXT_ENCODERS.register_preset(
    "bert-base", base="hf-text", model_name="bert-base-uncased", ignore_unexpected=("cls.",),
    description="BERT-base uncased (the classic single-stream baselines' text encoder)",
)
TEXT_ENCODERS.register_preset(
    "roberta-base", base="hf-text", model_name="FacebookAI/roberta-base", ignore_unexpected=("lm_head.",),
    description="RoBERTa-base",
)
TEXT_ENCODERS.register_preset(
    "tiny-bert", base="hf-text", model_type="bert",
    hf_config=dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=128, max_position_embeddings=128),
    description="tiny random-init BERT (64 wide, 2 layers) for tests",
)
TEXT_ENCODERS.register_preset(
    "modernbert-base", base="hf-text", model_name="answerdotai/ModernBERT-base", ignore_unexpected=("head.", "decoder."),
    description="ModernBERT-base: 768 wide, 22 layers, RoPE, alternating local / global attention, 8k context",
)
TEXT_ENCODERS.register_preset(
    "modernbert-large", base="hf-text", model_name="answerdotai/ModernBERT-large", ignore_unexpected=("head.", "decoder."),
    description="ModernBERT-large: 1024 wide, 28 layers",
)
TEXT_ENCODERS.register_preset(
    "roberta-large", base="hf-text", model_name="FacebookAI/roberta-large", ignore_unexpected=("lm_head.",),
    description="RoBERTa-large: 1024 wide, 24 layers",
)
TEXT_ENCODERS.register_preset(
    "bert-large", base="hf-text", model_name="google-bert/bert-large-uncased", ignore_unexpected=("cls.",),
    description="BERT-large uncased: 1024 wide, 24 layers",
)
TEXT_ENCODERS.register_preset(
    "e5-base", base="hf-text", model_name="intfloat/e5-base-v2",
    description="E5-base-v2 (a BERT-base retrieval encoder, contrastively trained)",
)
TEXT_ENCODERS.register_preset(
    "bge-base", base="hf-text", model_name="BAAI/bge-base-en-v1.5",
    description="BGE-base-en-v1.5 (a BERT-base retrieval encoder, contrastively trained)",
)
TEXT_ENCODERS.register_preset(
    "tiny-modernbert", base="hf-text", model_type="modernbert",
    hf_config=dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                   max_position_embeddings=128, local_attention=16, layer_types=["full_attention", "sliding_attention"],
                   pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
    description="tiny random-init ModernBERT (64 wide, 2 layers: one global, one local attention) for tests",
)
