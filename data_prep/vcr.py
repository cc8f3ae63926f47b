"""Reading and validating VCR annotation files (``train/val/test.jsonl``) and image metadata.

A VCR record is one JSON object per line. Its text fields are lists of *VCR tokens*: a token is
either a word (``str``) or a non-empty list of object indices (``[0, 2]`` means "objects 0 and 2").
Every problem found is raised (or, with ``skip_bad=True``, collected) as a :class:`VCRFormatError`
that says which file, line, record and field was wrong and what was expected::

    val.jsonl line 7 (annot_id val-12): field 'answer_label': expected an int in 0..3, got 5
"""
from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.constants import NUM_CHOICES
from data_prep.errors import DataFormatError, describe, is_int, packed_as, utf8_problem

__all__ = [
    "VCRFormatError",
    "VCRRecords",
    "ImageGeometry",
    "read_vcr",
    "load_metadata",
    "load_geometry",
    "geometry_from_metadata",
    "clip_boxes",
]


class VCRFormatError(DataFormatError):
    """A VCR record (or its image files) does not have the expected format.

    Attributes (besides ``DataFormatError``'s ``file``, ``field``, ``expected``, ``got``):
        line: 1-based line number in the annotation file, or None.
        annot_id: the record's ``annot_id`` when it could be read, or None.

    ``file`` is the annotation file (or the image/metadata file for file problems).
    """

    def __init__(
        self,
        *,
        file: str | Path,
        line: int | None,
        annot_id: str | None,
        field: str,
        expected: str,
        got: str,
    ) -> None:
        self.line = line
        self.annot_id = annot_id
        location = (f" line {line}" if line is not None else "") + (f" (annot_id {annot_id})" if annot_id is not None else "")
        super().__init__(file=file, field=field, expected=expected, got=got, location=location)

    def arguments(self) -> dict[str, Any]:
        return {**super().arguments(), "line": self.line, "annot_id": self.annot_id}


class _Problem(Exception):
    """A field problem found without file context; read_vcr wraps it into a VCRFormatError."""

    def __init__(self, field: str, expected: str, got: str) -> None:
        super().__init__(field, expected, got)
        self.field, self.expected, self.got = field, expected, got


class VCRRecords(list):
    """The valid records of one annotation file (dicts exactly as in the file), in file order.

    Attributes:
        source: the annotation file that was read.
        skipped: one :class:`VCRFormatError` per bad record skipped (only with ``skip_bad=True``).
        lines: the 1-based line number of each record in ``source`` (for messages about a record).
    """

    def __init__(
        self, records: list[dict[str, Any]], *, source: str | Path, skipped: list[VCRFormatError], lines: list[int]
    ) -> None:
        if len(lines) != len(records):
            raise ValueError(f"VCRRecords: {len(lines)} line numbers for {len(records)} records; give one per record")
        super().__init__(records)
        self.source = str(source)
        self.skipped = skipped
        self.lines = lines

    def summary(self) -> str:
        """One line per fact: records read, records skipped grouped by the field at fault."""
        name = Path(self.source).name
        lines = [f"{name}: read {len(self)} records, skipped {len(self.skipped)}"]
        by_field = Counter(_top_field(err.field) for err in self.skipped)
        for field, count in by_field.most_common():
            first = next(err for err in self.skipped if _top_field(err.field) == field)
            lines.append(f"  skipped {count} for field '{field}' (first: {first})")
        return "\n".join(lines)


def _top_field(field: str) -> str:
    return field.split("[", 1)[0]


# ---------------------------------------------------------------------------------------------
# Record validation
# ---------------------------------------------------------------------------------------------

def _check_tokens(tokens: Any, field: str, num_objects: int) -> None:
    """A text field: a non-empty list of words and non-empty lists of valid object indices."""
    if not isinstance(tokens, list) or not tokens:
        raise _Problem(field, "a non-empty list of VCR tokens", describe(tokens))
    for i, token in enumerate(tokens):
        if isinstance(token, str):
            continue
        if not isinstance(token, list) or not token:
            raise _Problem(f"{field}[{i}]", "a word (str) or a non-empty list of object indices", describe(token))
        for index in token:
            if not is_int(index) or not 0 <= index < num_objects:
                raise _Problem(
                    f"{field}[{i}]",
                    f"object indices in 0..{num_objects - 1} (the record has {num_objects} objects)",
                    describe(index),
                )


