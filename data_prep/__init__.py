"""data_prep: VCR records -> RACE-style multiple-choice examples in vlekit's batch contract.

    records = read_vcr("val.jsonl", images_root="vcr1images")
    config = PreprocessConfig(task="q2a", image_size=384, patch_size=16, geometry="letterbox")
    preprocessor = VCRPreprocessor(tokenizer, config=config, images_root="vcr1images")
    batch = preprocessor.collate([preprocessor(r) for r in records[:8]])

``compat="vle"`` reproduces the official VLE VCR pipeline exactly (for official checkpoints).

Modules, one job each, each importing only those before it (and nothing of ``vlekit``):
``constants``; ``vcr`` (reading and validating records); ``geometry`` (boxes on the patch grid);
``pixels`` (decoding and normalisation); ``text`` (default-mode names, rendering, truncation,
numbering); ``vle_text`` (the official pipeline's text rules); ``collate`` (batches); ``preprocess``
(PreprocessConfig, the one preprocessing config, and VCRPreprocessor); ``dataset`` (the torch
Dataset); ``check`` (``vlekit check-data``: validation and statistics); ``compare`` (the two modes
side by side); ``bench`` (text and pixel throughput); ``synthetic`` (a synthetic VCR-format dataset
where grounding matters); ``tokenizer`` (offline word-level and SentencePiece tokenizers built from a
dataset's text); ``vqa_answers`` (VQA answer normalisation, vocabulary, soft scores); ``vqa`` (VQA v2
data for VLE's other tasks).
"""
from data_prep.dataset import VCRDataset
from data_prep.bench import benchmark_text_prep
from data_prep.geometry import ImageTransform, box_cells, cell_patches, image_transform
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor
from data_prep.text import render_tokens
from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from data_prep.tokenizer import build_sentencepiece_tokenizer, build_word_tokenizer
from data_prep.vcr import (
    ImageGeometry,
    VCRFormatError,
    VCRRecords,
    geometry_from_metadata,
    load_geometry,
    load_metadata,
    read_vcr,
)

__all__ = [
    "ImageGeometry", "ImageTransform", "PreprocessConfig", "SyntheticVCR", "VCRDataset",
    "VCRFormatError", "VCRPreprocessor", "VCRRecords", "benchmark_text_prep", "box_cells", "build_sentencepiece_tokenizer", "build_word_tokenizer",
    "cell_patches", "generate_synthetic_vcr", "geometry_from_metadata", "image_transform", "load_geometry",
    "load_metadata", "read_vcr", "render_tokens",
]
