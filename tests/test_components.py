"""Registry-driven component tests: every registered component, core or plugin, is tested here.

The parameters are generated from the registries at collection time (after the installed plugins'
entry points are loaded), so a plugin is tested the moment it registers. Each component is built
from its ``tiny`` options (``Entry.tiny``) and must honour its interface (DESIGN.md section 1):
shapes, gradients, padding invariance (fusions), a config round trip and a save/load round trip.
Presets are checked for valid options and built where no download is needed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import vlekit  # noqa: F401  (registers the core components)
from vlekit.options import make_config
from vlekit.registry import MODEL_REGISTRIES, REGISTRIES, Entry, Registry

# Loads every installed plugin's entry points before parametrizing.
ALL_ENTRIES: list[Entry] = [entry for registry in MODEL_REGISTRIES.values() for entry in registry.entries()]
COMPONENTS = [entry for entry in ALL_ENTRIES if entry.preset_of is None]
PRESETS = [entry for entry in ALL_ENTRIES if entry.preset_of is not None]

# Presets bigger than this are only built on the meta device (no memory, no init time).
REAL_BUILD_MAX_PARAMETERS = 5_000_000
N, L, S, B = 3, 7, 6, 2


def _ids(entries: list[Entry]) -> list[str]:
    return [f"{entry.kind}:{entry.name}" for entry in entries]


def _registry(entry: Entry) -> Registry:
    return REGISTRIES[entry.kind]


def _resolved_config(module: nn.Module) -> Any:
    return getattr(module, "resolved_config", lambda: module.config)()


def _build_tiny(entry: Entry, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _registry(entry).build(entry.name, **entry.tiny)


def _inputs(entry: Entry, module: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Inputs of the right kind for ``module`` (text ids cover 0..99, masks with some padding)."""
    generator = torch.Generator().manual_seed(seed)
    if entry.kind == "text_encoder":
        mask = torch.ones(N, L, dtype=torch.long)
        mask[1, 5:] = 0
        mask[2, 3:] = 0
        return {"input_ids": torch.randint(0, 100, (N, L), generator=generator), "attention_mask": mask}
    if entry.kind == "vision_encoder":
        size = module.image_size
        return {"pixel_values": torch.randn(B, 3, size, size, generator=generator)}
    if entry.kind == "head":  # the fusion output it reads: pooled [N, W] or the image stream [N, S, W]
        shape = (N, module.input_size) if module.reads == "pooled" else (N, S, module.input_size)
        return {module.reads: torch.randn(shape, generator=generator)}
    width = module.hidden_size
    text_mask = torch.ones(N, L, dtype=torch.long)
    text_mask[0, 4:] = 0
    text_mask[2, 6:] = 0
    image_mask = torch.ones(N, S, dtype=torch.long)
    image_mask[1, 3:] = 0
    image_mask[2, 2] = 0  # padding in the middle (a padded object slot between used ones)
    return {
        "text": torch.randn(N, L, width, generator=generator),
        "text_mask": text_mask,
        "image": torch.randn(N, S, width, generator=generator),
        "image_mask": image_mask,
    }


