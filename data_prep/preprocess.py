"""VCR records -> RACE-style multiple-choice examples (DESIGN.md sections 3 and 4).

Owns ``PreprocessConfig`` (every option that changes a prepared example: the run's
``data_prep.options.PreprocessOptions`` and the image side) and ``VCRPreprocessor``,
which runs the steps of the other modules: text (``data_prep.text``, or ``data_prep.vle_text``
under ``compat="vle"``), geometry (``data_prep.geometry``), pixels (``data_prep.pixels``) and
batching (``data_prep.collate``).

One record gives one example: C = 4 text sequences (one per choice) that share one image.

Two modes:

- ``compat="none"`` (default): deterministic and readable. Persons are named per record by first
  mention, referenced objects numbered by first mention, truncation is longest-first and never
  removes a [SEP] or a whole part; boxes follow the pixels (``geometry``, default ``squash``).
- ``compat="vle"``: the official VLE VCR pipeline, exactly (for official VCR checkpoints). A fresh
  preprocessor called on records in some order gives the input ids, type ids, object slots and
  pixels a fresh official pipeline gives on them in that order: person names from a counter that
  this preprocessor holds and never resets, set-order object numbering, the official truncation
  shared by the choices, private-use words dropped, and the ``vle-compat`` geometry.

Example dict (``prepare_text``; ``__call__`` adds ``pixel_values``), C = 4, K_c slots in choice c:

- ``annot_id`` str, ``img_fn`` str, ``label`` int | None (answer label for q2a, rationale label for
  qa2r), ``answer_index`` int | None (qa2r: the answer in the query; None for q2a)
- ``input_ids``, ``text_type_ids``: C lists of L_c ints; ``truncated``: C bools
- ``object_ids``: C lists of K_c VCR object indices, slot k tagged ``k + 2``; ``object_patches``:
  C lists of K_c sorted lists of row-major patch indices in ``0 .. grid**2 - 1``
- ``pixel_values``: tensor ``[3, S, S]``, float32 normalised or uint8 (``pixel_dtype``)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from data_prep.collate import collate_examples
from data_prep.constants import CLIP_MEAN, CLIP_STD, NUM_CHOICES, TASKS
from data_prep.geometry import box_cells, cell_patches
from data_prep.options import RUN_OPTIONS, PreprocessOptions
from data_prep.pixels import load_pixels
from data_prep.text import (
    NameSpan,
    assemble_texts,
    person_names,
    render_tokens,
    tokenize_rendered,
)
from data_prep.vcr import ImageGeometry, VCRFormatError, geometry_from_metadata, load_geometry
from data_prep.vle_text import VLENameCounter, check_vle_tokenizer, vle_texts

__all__ = ["MODEL_OPTIONS", "PreprocessConfig", "VCRPreprocessor"]


@dataclass(frozen=True)
class PreprocessConfig(PreprocessOptions):
    """Every option that changes a prepared VCR example (validated on construction): the run's
    :class:`~data_prep.options.PreprocessOptions` (task, compat, geometry, max_length,
    pad_to_multiple_of, jpeg_draft, pixel_dtype; VCR tasks only) and the image side, which the
    model's vision encoder supplies in a run (``MODEL_OPTIONS``):

    Attributes:
        image_size: side S of the square model input.
        patch_size: vision patch size; the grid is ``g = S // patch_size`` and ``P = g * g``.
        image_mean, image_std: per-channel pixel normalisation (RGB, on 0..1 values).
    """

    tasks: ClassVar[tuple[str, ...]] = TASKS

    image_size: int = 224
    patch_size: int = 16
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                f"the patch grid must tile the image (e.g. 224/16, 224/32, 336/14)"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"{name} must be 3 numbers (R, G, B), got {value!r}")
        if any(v <= 0 for v in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std!r}")

    @property
    def grid(self) -> int:
        """Patches per side, g."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """P = g * g (CLS excluded)."""
        return self.grid * self.grid


# The options the model owns (its vision encoder's input); the run's config sets the others (RUN_OPTIONS).
MODEL_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(PreprocessConfig) if f.name not in RUN_OPTIONS)


class VCRPreprocessor:
    """Turns VCR records into multiple-choice examples and batches (DESIGN.md section 3).

    Args:
        tokenizer: any Hugging Face tokenizer (fast or slow) with cls, sep and pad tokens;
            ``compat="vle"`` needs a SentencePiece one (DeBERTa-v3, as VLE ships).
        config: every option (:class:`PreprocessConfig`); :meth:`build` takes them as keywords.
        images_root: the ``vcr1images`` folder (for metadata and pixels); may be omitted when every
            call passes ``metadata=`` and pixels are not needed.

    Under ``compat="vle"`` the preprocessor holds VLE's name counter (``vle_names``): every
    ``prepare_text`` / ``__call__`` advances it, as every official call does, so call a fresh
    preprocessor in the order the official pipeline would see the records (``VCRDataset`` prepares
    the text of all its items in order, once, so DataLoader workers do not each count on their own).
    """

    def __init__(self, tokenizer: Any, *, config: PreprocessConfig, images_root: str | Path | None = None) -> None:
        if not isinstance(config, PreprocessConfig):
            raise TypeError(
                f"config must be a PreprocessConfig, got {type(config).__name__}; build one with "
                f"VCRPreprocessor.build(tokenizer, task=..., ...) to pass the options directly"
            )
        self.config = config
        for attribute in ("cls_token_id", "sep_token_id", "pad_token_id"):
            if getattr(tokenizer, attribute, None) is None:
                raise ValueError(
                    f"tokenizer {type(tokenizer).__name__} has no {attribute[:-3]}: the VCR layout "
                    f"[CLS] question [SEP] choice [SEP] and padding need cls, sep and pad tokens; add them with "
                    f"tokenizer.add_special_tokens({{'cls_token': ..., 'sep_token': ..., 'pad_token': ...}})"
                )
        if self.config.compat == "vle":
            check_vle_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        # Read once: attribute access on Hugging Face tokenizers is slow in the hot path.
        self._cls_id, self._sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self._pad_id = tokenizer.pad_token_id
        self.images_root = Path(images_root) if images_root is not None else None
        self._is_fast = bool(getattr(tokenizer, "is_fast", False))
        self.vle_names = VLENameCounter()
        self._pieces: dict[str, list[str]] = {}  # tokenize() of one word: a pure function, cached

    @classmethod
    def build(cls, tokenizer: Any, *, images_root: str | Path | None = None, **options: Any) -> VCRPreprocessor:
        """``VCRPreprocessor(tokenizer, config=PreprocessConfig(**options), images_root=...)``."""
        if "image_mean" in options:
            options["image_mean"] = tuple(options["image_mean"])
        if "image_std" in options:
            options["image_std"] = tuple(options["image_std"])
        return cls(tokenizer, config=PreprocessConfig(**options), images_root=images_root)

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
        """``prepare_text`` for many records (in order), tokenizing each chunk of records in one batch.

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
        if self.config.compat == "vle":
            texts_per_record = [self._vle_texts(record, answer) for record, answer in zip(records, queries)]
        else:
            texts_per_record = self._default_texts(records, queries)
        examples = []
        for i, (record, answer) in enumerate(zip(records, queries)):
            geometry = self._geometry(record, None if metadata is None else metadata[i])
            examples.append(self._example(record, answer, texts_per_record[i], geometry))
        return examples

    def _default_texts(
        self, records: Sequence[Mapping[str, Any]], queries: Sequence[int | None]
    ) -> list[list[tuple[list[int], list[int], list[int], bool]]]:
        """Per record, per choice ``(input_ids, text_type_ids, object_ids, truncated)`` (default mode)."""
        rendered: list[tuple[str, list[NameSpan]]] = []
        for record, answer in zip(records, queries):
            persons = person_names(record, self.config.person_names, answer=answer)
            objects = record["objects"]
            texts = [record["question"]]
            if answer is not None:
                texts.append(record["answer_choices"][answer])
            texts += record["answer_choices"] if answer is None else record["rationale_choices"]
            rendered += [render_tokens(tokens, objects, persons) for tokens in texts]
        tokenized = tokenize_rendered(self.tokenizer, rendered)
        result = []
        start = 0
        for answer in queries:
            num_parts = 1 if answer is None else 2
            parts = tokenized[start : start + num_parts]
            choices = tokenized[start + num_parts : start + num_parts + NUM_CHOICES]
            start += num_parts + NUM_CHOICES
            result.append(assemble_texts(parts, choices, cls=self._cls_id, sep=self._sep_id,
                                         max_length=self.config.max_length))
        return result

    def _tokenize_word(self, text: str) -> list[str]:
        pieces = self._pieces.get(text)
        if pieces is None:
            pieces = self._pieces[text] = self.tokenizer.tokenize(text)
        return pieces

    def _vle_texts(
        self, record: Mapping[str, Any], answer: int | None
    ) -> list[tuple[list[int], list[int], list[int], bool]]:
        """Per choice ``(input_ids, text_type_ids, object_ids, truncated)``: one official call."""
        return vle_texts(record, answer, names=self.vle_names.names(record["objects"]), tokenizer=self.tokenizer,
                         tokenize=self._tokenize_word, max_length=self.config.max_length)

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

    def _example(
        self, record: Mapping[str, Any], answer: int | None,
        texts: list[tuple[list[int], list[int], list[int], bool]], geometry: ImageGeometry,
    ) -> dict[str, Any]:
        config = self.config
        cells = box_cells(
            geometry.boxes, width=geometry.width, height=geometry.height, image_size=config.image_size,
            patch_size=config.patch_size, geometry=config.geometry,
        ).tolist()
        patch_lists: dict[int, list[int]] = {}
        object_patches = []
        for _, _, objects, _ in texts:
            for obj in objects:
                if obj not in patch_lists:
                    patch_lists[obj] = cell_patches(cells[obj], config.grid)
            object_patches.append([patch_lists[obj] for obj in objects])
        return {
            "annot_id": record["annot_id"],
            "img_fn": record["img_fn"],
            "label": record.get("answer_label" if config.task == "q2a" else "rationale_label"),
            "answer_index": answer,
            "input_ids": [ids for ids, _, _, _ in texts],
            "text_type_ids": [tags for _, tags, _, _ in texts],
            "object_ids": [objects for _, _, objects, _ in texts],
            "object_patches": object_patches,
            "truncated": [cut for _, _, _, cut in texts],
        }

    # -- pixels ---------------------------------------------------------------------------------

    def load_pixels(self, record: Mapping[str, Any]) -> torch.Tensor:
        """Decode, transform and normalise ``images_root / record["img_fn"]`` (``data_prep.pixels``).

        Returns:
            tensor ``[3, S, S]``, float32 normalised or uint8 (``pixel_dtype``); letterbox padding is
            the 8-bit colour nearest the mean (``data_prep.pixels.padding_colour``).
        """
        if self.images_root is None:
            raise ValueError(
                "load_pixels needs the images: create the preprocessor with images_root= (the vcr1images folder)"
            )
        config = self.config
        return load_pixels(
            self.images_root / record["img_fn"], image_size=config.image_size, geometry=config.geometry,
            mean=config.image_mean, std=config.image_std, draft=config.jpeg_draft, dtype=config.pixel_dtype,
            annot_id=record.get("annot_id"),
        )

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
        """Stack examples into the VCR batch contract (``data_prep.collate.collate_examples``)."""
        return collate_examples(examples, image_size=self.config.image_size, grid=self.config.grid,
                                pad_to_multiple_of=self.config.pad_to_multiple_of, pad_id=self._pad_id)
