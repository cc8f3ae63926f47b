"""Throughput of text preparation (``benchmark_text_prep``) and image loading (``benchmark_pixels``).

Measurements, not tests.

``vlekit bench`` and notebooks call it; timing lives here so the preprocessing modules hold none.
The image-loading table over ``PIXEL_VARIANTS`` is a command, ``python -m data_prep.bench_pixels``.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_prep.pixels import load_pixels
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor

__all__ = ["PIXEL_VARIANTS", "benchmark_pixels", "benchmark_text_prep"]

# (jpeg_draft, pixel_dtype) of the image-loading table's rows: today's default first.
PIXEL_VARIANTS: tuple[tuple[bool, str], ...] = ((False, "float32"), (True, "float32"), (True, "uint8"))


def _stand_in_metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """Boxes tiling a 1920x800 frame, one per object: geometry work without disk reads."""
    count = len(record["objects"])
    corners = [((i % 4) * 480.0, (i // 4 % 2) * 400.0) for i in range(count)]
    boxes = [[x, y, x + 600.0, y + 500.0, 1.0] for x, y in corners]
    return {"width": 1920, "height": 800, "boxes": boxes}


def benchmark_text_prep(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    task: str = "q2a",
    repeat: int = 5,
    images_root: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Measure ``prepare_many`` throughput (questions per second) in this process.

    Without ``images_root`` each record gets stand-in boxes (prepared before timing), so the figure
    covers text and box-to-patch work, not metadata reads. ``questions_per_cpu_s`` divides by
    process CPU time (all threads), the one-core figure even when the tokenizer uses threads.
    Unlabeled qa2r records use answer 0.

    Returns:
        ``{"questions", "seconds", "questions_per_s", "questions_per_cpu_s", "task", "tokenizer", "fast"}``.
    """
    preprocessor = VCRPreprocessor.build(tokenizer, task=task, images_root=images_root, **options)
    metadata = None if images_root is not None else [_stand_in_metadata(r) for r in records]
    answers = None
    if task == "qa2r":
        answers = [None if r.get("answer_label") is not None else 0 for r in records]
    preprocessor.prepare_many(records[:8], answer_indices=None if answers is None else answers[:8],
                              metadata=None if metadata is None else metadata[:8])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        preprocessor.prepare_many(records, answer_indices=answers, metadata=metadata)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    questions = len(records) * repeat
    return {
        "questions": questions,
        "seconds": wall,
        "questions_per_s": questions / wall,
        "questions_per_cpu_s": questions / cpu if cpu > 0 else float("inf"),
        "task": task,
        "tokenizer": type(tokenizer).__name__,
        "fast": bool(getattr(tokenizer, "is_fast", False)),
    }


def benchmark_pixels(
    images_root: str | Path, records: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, image_size: int = 384,
    geometry: str = "letterbox", jpeg_draft: bool = False, pixel_dtype: str = "float32", repeat: int = 20,
) -> dict[str, Any]:
    """Examples per second of ``data_prep.pixels.load_pixels`` (as ``VCRPreprocessor.load_pixels``
    calls it) on the records' frames, each loaded ``repeat`` times, in this process.

    ``examples_per_cpu_s`` divides by process CPU time: examples per core-second.

    Returns:
        ``{"examples", "seconds", "examples_per_s", "examples_per_cpu_s", "image_size", "geometry",
        "jpeg_draft", "pixel_dtype"}``.
    """
    records = [records] if isinstance(records, Mapping) else list(records)
    if not records:
        raise ValueError("benchmark_pixels needs at least one record")
    config = PreprocessConfig(image_size=image_size, geometry=geometry, jpeg_draft=jpeg_draft, pixel_dtype=pixel_dtype)
    paths = [Path(images_root) / record["img_fn"] for record in records]

    def one(path: Path) -> Any:
        return load_pixels(path, image_size=image_size, geometry=geometry, mean=config.image_mean,
                           std=config.image_std, draft=jpeg_draft, dtype=pixel_dtype)

    one(paths[0])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        for path in paths:
            one(path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    examples = repeat * len(paths)
    return {
        "examples": examples, "seconds": wall, "examples_per_s": examples / wall,
        "examples_per_cpu_s": examples / cpu if cpu > 0 else float("inf"),
        "image_size": image_size, "geometry": geometry, "jpeg_draft": jpeg_draft, "pixel_dtype": pixel_dtype,
    }
