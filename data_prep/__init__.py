"""data_prep: VCR records -> RACE-style multiple-choice examples in vlekit's batch contract.

    records = read_vcr("val.jsonl", images_root="vcr1images")
    config = PreprocessConfig(task="q2a", image_size=384, patch_size=16, geometry="letterbox")
    preprocessor = VCRPreprocessor(tokenizer, config=config, images_root="vcr1images")
    batch = preprocessor.collate([preprocessor(r) for r in records[:8]])

``compat="vle"`` reproduces the official VLE VCR pipeline exactly (for official checkpoints).

Modules, one job each, each importing only those before it (and nothing of ``vlekit``):
``constants``; ``errors`` (the format-error base); ``options`` (PreprocessOptions, the run's
preprocessing options, declared once); ``vcr`` (reading and validating records); ``geometry`` (boxes
on the patch grid, the one box -> patch rule);
``pixels`` (decoding and normalisation); ``text`` (default-mode names, rendering, truncation,
numbering); ``vle_text`` (the official pipeline's text rules); ``collate`` (batches); ``preprocess``
(PreprocessConfig: the options plus the image side, and VCRPreprocessor); ``dataset`` (the torch
Dataset); ``check`` (``vlekit check-data``: validation and statistics); ``compare`` (the two modes
side by side); ``bench`` (text and pixel throughput); ``synthetic`` (a synthetic VCR-format dataset
where grounding matters); ``tokenizer`` (offline word-level and SentencePiece tokenizers built from a
dataset's text); ``vqa_answers`` (VQA answer normalisation, vocabulary, soft scores); ``vqa`` (VQA v2
data for VLE's other tasks).
"""
import importlib
from typing import Any

# Public names, each imported from its module on first use (PEP 562): ``import data_prep.vcr`` (or
# ``vlekit``) does not pay for the synthetic generator, the benchmarks and the tokenizer builders.
_LAZY = {
    "VCRDataset": "data_prep.dataset", "benchmark_text_prep": "data_prep.bench",
    "ImageTransform": "data_prep.geometry", "box_cells": "data_prep.geometry", "cell_patches": "data_prep.geometry",
    "image_transform": "data_prep.geometry", "canvas_box_cells": "data_prep.geometry",
    "PreprocessOptions": "data_prep.options", "PreprocessConfig": "data_prep.preprocess",
    "VCRPreprocessor": "data_prep.preprocess", "render_tokens": "data_prep.text", "SyntheticVCR": "data_prep.synthetic",
    "generate_synthetic_vcr": "data_prep.synthetic", "build_sentencepiece_tokenizer": "data_prep.tokenizer",
    "build_word_tokenizer": "data_prep.tokenizer", "ImageGeometry": "data_prep.vcr", "VCRFormatError": "data_prep.vcr",
    "VCRRecords": "data_prep.vcr", "geometry_from_metadata": "data_prep.vcr", "load_geometry": "data_prep.vcr",
    "load_metadata": "data_prep.vcr", "read_vcr": "data_prep.vcr",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ImageGeometry", "ImageTransform", "PreprocessConfig", "PreprocessOptions", "SyntheticVCR", "VCRDataset",
    "VCRFormatError", "VCRPreprocessor", "VCRRecords", "benchmark_text_prep", "box_cells", "canvas_box_cells", "build_sentencepiece_tokenizer", "build_word_tokenizer",
    "cell_patches", "generate_synthetic_vcr", "geometry_from_metadata", "image_transform", "load_geometry",
    "load_metadata", "read_vcr", "render_tokens",
]
