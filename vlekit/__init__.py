"""vlekit: a research kit for adapting vision-language encoders to Visual Commonsense Reasoning.

Public API::

    from vlekit import build_model, list_components, register_fusion
    model = build_model(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention")
    predictor = load_run("runs/demo/q2a")   # a trained run folder -> model + its data pipeline

Plugins build on this package, :mod:`vlekit.layers` (shared transformer blocks) and
:mod:`vlekit.interfaces` (the component contracts) only; the other modules are internal.
"""
import importlib
from typing import Any

from vlekit import layers  # noqa: F401
from vlekit.components import fusions, heads, text_encoders, vision_encoders  # noqa: F401  (register the core components)
from vlekit.interfaces import Fusion, FusionOutput, Head, TextEncoder, VisionEncoder
from vlekit.model import Backbone, VCRModel, VCRModelConfig, build_model, load_model_config
from vlekit.options import make_config
from vlekit.registry import (
    FUSIONS,
    HEADS,
    TEXT_ENCODERS,
    VISION_ENCODERS,
    RegistryError,
    import_plugins,
    list_components,
    register_fusion,
    register_head,
    register_task,
    register_text_encoder,
    register_vision_encoder,
    registry_for,
)

# The application's public names, imported on first use (PEP 562): registering a component in a notebook
# cell does not pay for the run folders, the Hub, the data pipeline and the official-format loaders.
_LAZY = {
    "Predictor": "vlekit.evaluation.predict", "load_run": "vlekit.evaluation.predict",
    "from_vle_pretrained": "vlekit.vle.checkpoint", "to_vle_pretrained": "vlekit.vle.checkpoint",
    "vle_preprocessor": "vlekit.vle.processor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "FUSIONS", "HEADS", "TEXT_ENCODERS", "VISION_ENCODERS", "Backbone", "Fusion", "FusionOutput", "Head", "Predictor",
    "RegistryError", "register_task",
    "TextEncoder", "VCRModel", "VCRModelConfig", "VisionEncoder", "build_model", "import_plugins", "list_components",
    "load_model_config", "load_run", "make_config", "register_fusion", "register_head", "register_text_encoder",
    "register_vision_encoder", "layers", "registry_for", "from_vle_pretrained", "to_vle_pretrained", "vle_preprocessor",
]
