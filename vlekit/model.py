"""Model assembly: any registered text encoder + vision encoder + fusion + head -> a task model.

The head (a registered ``head``, :mod:`vlekit.components.heads`) decides the task: the default
``vcr-multiple-choice`` head makes a VCR multiple-choice model over the batch contract (DESIGN.md
section 3); ``vqa``, ``itm`` and ``pbc`` make VLE's other task models, which take one text per image
(``input_ids, attention_mask [B, L]``, ``pixel_values [B, 3, H, W]``; text type 0, image type 1).

The pieces VLE adds around its encoders live here once, for every component:

* projections of both streams to the fusion width;
* one token-type table (``num_token_types`` rows): text 0, image 1, and ``k + 2`` for the k-th
  referenced object, on its text mention and on its object token (replacing the modality id);
* object tokens: object k is the mean of the projected patch tokens its box covers, computed for all
  objects of the batch with one matmul over ``object_patch_mask``, appended after the image tokens;
* the head, on the fusion's pooled vector (VCR, VQA, ITM) or its fused image stream (PBC).

:class:`Backbone` holds these and the encoders and fusion, with one forward path (:meth:`Backbone.encode`,
C texts per image: the choices of a VCR question, or one text); :class:`VCRModel` adds the head, which
turns the fusion's output into the task's logits (``Head.task_logits``).

Speed without changing the mathematics: each image is encoded once per question and shared by its
C choices; the choices are folded into the batch (``B * C``) for the text encoder and the fusion; a
fusion that supports it is asked for the pooled vector only (co-attention's last layer then updates
token 0 alone: about 9% fewer FLOPs per VLE-base training step).
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vlekit.interfaces import FusionOutput, Head, check_shape
from vlekit.layers import init_bert_style, masked_mean
from vlekit.options import freeze, make_config
from vlekit.registry import FUSIONS, HEADS, TEXT_ENCODERS, VISION_ENCODERS, Registry

MODEL_CONFIG_FILE = "vlekit_config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_TYPE, IMAGE_TYPE = 0, 1

DEFAULT_HEAD = "vcr-multiple-choice"
# Head options a model fills in from its fusion (same names) when the head spec leaves them out.
_HEAD_WIDTHS = ("pooled_size", "hidden_size")

BATCH_KEYS = (
    "input_ids", "attention_mask", "text_type_ids", "pixel_values",
    "object_patch_mask", "object_type_ids", "object_mask",
)


def component_spec(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"name"`` or ``{"name": ..., **options}`` -> ``{"name": ..., **options}``."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return dict(value)
    raise TypeError(f"a component is a registered name, a 'module:Class' path, or a mapping with 'name'; got {value!r}")


@dataclass(frozen=True)
class VCRModelConfig:
    """Everything that defines a model (VCR by default, or any registered head's task); saved with every checkpoint.

    text_encoder / vision_encoder / fusion / head: ``{"name": registered name or module:Class, **options}``,
        immutable once built (:class:`vlekit.options.FrozenDict`; it compares and serialises as a dict).
        The head's ``pooled_size`` / ``hidden_size`` default to the fusion's, its ``initializer_range``
        to the model's.
    num_token_types: rows of the token-type table; ``forward`` rejects ids outside ``[0, num_token_types)``.
    use_object_tokens: append object tokens after the image tokens (VLE's VCR adaptation; VCR head only).
    use_object_types: tie mentions and object tokens with types ``k + 2`` (else text 0, objects 1).
    adaptation: ``{text|vision|fusion|head: method or {name, **options}}`` (:mod:`vlekit.components.adaptations`).
    """

    text_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "tiny-deberta"})
    vision_encoder: dict[str, Any] = field(default_factory=lambda: {"name": "tiny-clip"})
    fusion: dict[str, Any] = field(default_factory=lambda: {"name": "tiny-co-attention"})
    head: dict[str, Any] = field(default_factory=lambda: {"name": DEFAULT_HEAD})
    num_token_types: int = 83
    use_object_tokens: bool = True
    use_object_types: bool = True
    initializer_range: float = 0.02
    adaptation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Also when built by dataclasses.replace, which does not pass through make_config.
        for kind in ("text_encoder", "vision_encoder", "fusion", "head", "adaptation"):
            object.__setattr__(self, kind, freeze(getattr(self, kind)))
        if self.adaptation:  # checked before any weight is built
            _adaptations().resolve_adaptation(self.adaptation)


def _build_component(registry: Registry, spec: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Build a component and return it with the spec that rebuilds it offline."""
    spec = component_spec(spec)
    name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    module = registry.build(name, **options)
    base_name = name if ":" in name else (registry.get(name).preset_of or name)
    resolved = getattr(module, "resolved_config", lambda: module.config)()
    return module, {"name": base_name, **dataclasses.asdict(resolved)}


def _head_spec(spec: Mapping[str, Any], *, fusion: nn.Module, initializer_range: float) -> dict[str, Any]:
    """The head spec with the widths it leaves out taken from ``fusion`` (and the model's init std)."""
    spec = component_spec(spec)
    fields = {f.name for f in dataclasses.fields(HEADS.config_class_of(spec["name"]))}
    defaults = {**{name: getattr(fusion, name) for name in _HEAD_WIDTHS}, "initializer_range": initializer_range}
    return {**{name: value for name, value in defaults.items() if name in fields}, **spec}


class Backbone(nn.Module):
    """Everything but the task head: encoders, projections to the fusion width, the token-type table,
    object tokens and the fusion. :meth:`encode` is the one forward path every head shares.

    Built from a :class:`VCRModelConfig` (its ``head`` is :class:`VCRModel`'s business). The parameter
    names (``text_encoder.*``, ``text_projection.*``, ...) are those of every saved vlekit model.
    """

    def __init__(self, *, config: VCRModelConfig) -> None:
        super().__init__()
        self.text_encoder, self._text_spec = _build_component(TEXT_ENCODERS, config.text_encoder)
        self.vision_encoder, self._vision_spec = _build_component(VISION_ENCODERS, config.vision_encoder)
        self.fusion, self._fusion_spec = _build_component(FUSIONS, config.fusion)
        width = self.fusion.hidden_size
        self.text_projection = nn.Linear(self.text_encoder.hidden_size, width)
        self.image_projection = nn.Linear(self.vision_encoder.hidden_size, width)
        self.token_type_embeddings = nn.Embedding(config.num_token_types, width)
        for module in (self.text_projection, self.image_projection, self.token_type_embeddings):
            init_bert_style(module, std=config.initializer_range)
        self.config = config
        missing = [name for name in ("image_mean", "image_std") if getattr(self.vision_encoder, name, None) is None]
        if missing:
            raise TypeError(
                f"vision encoder {config.vision_encoder['name']!r} ({type(self.vision_encoder).__name__}) does not "
                f"declare {' and '.join(missing)}: every vision encoder declares the pixel statistics it expects "
                f"(vlekit.interfaces.VisionEncoder)"
            )
        # For uint8 pixels, normalised on the model's device; not saved (the encoder declares them).
        for buffer, attribute in (("pixel_mean", "image_mean"), ("pixel_std", "image_std")):
            self.register_buffer(buffer, torch.tensor(getattr(self.vision_encoder, attribute),
                                                      dtype=torch.float32).view(3, 1, 1), persistent=False)

    @property
    def num_patches(self) -> int:
        return self.vision_encoder.grid**2

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, *,
        text_type_ids: torch.Tensor | None = None, object_patch_mask: torch.Tensor | None = None,
        object_type_ids: torch.Tensor | None = None, object_mask: torch.Tensor | None = None,
        pooled_only: bool = False,
    ) -> FusionOutput:
        """C texts per image -> the fusion's output over the ``B * C`` (text, image) pairs.

        ``input_ids, attention_mask [B, C, L]``; ``pixel_values [B, 3, H, W]``; ``text_type_ids [B, C, L]``
        (None: all text type 0); ``object_patch_mask [B, C, K, P]``, ``object_type_ids, object_mask
        [B, C, K]`` (None: no object tokens). The shapes are the caller's to check (:class:`VCRModel`).

        Each image is encoded once and shared by its C texts, which are folded into the batch for the
        text encoder and the fusion; object k's token is the mean of the projected patch tokens under
        its mask, plus its type embedding, appended after the image tokens.
        """
        choices = input_ids.shape[1]
        image = self.image_projection(self.vision_encoder(self.normalise_pixels(pixel_values)))  # [B, 1+P, D]

        text_mask = rearrange(attention_mask, "b c l -> (b c) l")
        text = self.text_encoder(rearrange(input_ids, "b c l -> (b c) l"), text_mask)
        if text_type_ids is None or not self.config.use_object_types:
            text_types = torch.full_like(text_mask, TEXT_TYPE, dtype=torch.long)
        else:
            text_types = rearrange(text_type_ids, "b c l -> (b c) l")
        text = self.text_projection(text) + self.token_type_embeddings(text_types)

        # The image stream of each text: the shared image tokens, then that text's object tokens,
        # written in one copy (expand is a view).
        image_tokens = repeat(image + self.token_type_embeddings.weight[IMAGE_TYPE], "b s d -> b c s d", c=choices)
        image_mask = torch.ones(image_tokens.shape[:3], dtype=attention_mask.dtype, device=image_tokens.device)
        if object_patch_mask is not None and self.config.use_object_tokens:
            objects = self.object_tokens(image[:, 1:], object_patch_mask)  # [B, C, K, D]
            object_types = object_type_ids if self.config.use_object_types else torch.full_like(object_type_ids, IMAGE_TYPE)
            objects = objects + self.token_type_embeddings(object_types)
            image_tokens = torch.cat([image_tokens, objects.to(image_tokens.dtype)], dim=2)
            image_mask = torch.cat([image_mask, object_mask.to(image_mask.dtype)], dim=2)
        options = {"pooled_only": True} if pooled_only and getattr(self.fusion, "supports_pooled_only", False) else {}
        return self.fusion(text, text_mask, rearrange(image_tokens, "b c s d -> (b c) s d"),
                           rearrange(image_mask, "b c s -> (b c) s"), **options)

    def normalise_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> ``(x / 255 - image_mean) / image_std`` in the model's float dtype;
        floating-point input is taken as already normalised and returned as it is."""
        if pixel_values.is_floating_point():
            return pixel_values
        if pixel_values.dtype != torch.uint8:
            raise ValueError(
                f"VCRModel: pixel_values has dtype {pixel_values.dtype}; expected normalised floats or uint8 pixels (0..255)"
            )
        return (pixel_values.to(self.pixel_mean.dtype) / 255 - self.pixel_mean) / self.pixel_std

    @staticmethod
    def object_tokens(patches: torch.Tensor, object_patch_mask: torch.Tensor) -> torch.Tensor:
        """Mean of ``patches [B, P, D]`` under ``object_patch_mask [B, C, K, P]`` -> ``[B, C, K, D]``.

        One batched matmul (:func:`vlekit.layers.masked_mean`); an empty patch set (box cropped away)
        gives a zero vector.
        """
        return masked_mean(patches, object_patch_mask)

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by role, for per-group learning rates (VLE trains head and fusion faster)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {
            "text_encoder": [], "vision_encoder": [], "fusion": [], "head": []
        }
        for name, parameter in self.named_parameters():
            role = name.split(".")[0]
            groups[role if role in groups else "fusion"].append((name, parameter))
        return groups


def _adaptations():  # vlekit.components.adaptations (and PEFT): imported only for a model with an adaptation
    from vlekit.components import adaptations
    return adaptations


class VCRModel(Backbone):
    """A :class:`Backbone` and a registered task head. With the default ``vcr-multiple-choice`` head,
    the multiple-choice VCR model over the batch contract (DESIGN.md section 3); with ``vqa`` / ``itm`` /
    ``pbc``, VLE's other task models (one text per image). The name stays for the users of the VCR model.

    ``forward(**batch)`` -> ``{"logits": ...}`` plus ``"loss"`` when ``labels`` are given: see
    :meth:`forward`.
    """

    def __init__(self, *, config: VCRModelConfig) -> None:
        super().__init__(config=config)
        head_spec = _head_spec(config.head, fusion=self.fusion, initializer_range=config.initializer_range)
        self.head, head_spec = _build_component(HEADS, head_spec)  # initialises itself (its initializer_range)
        self._check_head()
        self._resolved_config = dataclasses.replace(
            config, text_encoder=self._text_spec, vision_encoder=self._vision_spec, fusion=self._fusion_spec,
            head=head_spec,
        )
        if config.adaptation:
            self._resolved_config = dataclasses.replace(self._resolved_config, adaptation=_adaptations().apply_adaptation(self, config.adaptation))

    def resolved_config(self) -> VCRModelConfig:
        """The config that rebuilds this model offline (no weight download): every component spec
        with all its options filled in, as written to ``vlekit_config.json``; a method, as on the
        components (``vlekit.interfaces``)."""
        return self._resolved_config

    def save_config(self, directory: str | Path, **extra: Any) -> Path:
        """Write ``vlekit_config.json``: the resolved config, tagged with its format (``extra``: more
        top-level keys, e.g. an adapted model's ``base``). Training checkpoints hold one beside their weights."""
        config = {"format": "vlekit", "version": 1, **dataclasses.asdict(self.resolved_config()), **extra}
        path = Path(directory) / MODEL_CONFIG_FILE
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
        return path

    @property
    def _head_name(self) -> str:
        return getattr(self.head, "registered_name", type(self.head).__name__)

    def _check_head(self) -> None:
        """A head is a :class:`vlekit.interfaces.Head` that reads a fusion output of its input width."""
        head, name = self.head, self._head_name
        if not isinstance(head, Head) or head.reads not in ("pooled", "image"):
            raise TypeError(
                f"head {name!r} ({type(head).__name__}) must subclass vlekit.interfaces.Head and declare reads = "
                f"'pooled' or 'image'; got reads={getattr(head, 'reads', None)!r}"
            )
        expected = self.fusion.pooled_size if head.reads == "pooled" else self.fusion.hidden_size
        if getattr(head, "input_size", None) != expected:
            raise ValueError(
                f"head {name!r} takes inputs of width {getattr(head, 'input_size', None)}, but the fusion's "
                f"{'pooled vector' if head.reads == 'pooled' else 'image stream'} has width {expected}; leave the "
                f"head's width out of its spec and the model fills it in"
            )
        if head.multiple_choice and head.reads != "pooled":
            raise ValueError(f"head {name!r}: a multiple-choice head scores the pooled vector of each choice (reads='pooled')")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        text_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        object_patch_mask: torch.Tensor | None = None,
        object_type_ids: torch.Tensor | None = None,
        object_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **extra: Any,
    ) -> dict[str, torch.Tensor]:
        """Score C choices per question (VCR head), or one text per image (VQA, ITM, PBC heads).

        VCR (``multiple_choice`` head): ``input_ids, attention_mask, text_type_ids [B, C, L]``;
        ``pixel_values [B, 3, H, W]``; ``object_patch_mask [B, C, K, P]`` (bool); ``object_type_ids,
        object_mask [B, C, K]``; ``labels [B]``. Returns ``logits [B, C]`` and, with labels, the
        scalar ``loss``. Type ids must lie in ``[0, num_token_types)``.

        Other heads: ``input_ids, attention_mask [B, L]`` and ``pixel_values [B, 3, H, W]`` (by
        keyword); no type ids or objects (text type 0, image type 1). Returns ``logits`` ``[B,
        num_labels]`` (VQA; ``labels``: soft scores ``[B, num_labels]``), ``[B, 2]`` (ITM; ``labels
        [B]``, 1 = match) or ``[B, P, 2]`` (PBC, one row per patch, CLS excluded; ``labels [B, P]``),
        and with labels the head's ``loss``.

        ``pixel_values``: normalised floats, or raw uint8 pixels (0..255), which are normalised here,
        on their device, with the vision encoder's ``image_mean`` / ``image_std`` (a quarter of the
        host-to-device traffic of float32).
        """
        objects = {"text_type_ids": text_type_ids, "object_patch_mask": object_patch_mask,
                   "object_type_ids": object_type_ids, "object_mask": object_mask}
        if self.head.multiple_choice:
            self._check_choices_batch(input_ids, attention_mask, pixel_values, objects, labels)
        else:
            given = [name for name, value in objects.items() if value is not None]
            if given or pixel_values is None:
                raise TypeError(
                    f"VCRModel with the {self._head_name!r} head takes input_ids, attention_mask and "
                    f"pixel_values (by keyword), without {', '.join(objects)}; got {', '.join(given) or 'no pixel_values'}"
                )
            where = f"VCRModel ({self._head_name} head)"
            check_shape(input_ids, ("B", "L"), name="input_ids", where=where)
            check_shape(attention_mask, tuple(input_ids.shape), name="attention_mask", where=where)
            check_shape(pixel_values, (input_ids.shape[0], 3, "H", "W"), name="pixel_values", where=where)
            input_ids, attention_mask = input_ids[:, None], attention_mask[:, None]  # one text per image
        fused = self.encode(input_ids, attention_mask, pixel_values, **objects, pooled_only=self.head.reads == "pooled")
        logits = self.head.task_logits(fused, choices=input_ids.shape[1])
        output = {"logits": logits}
        if labels is not None:
            output["loss"] = self.head.loss(logits, labels)
        return output

    def _check_choices_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                             objects: dict[str, torch.Tensor | None], labels: torch.Tensor | None) -> None:
        """The VCR batch contract's keys, shapes and type ids, with messages naming what is wrong."""
        missing = [name for name, value in (("pixel_values", pixel_values), *objects.items()) if value is None]
        if missing:
            raise TypeError(f"VCRModel (VCR multiple-choice head): missing {', '.join(missing)} of the batch contract")
        where = "VCRModel"
        check_shape(input_ids, ("B", "C", "L"), name="input_ids", where=where)
        batch, choices, _ = input_ids.shape
        check_shape(attention_mask, tuple(input_ids.shape), name="attention_mask", where=where)
        check_shape(objects["text_type_ids"], tuple(input_ids.shape), name="text_type_ids", where=where)
        check_shape(pixel_values, (batch, 3, "H", "W"), name="pixel_values", where=where)
        check_shape(objects["object_patch_mask"], (batch, choices, "K", self.num_patches), name="object_patch_mask", where=where)
        slots = objects["object_patch_mask"].shape[2]
        check_shape(objects["object_type_ids"], (batch, choices, slots), name="object_type_ids", where=where)
        check_shape(objects["object_mask"], (batch, choices, slots), name="object_mask", where=where)
        if labels is not None:
            check_shape(labels, (batch,), name="labels", where=where)
        if self.config.use_object_types:
            self._check_type_ids(objects["text_type_ids"], name="text_type_ids")
            if self.config.use_object_tokens:
                self._check_type_ids(objects["object_type_ids"], name="object_type_ids")

    def _check_type_ids(self, type_ids: torch.Tensor, *, name: str) -> None:
        """Type ids index a table of ``num_token_types`` rows; an id outside it is an error with a message.

        On the CPU the check is exact and immediate. On an accelerator an immediate check would wait
        for the device every step, so ``torch._assert_async`` queues it instead: no host sync, and a
        bad id stops the run at the next synchronisation as a device-side assertion (rerun on the CPU,
        or with ``CUDA_LAUNCH_BLOCKING=1``, for this message).
        """
        limit = self.config.num_token_types
        message = (
            f"VCRModel: {name} must lie in [0, num_token_types={limit}): type k + 2 marks the k-th referenced "
            f"object, so a batch with more than {limit - 2} objects needs a larger num_token_types "
            f"(or fewer objects per question)"
        )
        if type_ids.device.type == "cpu":
            if type_ids.numel() and (int(type_ids.min()) < 0 or int(type_ids.max()) >= limit):
                raise ValueError(f"{message}; got ids from {int(type_ids.min())} to {int(type_ids.max())}")
        else:
            torch._assert_async(((type_ids >= 0) & (type_ids < limit)).all(), message)

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write ``vlekit_config.json`` (the resolved config) and ``model.safetensors``.

        ``state_dict``: the weights to write instead of ``self.state_dict()`` (a sharded model's full
        weights, gathered by ``accelerator.get_state_dict``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights, extra = self.state_dict() if state_dict is None else state_dict, {}
        if getattr(self, "base_reference", None):  # on a named frozen base: what was trained, the base's reference
            weights, extra["base"] = _adaptations().trained_only(self, weights, self.base_reference)
        self.save_config(directory, **extra)
        state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, strict: bool = True, output_loading_info: bool = False,
        revision: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None,
    ) -> VCRModel | tuple[VCRModel, dict[str, list[str]]]:
        """Rebuild from ``save_pretrained`` output (offline: configs hold the full architectures): a local
        folder, or a Hub repo id with ``revision`` / ``cache_dir`` / ``token`` (:func:`vlekit.hub.resolve_folder`).

        strict: weights missing from the file, or in the file but not in the model, are an error.
            ``False`` loads what matches and warns with both lists.
        output_loading_info: also return ``{"missing_keys": [...], "unexpected_keys": [...]}``.
        """
        from vlekit.hub import resolve_folder  # huggingface_hub: only when a model is loaded

        directory = resolve_folder(directory, revision=revision, cache_dir=cache_dir, token=token)
        config = load_model_config(directory)
        model = cls(config=config)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: VCRModel.save_pretrained writes the weights there")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{weights}: unreadable safetensors file ({error}); truncated or damaged") from error
        state = _adaptations().with_base(model, state, directory / MODEL_CONFIG_FILE) if config.adaptation else state
        result = model.load_state_dict(state, strict=False)
        info = {"missing_keys": list(result.missing_keys), "unexpected_keys": list(result.unexpected_keys)}
        if info["missing_keys"] or info["unexpected_keys"]:
            message = (
                f"{directory / WEIGHTS_FILE}: weights do not match the config; "
                f"missing {info['missing_keys']}, unexpected {info['unexpected_keys']}"
            )
            if strict:
                raise ValueError(f"{message}. Pass strict=False to load what matches.")
            warnings.warn(message, stacklevel=2)
        return (model, info) if output_loading_info else model

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload config + weights with a model card to the Hub repo ``repo_id``; ``options``: those of
        :func:`vlekit.hub.push_folder` (token, private, revision, api). A trained run with its tokenizer
        and preprocessing (what ``vlekit.load_run`` needs): ``vlekit push --run``. Returns the commit URL."""
        from vlekit.hub import model_card, push_folder

        with tempfile.TemporaryDirectory() as folder:
            card = model_card(repo_id=repo_id, model_config=dataclasses.asdict(self.resolved_config()))
            return push_folder(self.save_pretrained(folder), repo_id, card=card, **options)


def load_model_config(directory: str | Path) -> VCRModelConfig:
    """Read ``vlekit_config.json`` from a checkpoint or run folder."""
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a folder written by VCRModel.save_pretrained")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not the JSON that VCRModel.save_pretrained writes ({error}); the file is damaged") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object (the model's config), found {type(raw).__name__}")
    raw.pop("format", None), raw.pop("version", None), raw.pop("base", None)
    return model_config_from_file(raw, where=str(path))


def model_config_from_file(raw: Mapping[str, Any], *, where: str) -> VCRModelConfig:
    """A :class:`VCRModelConfig` read from a file vlekit (perhaps under other library versions) wrote:
    each component reads its saved options as their writer meant them (:meth:`Registry.spec_from_file`)."""
    raw = dict(raw)
    for kind, registry in (("text_encoder", TEXT_ENCODERS), ("vision_encoder", VISION_ENCODERS),
                           ("fusion", FUSIONS), ("head", HEADS)):
        if kind in raw:
            raw[kind] = registry.spec_from_file(component_spec(raw[kind]), where=where)
    return make_config(VCRModelConfig, raw, where=where)


def build_model(**options: Any) -> VCRModel:
    """Build a model from registered names (or ``module:Class`` paths, or ``{"name": .., **opts}``).

    ``options``: the fields of :class:`VCRModelConfig` (``text_encoder``, ``vision_encoder``, ``fusion``,
    ``head``, ``num_token_types``, ``use_object_tokens``, ...); what is left out takes its default there.
    ``head`` is the task (``vcr-multiple-choice``, ``vqa`` with ``num_labels``, ``itm``, ``pbc``, or a
    plugin's); its widths come from the fusion.
    """
    for kind in ("text_encoder", "vision_encoder", "fusion", "head"):
        if kind in options:
            options[kind] = component_spec(options[kind])
    return VCRModel(config=make_config(VCRModelConfig, options, where="build_model"))
