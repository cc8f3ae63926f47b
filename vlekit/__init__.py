"""vlekit: a research kit for adapting vision-language encoders to Visual Commonsense Reasoning.

Public API::

    from vlekit import build_model, list_components, register_fusion
    model = build_model(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention")
    predictor = load_run("runs/demo/q2a")   # a trained run folder -> model + its data pipeline

Plugins build on this package, :mod:`vlekit.layers` (shared transformer blocks) and
:mod:`vlekit.interfaces` (the component contracts) only; the other modules are internal.
"""
from vlekit import fusions, heads, layers, text_encoders, vision_encoders  # noqa: F401  (register the core components)
from vlekit.interfaces import Fusion, FusionOutput, TextEncoder, VisionEncoder
from vlekit.model import VCRModel, VCRModelConfig, build_model, load_model_config
from vlekit.predict import Predictor, load_run
from vlekit.vle_checkpoint import from_vle_pretrained, to_vle_pretrained
from vlekit.vle_processor import vle_preprocessor
from vlekit.registry import (
    FUSIONS,
    HEADS,
    TEXT_ENCODERS,
    VISION_ENCODERS,
    RegistryError,
    import_plugins,
    list_components,
    make_config,
    register_fusion,
    register_head,
    register_text_encoder,
    register_vision_encoder,
    registry_for,
)

__version__ = "0.1.0"

__all__ = [
    "FUSIONS", "HEADS", "TEXT_ENCODERS", "VISION_ENCODERS", "Fusion", "FusionOutput", "Predictor", "RegistryError",
    "TextEncoder", "VCRModel", "VCRModelConfig", "VisionEncoder", "build_model", "import_plugins", "list_components",
    "load_model_config", "load_run", "make_config", "register_fusion", "register_head", "register_text_encoder",
    "register_vision_encoder", "layers", "registry_for", "from_vle_pretrained", "to_vle_pretrained", "vle_preprocessor",
]
