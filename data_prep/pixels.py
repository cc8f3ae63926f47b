"""Pixels: decode an image file, place it on the model canvas, normalise (DESIGN.md section 4).

Owns ``load_pixels``: the geometry's resize / crop / pad (``data_prep.geometry.image_transform``)
and the normalisation. The arithmetic follows CLIP's image processor step for step (bicubic PIL
resize, rescale by 1/255 in float64 then float32, ``(x - mean) / std`` in float32), so
``center-crop`` and ``vle-compat`` pixels are the official VLE processor's, bit for bit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_prep.geometry import image_transform
from data_prep.vcr import VCRFormatError

__all__ = ["load_pixels"]


def load_pixels(
    path: Path, *, image_size: int, geometry: str, mean: Sequence[float], std: Sequence[float],
    draft: bool = False, annot_id: Any = None,
) -> torch.Tensor:
    """Decode, transform and normalise one image file.

    Args:
        draft: let a JPEG decode at 1/2, 1/4 or 1/8 scale, never below the resize target.
        annot_id: names the record in error messages.

    Returns:
        float32 tensor ``[3, S, S]``; letterbox padding is exactly 0 (the mean colour).
    """
    try:
        with Image.open(path) as opened:
            transform = image_transform(opened.width, opened.height, image_size=image_size, geometry=geometry)
            if draft:
                opened.draft("RGB", transform.resized)
            image = opened.convert("RGB")
    except FileNotFoundError:
        raise VCRFormatError(
            file=path, line=None, annot_id=annot_id, field="img_fn",
            expected="an existing image file under images_root", got=f"no file {path}",
        ) from None
    except OSError as exc:
        raise VCRFormatError(
            file=path, line=None, annot_id=annot_id, field="img_fn",
            expected="a readable image", got=f"{type(exc).__name__}: {exc}",
        ) from None
    size = image_size
    image = image.resize(transform.resized, Image.Resampling.BICUBIC)
    if image.width > size or image.height > size:  # centre crop (negative offset)
        left, top = -transform.offset[0], -transform.offset[1]
        image = image.crop((left, top, left + size, top + size))
    mean32, std32 = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    content = ((np.asarray(image, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32) - mean32) / std32
    pixels = torch.zeros(3, size, size, dtype=torch.float32)  # 0 = the mean colour after normalising
    x0, y0 = max(0, transform.offset[0]), max(0, transform.offset[1])
    pixels[:, y0 : y0 + content.shape[0], x0 : x0 + content.shape[1]] = torch.from_numpy(content).permute(2, 0, 1)
    return pixels
