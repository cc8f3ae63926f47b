"""VCR records -> RACE-style multiple-choice examples (DESIGN.md sections 3 and 4).

One record gives one example: C = 4 text sequences (one per choice) that share one image.

Text. A VCR token is a word or a list of object indices; ``[i, j]`` renders as "name_i and name_j".
Persons are named from ``PERSON_NAMES``, other objects by their class name. By default one mapping
per record names persons in order of first mention (question, answers, rationales); ``names="vle"``
keeps VLE's official quirk, a never-reset counter, so a record is named differently on every call.
Layouts:

- ``q2a``:  ``[CLS] question [SEP] answer_i [SEP]``
- ``qa2r``: ``[CLS] question [SEP] answer [SEP] rationale_i [SEP]``; "question [SEP] answer" is the
  first part, the rationale the second.

Truncation to ``max_length`` removes tokens one at a time from the end of the longer part (the
second on a tie, like Hugging Face's ``longest_first``). A name with any sub-token cut refers to no
object. Alignment of names to sub-tokens is exact: fast tokenizers map the names' character spans
through the offsets of the whole text; slow tokenizers encode the text piece by piece at the name
boundaries (which are spaces), so the pieces are the tokens by construction.

Objects. The referenced objects of a (question, choice) pair are the distinct objects named in its
surviving text, numbered k = 0, 1, ... in order of first mention; every sub-token of a name gets
``k + 2``, and slot k covers the grid cells its box touches on the model's S x S canvas. Boxes go
through the same resize/pad/crop as the pixels (``image_transform``), except in ``vle-compat``.

Example dict (``prepare_text``; ``__call__`` adds ``pixel_values``), C = 4, K_c slots in choice c:

- ``annot_id`` str, ``img_fn`` str, ``label`` int | None (answer label for q2a, rationale label for
  qa2r), ``answer_index`` int | None (qa2r: the answer in the query; None for q2a)
- ``input_ids``, ``text_type_ids``: C lists of L_c ints; ``truncated``: C bools
- ``object_ids``: C lists of K_c VCR object indices; ``object_patches``: C lists of K_c sorted lists
  of row-major patch indices in ``0 .. grid**2 - 1``
- ``pixel_values``: float32 tensor ``[3, S, S]``
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from data_prep.constants import CLIP_MEAN, CLIP_STD, GEOMETRY_MODES, NAME_MODES, NUM_CHOICES, PERSON_NAMES, TASKS
from data_prep.vcr import ImageGeometry, VCRFormatError, geometry_from_metadata, load_geometry

__all__ = [
    "PreprocessConfig",
    "VCRPreprocessor",
    "ImageTransform",
    "image_transform",
    "box_cells",
    "cell_patches",
    "render_tokens",
    "benchmark_text_prep",
]

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessConfig:
    """Every option that changes a prepared example (validated on construction).

    Attributes:
        task: ``"q2a"`` or ``"qa2r"``.
        image_size: side S of the square model input.
        patch_size: vision patch size; the grid is ``g = S // patch_size`` and ``P = g * g``.
        geometry: ``squash``, ``letterbox``, ``center-crop`` or ``vle-compat`` (see ``image_transform``).
        max_length: longest text sequence, special tokens included.
        names: ``deterministic`` (one person-name mapping per record, by first mention) or ``vle``:
            VLE's official quirk, a never-reset counter advanced per person mention, so the same
            record gets other names on every call; only for reproducing VLE.
        image_mean, image_std: per-channel pixel normalisation (RGB, on 0..1 values).
        pad_to_multiple_of: ``collate`` pads L up to a multiple of this (None: no rounding).
    """

    task: str = "q2a"
    image_size: int = 224
    patch_size: int = 16
    geometry: str = "squash"
    max_length: int = 80
    names: str = "deterministic"
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    pad_to_multiple_of: int | None = 8

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("task", self.task, TASKS),
            ("geometry", self.geometry, GEOMETRY_MODES),
            ("names", self.names, NAME_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}")
        for name in ("image_size", "patch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                f"the patch grid must tile the image (e.g. 224/16, 224/32, 336/14)"
            )
        # Room for the special tokens (3, plus the middle [SEP] of qa2r's first part) and a text token per part.
        min_length = 5 if self.task == "q2a" else 6
        if self.max_length < min_length:
            raise ValueError(
                f"max_length={self.max_length} is too short for {self.task}; use at least {min_length} (VLE uses 80)"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"{name} must be 3 numbers (R, G, B), got {value!r}")
        if any(v <= 0 for v in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std!r}")
        if self.pad_to_multiple_of is not None and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of <= 0
        ):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}")

    @property
    def grid(self) -> int:
        """Patches per side, g."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """P = g * g (CLS excluded)."""
        return self.grid * self.grid


# ---------------------------------------------------------------------------------------------
# Geometry: one transform for pixels and boxes
# ---------------------------------------------------------------------------------------------


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
        letterbox: scale by ``S / max(W, H)``, centre on the canvas; the padding normalises to 0.
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


def box_cells(
    boxes: np.ndarray, *, width: int, height: int, image_size: int, patch_size: int, geometry: str
) -> np.ndarray:
    """The rectangle of grid cells each box touches on the model canvas.

    Boxes go through ``image_transform``; box ``[x1, y1, x2, y2]`` on the canvas covers columns
    ``floor(x1 / cw) .. floor(x2 / cw)`` clipped to ``[0, g - 1]`` (``cw = S / g``), rows likewise,
    with no coverage threshold. A box entirely outside the canvas (cropped away) covers nothing.

    Args:
        boxes: ``[N, 4]`` (or ``[N, 5]`` with scores) in image pixels.

    Returns:
        int64 ``[N, 4]``: ``col0, row0, col1, row1`` (inclusive), all -1 for a box covering nothing.
    """
    transform = image_transform(width, height, image_size=image_size, geometry=geometry)
    grid = image_size // patch_size
    boxes = np.asarray(boxes, dtype=np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes[:, :4]
    scale, offset = transform.box_scale, transform.box_offset
    canvas = boxes * np.array(scale + scale) + np.array(offset + offset)
    low, high = canvas[:, :2], canvas[:, 2:]
    outside = ((high < 0) | (low > image_size) | (high < low)).any(axis=1)
    # The cell width S / g is exactly patch_size (S is a multiple of it).
    cells = np.clip(np.floor(canvas / patch_size), 0, grid - 1).astype(np.int64)
    cells[outside] = -1
    return cells


def cell_patches(cells: Sequence[int], grid: int) -> list[int]:
    """Sorted row-major patch indices ``row * g + col`` of one ``(col0, row0, col1, row1)`` rectangle."""
    col0, row0, col1, row1 = cells
    if col0 < 0:
        return []
    rows = (range(r * grid + col0, r * grid + col1 + 1) for r in range(row0, row1 + 1))
    return list(itertools.chain.from_iterable(rows))


# ---------------------------------------------------------------------------------------------
# Text: names, rendering, exact sub-token alignment
# ---------------------------------------------------------------------------------------------

# VLE's pipeline draws person names from one counter that is never reset, so the same record is
# named differently on every call (and per DataLoader worker). Kept only for `names="vle"`.
_VLE_NAME_COUNTER = itertools.count()


def _deterministic_person_names(record: Mapping[str, Any]) -> dict[int, str]:
    """Person object index -> name, in order of first mention (question, answers, rationales)."""
    objects = record["objects"]
    names: dict[int, str] = {}
    for tokens in (record["question"], *record["answer_choices"], *record["rationale_choices"]):
        for token in tokens:
            if isinstance(token, str):
                continue
            for index in token:
                if index not in names and objects[index] == "person":
                    names[index] = PERSON_NAMES[len(names) % len(PERSON_NAMES)]
    return names


# A name's characters in rendered text: (space_start, start, end, object index); space_start
# includes the space before the name (if any), end is exclusive. Plain tuples: this is the hot path.
_NameSpan = tuple[int, int, int, int]


def render_tokens(
    tokens: Sequence[str | Sequence[int]], objects: Sequence[str], person_names: Mapping[int, str] | None
) -> tuple[str, list[_NameSpan]]:
    """Render VCR tokens to space-joined text and the character spans of the object names.

    Args:
        tokens: words and lists of object indices.
        objects: the record's object class names.
        person_names: person index -> name; None draws from VLE's never-reset counter per mention.

    Returns:
        ``(text, spans)``: spans in text order, one per named object, each
        ``(space_start, start, end, object_index)`` (``end`` exclusive).
    """
    words: list[str] = []
    named: list[tuple[int, int]] = []  # (word position, object index) of every name
    for token in tokens:
        if isinstance(token, str):
            words.append(token)
            continue
        for j, index in enumerate(token):
            if j:
                words.append("and")
            if objects[index] != "person":
                name = objects[index]
            elif person_names is None:
                name = PERSON_NAMES[next(_VLE_NAME_COUNTER) % len(PERSON_NAMES)]
            else:
                name = person_names[index]
            named.append((len(words), index))
            words.append(name)
    if not named:
        return " ".join(words), []
    starts = list(itertools.accumulate((len(word) + 1 for word in words), initial=0))
    spans = [(starts[w] - 1 if w else 0, starts[w], starts[w] + len(words[w]), index) for w, index in named]
    return " ".join(words), spans


class _Tokenized(NamedTuple):
    ids: list[int]
    mentions: list[tuple[int, int, int]]  # (first token, end token (exclusive), object index), in order


def _truncated_lengths(first: int, second: int, budget: int) -> tuple[int, int]:
    """Part lengths after removing tokens one at a time from the end of the longer part.

    Equivalent to Hugging Face's ``longest_first`` loop (ties remove from the second part), in
    closed form: shorten the longer part to the other's length, then alternate, second first.
    """
    excess = first + second - budget
    if excess <= 0:
        return first, second
    if first > second:
        cut = min(excess, first - second)
        first -= cut
    else:
        cut = min(excess, second - first)
        second -= cut
    excess -= cut
    return first - excess // 2, second - (excess + 1) // 2


# ---------------------------------------------------------------------------------------------
# The preprocessor
# ---------------------------------------------------------------------------------------------


class VCRPreprocessor:
    """Turns VCR records into multiple-choice examples and batches (DESIGN.md section 3).

    Args:
        tokenizer: any Hugging Face tokenizer (fast or slow) with cls, sep and pad tokens.
        images_root: the ``vcr1images`` folder (for metadata and pixels); may be omitted when every
            call passes ``metadata=`` and pixels are not needed.
        Other options: see :class:`PreprocessConfig`.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        task: str = "q2a",
        image_size: int = 224,
        patch_size: int = 16,
        geometry: str = "squash",
        max_length: int = 80,
        images_root: str | Path | None = None,
        names: str = "deterministic",
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        pad_to_multiple_of: int | None = 8,
    ) -> None:
        self.config = PreprocessConfig(
            task=task,
            image_size=image_size,
            patch_size=patch_size,
            geometry=geometry,
            max_length=max_length,
            names=names,
            image_mean=tuple(image_mean),
            image_std=tuple(image_std),
            pad_to_multiple_of=pad_to_multiple_of,
        )
        for attribute in ("cls_token_id", "sep_token_id", "pad_token_id"):
            if getattr(tokenizer, attribute, None) is None:
                raise ValueError(
                    f"tokenizer {type(tokenizer).__name__} has no {attribute[:-3]}: the VCR layout "
                    f"[CLS] question [SEP] choice [SEP] and padding need cls, sep and pad tokens; add them with "
                    f"tokenizer.add_special_tokens({{'cls_token': ..., 'sep_token': ..., 'pad_token': ...}})"
                )
        self.tokenizer = tokenizer
        # Read once: attribute access on Hugging Face tokenizers is slow in the hot path.
        self._cls_id, self._sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self._pad_id = tokenizer.pad_token_id
        self.images_root = Path(images_root) if images_root is not None else None
        self._is_fast = bool(getattr(tokenizer, "is_fast", False))
        self._mean = np.asarray(self.config.image_mean, dtype=np.float32)
        self._std = np.asarray(self.config.image_std, dtype=np.float32)

    @classmethod
    def from_config(
        cls, tokenizer: Any, config: PreprocessConfig, *, images_root: str | Path | None = None
    ) -> VCRPreprocessor:
        """A preprocessor with the options of ``config``."""
        return cls(tokenizer, images_root=images_root, **asdict(config))

    def __repr__(self) -> str:
        return f"VCRPreprocessor({type(self.tokenizer).__name__}, {self.config}, images_root={self.images_root})"

    # -- text -----------------------------------------------------------------------------------

    def prepare_text(
        self,
        record: Mapping[str, Any],
        *,
        answer_index: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Everything of an example but the pixels (see the module docstring for the keys).

        Args:
            record: a VCR record (as read by ``read_vcr``).
            answer_index: qa2r only: the answer to put in the query instead of the gold one (test
                records have no gold answer: prepare one example per candidate).
            metadata: ``{"boxes", "width", "height"}`` to use instead of reading
                ``images_root / record["metadata_fn"]``.
        """
        return self.prepare_many(
            [record],
            answer_indices=[answer_index],
            metadata=None if metadata is None else [metadata],
        )[0]

    def prepare_many(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        answer_indices: Sequence[int | None] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        chunk_size: int = 512,
    ) -> list[dict[str, Any]]:
        """``prepare_text`` for many records, tokenizing each chunk of records in one batch.

        ``answer_indices`` and ``metadata`` (optional) align with ``records``.
        """
        for name, values in (("answer_indices", answer_indices), ("metadata", metadata)):
            if values is not None and len(values) != len(records):
                raise ValueError(f"{name} has {len(values)} entries for {len(records)} records; give one per record")
        examples: list[dict[str, Any]] = []
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            examples += self._prepare_chunk(
                chunk,
                answer_indices[start : start + chunk_size] if answer_indices is not None else [None] * len(chunk),
                metadata[start : start + chunk_size] if metadata is not None else None,
            )
        return examples

    def _query_answer(self, record: Mapping[str, Any], answer_index: int | None) -> int | None:
        """The answer in a qa2r query: ``answer_index`` or the gold one (None for q2a)."""
        if self.config.task == "q2a":
            if answer_index is not None:
                raise ValueError("answer_index= is only meaningful for task='qa2r' (it picks the answer in the query)")
            return None
        if answer_index is None:
            answer_index = record.get("answer_label")
            if answer_index is None:
                raise ValueError(
                    f"record {record.get('annot_id')} has no answer_label, so qa2r has no gold answer for the query: "
                    f"pass answer_index= (0..{NUM_CHOICES - 1}), or use VCRDataset(..., expand_answers=True)"
                )
        elif (
            isinstance(answer_index, bool)
            or not isinstance(answer_index, (int, np.integer))
            or not 0 <= answer_index < NUM_CHOICES
        ):
            raise ValueError(f"answer_index must be an int in 0..{NUM_CHOICES - 1}, got {answer_index!r}")
        return int(answer_index)

    def _prepare_chunk(
        self,
        records: Sequence[Mapping[str, Any]],
        answer_indices: Sequence[int | None],
        metadata: Sequence[Mapping[str, Any]] | None,
    ) -> list[dict[str, Any]]:
        queries = [self._query_answer(record, index) for record, index in zip(records, answer_indices)]
        rendered: list[tuple[str, list[_NameSpan]]] = []
        for record, answer in zip(records, queries):
            persons = _deterministic_person_names(record) if self.config.names == "deterministic" else None
            objects = record["objects"]
            texts = [record["question"]]
            if answer is not None:
                texts.append(record["answer_choices"][answer])
            texts += record["answer_choices"] if answer is None else record["rationale_choices"]
            rendered += [render_tokens(tokens, objects, persons) for tokens in texts]
        tokenized = self._tokenize_fast(rendered) if self._is_fast else self._tokenize_slow(rendered)

        examples = []
        per_record = 1 + NUM_CHOICES + (1 if self.config.task == "qa2r" else 0)  # question (+ answer) + choices
        for i, (record, answer) in enumerate(zip(records, queries)):
            texts = tokenized[i * per_record : (i + 1) * per_record]
            geometry = self._geometry(record, None if metadata is None else metadata[i])
            examples.append(self._assemble(record, answer, texts, geometry))
        return examples

    def _tokenize_fast(self, rendered: list[tuple[str, list[_NameSpan]]]) -> list[_Tokenized]:
        """Tokenize whole texts in one batch; map name character spans through the offsets."""
        batch = self.tokenizer(
            [text for text, _ in rendered],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        result = []
        for (_, spans), encoding in zip(rendered, batch.encodings):
            mentions = []
            if spans:
                offsets = encoding.offsets
                for space_start, start, end, obj in spans:
                    first = encoding.char_to_token(start)
                    last = encoding.char_to_token(end - 1)
                    if first is None or last is None:  # the normaliser removed the name: nothing to tag
                        continue
                    # A piece holding only the word-boundary marker before the name (SentencePiece's
                    # lone "▁") covers the space: it is a sub-token of the name.
                    if first > 0 and offsets[first - 1][1] > space_start:
                        first -= 1
                    mentions.append((first, last + 1, obj))
            result.append(_Tokenized(encoding.ids, mentions))
        return result

    def _tokenize_slow(self, rendered: list[tuple[str, list[_NameSpan]]]) -> list[_Tokenized]:
        """Encode each text piece by piece, cutting at name boundaries (always at a space)."""

        def encode(piece: str) -> list[int]:
            return self.tokenizer.encode(piece, add_special_tokens=False)

        result = []
        for text, spans in rendered:
            ids: list[int] = []
            mentions = []
            position = 0
            for space_start, _, end, obj in spans:
                if space_start > position:
                    ids += encode(text[position:space_start])
                name_ids = encode(text[space_start:end])
                if name_ids:
                    mentions.append((len(ids), len(ids) + len(name_ids), obj))
                ids += name_ids
                position = end
            if position < len(text):
                ids += encode(text[position:])
            result.append(_Tokenized(ids, mentions))
        return result

    def _geometry(self, record: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> ImageGeometry:
        if metadata is not None:
            geometry = geometry_from_metadata(metadata)
        elif self.images_root is not None:
            geometry = load_geometry(self.images_root, record)
        else:
            raise ValueError(
                "object patches need the image metadata (boxes, width, height): create the preprocessor "
                "with images_root= (the vcr1images folder) or pass metadata= for each record"
            )
        if len(geometry.boxes) < len(record["objects"]):
            raise VCRFormatError(
                file=record["metadata_fn"],
                line=None,
                annot_id=record.get("annot_id"),
                field="metadata_fn",
                expected=f"a box for each of the record's {len(record['objects'])} objects",
                got=f"{len(geometry.boxes)} boxes",
            )
        return geometry

    def _assemble(
        self, record: Mapping[str, Any], answer: int | None, texts: list[_Tokenized], geometry: ImageGeometry
    ) -> dict[str, Any]:
        config = self.config
        cls, sep = self._cls_id, self._sep_id
        question, choices = texts[0], texts[1:]
        if answer is None:
            first = question
        else:  # qa2r: "question [SEP] answer" is the first part
            query_answer, choices = choices[0], choices[1:]
            shift = len(question.ids) + 1
            first = _Tokenized(
                question.ids + [sep] + query_answer.ids,
                question.mentions + [(s + shift, e + shift, obj) for s, e, obj in query_answer.mentions],
            )
        budget = config.max_length - 3
        cells = box_cells(
            geometry.boxes,
            width=geometry.width,
            height=geometry.height,
            image_size=config.image_size,
            patch_size=config.patch_size,
            geometry=config.geometry,
        ).tolist()
        patch_lists: dict[int, list[int]] = {}

        input_ids, text_type_ids, object_ids, object_patches, truncated = [], [], [], [], []
        for choice in choices:
            kept_first, kept_second = _truncated_lengths(len(first.ids), len(choice.ids), budget)
            ids = [cls, *first.ids[:kept_first], sep, *choice.ids[:kept_second], sep]
            tags = [0] * len(ids)
            slot_of: dict[int, int] = {}
            parts = ((1, first.mentions, kept_first), (kept_first + 2, choice.mentions, kept_second))
            for base, mentions, kept in parts:  # base: where the part starts in ids
                for start, end, obj in mentions:
                    if end > kept:  # cut (partly or wholly) by truncation, and so is every later mention
                        break
                    slot = slot_of.setdefault(obj, len(slot_of))
                    tags[base + start : base + end] = [slot + 2] * (end - start)
            for obj in slot_of:
                if obj not in patch_lists:
                    patch_lists[obj] = cell_patches(cells[obj], config.grid)
            input_ids.append(ids)
            text_type_ids.append(tags)
            object_ids.append(list(slot_of))
            object_patches.append([patch_lists[obj] for obj in slot_of])
            truncated.append(kept_first + kept_second < len(first.ids) + len(choice.ids))

        return {
            "annot_id": record["annot_id"],
            "img_fn": record["img_fn"],
            "label": record.get("answer_label" if config.task == "q2a" else "rationale_label"),
            "answer_index": answer,
            "input_ids": input_ids,
            "text_type_ids": text_type_ids,
            "object_ids": object_ids,
            "object_patches": object_patches,
            "truncated": truncated,
        }

    # -- pixels ---------------------------------------------------------------------------------

    def load_pixels(self, record: Mapping[str, Any]) -> torch.Tensor:
        """Decode, transform and normalise ``images_root / record["img_fn"]``.

        Returns:
            float32 tensor ``[3, S, S]``; letterbox padding is exactly 0 (the mean colour).
        """
        if self.images_root is None:
            raise ValueError(
                "load_pixels needs the images: create the preprocessor with images_root= (the vcr1images folder)"
            )
        path = self.images_root / record["img_fn"]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except FileNotFoundError:
            raise VCRFormatError(
                file=path, line=None, annot_id=record.get("annot_id"), field="img_fn",
                expected="an existing image file under images_root", got=f"no file {path}",
            ) from None
        except OSError as exc:
            raise VCRFormatError(
                file=path, line=None, annot_id=record.get("annot_id"), field="img_fn",
                expected="a readable image", got=f"{type(exc).__name__}: {exc}",
            ) from None
        size = self.config.image_size
        transform = image_transform(image.width, image.height, image_size=size, geometry=self.config.geometry)
        image = image.resize(transform.resized, Image.Resampling.BICUBIC)
        if image.width > size or image.height > size:  # centre crop (negative offset)
            left, top = -transform.offset[0], -transform.offset[1]
            image = image.crop((left, top, left + size, top + size))
        content = (np.asarray(image, dtype=np.float32) * (1.0 / 255.0) - self._mean) / self._std
        pixels = torch.zeros(3, size, size, dtype=torch.float32)  # 0 = the mean colour after normalising
        x0, y0 = max(0, transform.offset[0]), max(0, transform.offset[1])
        pixels[:, y0 : y0 + content.shape[0], x0 : x0 + content.shape[1]] = torch.from_numpy(content).permute(2, 0, 1)
        return pixels

    def __call__(
        self,
        record: Mapping[str, Any],
        *,
        answer_index: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``prepare_text`` plus ``pixel_values`` ``[3, S, S]``."""
        example = self.prepare_text(record, answer_index=answer_index, metadata=metadata)
        example["pixel_values"] = self.load_pixels(record)
        return example

    # -- batching -------------------------------------------------------------------------------

    def collate(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack examples into the VCR batch contract (DESIGN.md section 3).

        Returns:
            ``input_ids``, ``attention_mask``, ``text_type_ids``: long ``[B, C, L]``, L the longest
            sequence rounded up to ``pad_to_multiple_of``; ``pixel_values`` float ``[B, 3, S, S]``;
            ``object_patch_mask`` bool ``[B, C, K, P]`` (K the most slots of any choice, at least 1);
            ``object_type_ids`` long ``[B, C, K]`` (``k + 2``, 0 on padding); ``object_mask`` long
            ``[B, C, K]``; ``labels`` long ``[B]`` only when every example has a label.
        """
        config = self.config
        if not examples:
            raise ValueError("collate needs at least one example")
        size, num_patches = config.image_size, config.num_patches
        for i, example in enumerate(examples):
            for key in ("input_ids", "text_type_ids", "object_ids", "object_patches"):
                if len(example[key]) != NUM_CHOICES:
                    raise ValueError(
                        f"example {i} ({example.get('annot_id')}): '{key}' has {len(example[key])} choices, "
                        f"expected {NUM_CHOICES}"
                    )
            if "pixel_values" not in example:
                raise ValueError(
                    f"example {i} ({example.get('annot_id')}) has no 'pixel_values': collate the output of "
                    f"the preprocessor's __call__ (or VCRDataset), not of prepare_text"
                )
            if tuple(example["pixel_values"].shape) != (3, size, size):
                raise ValueError(
                    f"example {i} ({example.get('annot_id')}): pixel_values has shape "
                    f"{tuple(example['pixel_values'].shape)}, expected (3, {size}, {size}) for image_size={size}"
                )
        sequences = [ids for example in examples for ids in example["input_ids"]]
        tags = [t for example in examples for t in example["text_type_ids"]]
        slot_objects = [objs for example in examples for objs in example["object_ids"]]
        slot_patches = [p for example in examples for p in example["object_patches"]]
        batch, rows = len(examples), len(sequences)

        length = max(len(ids) for ids in sequences)
        if config.pad_to_multiple_of:
            length = math.ceil(length / config.pad_to_multiple_of) * config.pad_to_multiple_of
        input_ids = np.full((rows, length), self._pad_id, dtype=np.int64)
        text_type_ids = np.zeros((rows, length), dtype=np.int64)
        attention_mask = np.zeros((rows, length), dtype=np.int64)
        for row, (ids, row_tags) in enumerate(zip(sequences, tags)):
            if len(row_tags) != len(ids):
                raise ValueError(
                    f"example {row // NUM_CHOICES} choice {row % NUM_CHOICES}: {len(row_tags)} text_type_ids "
                    f"for {len(ids)} input_ids; they must align token by token"
                )
            input_ids[row, : len(ids)] = ids
            text_type_ids[row, : len(ids)] = row_tags
            attention_mask[row, : len(ids)] = 1

        slots_per_row = np.array([len(objs) for objs in slot_objects], dtype=np.int64)
        if any(len(p) != n for p, n in zip(slot_patches, slots_per_row.tolist())):
            raise ValueError("object_patches and object_ids disagree on the number of slots")
        num_slots = max(1, int(slots_per_row.max()))
        object_mask = (np.arange(num_slots)[None, :] < slots_per_row[:, None]).astype(np.int64)
        object_type_ids = object_mask * (np.arange(num_slots)[None, :] + 2)

        # Scatter every (row, slot, patch) triple at once: flat patch indices + repeated slot ids.
        flat_slots = [p for row_patches in slot_patches for p in row_patches]
        counts = np.array([len(p) for p in flat_slots], dtype=np.int64)
        patch_index = np.fromiter(itertools.chain.from_iterable(flat_slots), dtype=np.int64, count=int(counts.sum()))
        if patch_index.size and (patch_index.min() < 0 or patch_index.max() >= num_patches):
            raise ValueError(
                f"object patch index {int(patch_index.max())} is outside the {config.grid}x{config.grid} grid: "
                f"the examples were prepared with another image_size/patch_size than this preprocessor's"
            )
        row_index = np.repeat(np.arange(rows), slots_per_row)
        slot_index = np.arange(len(flat_slots)) - np.repeat(np.cumsum(slots_per_row) - slots_per_row, slots_per_row)
        patch_mask = np.zeros((rows, num_slots, num_patches), dtype=bool)
        patch_mask[np.repeat(row_index, counts), np.repeat(slot_index, counts), patch_index] = True

        def per_choice(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).reshape(batch, NUM_CHOICES, *array.shape[1:])

        out = {
            "input_ids": per_choice(input_ids),
            "attention_mask": per_choice(attention_mask),
            "text_type_ids": per_choice(text_type_ids),
            "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
            "object_patch_mask": per_choice(patch_mask),
            "object_type_ids": per_choice(object_type_ids),
            "object_mask": per_choice(object_mask),
        }
        labels = [example["label"] for example in examples]
        if all(label is not None for label in labels):
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        return out


# ---------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------


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
    preprocessor = VCRPreprocessor(tokenizer, task=task, images_root=images_root, **options)
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
        "fast": preprocessor._is_fast,
    }
