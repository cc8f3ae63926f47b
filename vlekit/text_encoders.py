"""Text encoders: any Hugging Face encoder (DeBERTa-v3 for VLE, BERT, RoBERTa, ...)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig

from vlekit.deberta_attention import use_deberta_attention
from vlekit.interfaces import TextEncoder, check_shape
from vlekit.registry import TEXT_ENCODERS, register_text_encoder

# Keys of a saved HF config that describe the file, not the architecture.
_NON_ARCHITECTURE_KEYS = ("_name_or_path", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype")


def hf_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """An HF config as a plain dict that ``AutoConfig.for_model`` rebuilds offline."""
    return {k: v for k, v in config.to_dict().items() if k not in _NON_ARCHITECTURE_KEYS}


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
    hf_config: architecture fields, overriding the named model's config (or all of it).
    vocab_size: resize the token embeddings to a tokenizer's size.
    attention: DeBERTa's disentangled attention, ``eager`` (Hugging Face's) or ``sdpa`` (fused, same
        results: `vlekit.deberta_attention`).
    """

    model_name: str | None = None
    pretrained: bool = True
    model_type: str = "deberta-v2"
    hf_config: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    gradient_checkpointing: bool = False
    attention: str = "eager"


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
        if config.model_name is not None and config.pretrained:
            self.model = AutoModel.from_pretrained(config.model_name, **config.hf_config)
        else:
            if config.model_name is not None:
                hf_config = AutoConfig.from_pretrained(config.model_name, **config.hf_config)
            else:
                hf_config = AutoConfig.for_model(config.model_type, **config.hf_config)
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


TEXT_ENCODERS.register_preset(
    "deberta-v3-base", base="hf-text", model_name="microsoft/deberta-v3-base",
    description="DeBERTa-v3-base (VLE-base's text encoder), 768 wide, 12 layers",
)
TEXT_ENCODERS.register_preset(
    "deberta-v3-large", base="hf-text", model_name="microsoft/deberta-v3-large",
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
    "bert-base", base="hf-text", model_name="bert-base-uncased",
    description="BERT-base uncased (the classic single-stream baselines' text encoder)",
)
TEXT_ENCODERS.register_preset(
    "roberta-base", base="hf-text", model_name="FacebookAI/roberta-base",
    description="RoBERTa-base",
)
TEXT_ENCODERS.register_preset(
    "tiny-bert", base="hf-text", model_type="bert",
    hf_config=dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=128, max_position_embeddings=128),
    description="tiny random-init BERT (64 wide, 2 layers) for tests",
)
