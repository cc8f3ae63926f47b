"""Geometry: where an image and its boxes land on the model's square canvas (DESIGN.md section 4).

Owns ``image_transform`` (one transform for pixels and boxes per geometry mode), ``canvas_box_cells``
(the box -> cell rule on the canvas, shared with the PBC labels), ``box_cells`` (image boxes ->
rectangles of grid cells) and ``cell_patches`` (rectangle -> row-major patch indices).
``vle-compat`` boxes follow VLE's own cell rule literally (``_vle_box_cells``), so that mode is
the official pipeline's geometry, not an approximation of it.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_prep.constants import GEOMETRY_MODES

__all__ = ["ImageTransform", "image_transform", "box_cells", "canvas_box_cells", "cell_patches"]


@dataclass(frozen=True)
class ImageTransform:
    """Where an image of size ``(width, height)`` lands on the ``S x S`` canvas.

    Pixels: resize to ``resized`` (bicubic), then place its top-left corner at ``offset`` on the
    canvas (a negative offset crops, a positive one pads). Boxes: ``x' = x * box_scale[0] +
    box_offset[0]`` (same for y), the pixel map itself in every mode but ``vle-compat``.
    """

    image_size: int
    resized: tuple[int, int]
    offset: tuple[int, int]
    box_scale: tuple[float, float]
    box_offset: tuple[float, float]


def image_transform(width: int, height: int, *, image_size: int, geometry: str) -> ImageTransform:
    """The pixel and box transform of one image under a geometry mode.

    Modes:
        squash: resize to ``S x S``.
        letterbox: scale by ``S / max(W, H)``, centre on the canvas; the padding is the 8-bit colour
            nearest the normalisation mean (``data_prep.pixels.padding_colour``).
        center-crop: scale the short side to ``S`` (long side ``int(S * long / short)``, as CLIP's
            processor does), centre crop; boxes are shifted with the crop.
        vle-compat: pixels as ``center-crop``, boxes as ``squash``: VLE's own mismatch, on wide
            frames the boxes then point at the wrong pixels. Only for reproducing VLE.
    """
    size = image_size
    if geometry == "squash":
        resized, offset = (size, size), (0, 0)
    elif geometry == "letterbox":
        scale = size / max(width, height)
        resized = (max(1, round(width * scale)), max(1, round(height * scale)))
        offset = ((size - resized[0]) // 2, (size - resized[1]) // 2)
    elif geometry in ("center-crop", "vle-compat"):
        resized = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        offset = (-((resized[0] - size) // 2), -((resized[1] - size) // 2))
    else:
        choices = ", ".join(map(repr, GEOMETRY_MODES))
        raise ValueError(f"geometry={geometry!r} is not supported; choose one of {choices}")
    if geometry == "vle-compat":
        box_scale, box_offset = (size / width, size / height), (0.0, 0.0)
    else:
        box_scale = (resized[0] / width, resized[1] / height)
        box_offset = (float(offset[0]), float(offset[1]))
    return ImageTransform(image_size=size, resized=resized, offset=offset, box_scale=box_scale, box_offset=box_offset)


def _vle_box_cells(boxes: np.ndarray, *, width: int, height: int, grid: int) -> np.ndarray:
    """VLE's cell rule (``get_patch_box`` of its VCR pipeline), literally.

    A cell is ``W / g`` by ``H / g`` image pixels; a box covers columns ``int(x1 // cw)`` (at least
    0) to ``int(x2 // cw)`` (at most g - 1), rows likewise. The floor divisions are VLE's own float
    operations, so boxes on a cell border fall where VLE puts them; an empty range covers nothing.
    """
    cell_w, cell_h = width / grid, height / grid
    cells = np.full((len(boxes), 4), -1, dtype=np.int64)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        col0, row0 = max(int(x1 // cell_w), 0), max(int(y1 // cell_h), 0)
        col1, row1 = min(int(x2 // cell_w) + 1, grid) - 1, min(int(y2 // cell_h) + 1, grid) - 1
        if col0 <= col1 and row0 <= row1:
            cells[i] = (col0, row0, col1, row1)
    return cells


def canvas_box_cells(boxes: np.ndarray, *, image_size: int, patch_size: int) -> np.ndarray:
    """The box -> cell rule (DESIGN.md section 4), on boxes already on the ``S x S`` canvas: the one
    definition, used by the object tokens (:func:`box_cells`) and the PBC labels
    (``vlekit.components.heads.box_patch_labels``).

    Box ``[x1, y1, x2, y2]`` covers columns ``floor(x1 / patch_size) .. floor(x2 / patch_size)`` (the
    cell width ``S / g`` is exactly ``patch_size``) clipped to ``[0, g - 1]``, rows likewise, with no
    coverage threshold: an edge exactly on a cell border falls in the cell to its right (below). A box
    entirely off the canvas (``x2 < 0``, ``x1 > S``, same for y) or inverted (``x2 < x1``) covers nothing;
    a degenerate box (a line or a point) covers the cells it touches.

    Args:
        boxes: ``[N, 4]`` canvas pixels (float).

    Returns:
        int64 ``[N, 4]``: ``col0, row0, col1, row1`` (inclusive), all -1 for a box covering nothing.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}: the patch grid "
                         f"must tile the canvas")
    grid = image_size // patch_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    low, high = boxes[:, :2], boxes[:, 2:]
    outside = ((high < 0) | (low > image_size) | (high < low)).any(axis=1)
    cells = np.clip(np.floor(boxes / patch_size), 0, grid - 1).astype(np.int64)
    cells[outside] = -1
    return cells


def box_cells(
    boxes: np.ndarray, *, width: int, height: int, image_size: int, patch_size: int, geometry: str
) -> np.ndarray:
    """The rectangle of grid cells each box touches on the model canvas.

    Boxes go through ``image_transform``, then :func:`canvas_box_cells` (the rule; a box entirely
    outside the canvas, cropped away, covers nothing). ``vle-compat`` uses VLE's own rule (the same
    cells up to float rounding on cell borders).

    Args:
        boxes: ``[N, 4]`` (or ``[N, 5]`` with scores) in image pixels.

    Returns:
        int64 ``[N, 4]``: ``col0, row0, col1, row1`` (inclusive), all -1 for a box covering nothing.
    """
    transform = image_transform(width, height, image_size=image_size, geometry=geometry)
    boxes = np.asarray(boxes, dtype=np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes[:, :4]
    if geometry == "vle-compat":
        return _vle_box_cells(boxes, width=width, height=height, grid=image_size // patch_size)
    scale, offset = transform.box_scale, transform.box_offset
    canvas = boxes * np.array(scale + scale) + np.array(offset + offset)
    return canvas_box_cells(canvas, image_size=image_size, patch_size=patch_size)


def cell_patches(cells: Sequence[int], grid: int) -> list[int]:
    """Sorted row-major patch indices ``row * g + col`` of one ``(col0, row0, col1, row1)`` rectangle."""
    col0, row0, col1, row1 = cells
    if col0 < 0:
        return []
    rows = (range(r * grid + col0, r * grid + col1 + 1) for r in range(row0, row1 + 1))
    return list(itertools.chain.from_iterable(rows))