def _check_choices(choices: Any, field: str, num_objects: int) -> None:
    if not isinstance(choices, list) or len(choices) != NUM_CHOICES:
        raise _Problem(field, f"a list of {NUM_CHOICES} token lists", describe(choices))
    for i, choice in enumerate(choices):
        _check_tokens(choice, f"{field}[{i}]", num_objects)


def _check_int_list(value: Any, field: str, length: int | None = None) -> None:
    wrong_length = length is not None and isinstance(value, list) and len(value) != length
    if not isinstance(value, list) or not all(is_int(v) for v in value) or wrong_length:
        size = f"{length} " if length is not None else ""
        raise _Problem(field, f"a list of {size}ints", describe(value))


# Optional provenance fields and their checks; labels are checked separately (they have invariants).
_OPTIONAL_STR = ("movie", "img_id", "match_fold", "answer_likelihood", "question_orig", "answer_orig", "rationale_orig")
_OPTIONAL_INT = ("question_number", "match_index")
_OPTIONAL_CHOICE_INTS = ("answer_match_iter", "rationale_match_iter", "answer_sources", "rationale_sources")


def _validate_record(record: Any) -> None:
    """Raise ``_Problem`` for the first format problem of one parsed record (no file checks)."""
    if not isinstance(record, dict):
        raise _Problem("<record>", "a JSON object", describe(record))
    for field in ("annot_id", "img_fn", "metadata_fn"):
        value = record.get(field)
        if not isinstance(value, str) or not value:
            got = "nothing (field missing)" if field not in record else describe(value)
            raise _Problem(field, "a non-empty string", got)
    objects = record.get("objects")
    if not isinstance(objects, list) or not all(isinstance(o, str) and o for o in objects):
        raise _Problem("objects", "a list of object class names (non-empty strings)",
                       "nothing (field missing)" if "objects" not in record else describe(objects))
    if "question" not in record:
        raise _Problem("question", "a non-empty list of VCR tokens", "nothing (field missing)")
    _check_tokens(record["question"], "question", len(objects))
    for field in ("answer_choices", "rationale_choices"):
        if field not in record:
            raise _Problem(field, f"a list of {NUM_CHOICES} token lists", "nothing (field missing)")
        _check_choices(record[field], field, len(objects))

    for field in _OPTIONAL_STR:
        if field in record and not isinstance(record[field], str):
            raise _Problem(field, "a string (optional field)", describe(record[field]))
    for field in _OPTIONAL_INT:
        if field in record and not is_int(record[field]):
            raise _Problem(field, "an int (optional field)", describe(record[field]))
    if "interesting_scores" in record:
        _check_int_list(record["interesting_scores"], "interesting_scores")
    for field in _OPTIONAL_CHOICE_INTS:
        if field in record:
            _check_int_list(record[field], field, NUM_CHOICES)

    for kind in ("answer", "rationale"):
        label = record.get(f"{kind}_label")
        if label is None:  # test records carry no labels (absent or null)
            continue
        if not is_int(label) or not 0 <= label < NUM_CHOICES:
            raise _Problem(f"{kind}_label", f"an int in 0..{NUM_CHOICES - 1}", describe(label))
        match_iter = record.get(f"{kind}_match_iter")
        # Clean VCR records put the human-written (gold) choice at match iteration 0.
        if match_iter is not None and match_iter[label] != 0:
            raise _Problem(
                f"{kind}_match_iter",
                f"{kind}_match_iter[{kind}_label] == 0 ({kind}_label is {label})",
                f"{match_iter[label]} (the labelled choice is not the gold one)",
            )


# ---------------------------------------------------------------------------------------------
# Image metadata
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ImageGeometry:
    """What the pipeline needs from a metadata file: image size and object boxes.

    Attributes:
        width, height: image size in pixels.
        boxes: float64 array ``[num_boxes, 4]``, ``x1, y1, x2, y2`` in pixels (score dropped).
    """

    width: int
    height: int
    boxes: np.ndarray


