"""The image-loading benchmark as a command: examples/s per core of ``benchmark_pixels`` for full decode
float32, draft decode float32 and draft decode uint8 (``PIXEL_VARIANTS``). A measurement, not a test.

Pin it to one core for the per-core figure (``examples/s per core`` divides by process CPU time):

    taskset -c 1 python -m data_prep.bench_pixels --images vcr1images --annotations val.jsonl
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_prep.bench import PIXEL_VARIANTS, benchmark_pixels
from data_prep.vcr import read_vcr

__all__ = ["format_pixel_table", "main"]


def format_pixel_table(results: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of ``benchmark_pixels`` results, one row per variant."""
    lines = ["| variant | examples/s per core | examples/s (wall) | examples |", "|---|---:|---:|---:|"]
    for result in results:
        name = f"{'draft' if result['jpeg_draft'] else 'full'} decode, {result['pixel_dtype']}"
        lines.append(f"| {name} | {result['examples_per_cpu_s']:.1f} | {result['examples_per_s']:.1f} "
                     f"| {result['examples']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.bench_pixels``: the image-loading table on the frames of an annotations file."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.bench_pixels",
        description="Examples/s of image loading (decode, resize, canvas, normalise) for full decode float32, "
                    "draft decode float32 and draft decode uint8. Run under `taskset -c N` for one core.",
    )
    parser.add_argument("--images", required=True, type=Path, help="the vcr1images folder")
    parser.add_argument("--annotations", required=True, type=Path, help="a VCR .jsonl; records whose image exists")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--geometry", default="letterbox")
    parser.add_argument("--max-frames", type=int, default=16, help="distinct frames to load (default 16)")
    parser.add_argument("--repeat", type=int, default=50, help="passes over the frames per variant (default 50)")
    args = parser.parse_args(argv)
    frames: dict[str, Mapping[str, Any]] = {}
    for record in read_vcr(args.annotations):
        if record["img_fn"] not in frames and (args.images / record["img_fn"]).is_file():
            frames[record["img_fn"]] = record
        if len(frames) == args.max_frames:
            break
    if not frames:
        parser.error(f"no record of {args.annotations} has its image under {args.images}")
    results = [
        benchmark_pixels(args.images, list(frames.values()), image_size=args.image_size, geometry=args.geometry,
                         jpeg_draft=draft, pixel_dtype=dtype, repeat=args.repeat)
        for draft, dtype in PIXEL_VARIANTS
    ]
    print(f"image loading, {len(frames)} frame(s) x {args.repeat}, {args.geometry} {args.image_size} px, "
          f"{len(os.sched_getaffinity(0))} core(s) allowed")
    print(format_pixel_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
