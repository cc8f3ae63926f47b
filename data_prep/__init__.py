"""data_prep: VCR records -> RACE-style multiple-choice examples in vlekit's batch contract.

    records = read_vcr("val.jsonl", images_root="vcr1images")
    preprocessor = VCRPreprocessor(tokenizer, task="q2a", image_size=384, patch_size=16, geometry="letterbox",
                                   images_root="vcr1images")
    batch = preprocessor.collate([preprocessor(r) for r in records[:8]])

Also: a synthetic VCR-format dataset where grounding matters (``generate_synthetic_vcr``) and a
word-level tokenizer built from a dataset's text for tiny models (``build_word_tokenizer``).
"""
from data_prep.dataset import VCRDataset
from data_prep.prep import PreparedExamples, load_prepared
from data_prep.bench import benchmark_text_prep
from data_prep.geometry import ImageTransform, box_cells, cell_patches, image_transform
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor
from data_prep.text import render_tokens
from data_prep.synthetic import SyntheticVCR, generate_synthetic_vcr
from data_prep.tokenizer import build_word_tokenizer
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
    "ImageGeometry", "ImageTransform", "PreparedExamples", "PreprocessConfig", "SyntheticVCR", "VCRDataset",
    "VCRFormatError", "VCRPreprocessor", "VCRRecords", "benchmark_text_prep", "box_cells", "build_word_tokenizer",
    "cell_patches", "generate_synthetic_vcr", "geometry_from_metadata", "image_transform", "load_geometry",
    "load_metadata", "load_prepared", "read_vcr", "render_tokens",
]