def _parse_metadata(path: Path) -> dict[str, Any]:
    """Parse and check a metadata file; raises ``_Problem`` (field ``metadata_fn``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _Problem("metadata_fn", "an existing metadata JSON file under images_root", f"no file {path}") from None
    except OSError as exc:
        raise _Problem("metadata_fn", "a readable metadata JSON file", f"{type(exc).__name__}: {exc}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Problem("metadata_fn", "a metadata file holding valid JSON", f"invalid JSON in {path} ({exc})") from None
    if not isinstance(meta, dict):
        raise _Problem("metadata_fn", "a metadata JSON object", f"{describe(meta)} in {path}")
    for key in ("width", "height"):
        value = meta.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise _Problem("metadata_fn", f"metadata with a positive number '{key}'", f"{describe(value)} in {path}")
    boxes = meta.get("boxes")
    if not isinstance(boxes, list) or not all(
        isinstance(b, list) and len(b) >= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        for b in boxes
    ):
        expected = "metadata 'boxes' as a list of [x1, y1, x2, y2, score]"
        raise _Problem("metadata_fn", expected, f"{describe(boxes)} in {path}")
    return meta


@functools.lru_cache(maxsize=64)
def _load_metadata_file(path: Path) -> dict[str, Any]:
    # Small cache: full metadata holds segmentation polygons, which are large.
    return _parse_metadata(path)


def clip_boxes(boxes: np.ndarray, *, width: float, height: float) -> np.ndarray:
    """``[N, 4]`` boxes clipped to the image ``[0, width] x [0, height]`` (a new array).

    Only boxes that overlap the image with a positive area are clipped: a box reaching a little out
    of the frame (detector rounding, a box cut by the frame edge) keeps its part in the image, so
    under ``letterbox`` it does not spill onto the padding. NaN, inverted, empty and entirely outside
    boxes are left as they are; ``data_prep.preflight`` reports them as errors.
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        overlap = (np.minimum(boxes[:, 2], width) > np.maximum(boxes[:, 0], 0)) & (
            np.minimum(boxes[:, 3], height) > np.maximum(boxes[:, 1], 0)
        )
    boxes[overlap] = np.clip(boxes[overlap], 0, np.array([width, height, width, height], dtype=np.float64))
    return boxes


@functools.lru_cache(maxsize=1 << 17)
def _load_geometry_file(path: Path) -> ImageGeometry:
    # Large cache: geometry is compact, and reading + validation + preprocessing all need it.
    geometry = geometry_from_metadata(_load_metadata_file(path))
    geometry.boxes.setflags(write=False)
    return geometry


def _metadata_path(images_root: str | Path, record: Mapping[str, Any]) -> Path:
    return Path(images_root) / record["metadata_fn"]


