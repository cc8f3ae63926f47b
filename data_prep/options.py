"""The run's preprocessing options, declared once: ``PreprocessOptions``.

Three places take them: ``data_prep.preprocess.PreprocessConfig`` (VCR; it adds the image side the
model's vision encoder supplies: size, patch, mean, std), ``data_prep.vqa.VQADataset`` (VQA) and
vlekit's experiment config (``DataConfig`` inherits this class, so its YAML keys are these names).
Each option has one default and one validation, here; ``geometry`` left unset resolves on
construction to the task's and mode's own (:func:`default_geometry`), so a saved config holds the
geometry that was used, not a default that may change.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from data_prep.constants import COMPAT_MODES, GEOMETRY_MODES, PERSON_NAMINGS, PIXEL_DTYPES, TASKS, VQA_TASK

__all__ = ["PREPROCESS_TASKS", "RUN_OPTIONS", "VQA_OPTIONS", "PreprocessOptions", "default_geometry", "saved_run_options"]

PREPROCESS_TASKS: tuple[str, ...] = (*TASKS, VQA_TASK)
# The options VQADataset takes (VQA has no choices to pad per batch and no official text pipeline).
VQA_OPTIONS: tuple[str, ...] = ("geometry", "max_length", "jpeg_draft", "pixel_dtype")


def default_geometry(*, task: str, compat: str) -> str:
    """The geometry an unset ``geometry`` means: ``center-crop`` for VQA (VLE's processor), ``vle-compat``
    under ``compat="vle"`` (the official VCR pipeline's, the only one it accepts), else ``squash``."""
    if task == VQA_TASK:
        return "center-crop"
    return "vle-compat" if compat == "vle" else "squash"


def _choose(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{where}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class PreprocessOptions:
    """How records become model inputs, whatever the model (validated on construction).

    Attributes:
        task: ``"q2a"`` / ``"qa2r"`` (VCR multiple choice) or ``"vqa"`` (VQA v2).
        compat: ``"none"`` (vlekit's deterministic rules) or ``"vle"`` (the official VLE VCR
            pipeline, exactly: for official VCR checkpoints; see ``data_prep.preprocess``). VQA: ``"none"``.
        geometry: ``squash``, ``letterbox``, ``center-crop`` or ``vle-compat`` (see
            ``data_prep.geometry.image_transform``); unset (None): :func:`default_geometry`, resolved here.
        max_length: longest text sequence, special tokens included (VLE: 80 for VCR, 50 for VQA).
        pad_to_multiple_of: VCR batches pad L up to a multiple of this (None: no rounding).
        jpeg_draft: decode JPEGs at a reduced scale (PIL's ``Image.draft``: 1/2, 1/4 or 1/8, never
            below the resize target) before the bicubic resize; faster on large frames, pixels
            differ slightly from a full decode. Not with ``compat="vle"`` (the official processor
            decodes in full).
        pixel_dtype: ``"float32"`` (normalised by the data pipeline) or ``"uint8"`` (8-bit RGB,
            normalised by the model on its device: a quarter of the bytes through the DataLoader and
            the host-to-device copy); both give the same normalised pixels to float rounding
            (``data_prep.pixels``). Not with ``compat="vle"``, whose float arithmetic is the official
            processor's, bit for bit.
        person_names: ``"by-query"`` (the query's persons by first mention, then the others in object
            order: a choice reads the same whatever the other choices and their order), ``"by-object"``
            (all in object order) or ``"by-first-mention"`` (over the question and every choice: what runs
            saved before this option were fed; :func:`saved_run_options`). See ``data_prep.text``.
            ``compat="vle"`` names persons as the official pipeline does and ignores it.
    """

    # The tasks a subclass takes (PreprocessConfig: VCR's; vlekit's DataConfig: every registered task,
    # through known_tasks), and the prefix of option names in its error messages (DataConfig: "data.").
    tasks: ClassVar[tuple[str, ...]] = PREPROCESS_TASKS
    option_prefix: ClassVar[str] = ""

    task: str = "q2a"
    compat: str = "none"
    geometry: str | None = None
    max_length: int = 80
    pad_to_multiple_of: int | None = 8
    jpeg_draft: bool = False
    pixel_dtype: str = "float32"
    person_names: str = "by-query"

    @classmethod
    def known_tasks(cls) -> tuple[str, ...]:
        """The values ``task`` may take."""
        return cls.tasks

    def pipeline_task(self) -> str:
        """The data pipeline ``task``'s examples go through (one of ``PREPROCESS_TASKS``): here the task itself;
        vlekit's DataConfig: the registered task's ``data_task`` (a plugin task reading VCR or VQA data)."""
        return self.task

    def __post_init__(self) -> None:
        name = self.option_prefix
        _choose(f"{name}task", self.task, self.known_tasks())
        task = self.pipeline_task()
        if task != self.task:
            _choose(f"task {self.task!r}'s data_task", task, PREPROCESS_TASKS)
        _choose(f"{name}compat", self.compat, COMPAT_MODES)
        if self.geometry is None:  # frozen: resolve the default once, here
            object.__setattr__(self, "geometry", default_geometry(task=task, compat=self.compat))
        _choose(f"{name}geometry", self.geometry, GEOMETRY_MODES)
        _choose(f"{name}pixel_dtype", self.pixel_dtype, PIXEL_DTYPES)
        _choose(f"{name}person_names", self.person_names, PERSON_NAMINGS)
        if task == VQA_TASK and self.compat != "none":
            raise ValueError(f"{name}compat={self.compat!r} is the official VCR pipeline's; a vqa run uses compat "
                             f"'none' (VLE's VQA processor is geometry 'center-crop', the vqa default)")
        if self.compat == "vle" and self.geometry != "vle-compat":
            raise ValueError(
                f"{name}compat='vle' reproduces the official pipeline, whose geometry is 'vle-compat', not "
                f"{self.geometry!r}: leave {name}geometry unset (or 'vle-compat'), or use {name}compat='none'"
            )
        if self.compat == "vle" and self.jpeg_draft:
            raise ValueError(f"{name}jpeg_draft=True changes the pixels; compat='vle' reproduces the official full decode")
        if self.compat == "vle" and self.pixel_dtype != "float32":
            raise ValueError(
                f"{name}pixel_dtype={self.pixel_dtype!r} moves the normalisation to the model, whose float arithmetic "
                f"is not the official processor's; compat='vle' needs pixel_dtype='float32'"
            )
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length <= 0:
            raise ValueError(f"{name}max_length must be a positive int, got {self.max_length!r}")
        # Room for the special tokens (one [CLS], a [SEP] per part) and a text token per part.
        min_length = {"q2a": 5, "qa2r": 7, VQA_TASK: 3}[task]
        if self.max_length < min_length:
            raise ValueError(f"{name}max_length={self.max_length} is too short for {self.task}; use at least "
                             f"{min_length} (VLE uses {50 if task == VQA_TASK else 80})")
        if self.pad_to_multiple_of is not None and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of <= 0
        ):
            raise ValueError(f"{name}pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}")

    def run_options(self) -> dict[str, Any]:
        """The options by name (resolved), in declaration order: what a run saves and its pipeline takes
        (``task``: the pipeline's, :meth:`pipeline_task`)."""
        return {name: getattr(self, name) for name in RUN_OPTIONS} | {"task": self.pipeline_task()}


RUN_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(PreprocessOptions))

# Options added after runs were saved without them, with the value that gives those runs' inputs.
_UNSAVED_BEFORE = {"person_names": "by-first-mention"}


def saved_run_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A VCR run's saved preprocessing (its ``data.json``) with what an older run did not record filled in
    as that run was fed (``person_names``: ``by-first-mention``), so an old run is scored on its own inputs."""
    if saved.get("task") == VQA_TASK:
        return dict(saved)
    return {**_UNSAVED_BEFORE, **saved}
