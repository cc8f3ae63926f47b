"""A torch Dataset of VCR multiple-choice examples; images are decoded in ``__getitem__``.

Use it with ``DataLoader(dataset, batch_size=..., num_workers=..., collate_fn=dataset.collate)``
so that workers decode and transform the images and the main process only receives batches.

An image that fails to decode in a worker (a truncated JPEG passes the header-only preflight) raises
:class:`ImageDecodeError`, naming the file; with ``skip_bad=True`` the item is replaced by the next
one that loads instead, logged with the file name and counted (:meth:`VCRDataset.skipped_items`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from data_prep.constants import NUM_CHOICES
from data_prep.preprocess import VCRPreprocessor
from data_prep.vcr import VCRFormatError

__all__ = ["ImageDecodeError", "VCRDataset"]

logger = logging.getLogger(__name__)


class ImageDecodeError(ValueError):
    """An item's image could not be loaded (missing, unreadable or truncated), named with its record.

    It takes one message, so that a DataLoader re-raises it in the main process as itself
    (``type(error)(text)``); the worker's traceback, which the DataLoader puts in that text, is
    dropped, so the command lines (which print a ValueError's message) print one line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:  # the DataLoader's re-raise
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class VCRDataset(Dataset):
    """VCR examples for one task: ``dataset[i]`` is an example dict with ``pixel_values``.

    The text of an item is prepared on access, from its record; under ``compat="vle"`` the text of
    every item is prepared here instead, once, in item order: VLE's name counter then advances as in
    one official pass over the records, whatever the DataLoader's order and workers.

    Args:
        records: VCR records (e.g. from ``read_vcr``).
        preprocessor: the :class:`VCRPreprocessor` (it needs ``images_root``).
        expand_answers: qa2r only: one example per candidate answer (4 per record), with the
            answer in the query given by ``example["answer_index"]``; needed for test records,
            which have no gold answer, and for Q->AR evaluation.
        skip_bad: an item whose image (or metadata) fails to load is replaced by the next item that
            loads (deterministic: the same failures give the same batches), not raised. For
            training (``data.skip_bad``); an evaluation must not swap questions.
        metadata: per record, ``{"boxes", "width", "height"}`` to use instead of its metadata file
            (``VCRPreprocessor.prepare_text``'s ``metadata``): a probe that moves the boxes.
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        preprocessor: VCRPreprocessor,
        *,
        expand_answers: bool = False,
        skip_bad: bool = False,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        task = preprocessor.config.task
        if expand_answers and task != "qa2r":
            raise ValueError(
                f"expand_answers=True only applies to task='qa2r' (it varies the answer in the query), not {task!r}"
            )
        if task == "qa2r" and not expand_answers:
            unlabeled = next((r for r in records if r.get("answer_label") is None), None)
            if unlabeled is not None:
                raise ValueError(
                    f"record {unlabeled.get('annot_id')} has no answer_label, so qa2r has no gold answer for its "
                    f"query: use VCRDataset(..., expand_answers=True) for unlabeled (test) records"
                )
        if preprocessor.images_root is None:
            raise ValueError(
                "VCRDataset decodes images: create the preprocessor with images_root= (the vcr1images folder)"
            )
        if metadata is not None and len(metadata) != len(records):
            raise ValueError(f"metadata has {len(metadata)} entries for {len(records)} records; give one per record")
        self.records = records
        self.preprocessor = preprocessor
        self.expand_answers = expand_answers
        self.metadata = metadata
        self._prepared: Sequence[Mapping[str, Any]] | None = None
        if preprocessor.config.compat == "vle" and records:
            if expand_answers:
                items = [r for r in records for _ in range(NUM_CHOICES)]
                answers = [a for _ in records for a in range(NUM_CHOICES)]
                item_metadata = None if metadata is None else [m for m in metadata for _ in range(NUM_CHOICES)]
                self._prepared = preprocessor.prepare_many(items, answer_indices=answers, metadata=item_metadata)
            else:
                self._prepared = preprocessor.prepare_many(records, metadata=metadata)
        # One flag per item in shared memory: DataLoader workers (forked or spawned) mark the items
        # they failed to load, the main process reads the marks (skipped_items).
        self._failed = torch.zeros(len(self), dtype=torch.bool).share_memory_() if skip_bad else None

    def __len__(self) -> int:
        if self._prepared is not None:
            return len(self._prepared)
        return len(self.records) * (NUM_CHOICES if self.expand_answers else 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._failed is None:
            return self._load(index)
        for candidate in self._candidates(index):
            try:
                return self._load(candidate)
            except VCRFormatError as error:
                self._failed[candidate] = True
                logger.warning("data.skip_bad: item %d (annot_id %s) skipped, the next item that loads takes its "
                               "place: %s: %s", candidate, self._record(candidate)[0].get("annot_id"), error.file,
                               error.got)
        raise ImageDecodeError(f"no item of the {len(self)} loads (data.skip_bad skipped them all): check the images "
                               f"under {self.preprocessor.images_root} with `vlekit check-data --decode`")

    def _candidates(self, index: int) -> Iterator[int]:
        """``index``, then the items after it (wrapping round), leaving out those known to fail."""
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if not self._failed[candidate]:
                yield candidate

    def _record(self, index: int) -> tuple[Mapping[str, Any], int | None]:
        """The record of item ``index`` and the answer in its query (``expand_answers``; else None)."""
        if self._prepared is not None:
            return self._prepared[index], self._prepared[index]["answer_index"]
        if self.expand_answers:
            record_index, answer_index = divmod(index, NUM_CHOICES)
            return self.records[record_index], answer_index
        return self.records[index], None

    def _load(self, index: int) -> dict[str, Any]:
        example = self.text_example(index)
        example["pixel_values"] = self.pixels(example)
        return example

    def text_example(self, index: int) -> dict[str, Any]:
        """Item ``index`` without its pixels (everything ``VCRPreprocessor.prepare_text`` gives)."""
        record, answer = self._record(index)
        if self._prepared is not None:
            return dict(record)
        own = None if self.metadata is None else self.metadata[index // NUM_CHOICES if self.expand_answers else index]
        return self.preprocessor.prepare_text(record, answer_index=answer, metadata=own)

    def pixels(self, example: Mapping[str, Any]) -> torch.Tensor:
        """The decoded image of ``example`` (an item's ``text_example``); a failure is an :class:`ImageDecodeError`
        naming the file (``skip_bad``: the ``VCRFormatError``, which ``__getitem__`` handles)."""
        try:
            return self.preprocessor.load_pixels(example)
        except VCRFormatError as error:
            if self._failed is not None:
                raise
            raise ImageDecodeError(
                f"cannot load image {error.file} (annot_id {example['annot_id']}): {error.got}; "
                f"`vlekit check-data --decode` finds every such image, and a training run skips them with "
                f"data.skip_bad=true"
            ) from None

    def skipped_items(self) -> list[str]:
        """The items replaced because they failed to load (``skip_bad``; every DataLoader worker's so
        far), as ``"annot_id (img_fn)"``."""
        if self._failed is None:
            return []
        records = (self._record(int(i))[0] for i in self._failed.nonzero().flatten())
        return [f"{record['annot_id']} ({record['img_fn']})" for record in records]

    @property
    def collate(self) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]:
        """The ``collate_fn`` for a DataLoader: the preprocessor's :meth:`VCRPreprocessor.collate`."""
        return self.preprocessor.collate