def load_metadata(images_root: str | Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata JSON of ``record`` (``images_root / record["metadata_fn"]``), checked.

    Returns the dict as in the file (``boxes``, ``segms``, ``names``, ``width``, ``height``).
    Recently used files are cached; do not mutate the result.

    Raises:
        VCRFormatError: missing or unreadable file, invalid JSON, missing ``boxes``/``width``/``height``.
    """
    path = _metadata_path(images_root, record)
    try:
        return _load_metadata_file(path)
    except _Problem as problem:
        raise _error_from(problem, file=path, line=None, record=record) from None


def load_geometry(images_root: str | Path, record: Mapping[str, Any]) -> ImageGeometry:
    """Image size and ``[num_boxes, 4]`` boxes of ``record``'s image (cached per metadata file)."""
    path = _metadata_path(images_root, record)
    try:
        return _load_geometry_file(path)
    except _Problem as problem:
        raise _error_from(problem, file=path, line=None, record=record) from None


def geometry_from_metadata(metadata: Mapping[str, Any]) -> ImageGeometry:
    """An :class:`ImageGeometry` from an in-memory metadata dict (``boxes``, ``width``, ``height``);
    boxes that overlap the image are clipped to it (:func:`clip_boxes`)."""
    width, height = int(metadata["width"]), int(metadata["height"])
    boxes = np.asarray([b[:4] for b in metadata["boxes"]], dtype=np.float64).reshape(-1, 4)
    return ImageGeometry(width=width, height=height, boxes=clip_boxes(boxes, width=width, height=height))


def _check_files(images_root: Path, record: dict[str, Any]) -> None:
    image = images_root / record["img_fn"]
    if not image.is_file():
        raise _Problem("img_fn", "an existing image file under images_root", f"no file {image}")
    geometry = _load_geometry_file(_metadata_path(images_root, record))
    if len(geometry.boxes) < len(record["objects"]):
        raise _Problem(
            "metadata_fn",
            f"a box for each of the record's {len(record['objects'])} objects",
            f"{len(geometry.boxes)} boxes in {_metadata_path(images_root, record)}",
        )


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _error_from(problem: _Problem, *, file: str | Path, line: int | None, record: Any) -> VCRFormatError:
    annot_id = record.get("annot_id") if isinstance(record, Mapping) else None
    return VCRFormatError(
        file=file,
        line=line,
        annot_id=annot_id if isinstance(annot_id, str) else None,
        field=problem.field,
        expected=problem.expected,
        got=problem.got,
    )


def _decode_line(raw: bytes, *, offset: int, line_number: int) -> str:
    """One annotation line as text; a byte that is not UTF-8 is a ``_Problem`` naming it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        got = utf8_problem(raw, error, offset=offset, first_line=line_number)
        raise _Problem("<encoding>", "UTF-8 text (VCR annotation files are UTF-8 JSON lines)", got) from None
    return text.removeprefix("\ufeff") if offset == 0 else text  # a byte-order mark is no JSON


def check_not_packed(path: Path) -> None:
    """Raise a ``VCRFormatError`` saying what to unpack when the annotation file ``path`` is an archive or a
    compressed file (VCR ships its annotations as ``vcr1annots.zip``): read as lines, a stored zip would give
    most of its records and a few bad ones, a compressed one nothing but bad ones."""
    packed = packed_as(path)
    if packed is not None:
        raise VCRFormatError(file=path, line=None, annot_id=None, field="<file>",
                             expected="VCR annotations as UTF-8 JSON lines (train.jsonl, val.jsonl or test.jsonl)",
                             got=f"a {packed[0]} file: unpack it ({packed[1]}) and give the .jsonl file it holds")


def read_vcr(path: str | Path, *, images_root: str | Path | None = None, skip_bad: bool = False) -> VCRRecords:
    """Read and validate a VCR ``.jsonl`` annotation file.

    Checks every record: required fields and types (``annot_id``, ``img_fn``, ``metadata_fn``,
    ``objects``, ``question``, 4 ``answer_choices``, 4 ``rationale_choices``), tokens (a word or a
    non-empty list of valid object indices), optional labels in 0..3, optional provenance fields,
    the clean-record invariant ``*_match_iter[*_label] == 0``, unique ``annot_id``. With
    ``images_root``, also that the image and metadata files exist, that the metadata is JSON with
    ``boxes``, ``width`` and ``height``, and that every object has a box. Blank lines are ignored;
    a line that is not UTF-8 is a bad record (field ``<encoding>``, naming the byte and its offset).
    Images themselves (readable, of the metadata's size) and boxes are checked by
    ``data_prep.preflight``.

    Args:
        path: the annotation file.
        images_root: the ``vcr1images`` folder; ``img_fn``/``metadata_fn`` are relative to it.
        skip_bad: collect bad records in ``.skipped`` instead of raising on the first one.

    Returns:
        The valid records, as dicts exactly as in the file.

    Raises:
        VCRFormatError: the first bad record (unless ``skip_bad``); the file is an archive
            (:func:`check_not_packed`, whatever ``skip_bad``).
        OSError: the annotation file cannot be read.
    """
    path = Path(path)
    check_not_packed(path)
    root = Path(images_root) if images_root is not None else None
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    skipped: list[VCRFormatError] = []
    first_line_of: dict[str, int] = {}
    offset = 0
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line_offset, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            record: Any = None
            try:
                line = _decode_line(raw, offset=line_offset, line_number=line_number)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    got = f"invalid JSON ({exc.msg} at column {exc.colno})"
                    raise _Problem("<line>", "a JSON object", got) from None
                _validate_record(record)
                annot_id = record["annot_id"]
                if annot_id in first_line_of:
                    expected = f"a unique id (first used on line {first_line_of[annot_id]})"
                    raise _Problem("annot_id", expected, repr(annot_id))
                if root is not None:
                    _check_files(root, record)
            except _Problem as problem:
                error = _error_from(problem, file=path, line=line_number, record=record)
                if not skip_bad:
                    raise error from None
                skipped.append(error)
                continue
            first_line_of[annot_id] = line_number
            records.append(record)
            lines.append(line_number)
    return VCRRecords(records, source=path, skipped=skipped, lines=lines)
