"""The passes of a trained run over a labelled split that the probes ask for (``vlekit diagnose``).

``DiagnoseContext`` holds the run (VCR Q->A or QA->R, or VQA), the split's records (VCR records, or VQA
examples with their human answers) and how each question is scored, and gives a probe the model's logits on
the split (or on records the probe changed), each batch changed by the probe's transform, and the score of
each question's prediction (VCR: 1 / 0; VQA: the official accuracy of the arg-max answer, a share).
Passes are cached by name, and :meth:`DiagnoseContext.prefetch` runs the passes the probes declare
(``Probe.passes``) together: every pass on the split's own pictures (a changed batch, changed choices or
names, moved boxes) in one pass over them, each image decoded once and the model run once per pass. The
split's mean image (what ``image-blind`` shows instead of each picture) is summed during the first pass over
the images.

Each pass uses a fresh data pipeline of the run (``TrainedModel.preprocessor``), so under
``compat="vle"`` every pass names persons as one official pass over the records would.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data_prep.constants import VQA_TASK
from data_prep.dataset import VCRDataset
from data_prep.preprocess import VCRPreprocessor
from vlekit.diagnose.changes import LABEL_KEY, Batch
from vlekit.diagnose.probes import Pass
from vlekit.evaluation.evaluate import CHANCE, autocast_dtype
from vlekit.evaluation.metrics import majority_baseline, vqa_accuracy
from vlekit.model import BATCH_KEYS
from vlekit.runs.folder import TrainedModel

VQA_BATCH_KEYS = ("input_ids", "attention_mask", "pixel_values")  # what a VQA model takes (VCRModel.forward)

Transform = Callable[[Batch], Batch]


class _TextOnlyDataset(Dataset):
    """The examples of ``records`` with a zero image each (for probes that replace the pixels anyway)."""

    def __init__(self, records: Sequence[Mapping[str, Any]], preprocessor: VCRPreprocessor, *,
                 metadata: Sequence[Mapping[str, Any]] | None = None) -> None:
        # in order, once (VLE's name counter, as VCRDataset)
        self.examples = preprocessor.prepare_many(records, metadata=metadata)
        size = preprocessor.config.image_size
        dtype = torch.uint8 if preprocessor.config.pixel_dtype == "uint8" else torch.float32
        self.placeholder = torch.zeros(3, size, size, dtype=dtype)
        self.collate = preprocessor.collate

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.examples[index], "pixel_values": self.placeholder}


class _SharedImages(Dataset):
    """Item ``i``: question ``i``'s picture, decoded once, with the example of each dataset (each a version of
    the split's records on the same pictures: other texts, other boxes); batches are one per dataset."""

    def __init__(self, datasets: Sequence[VCRDataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        examples = [dataset.text_example(index) for dataset in self.datasets]
        pixels = self.datasets[0].pixels(examples[0])
        return [{**example, "pixel_values": pixels} for example in examples]

    def collate(self, items: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, torch.Tensor]]:
        return [dataset.collate([item[k] for item in items]) for k, dataset in enumerate(self.datasets)]


class DiagnoseContext:
    """A trained run and a labelled split, and the model's passes over it (implements
    :class:`vlekit.diagnose.probes.ProbeContext`).

    Args:
        trained: the run (``vlekit.runs.folder.load_trained``), a Q->A, a QA->R or a VQA model.
        records: the split's VCR records, every one labelled for the run's task; VQA: its examples
            (``data_prep.vqa.read_vqa``), every one with its human answers.
        images: the ``vcr1images`` folder of the split (VQA: the examples hold their image paths).
        precision: ``auto`` / ``bf16`` / ``fp16`` / ``fp32``; ``None``: the run's ``train.mixed_precision``
            (fp32 when the folder does not say).
        device: where the model runs (default: a GPU when there is one).
    """

    def __init__(self, trained: TrainedModel, records: Sequence[Mapping[str, Any]], *, images: str | Path,
                 batch_size: int = 32, num_workers: int = 2, precision: str | None = None,
                 device: str | torch.device | None = None, seed: int = 0, progress: bool = True) -> None:
        if not records:
            raise ValueError("no records to diagnose: the split is empty")
        self.trained, self.task, self.records = trained, trained.task, list(records)
        if self.task == VQA_TASK:
            unanswered = [e.question_id for e in self.records if not e.annotated]
            if unanswered:
                raise ValueError(f"{len(unanswered)} question(s) have no human answers (first: {unanswered[0]}): the "
                                 f"probes score accuracy, so give an annotated split (val, not test-dev) with --annotations")
            self.labels = None  # scored by the human answers (score)
            self.answers = list(trained.model.head.config.answers)
            self.chance = majority_baseline(self.records)[1].overall / 100
            self.batch_keys = VQA_BATCH_KEYS
        elif self.task in LABEL_KEY:
            label_key = LABEL_KEY[self.task]
            unlabelled = [r.get("annot_id") for r in self.records if r.get(label_key) is None or r.get("answer_label") is None]
            if unlabelled:
                raise ValueError(f"{len(unlabelled)} record(s) have no {label_key} (first: {unlabelled[0]}): the probes "
                                 f"score accuracy, so give a labelled split (val, not test)")
            self.labels = np.array([int(r[label_key]) for r in self.records])
            self.chance = CHANCE[self.task]
            self.batch_keys = BATCH_KEYS
        else:
            raise ValueError(f"{trained.folder} is a {trained.task!r} run; vlekit diagnose puts a VCR run (q2a or qa2r) "
                             f"or a VQA run to the test")
        self.images = Path(images)
        self.batch_size, self.num_workers, self.seed, self.progress = batch_size, num_workers, seed, progress
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision or trained.mixed_precision or "fp32"
        self.autocast = autocast_dtype(self.precision, self.device)  # a bad value fails before any work
        self.model = trained.model.to(self.device).eval()
        self.sep_token_id = int(trained.tokenizer.sep_token_id)
        self._logits: dict[str, np.ndarray] = {}
        self._mean_pixels: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"DiagnoseContext({self.task} run {self.trained.folder}, {len(self.records)} questions, {self.device})"

    # -- what probes use ---------------------------------------------------------------------------------
    def score(self, logits: np.ndarray) -> np.ndarray:
        """``[N]``: the score of each question's prediction (the arg-max of its ``logits`` row): VCR 1 / 0,
        VQA the official accuracy of the predicted answer against the question's human answers."""
        predicted = np.asarray(logits).argmax(-1)
        if self.labels is not None:
            return (predicted == self.labels).astype(float)
        return np.array([vqa_accuracy(self.answers[int(p)], example.answers)
                         for p, example in zip(predicted, self.records)])

    def logits(self, name: str, *, transform: Transform | None = None,
               records: Sequence[Mapping[str, Any]] | None = None, pixels: bool = True,
               metadata: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """``[N, C]`` logits on ``records`` (default: the split's), every batch changed by ``transform``;
        ``pixels=False``: no image is decoded (the batch holds zeros: the transform must replace them);
        ``metadata``: per record, ``{"boxes", "width", "height"}`` instead of its metadata file.
        Cached by ``name``: a second call with the same name returns the first pass's logits."""
        return self.pass_logits(name, Pass(transform=transform, records=records, metadata=metadata, pixels=pixels))

    def pass_logits(self, name: str, spec: Pass) -> np.ndarray:
        """:meth:`logits` of the pass ``spec`` (run now unless :meth:`prefetch` ran it), cached by ``name``."""
        if name not in self._logits:
            self.prefetch({name: spec})
        return self._logits[name]

    def prefetch(self, passes: Mapping[str, Pass]) -> None:
        """Run the passes ``{name: spec}`` that still lack logits, sharing the images: every pass that shows
        the split's own pictures (a changed batch; VCR: changed texts or boxes) runs in one pass over them,
        each image decoded once, the others (no pixels, other pictures) one by one. The first pass over the
        split's pictures also sums the mean image."""
        missing = {name: spec for name, spec in passes.items() if name not in self._logits}
        for name, spec in missing.items():
            for what, given in (("records", spec.records), ("metadata", spec.metadata)):
                if given is not None and len(given) != len(self.records):
                    raise ValueError(f"probe pass {name!r}: {len(given)} {what} for a split of {len(self.records)}; "
                                     f"a probe changes the split's records one for one")
        shared = {name: spec for name, spec in missing.items() if spec.pixels and self._own_images(spec.records)}
        if shared:
            self._logits.update(self._run(shared))
        for name, spec in missing.items():
            if name not in shared:
                self._logits.update(self._run({name: spec}))

    def mean_pixels(self) -> torch.Tensor:
        """The split's mean image ``[3, S, S]`` (mean over its questions of the normalised pixels the
        model takes), from the first pass over the images (one is run if none has been)."""
        if self._mean_pixels is None:
            self._run({})
        assert self._mean_pixels is not None
        return self._mean_pixels

    # -- the passes --------------------------------------------------------------------------------------
    def _own_images(self, records: Sequence[Any] | None) -> bool:
        """Whether ``records`` show the split's own pictures, question for question (VQA: only the split's
        records themselves; its pipeline reads one list of examples)."""
        if records is None:
            return True
        if self.task == VQA_TASK:
            return False
        return all(mine["img_fn"] == theirs["img_fn"] for mine, theirs in zip(self.records, records))

    def _run(self, passes: Mapping[str, Pass]) -> dict[str, np.ndarray]:
        """One pass over the split: the passes with the same records and boxes share their examples (each changes
        the batch its own way), and groups of other records or boxes share the decoded images (``prefetch``)."""
        groups: dict[tuple[int, int], tuple[Pass, dict[str, Transform | None]]] = {}
        for name, spec in passes.items():
            key = (id(spec.records), id(spec.metadata))
            groups.setdefault(key, (spec, {}))[1][name] = spec.transform
        if not groups:  # no pass: the split's pictures, for the mean image
            groups[(id(None), id(None))] = (Pass(), {})
        specs = [spec for spec, _ in groups.values()]
        pixels = all(spec.pixels for spec in specs)
        if len(specs) == 1:
            spec = specs[0]
            dataset = self._dataset(self.records if spec.records is None else spec.records, pixels=pixels,
                                    metadata=spec.metadata)
        else:  # VCR: several texts or boxes on the split's own pictures; a pipeline each (compat="vle" names persons
            # by a counter that runs on over the records, as in one official pass over them)
            dataset = _SharedImages([VCRDataset(self.records if spec.records is None else spec.records,
                                                self.trained.preprocessor(images_root=self.images), metadata=spec.metadata)
                                     for spec in specs])
        loader = DataLoader(dataset, batch_size=self.batch_size, collate_fn=dataset.collate,
                            num_workers=self.num_workers if pixels else 0)
        sum_pixels = pixels and self._mean_pixels is None and all(self._own_images(spec.records) for spec in specs)
        pixel_sum = None
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in passes}
        names = list(passes)
        description = "diagnose " + (", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")
                                     if names else "mean image")
        with torch.inference_mode():
            for collated in tqdm(loader, desc=description, disable=not self.progress, dynamic_ncols=True, leave=False):
                batches = collated if isinstance(collated, list) else [collated]
                batches = [{key: batch[key].to(self.device, non_blocking=True) for key in self.batch_keys}
                           for batch in batches]
                if sum_pixels:
                    images = self.model.normalise_pixels(batches[0]["pixel_values"]).float().sum(0)
                    pixel_sum = images if pixel_sum is None else pixel_sum + images
                for batch, (_, transforms) in zip(batches, groups.values()):
                    for name, transform in transforms.items():
                        changed = transform(dict(batch)) if transform is not None else batch
                        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                            logits = self.model(**{key: changed[key] for key in self.batch_keys})["logits"]
                        chunks[name].append(logits.float().cpu())
        if sum_pixels and pixel_sum is not None:
            self._mean_pixels = pixel_sum / len(self.records)
        return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}

    def _dataset(self, records: Sequence[Any], *, pixels: bool, metadata: Sequence[Mapping[str, Any]] | None) -> Dataset:
        """The run's data pipeline over ``records``; ``pixels=False``: zeros instead of the images, none decoded;
        ``metadata``: other boxes (VCR)."""
        if self.task == VQA_TASK:
            if metadata is not None:
                raise ValueError("a VQA run's data has no boxes: a probe that moves boxes puts a VCR run to the test")
            return self.trained.vqa_dataset(records, decode_images=pixels)
        preprocessor = self.trained.preprocessor(images_root=self.images)
        if pixels:
            return VCRDataset(records, preprocessor, metadata=metadata)
        return _TextOnlyDataset(records, preprocessor, metadata=metadata)
