"""Text encoders: any Hugging Face encoder (DeBERTa-v3 for VLE, BERT, RoBERTa, ...)."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, PretrainedConfig

from vlekit.deberta_attention import use_deberta_attention
from vlekit.interfaces import TextEncoder, check_shape
from vlekit.registry import TEXT_ENCODERS, register_text_encoder, thaw

# Keys of a saved HF config that describe the file, not the architecture.
_NON_ARCHITECTURE_KEYS = ("_name_or_path", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype")


def hf_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """An HF config as a plain dict that ``AutoConfig.for_model`` rebuilds offline."""
    return {k: v for k, v in config.to_dict().items() if k not in _NON_ARCHITECTURE_KEYS}


@functools.cache
def _config_keys(config_class: type[PretrainedConfig], model_class: type[nn.Module]) -> frozenset[str]:
    """The keys that mean something to ``model_class`` built from ``config_class``.

    The config class's arguments, a default instance's fields and aliases, and the keys the modeling
    module reads with ``config.KEY`` or ``getattr(config, "KEY", default)``: DeBERTa-v2 reads
    ``position_buckets``, ``share_att_key`` and ``norm_rel_ebd`` that its config class never declares.
    """
    parameters = inspect.signature(config_class.__init__).parameters.values()
    keys = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    keys |= set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
    source = inspect.getsource(sys.modules[model_class.__module__])
    keys |= set(re.findall(r"\bconfig\.(\w+)", source))
    keys |= set(re.findall(r"getattr\(\s*(?:self\.)?config\s*,\s*[\"'](\w+)[\"']", source))
    return frozenset(keys)


def check_hf_config_keys(
    config_class: type[PretrainedConfig], options: Mapping[str, Any], *, model_class: type[nn.Module], where: str
) -> None:
    """Reject ``hf_config`` keys that neither ``config_class`` nor ``model_class`` knows.

    Hugging Face configs store any unknown keyword as an attribute that no layer reads, so a typo
    (``hidden_dropout_prop``) would leave the real option at its default without a word.
    """
    known = _config_keys(config_class, model_class)
    unknown = sorted(key for key in options if key not in known)
    if unknown:
        public = sorted(key for key in config_class().to_dict() if not key.startswith("_"))
        candidates = sorted(key for key in known if not key.startswith("_"))
        hints = [f"{key!r} (did you mean {', '.join(map(repr, close))}?)"
                 if (close := difflib.get_close_matches(key, candidates, n=3)) else repr(key) for key in unknown]
        raise TypeError(
            f"{where}: hf_config has keys that {config_class.__name__} and {model_class.__name__} do not read: "
            f"{', '.join(hints)}. {config_class.__name__}'s fields: {', '.join(public)}"
        )


def load_pretrained_strictly(
    model_class: Any, model_name: str, *, config: PretrainedConfig, strict: bool, ignore_unexpected: Sequence[str],
    where: str,
) -> nn.Module:
    """``model_class.from_pretrained`` that treats missing and unexpected weights as errors.

    ``ignore_unexpected``: prefixes of checkpoint keys that belong to parts the encoder does not use
    (a masked-LM head, CLIP's text tower). With ``strict=False`` the mismatch is warned with the
    full lists instead; Hugging Face itself would only log it.
    """
    model, info = model_class.from_pretrained(model_name, config=config, output_loading_info=True)
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
        Hugging Face config class does not know are errors.
    vocab_size: resize the token embeddings to a tokenizer's size.
    attention: DeBERTa's disentangled attention, ``eager`` (Hugging Face's) or ``sdpa`` (fused, same
        results: `vlekit.deberta_attention`).
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
            config_class = type(AutoConfig.from_pretrained(config.model_name))
            check_hf_config_keys(config_class, config.hf_config, model_class=AutoModel._model_mapping[config_class],
                                 where=f"hf-text ({config.model_name})")
            hf_config = AutoConfig.from_pretrained(config.model_name, **thaw(config.hf_config))
        else:
            if config.model_type not in CONFIG_MAPPING:
                raise ValueError(f"hf-text: unknown model_type {config.model_type!r}; e.g. 'deberta-v2', 'bert', 'roberta'")
            config_class = CONFIG_MAPPING[config.model_type]
            check_hf_config_keys(config_class, config.hf_config, model_class=AutoModel._model_mapping[config_class],
                                 where=f"hf-text ({config.model_type})")
            hf_config = AutoConfig.for_model(config.model_type, **thaw(config.hf_config))
        if config.model_name is not None and config.pretrained:
            self.model = load_pretrained_strictly(
                AutoModel, config.model_name, config=hf_config, strict=config.strict,
                ignore_unexpected=config.ignore_unexpected, where="hf-text",
            )
        else:
            self.model = AutoModel.from_config(hf_config)
        # Only the last hidden states are used: an unused pooler (BERT, RoBERTa) would get no gradient,
        # which DDP rejects.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        if config.vocab_size is not None and config.vocab_size != self.model.config.vocab_size:
            self.model.resize_token_embeddings(config.vocab_size)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.attention != "eager" and use_deberta_attention(self.model, config.attention) == 0:
            raise ValueError(f"hf-text: attention {config.attention!r} is for DeBERTa-v2/v3, not {self.model.config.model_type}")
        self.hidden_size: int = self.model.config.hidden_size

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
            hf_config=hf_config_dict(self.model.config),
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
