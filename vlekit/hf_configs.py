"""Hugging Face configs inside vlekit's: which keys describe an architecture, and how each source is read.

A component's ``hf_config`` (``hf-text``, ``clip-vision``) holds the fields of a transformers config
class. Two sources, two rules:

* **What a person types** (YAML, a command-line override, Python): every key must mean something to the
  config class, so a typo (``hidden_dropout_prop``) is an error with suggestions instead of an
  attribute that no layer reads (:func:`check_typed_keys`).
* **A file another program wrote** (an official VLE ``config.json`` saved under transformers 4.26, a
  pretrained folder, a vlekit run folder saved under another transformers version) is read as
  transformers reads it: keys the installed config class does not know are dropped
  (:func:`keys_from_file`), silently for the generic ``PretrainedConfig`` fields of earlier
  transformers releases and for retired fields at the value transformers now always uses, with a
  warning naming the file for anything else. What vlekit saves holds known keys only (:func:`saved_hf_config`).

A key is known to a config class when its constructor takes it, a default instance carries it, or its
``attribute_map`` names it, plus the few attributes a family's modeling code reads without its config
class declaring them (:data:`UNDECLARED_KEYS`).
"""
from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

__all__ = ["FILE_KEYS", "UNDECLARED_KEYS", "check_typed_keys", "keys_from_file", "known_keys", "saved_hf_config"]

# Keys of a saved config that describe the file, not the architecture.
FILE_KEYS = ("_name_or_path", "_commit_hash", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype")

# Read by the family's modeling code (``getattr(config, name, default)``) but not declared by its config
# class: DeBERTa-v2/v3's relative-position and convolution options (transformers' modeling_deberta_v2).
UNDECLARED_KEYS: dict[str, tuple[str, ...]] = {
    "deberta-v2": ("position_buckets", "share_att_key", "norm_rel_ebd", "conv_kernel_size", "conv_groups",
                   "conv_act", "embedding_size", "attention_head_size"),
}

# The generic PretrainedConfig fields of transformers 4.x (generation, export, head and tokenizer
# settings) that every config of that era serialises and no encoder reads.
_GENERIC_4X_KEYS = frozenset({
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty", "finetuning_task",
    "forced_bos_token_id", "forced_eos_token_id", "id2label", "is_decoder", "is_encoder_decoder", "label2id",
    "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores", "pad_token_id", "prefix",
    "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k", "top_p",
    "torchscript", "typical_p", "use_bfloat16", "use_cache", "gradient_checkpointing",
})
# Fields that transformers 5 retired and whose old value is what it now always does: dropped silently
# at that value (BERT-family absolute positions; CLIP's ``dropout``, never applied by its layers).
_RETIRED_AT = {"position_embedding_type": "absolute", "dropout": 0.0}


@functools.cache
def known_keys(config_class: type[PretrainedConfig]) -> frozenset[str]:
    """The keys ``config_class`` (and its family's modeling code) reads."""
    parameters = inspect.signature(config_class.__init__).parameters.values()
    keys = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    keys |= set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
    keys |= set(UNDECLARED_KEYS.get(getattr(config_class, "model_type", ""), ()))
    return frozenset(keys - set(FILE_KEYS))


def check_typed_keys(config_class: type[PretrainedConfig], options: Mapping[str, Any], *, where: str) -> None:
    """Reject ``hf_config`` keys that ``config_class`` does not read, suggesting close ones (typed input)."""
    known = known_keys(config_class)
    unknown = sorted(key for key in options if key not in known)
    if not unknown:
        return
    candidates = sorted(key for key in known if not key.startswith("_"))
    hints = [f"{key!r} (did you mean {', '.join(map(repr, close))}?)"
             if (close := difflib.get_close_matches(key, candidates, n=3)) else repr(key) for key in unknown]
    raise TypeError(
        f"{where}: hf_config has keys that {config_class.__name__} does not read: {', '.join(hints)}. "
        f"Its fields: {', '.join(candidates)}"
    )


def keys_from_file(config_class: type[PretrainedConfig], options: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """``options`` read from a file another program wrote: the keys ``config_class`` knows.

    Generic fields of earlier transformers and retired fields at their current value go silently; any
    other unknown key (a field a newer transformers added, say) is dropped with one warning naming
    ``where``, so the file still loads as transformers would load it.
    """
    known = known_keys(config_class)
    dropped = [key for key in options if key not in known and key not in FILE_KEYS]
    surprising = sorted(key for key in dropped if key not in _GENERIC_4X_KEYS
                        and not (key in _RETIRED_AT and options[key] == _RETIRED_AT[key]))
    if surprising:
        import transformers

        warnings.warn(
            f"{where}: ignoring {', '.join(map(repr, surprising))}: {config_class.__name__} of the installed "
            f"transformers {transformers.__version__} does not read "
            f"{'it' if len(surprising) == 1 else 'them'} (written by another version?)",
            UserWarning, stacklevel=3,
        )
    return {key: value for key, value in options.items() if key in known}


def saved_hf_config(config: PretrainedConfig) -> dict[str, Any]:
    """``config`` as the plain dict vlekit saves: known keys only, so that ``AutoConfig.for_model``
    rebuilds it offline and the typed-key check accepts it back."""
    known = known_keys(type(config))
    return {key: value for key, value in config.to_dict().items() if key in known}
