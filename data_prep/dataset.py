"""A torch Dataset of VCR multiple-choice examples; images are decoded in ``__getitem__``.

Use it with ``DataLoader(dataset, batch_size=..., num_workers=..., collate_fn=dataset.collate)``
so that workers decode and transform the images and the main process only receives batches.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from data_prep.constants import NUM_CHOICES
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor

__all__ = ["VCRDataset"]

# Options that only change the pixels or the batching: cached text examples need not agree on them.
_NOT_TEXT_OPTIONS = frozenset({"image_mean", "image_std", "pad_to_multiple_of", "jpeg_draft", "pixel_dtype"})


class VCRDataset(Dataset):
    """VCR examples for one task: ``dataset[i]`` is an example dict with ``pixel_values``.

    Built from records (text prepared on access) or, with :meth:`from_prepared`, from cached text
    examples (only pixels on access). Under ``compat="vle"`` the text of every item is prepared
    here, once, in item order: VLE's name counter then advances as in one official pass over the
    records, whatever the DataLoader's order and workers.

    Args:
        records: VCR records (e.g. from ``read_vcr``).
        preprocessor: the :class:`VCRPreprocessor` (it needs ``images_root``).
        expand_answers: qa2r only: one example per candidate answer (4 per record), with the
            answer in the query given by ``example["answer_index"]``; needed for test records,
            which have no gold answer, and for Q->AR evaluation.
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        preprocessor: VCRPreprocessor,
        *,
        expand_answers: bool = False,
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
        self.records = records
        self.preprocessor = preprocessor
        self.expand_answers = expand_answers
        self._prepared: Sequence[Mapping[str, Any]] | None = None
        if preprocessor.config.compat == "vle" and records:
            if expand_answers:
                items = [r for r in records for _ in range(NUM_CHOICES)]
                answers = [a for _ in records for a in range(NUM_CHOICES)]
                self._prepared = preprocessor.prepare_many(items, answer_indices=answers)
            else:
                self._prepared = preprocessor.prepare_many(records)

    @classmethod
    def from_prepared(cls, examples: Sequence[Mapping[str, Any]], preprocessor: VCRPreprocessor) -> VCRDataset:
        """A dataset over cached text examples (``load_prepared`` or ``prepare_many`` output).

        When ``examples`` carries the options it was prepared with (``examples.config``, as
        ``load_prepared`` gives), they must match the preprocessor's.
        """
        prepared_config = getattr(examples, "config", None)
        if prepared_config is not None:
            ours = asdict(preprocessor.config)
            differing = [f"{k}: prepared {prepared_config.get(k)!r}, preprocessor {ours[k]!r}"
                         for k in PreprocessConfig.option_names()
                         if k not in _NOT_TEXT_OPTIONS and prepared_config.get(k) != ours[k]]
            if differing:
                raise ValueError("the prepared examples do not match the preprocessor (" + "; ".join(differing)
                                 + "): create the preprocessor with the prepared options or prepare again")
        dataset = cls([], preprocessor)
        dataset._prepared = examples
        return dataset

    def __len__(self) -> int:
        if self._prepared is not None:
            return len(self._prepared)
        return len(self.records) * (NUM_CHOICES if self.expand_answers else 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._prepared is not None:
            example = dict(self._prepared[index])
            example["pixel_values"] = self.preprocessor.load_pixels(example)
            return example
        if self.expand_answers:
            record_index, answer_index = divmod(index, NUM_CHOICES)
            return self.preprocessor(self.records[record_index], answer_index=answer_index)
        return self.preprocessor(self.records[index])

    @property
    def collate(self) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]:
        """The ``collate_fn`` for a DataLoader: the preprocessor's :meth:`VCRPreprocessor.collate`."""
        return self.preprocessor.collate
