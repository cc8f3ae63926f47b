"""The synthetic dataset's pictures: five coloured objects on a grey movie-frame-shaped canvas, one of
them lit (the spotlight), laid out in a 2 x 3 grid of cells (``data_prep.synthetic`` writes the questions)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

# Saturated and far apart, so a colour survives JPEG, resizing to 64 px and patch averaging.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
OTHER_CLASSES: tuple[str, ...] = ("car", "dog", "chair", "bottle", "umbrella")

# The object in the spotlight is lit: drawn in white, a colour no other object wears.
SPOTLIGHT_COLOUR = "white"
# (name, width, height): wide movie frames first, as in VCR's LSMDC / MovieClips sources.
FRAME_SIZES: tuple[tuple[str, int, int], ...] = (
    ("Scope", 240, 100),
    ("Flat", 222, 120),
    ("Wide", 192, 108),
    ("Academy", 160, 120),
)

ROWS: tuple[str, ...] = ("top", "bottom")
COLS: tuple[str, ...] = ("left", "middle", "right")
# Five objects, each in its own colour: the four choices of a colour question are then always
# colours of this image, and the rationales have four objects besides the target to mention.
_NUM_OBJECTS = 5
_NUM_PERSONS = (2, 4)
_ELLIPSE_POINTS = 12
# Drawn independently of the class: if persons looked different from dogs, a model could find
# "the dog" in "What colour is dog ?" without grounding the mention, from the class name alone.
_SHAPES: tuple[str, ...] = ("figure", "block", "blob")


@dataclass(frozen=True)
class SceneObject:
    index: int
    name: str
    colour: str
    shape: str
    row: int
    col: int
    box: tuple[float, float, float, float]


def layout(rng: np.random.Generator, width: int, height: int) -> list[SceneObject]:
    """Five objects in distinct cells of a 2 x 3 layout, one of them in the spotlight (white).

    Class, colour, shape and cell are drawn independently of one another. One object per cell
    keeps boxes apart, so the patches under a box show mostly its own colour: boxes fill 60-95% of
    a cell, several whole patches of an 8 x 8 grid (64 px, 8-px patches) even on a squashed 2.4:1
    frame; on a 4 x 4 grid (32 px) neighbours share a patch column, which a tiny model tolerates.
    """
    num_objects = _NUM_OBJECTS
    num_persons = int(rng.integers(_NUM_PERSONS[0], _NUM_PERSONS[1] + 1))
    # Persons first, like VCR's detections; the cells are shuffled so an index says nothing of place.
    names = ["person"] * num_persons + [
        str(rng.choice(OTHER_CLASSES)) for _ in range(num_objects - num_persons)
    ]
    ordinary = [str(c) for c in rng.permutation([c for c in PALETTE if c != SPOTLIGHT_COLOUR])]
    colours = [SPOTLIGHT_COLOUR, *ordinary[: num_objects - 1]]
    colours = [colours[i] for i in rng.permutation(num_objects)]
    shapes = rng.choice(_SHAPES, size=num_objects)
    cells = rng.permutation(len(ROWS) * len(COLS))[:num_objects]
    cell_w, cell_h = width / len(COLS), height / len(ROWS)
    objects = []
    for index, (name, colour, shape, cell) in enumerate(zip(names, colours, shapes, cells)):
        row, col = divmod(int(cell), len(COLS))
        box_w = cell_w * rng.uniform(0.6, 0.9)
        box_h = cell_h * rng.uniform(0.7, 0.95)
        x1 = col * cell_w + rng.uniform(0.0, cell_w - box_w)
        y1 = row * cell_h + rng.uniform(0.0, cell_h - box_h)
        box = (round(x1, 2), round(y1, 2), round(x1 + box_w, 2), round(y1 + box_h, 2))
        objects.append(SceneObject(index, name, str(colour), str(shape), row, col, box))
    return objects


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Grey texture (gradient + grain + faint tint) so an image is never a flat canvas.

    It stays in mid-grey (~70-190), away from every palette colour, white and black included.
    """
    base = rng.uniform(105.0, 155.0)
    gx, gy = rng.uniform(-20.0, 20.0, size=2)
    xs = np.linspace(-0.5, 0.5, width)[None, :, None]
    ys = np.linspace(-0.5, 0.5, height)[:, None, None]
    tint = rng.uniform(-8.0, 8.0, size=3)[None, None, :]
    grain = rng.normal(0.0, 10.0, size=(height, width, 1))
    pixels = base + gx * xs + gy * ys + tint + grain
    return np.clip(pixels, 0, 255).astype(np.uint8)


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> list[list[list[int]]]:
    """Draw ``obj`` as a solid shape filling most of its box; return its polygons (VCR ``segms``)."""
    x1, y1, x2, y2 = obj.box
    w, h = x2 - x1, y2 - y1
    if obj.shape == "figure":  # a head on a body
        parts = [ellipse((x1 + 0.25 * w, y1, x2 - 0.25 * w, y1 + 0.3 * h)), rectangle((x1, y1 + 0.25 * h, x2, y2))]
    elif obj.shape == "blob":
        parts = [ellipse(obj.box)]
    else:
        parts = [rectangle(obj.box)]
    for polygon in parts:
        draw.polygon([tuple(point) for point in polygon], fill=PALETTE[obj.colour])
    return parts


def rectangle(box: tuple[float, float, float, float]) -> list[list[int]]:
    x1, y1, x2, y2 = (round(v) for v in box)
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def ellipse(box: tuple[float, float, float, float]) -> list[list[int]]:
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    angles = np.linspace(0.0, 2 * math.pi, _ELLIPSE_POINTS, endpoint=False)
    return [[round(cx + rx * math.cos(a)), round(cy + ry * math.sin(a))] for a in angles]
