"""Pixels: decode an image file, place it on the model canvas, normalise (DESIGN.md section 4).

Owns ``load_pixels``: the geometry's resize / crop / pad (``data_prep.geometry.image_transform``)
and the normalisation. The arithmetic follows CLIP's image processor step for step (bicubic PIL
resize, rescale by 1/255 in float64 then float32, ``(x - mean) / std`` in float32), so
``center-crop`` and ``vle-compat`` pixels are the official VLE processor's, bit for bit.

Both dtypes start from one 8-bit canvas: the resized (cropped) image, and letterbox padding in
``padding_colour(mean)``, the 8-bit colour nearest the normalisation mean (an exact mean, 0 after
normalising, is no 8-bit colour; CLIP's pads to (0.0033, 0.0038, -0.0013)). ``dtype="float32"``
normalises the canvas here; ``dtype="uint8"`` returns it (a quarter of the bytes to pin and copy)
for ``VCRModel`` to normalise on its device with the same mean and std. The two then differ by
float rounding only (about 1e-7), padding included.

Images are decoded upright: a file with an EXIF orientation tag is transposed as a viewer shows it
(``oriented_size`` is its size then). Boxes are in the metadata's frame, which is the upright one;
``data_prep.preflight`` checks that the two sizes agree. Movie frames (VCR) carry no such tag.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_prep.constants import PIXEL_DTYPES
from data_prep.geometry import image_transform
from data_prep.vcr import VCRFormatError

__all__ = ["IMAGE_ERRORS", "exif_orientation", "load_pixels", "oriented_size", "padding_colour"]

# What PIL raises on a file it cannot open or decode (truncated data: OSError; broken chunks:
# SyntaxError or ValueError; absurd sizes: DecompressionBombError).
IMAGE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as PIL's ImageOps.exif_transpose).
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, upright, when it has none or an invalid one)."""
    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    return orientation if orientation in _UPRIGHT else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image once upright: the file's size, swapped when its EXIF
    orientation (5-8) rotates it by 90 degrees. Reads the header only."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _SWAPS_AXES else (width, height)


def padding_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """The 8-bit RGB colour nearest the normalisation mean: the letterbox padding (of both dtypes)."""
    return tuple(int(round(m * 255)) for m in mean)


def _unreadable(path: Path, annot_id: Any, exc: Exception) -> VCRFormatError:
    return VCRFormatError(
        file=path, line=None, annot_id=annot_id, field="img_fn",
        expected="a readable image", got=f"{type(exc).__name__}: {exc}",
    )


def _open_image(path: Path, annot_id: Any) -> tuple[Image.Image, int]:
    """The opened image (header read, pixels not decoded) and its EXIF orientation."""
    try:
        opened = Image.open(path)
    except FileNotFoundError:
        raise VCRFormatError(
            file=path, line=None, annot_id=annot_id, field="img_fn",
            expected="an existing image file under images_root", got=f"no file {path}",
        ) from None
    except IMAGE_ERRORS as exc:
        raise _unreadable(path, annot_id, exc) from None
    try:
        return opened, exif_orientation(opened)
    except IMAGE_ERRORS as exc:
        opened.close()
        raise _unreadable(path, annot_id, exc) from None


def load_pixels(
    path: Path, *, image_size: int, geometry: str, mean: Sequence[float], std: Sequence[float],
    draft: bool = False, dtype: str = "float32", annot_id: Any = None,
) -> torch.Tensor:
    """Decode (upright: EXIF orientation applied), transform and (for float32) normalise one image file.

    Args:
        draft: let a JPEG decode at 1/2, 1/4 or 1/8 scale, never below the resize target.
        dtype: ``"float32"`` (normalised) or ``"uint8"`` (8-bit RGB, normalised by the model).
        annot_id: names the record in error messages.

    Returns:
        ``[3, S, S]``: the canvas normalised (float32) or as it is (uint8); letterbox padding is
        ``padding_colour(mean)``.
    """
    if dtype not in PIXEL_DTYPES:
        choices = ", ".join(map(repr, PIXEL_DTYPES))
        raise ValueError(f"load_pixels: dtype={dtype!r} is not supported; choose one of {choices}")
    opened, orientation = _open_image(path, annot_id)
    with opened:
        transform = image_transform(*oriented_size(opened), image_size=image_size, geometry=geometry)
        try:
            if draft:  # in the file's own axes: swapped back when the orientation turns it
                opened.draft("RGB", transform.resized[::-1] if orientation in _SWAPS_AXES else transform.resized)
            image = opened.convert("RGB")
        except IMAGE_ERRORS as exc:
            raise _unreadable(path, annot_id, exc) from None
    if orientation != 1:
        image = image.transpose(_UPRIGHT[orientation])
    size = image_size
    image = image.resize(transform.resized, Image.Resampling.BICUBIC)
    if image.width > size or image.height > size:  # centre crop (negative offset)
        left, top = -transform.offset[0], -transform.offset[1]
        image = image.crop((left, top, left + size, top + size))
    # One 8-bit canvas for both dtypes, so float32 pixels are exactly the model's normalisation of
    # the uint8 ones, padding included. Built channels-first in torch: no HWC canvas to transpose.
    x0, y0 = max(0, transform.offset[0]), max(0, transform.offset[1])
    content = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, h, w] uint8
    canvas = torch.empty(3, size, size, dtype=torch.uint8)
    if content.shape[1:] != (size, size):
        canvas[:] = torch.tensor(padding_colour(mean), dtype=torch.uint8).view(3, 1, 1)
    canvas[:, y0 : y0 + content.shape[1], x0 : x0 + content.shape[2]] = content
    if dtype == "uint8":
        return canvas
    # CLIP's processor: rescale in float64, then (x - mean) / std in float32.
    mean32, std32 = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (mean, std))
    return ((canvas.to(torch.float64) * (1.0 / 255.0)).to(torch.float32) - mean32) / std32
