"""Adaptation methods, the registered kind ``adaptation``: how much of each part of a model is trained.

``model.adaptation`` maps the parts ``text``, ``vision``, ``fusion`` and ``head`` to a method name or
``{"name": ..., **options}``; a part left out is trained in ``full`` (every existing config behaves as
before). Methods:

* ``full``: every parameter of the part; ``frozen``: none.
* ``lora`` (``r``, ``alpha``, ``dropout``, ``target_modules``), ``dora`` (LoRA with a learnt magnitude)
  and ``ia3`` (learnt scales): adapters injected by the PEFT library into the part's submodule
  (``peft.inject_adapter_in_model``), so the model keeps its class and its ``forward``.
* ``loha`` / ``lokr`` (``r``, ``alpha``, ``rank_dropout``, ``module_dropout``, ``target_modules``): LyCORIS'
  Hadamard and Kronecker products of low-rank factors; ``oft`` (``block_size``, ``coft``): a learnt block-diagonal
  rotation of each target's input side. Through PEFT as LoRA, on the same natural targets.
* ``bitfit``: the part's biases (and its LayerNorms with ``layer_norms: true``).

Each component family names its natural targets (:data:`NATURAL_TARGETS`, keyed by registered name; a
component may instead declare an ``adaptation_targets`` attribute of the same form): attention
projections and feed-forward layers. Fused projections are targets like any linear layer (timm's
``qkv``: one LoRA pair for q, k and v; peft #691); an ``nn.MultiheadAttention`` is adapted as one module by
LoRA (peft #761: its ``out_proj`` is called through its weight, so a LoRA on it alone would do nothing)
and left frozen by DoRA, IA3, LoHa, LoKr and OFT, which PEFT does not support on it. The glue between encoders and fusion
(the projections and the token-type table, whose VCR rows are new) is trained unless the fusion is ``frozen``.

A third-party method registers like a component (entry-point group ``vlekit.adaptations``): a class with
a dataclass config and ``apply(part: nn.Module, *, where: str)``, which sets ``requires_grad`` / injects.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlekit.layers import Pooler
from vlekit.options import thaw
from vlekit.registry import ADAPTATIONS, register_adaptation

# part of model.adaptation -> the VCRModel attribute it adapts
PARTS = {"text": "text_encoder", "vision": "vision_encoder", "fusion": "fusion", "head": "head"}
GLUE = ("text_projection", "image_projection", "token_type_embeddings")
# PEFT's parameter names inside an adapted layer, its layer classes' ``adapter_layer_names`` for the methods
# registered here (LoRA with DoRA's magnitude, IA3, LoHa, LoKr, OFT); tests/test_adaptations.py checks them.
ADAPTER_PARAMETERS = (
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "ia3_l",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "oft_R", "oft_embedding_R",
)
_ADAPTER_KEY = re.compile(r"\.(" + "|".join(ADAPTER_PARAMETERS) + r")\.")


@dataclass(frozen=True)
class Targets:
    """A component family's natural targets: regular expressions over module names inside the component
    (``re.fullmatch``). ``lora``: LoRA / DoRA; ``ia3``: IA3's scaled layers, of which ``ia3_feedforward``
    are scaled on their input (the feed-forward down projections, as PEFT's own defaults)."""

    lora: str
    ia3: str
    ia3_feedforward: str


_VLEKIT_LAYERS = Targets(  # vlekit.layers' names: co-attention and the plugin fusions built from them
    lora=r"(.*\.)?(query|key|value|dense|intermediate|output|attention)",
    ia3=r"(.*\.)?(key|value|output)", ia3_feedforward=r"(.*\.)?output",
)
NATURAL_TARGETS: dict[str, Targets] = {
    "hf-text": Targets(  # BERT / RoBERTa / DeBERTa encoder layers
        lora=r"(.*\.)?layer\.\d+\.(attention\.self\.(query_proj|key_proj|value_proj|query|key|value)"
             r"|attention\.output\.dense|intermediate\.dense|output\.dense)",
        ia3=r"(.*\.)?layer\.\d+\.(attention\.self\.(key_proj|value_proj|key|value)|output\.dense)",
        ia3_feedforward=r"(.*\.)?layer\.\d+\.output\.dense",
    ),
    "clip-vision": Targets(
        lora=r"(.*\.)?layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))",
        ia3=r"(.*\.)?layers\.\d+\.(self_attn\.(k_proj|v_proj)|mlp\.fc2)", ia3_feedforward=r"(.*\.)?layers\.\d+\.mlp\.fc2",
    ),
    "timm-vit": Targets(  # fused qkv (peft #691); patch_embed.proj is a convolution, not a target
        lora=r"(.*\.)?blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
        ia3=r"(.*\.)?blocks\.\d+\.(attn\.qkv|mlp\.fc2)", ia3_feedforward=r"(.*\.)?blocks\.\d+\.mlp\.fc2",
    ),
    "co-attention": _VLEKIT_LAYERS,
}


def natural_targets(component: nn.Module) -> Targets:
    """The component's own ``adaptation_targets``, else its family's entry, else vlekit.layers' names."""
    declared = getattr(component, "adaptation_targets", None)
    if declared is not None:
        return declared if isinstance(declared, Targets) else Targets(**declared)
    return NATURAL_TARGETS.get(getattr(component, "registered_name", ""), _VLEKIT_LAYERS)


def _adaptable(part: nn.Module, *, attention: bool) -> dict[str, nn.Module]:
    """Linear layers (and, with ``attention``, ``nn.MultiheadAttention``) a PEFT method may wrap: not poolers
    (they read one token, and some fusions leave one unused), not the projections inside an attention module."""
    inside_attention = {f"{name}.{child}" for name, module in part.named_modules()
                        if isinstance(module, nn.MultiheadAttention) for child, _ in module.named_children()}
    found = {}
    for name, module in part.named_modules():
        if name in inside_attention or isinstance(module, Pooler):
            continue
        if isinstance(module, nn.Linear) or (attention and isinstance(module, nn.MultiheadAttention)):
            found[name] = module
    return found


def select_modules(part: nn.Module, targets: str | Sequence[str], *, attention: bool, where: str) -> list[str]:
    """Names of the adaptable modules of ``part`` that ``targets`` picks: a regular expression (full match)
    or a list of names (a module matches its name or a dotted suffix of it, as in PEFT)."""
    candidates = _adaptable(part, attention=attention)
    if isinstance(targets, str):
        pattern = re.compile(targets)
        chosen = [name for name in candidates if pattern.fullmatch(name)]
    else:
        chosen = [name for name in candidates if any(name == t or name.endswith("." + t) for t in targets)]
    if not chosen:
        shown = ", ".join(list(candidates)[:12]) + (" ..." if len(candidates) > 12 else "")
        raise ValueError(f"{where}: target_modules {targets!r} match no linear layer of {type(part).__name__}; "
                         f"its linear layers are: {shown or '(none)'}")
    return chosen


# -- the methods -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


@register_adaptation("full", config=NoOptions)
class Full:
    """Train every parameter of the part (the default)."""

    def __init__(self, *, config: NoOptions) -> None:
        self.config = config

    def apply(self, part: nn.Module, *, where: str) -> None:
        part.requires_grad_(True)


@register_adaptation("frozen", config=NoOptions)
class Frozen(Full):
    """Train nothing of the part (a frozen tower; all parts but the head frozen: a linear probe)."""

    trains_glue = False

    def apply(self, part: nn.Module, *, where: str) -> None:
        part.requires_grad_(False)


@dataclass(frozen=True)
class BitFitConfig:
    """layer_norms: also train the LayerNorms' weights (their biases are biases)."""

    layer_norms: bool = False


@register_adaptation("bitfit", config=BitFitConfig)
class BitFit:
    """Train the part's biases only (BitFit, Ben Zaken et al. 2022), optionally its LayerNorms too."""

    def __init__(self, *, config: BitFitConfig) -> None:
        self.config = config

    def apply(self, part: nn.Module, *, where: str) -> None:
        part.requires_grad_(False)
        for module in part.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "bias" or name.endswith("_bias") or (self.config.layer_norms and isinstance(module, nn.LayerNorm)):
                    parameter.requires_grad_(True)
        if not any(p.requires_grad for p in part.parameters()):
            raise ValueError(f"{where}: bitfit found no bias in {type(part).__name__}; use lora or frozen for this part")


@dataclass(frozen=True)
class LoRAConfig:
    """r: rank; alpha: scale numerator (the update is ``alpha / r * B A``); dropout: on the adapter's input;
    target_modules: ``None`` (the component's natural targets), a list of module names or a regular expression."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = None

    def __post_init__(self) -> None:
        if self.r < 1 or not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"lora options r={self.r}, alpha={self.alpha}, dropout={self.dropout}: "
                             f"need r >= 1, alpha > 0 and 0 <= dropout < 1")
        if self.target_modules is not None and not isinstance(self.target_modules, (str, Sequence)):
            raise TypeError(f"lora target_modules {self.target_modules!r}: expected a list of module names or a regular expression")


@register_adaptation("lora", config=LoRAConfig)
class LoRA:
    """Low-rank adapters on the attention and feed-forward layers (Hu et al. 2022), through PEFT."""

    use_dora = False

    def __init__(self, *, config: LoRAConfig) -> None:
        self.config = config

    def apply(self, part: nn.Module, *, where: str) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = thaw(self.config.target_modules) or natural_targets(part).lora
        modules = select_modules(part, targets, attention=not self.use_dora, where=where)
        config = LoraConfig(r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                            target_modules=modules, use_dora=self.use_dora)
        inject_adapter_in_model(config, part)


@register_adaptation("dora", config=LoRAConfig)
class DoRA(LoRA):
    """LoRA with a learnt magnitude per output feature (Liu et al. 2024), through PEFT."""

    use_dora = True


@dataclass(frozen=True)
class IA3Config:
    """target_modules / feedforward_modules: ``None`` (the component's natural targets), a list of module
    names or a regular expression; the feed-forward ones are scaled on their input, the others on their output."""

    target_modules: Any = None
    feedforward_modules: Any = None


@register_adaptation("ia3", config=IA3Config)
class IA3:
    """Learnt scales on keys, values and feed-forward activations ((IA)^3, Liu et al. 2022), through PEFT."""

    def __init__(self, *, config: IA3Config) -> None:
        self.config = config

    def apply(self, part: nn.Module, *, where: str) -> None:
        from peft import IA3Config as PeftIA3Config, inject_adapter_in_model

        natural = natural_targets(part)
        modules = select_modules(part, thaw(self.config.target_modules) or natural.ia3, attention=False, where=where)
        feedforward = thaw(self.config.feedforward_modules) or natural.ia3_feedforward
        pattern = re.compile(feedforward) if isinstance(feedforward, str) else None
        ff = [m for m in modules if (pattern.fullmatch(m) if pattern else any(m == t or m.endswith("." + t) for t in feedforward))]
        inject_adapter_in_model(PeftIA3Config(target_modules=modules, feedforward_modules=ff), part)


@dataclass(frozen=True)
class LycorisConfig:
    """r: rank of the factors; alpha: scale numerator (``alpha / r``); rank_dropout / module_dropout: dropping
    ranks / the whole adapter while training; target_modules: as :class:`LoRAConfig`'s."""

    r: int = 8
    alpha: float = 8.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    target_modules: Any = None

    def __post_init__(self) -> None:
        if self.r < 1 or not self.alpha > 0 or not (0 <= self.rank_dropout < 1 and 0 <= self.module_dropout < 1):
            raise ValueError(f"options r={self.r}, alpha={self.alpha}, rank_dropout={self.rank_dropout}, module_dropout="
                             f"{self.module_dropout}: need r >= 1, alpha > 0 and dropouts in [0, 1)")


@register_adaptation("loha", config=LycorisConfig)
class LoHa:
    """Each update a Hadamard product of two low-rank products (Hyeon-Woo et al. 2022; LyCORIS), through PEFT."""

    def __init__(self, *, config: LycorisConfig) -> None:
        self.config = config

    def peft_config(self, modules: list[str]) -> Any:
        from peft import LoHaConfig

        return LoHaConfig(r=self.config.r, alpha=self.config.alpha, rank_dropout=self.config.rank_dropout,
                          module_dropout=self.config.module_dropout, target_modules=modules)

    def apply(self, part: nn.Module, *, where: str) -> None:
        from peft import inject_adapter_in_model

        targets = thaw(self.config.target_modules) or natural_targets(part).lora
        inject_adapter_in_model(self.peft_config(select_modules(part, targets, attention=False, where=where)), part)


@register_adaptation("lokr", config=LycorisConfig)
class LoKr(LoHa):
    """Each update a Kronecker product of a small matrix and a low-rank one (Edalati et al. 2022; LyCORIS), through PEFT."""

    def peft_config(self, modules: list[str]) -> Any:
        from peft import LoKrConfig

        return LoKrConfig(r=self.config.r, alpha=self.config.alpha, rank_dropout=self.config.rank_dropout,
                          module_dropout=self.config.module_dropout, target_modules=modules)


@dataclass(frozen=True)
class OFTConfig:
    """block_size: the side of the orthogonal blocks (it divides every target's input width: 32 divides
    VLE's 768, 1024 and 3072); coft: constrained OFT (the rotation kept within ``eps`` of the identity);
    module_dropout: dropping the whole adapter while training; target_modules: as :class:`LoRAConfig`'s."""

    block_size: int = 32
    coft: bool = False
    eps: float = 6e-5
    module_dropout: float = 0.0
    target_modules: Any = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or not 0 <= self.module_dropout < 1:
            raise ValueError(f"oft options block_size={self.block_size}, module_dropout={self.module_dropout}: "
                             f"need block_size >= 1 and 0 <= module_dropout < 1")


@register_adaptation("oft", config=OFTConfig)
class OFT:
    """A learnt block-diagonal rotation of each weight's input side (orthogonal fine-tuning, Qiu et al. 2023),
    through PEFT: the angles between a layer's neurons are kept."""

    def __init__(self, *, config: OFTConfig) -> None:
        self.config = config

    def apply(self, part: nn.Module, *, where: str) -> None:
        from peft import OFTConfig as PeftOFTConfig, inject_adapter_in_model

        targets = thaw(self.config.target_modules) or natural_targets(part).lora
        modules = select_modules(part, targets, attention=False, where=where)
        narrow = {module.in_features for name, module in part.named_modules()
                  if name in modules and module.in_features % self.config.block_size}
        if narrow:
            raise ValueError(f"{where}: oft block_size={self.config.block_size} does not divide the input width "
                             f"{sorted(narrow)} of some targets; choose a divisor of each")
        config = PeftOFTConfig(r=0, oft_block_size=self.config.block_size, coft=self.config.coft, eps=self.config.eps,
                               module_dropout=self.config.module_dropout, target_modules=modules)
        inject_adapter_in_model(config, part)


# -- a model's adaptation ----------------------------------------------------------------------------
def resolve_adaptation(spec: Mapping[str, Any], *, where: str = "model.adaptation") -> dict[str, dict[str, Any]]:
    """``{part: name or {name, **options}}`` checked and filled in: ``{part: {"name": ..., **all options}}`` for
    every part that is not plain ``full``. Unknown parts, methods and options are errors saying what is known."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where}: expected a mapping of {', '.join(PARTS)} to a method, got {spec!r}")
    resolved = {}
    for part, value in spec.items():
        if part not in PARTS:
            raise ValueError(f"{where}: unknown part {part!r}; the parts are {', '.join(PARTS)}")
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise TypeError(f"{where}.{part}: expected a method name or {{name: ..., options}}, got {value!r}; "
                            f"methods: {', '.join(e.name for e in ADAPTATIONS.entries())}")
        options = {key: thaw(option) for key, option in value.items() if key != "name"}
        try:
            _, config = ADAPTATIONS.resolve(value["name"], options)
        except (TypeError, ValueError, LookupError) as error:
            raise type(error)(f"{where}.{part}: {error}") from error
        if value["name"] != "full" or options:
            resolved[part] = {"name": value["name"], **dataclasses.asdict(config)}
    return resolved


def apply_adaptation(model: nn.Module, spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply each part's method to ``model`` (a ``VCRModel``, in place); returns the resolved spec."""
    resolved = resolve_adaptation(spec)
    for part, method_spec in resolved.items():
        method = ADAPTATIONS.build(method_spec["name"], **{k: v for k, v in method_spec.items() if k != "name"})
        if not callable(getattr(method, "apply", None)):
            raise TypeError(f"adaptation {method_spec['name']!r} ({type(method).__name__}) has no apply(part, *, where) method")
        method.apply(getattr(model, PARTS[part]), where=f"model.adaptation.{part} ({method_spec['name']})")
        if part == "fusion" and not getattr(method, "trains_glue", True):
            for name in GLUE:
                getattr(model, name).requires_grad_(False)
    return resolved


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters, and the bytes of AdamW's state (two moments per trainable value)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"trainable_parameters": sum(p.numel() for p in trainable),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "optimizer_state_bytes": sum(2 * p.numel() * p.element_size() for p in trainable)}


# -- weights: the base's names, merging, saving what was learnt --------------------------------------
def plain_key(key: str) -> str:
    """A weight's name in the model without adapters (PEFT moves a wrapped layer's weights to ``base_layer``)."""
    return key.replace(".base_layer", "")


def is_adapter_key(key: str) -> bool:
    return bool(_ADAPTER_KEY.search(key))


def load_base_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Load a model-without-adapters ``state`` into the adapted ``model``: every weight but the adapters'."""
    names = {plain_key(key): key for key in model.state_dict() if not is_adapter_key(key)}
    missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or unexpected:
        raise ValueError(f"{where}: the base's weights do not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict({names[key]: value for key, value in state.items()}, strict=False)
    with torch.no_grad():  # DoRA's magnitudes start as the norms of the base's weights: those just loaded
        for module in model.modules():
            for adapter, magnitude in getattr(module, "lora_magnitude_vector", {}).items():
                magnitude.update_layer(base_layer=module.get_base_layer(), lora_A=module.lora_A[adapter].weight,
                                       lora_B=module.lora_B[adapter].weight, scaling=module.scaling[adapter])


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``model`` with every adapter merged into its layer, under the names of the model
    without adapters (``model`` itself is left as it is)."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            module.merge(safe_merge=True)
    return {plain_key(k): v for k, v in clone.state_dict().items() if not is_adapter_key(k)}


def weights_hash(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> str:
    """SHA-256 over ``keys`` (by their plain names, sorted) and the bytes of their tensors."""
    digest = hashlib.sha256()
    for key in sorted(keys, key=plain_key):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(plain_key(key).encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frozen_keys(model: nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if not parameter.requires_grad]


def trained_only(model: nn.Module, state: Mapping[str, torch.Tensor], base: Mapping[str, Any]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What a model on a named frozen ``base`` saves: the weights it trained (and its buffers), and the
    base's reference with the hash of the frozen weights the base must give back."""
    frozen = frozen_keys(model)
    kept = {key: value for key, value in state.items() if key not in set(frozen)}
    return kept, {**base, "frozen_parameters": len(frozen), "sha256": weights_hash(state, frozen)}


_BASE_LOADERS = {  # format -> module and function (imported on use: a base is loaded above this layer)
    "vle": ("vlekit.vle.checkpoint", "from_vle_pretrained"),
}


def load_base(base: Mapping[str, Any], *, model_class: type, where: str) -> nn.Module:
    """The model a base reference names: ``{"format": "vle" | "vlekit", "source": hub id or folder, "options"}``."""
    import importlib

    fmt, source, options = base.get("format"), base.get("source"), dict(base.get("options") or {})
    if fmt == "vlekit":
        return model_class.from_pretrained(source)
    if fmt not in _BASE_LOADERS:
        raise ValueError(f"{where}: base format {fmt!r} is unknown; expected vlekit or {', '.join(_BASE_LOADERS)}")
    module, function = _BASE_LOADERS[fmt]
    return getattr(importlib.import_module(module), function)(source, **options)


def with_base(model: nn.Module, state: Mapping[str, torch.Tensor], config_file: Path) -> dict[str, torch.Tensor]:
    """``state`` completed with the frozen weights of the base ``config_file`` (``vlekit_config.json``) names,
    checked against the saved hash; ``model`` (adapted, as the saved config builds it) remembers the base,
    so saving it again stays small. Without a base, ``state`` as it is."""
    import json

    base, where = json.loads(Path(config_file).read_text()).get("base"), str(Path(config_file).parent)
    if not base:
        return dict(state)
    loaded = load_base(base, model_class=type(model), where=where)
    names = {plain_key(key): key for key in model.state_dict() if not is_adapter_key(key)}
    full = {names[key]: value for key, value in loaded.state_dict().items() if key in names}
    full.update(state)
    frozen = frozen_keys(model)
    lacking = [key for key in frozen if key not in full]
    if lacking or weights_hash(full, frozen) != base.get("sha256"):
        raise ValueError(
            f"{where}: the base {base.get('source')!r} ({base.get('format')}) does not give the frozen weights this model "
            f"was trained on ({'missing ' + ', '.join(lacking[:5]) if lacking else 'their SHA-256 differs'}); load the base "
            f"the run was trained from, or export the run in full from where that base is (vlekit export)")
    model.base_reference = {k: v for k, v in base.items() if k not in ("sha256", "frozen_parameters")}
    return full