def _outputs(entry: Entry, module: nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The component's outputs as a list of tensors (fusion: text, image, pooled)."""
    out = module(**inputs)
    if entry.kind == "fusion":
        return [out.text, out.image, out.pooled]
    return [out]


def _assert_same_outputs(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_registries_are_populated_and_no_plugin_is_broken() -> None:
    for kind in ("text_encoder", "vision_encoder", "fusion", "head"):
        assert any(entry.kind == kind for entry in COMPONENTS), f"no {kind} registered"
    broken = [(registry.kind, plugin) for registry in REGISTRIES.values() for plugin in registry.broken]
    assert not broken, f"installed plugins failed to load: {broken}"


def test_every_component_declares_tiny_options_that_validate() -> None:
    for entry in COMPONENTS:
        assert entry.tiny, f"{entry.kind} {entry.name!r} ({entry.source}) registers no tiny options"
        make_config(entry.config_class, entry.tiny, where=f"{entry.kind} {entry.name!r} tiny")


@pytest.mark.parametrize("entry", COMPONENTS, ids=_ids(COMPONENTS))
def test_tiny_forward_shapes_and_interface(entry: Entry) -> None:
    module = _build_tiny(entry)
    assert isinstance(module, nn.Module)
    config = module.config
    assert dataclasses.is_dataclass(config) and isinstance(config, entry.config_class)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, dataclasses.fields(config)[0].name, None)
    inputs = _inputs(entry, module)
    module.eval()
    with torch.no_grad():
        out = module(**inputs)
    if entry.kind == "text_encoder":
        assert isinstance(module.hidden_size, int)
        assert out.shape == (N, L, module.hidden_size)
    elif entry.kind == "vision_encoder":
        for attribute in ("hidden_size", "patch_size", "image_size", "grid"):
            assert isinstance(getattr(module, attribute), int), f"missing int attribute {attribute!r}"
        assert module.grid == module.image_size // module.patch_size
        for attribute in ("image_mean", "image_std"):  # the pixel normalisation its weights expect
            values = getattr(module, attribute)
            assert isinstance(values, tuple) and len(values) == 3, f"{attribute} must be a 3-tuple, got {values!r}"
            assert all(isinstance(v, float) and 0 <= v <= 1 for v in values), f"{attribute}: {values!r}"
        assert min(module.image_std) > 0
        assert out.shape == (B, 1 + module.grid**2, module.hidden_size)
    elif entry.kind == "head":
        assert module.reads in ("pooled", "image") and isinstance(module.multiple_choice, bool)
        assert isinstance(module.input_size, int) and callable(module.loss)
        assert out.shape[0] == N and out.dim() == (2 if module.reads == "pooled" else 3)
        if module.reads == "image":  # one row per patch: the CLS token is dropped
            assert out.shape[1] == S - 1
    else:
        assert isinstance(module.hidden_size, int) and isinstance(module.pooled_size, int)
        assert out.text.shape == (N, L, module.hidden_size)
        assert out.image.shape == (N, S, module.hidden_size)
        assert out.pooled.shape == (N, module.pooled_size)
    for tensor in _outputs(entry, module, inputs):
        assert torch.isfinite(tensor).all()


def _assert_backward_reaches_every_parameter(entry: Entry, module: nn.Module) -> None:
    module.train()
    inputs = _inputs(entry, module)
    generator = torch.Generator().manual_seed(2)
    # A random projection, not a plain sum: the sum of a LayerNorm output has no gradient.
    loss = sum((t * torch.randn(t.shape, generator=generator)).sum() for t in _outputs(entry, module, inputs))
    loss.backward()
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    assert trainable, "component has no trainable parameters"
    missing = [name for name, p in trainable if p.grad is None]
    assert not missing, f"no gradient reaches {missing[:10]} (unused parameters also break DDP)"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert sum(p.grad.abs().sum().item() for _, p in trainable) > 0


@pytest.mark.parametrize("entry", COMPONENTS, ids=_ids(COMPONENTS))
def test_tiny_backward_reaches_every_parameter(entry: Entry) -> None:
    _assert_backward_reaches_every_parameter(entry, _build_tiny(entry))


@pytest.mark.parametrize("entry", [e for e in COMPONENTS if e.kind == "fusion"],
                         ids=_ids([e for e in COMPONENTS if e.kind == "fusion"]))
def test_fusion_ignores_masked_tokens(entry: Entry) -> None:
    module = _build_tiny(entry).eval()
    inputs = _inputs(entry, module)
    with torch.no_grad():
        reference = module(**inputs)
        changed = dict(inputs)
        generator = torch.Generator().manual_seed(3)
        text, image = inputs["text"].clone(), inputs["image"].clone()
        text_pad, image_pad = inputs["text_mask"] == 0, inputs["image_mask"] == 0
        assert text_pad.any() and image_pad.any()
        text[text_pad] = 10 * torch.randn(int(text_pad.sum()), text.shape[-1], generator=generator)
        image[image_pad] = 10 * torch.randn(int(image_pad.sum()), image.shape[-1], generator=generator)
        changed.update(text=text, image=image)
        out = module(**changed)
    text_real, image_real = ~text_pad, ~image_pad
    torch.testing.assert_close(out.pooled, reference.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text[text_real], reference.text[text_real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image[image_real], reference.image[image_real], atol=1e-5, rtol=1e-5)
    # ...and the unmasked tokens do matter (the check above could not pass by ignoring everything).
    with torch.no_grad():
        changed_real = dict(inputs, image=inputs["image"] + image_real.unsqueeze(-1).float())
        assert not torch.allclose(module(**changed_real).pooled, reference.pooled, atol=1e-4)


@pytest.mark.parametrize("entry", COMPONENTS, ids=_ids(COMPONENTS))
def test_config_round_trip_through_json(entry: Entry) -> None:
    module = _build_tiny(entry, seed=0).eval()
    resolved = _resolved_config(module)
    assert isinstance(resolved, entry.config_class)
    options = json.loads(json.dumps(dataclasses.asdict(resolved)))
    config = make_config(entry.config_class, options, where=f"{entry.kind} {entry.name!r} resolved config")
    torch.manual_seed(1)  # a different init: only the loaded weights may make the outputs agree
    rebuilt = _registry(entry).build(entry.name, **dataclasses.asdict(config)).eval()
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    inputs = _inputs(entry, module)
    with torch.no_grad():
        _assert_same_outputs(_outputs(entry, module, inputs), _outputs(entry, rebuilt, inputs))
    # The rebuilt component resolves to the same config: a checkpoint folder stays reproducible.
    assert json.loads(json.dumps(dataclasses.asdict(_resolved_config(rebuilt)))) == options


@pytest.mark.parametrize("entry", COMPONENTS, ids=_ids(COMPONENTS))
def test_state_dict_save_load_through_safetensors(entry: Entry, tmp_path: Path) -> None:
    module = _build_tiny(entry, seed=0).eval()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
    other = _build_tiny(entry, seed=1).eval()
    inputs = _inputs(entry, module)
    with torch.no_grad():
        for parameter in other.parameters():  # whatever the init, only the loaded weights can agree
            parameter.add_(torch.randn_like(parameter))
        expected = _outputs(entry, module, inputs)
        other.load_state_dict(load_file(str(path)), strict=True)
        _assert_same_outputs(_outputs(entry, other, inputs), expected)


def _needs_download(config: Any) -> bool:
    return getattr(config, "model_name", None) is not None and bool(getattr(config, "pretrained", False))


@pytest.mark.parametrize("entry", PRESETS, ids=_ids(PRESETS))
def test_preset_options_validate_and_build(entry: Entry) -> None:
    registry = _registry(entry)
    base = registry.get(entry.preset_of)
    assert base.preset_of is None and base.component is entry.component
    _, config = registry.resolve(entry.name)
    assert isinstance(config, entry.config_class)
    for key, value in entry.preset_options.items():
        assert getattr(config, key) == value
    if _needs_download(config):
        pytest.skip(f"{entry.name}: loads pretrained weights of {config.model_name!r} from the hub (offline here)")
    with torch.device("meta"):
        module = registry.build(entry.name)
    n_parameters = sum(p.numel() for p in module.parameters())
    if entry.kind == "vision_encoder":
        assert module.grid == module.image_size // module.patch_size
    if n_parameters > REAL_BUILD_MAX_PARAMETERS:
        assert isinstance(module.hidden_size, int)
        return  # built on meta only: big random-init presets would cost seconds and gigabytes
    torch.manual_seed(0)
    module = registry.build(entry.name).eval()
    inputs = _inputs(entry, module)
    with torch.no_grad():
        outputs = _outputs(entry, module, inputs)
    expected_width = module.hidden_size if entry.kind != "fusion" else module.pooled_size
    assert outputs[-1].shape[-1] == expected_width
    assert all(torch.isfinite(t).all() for t in outputs)
    assert math.prod(outputs[-1].shape) > 0
    _assert_backward_reaches_every_parameter(entry, module)
