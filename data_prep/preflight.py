"""Checks of a split's images and boxes before anything trains on them (DESIGN.md section 4).

``vlekit check-data`` reports every problem of a VCR split (:func:`check_split`); ``vlekit train``
and ``vlekit eval`` run the same checks, header-only, on their splits before the first step
(:func:`preflight`; ``data_prep.vqa.preflight_vqa`` for VQA images), so that a bad file stops a run at
once, named with its annotation file and line, instead of killing a DataLoader worker hours in.
With ``skip_bad`` the records at fault are left out instead, and a summary says how many and why.

What is checked, per record, beyond ``read_vcr``'s record checks (which include bytes that are not
UTF-8: kind ``not-utf8``):

- The image opens and its header gives a size (``Image.open``: no decode, cheap). With
  ``decode=True`` it is also decoded completely, which is what finds a truncated JPEG: its header is
  intact, only the pixel data stops early (kind ``undecodable-image``).
- Size policy. Boxes are in the metadata's frame (``width`` x ``height``), and that frame is the
  upright image: a file whose EXIF orientation turns it by 90 degrees (tags 5-8) is compared after
  transposing, and ``data_prep.pixels`` decodes every image upright, so pixels and boxes share the
  frame. Another size with the same aspect ratio (a downscaled copy) is a warning
  (``image-rescaled``): pixels are resized from the file's size and boxes from the metadata's, so
  they still meet. Any other size is an error (``size-mismatch``): the boxes would land on the
  wrong patches.
- Each of the record's objects has a box that is finite, not inverted (``x1 <= x2``, ``y1 <= y2``),
  of positive area and at least partly inside the image; otherwise its object token would cover no
  patch or the wrong ones (errors ``box-not-finite``, ``box-inverted``, ``box-empty``,
  ``box-outside``). A box reaching more than ``BOX_TOLERANCE`` pixels out of the image is clipped
  to it (``data_prep.vcr.clip_boxes``, as every loaded box is) and reported as a warning
  (``box-clipped``); less than that is detector rounding, clipped silently.

An image or metadata file shared by several records is checked once; every record is reported.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from data_prep.errors import packed_as
from data_prep.pixels import IMAGE_ERRORS, exif_orientation, oriented_size
from data_prep.vcr import VCRFormatError, VCRRecords, clip_boxes, load_metadata, read_vcr

__all__ = [
    "BOX_TOLERANCE",
    "DataProblem",
    "Finding",
    "PreflightError",
    "SplitCheck",
    "check_boxes",
    "check_image",
    "check_split",
    "preflight",
]

ERROR, WARNING = "error", "warning"
# Pixels a box may reach out of the image without a warning (detectors round box edges).
BOX_TOLERANCE = 1.0
# read_vcr's own pseudo-fields -> problem kinds; every other record problem is "bad-record".
_RECORD_KINDS = {"<encoding>": "not-utf8", "<line>": "invalid-json"}
_BOX = "a box [x1, y1, x2, y2]"


@dataclass(frozen=True)
class Finding:
    """One problem of an image or metadata file, before it is tied to a record (see ``VCRFormatError``)."""

    severity: str  # "error" or "warning"
    kind: str
    field: str
    expected: str
    got: str


@dataclass(frozen=True)
class DataProblem:
    """One problem of one record: ``error`` says where (annotation file, line, annot_id) and what."""

    severity: str
    kind: str
    error: VCRFormatError

    @property
    def location(self) -> str:
        """``annotation_file:line``."""
        return self.error.file if self.error.line is None else f"{self.error.file}:{self.error.line}"

    def __str__(self) -> str:
        annot = "" if self.error.annot_id is None else f" (annot_id {self.error.annot_id})"
        return (f"{self.location}: {self.severity} {self.kind}{annot}: field '{self.error.field}': "
                f"expected {self.error.expected}, got {self.error.got}")


# -- one image, one box list -------------------------------------------------------------------------
def _image_error(kind: str, expected: str, path: Path, exc: BaseException) -> Finding:
    return Finding(ERROR, kind, "img_fn", expected, f"{type(exc).__name__}: {exc} ({path})")


def check_image(
    path: Path, *, width: float | None = None, height: float | None = None, decode: bool = False
) -> list[Finding]:
    """Problems of one image file: missing, unreadable header, pixel data that does not decode
    (only with ``decode``), or a size other than the metadata's ``width`` x ``height`` (when given;
    EXIF orientation applied, see the module docstring)."""
    try:
        with Image.open(path) as image:
            stored, upright, orientation = image.size, oriented_size(image), exif_orientation(image)
            if decode:
                try:
                    image.load()
                except IMAGE_ERRORS as exc:
                    expected = "an image whose pixel data decodes completely"
                    return [_image_error("undecodable-image", expected, path, exc)]
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file (an archive, say) where a folder should be
        expected = "an existing image file under images_root"
        return [Finding(ERROR, "missing-image", "img_fn", expected, f"no file {path}")]
    except IMAGE_ERRORS as exc:
        return [_image_error("unreadable-image", "an image file PIL can open", path, exc)]
    if width is None or height is None:
        return []
    return _size_findings(path, upright, stored, orientation, width=int(width), height=int(height))


def _size_findings(
    path: Path, upright: tuple[int, int], stored: tuple[int, int], orientation: int, *, width: int, height: int
) -> list[Finding]:
    file_w, file_h = upright
    if (file_w, file_h) == (width, height):
        return []
    expected = f"an image of the metadata's size {width}x{height} (boxes are in that frame)"
    turned = ""
    if stored != upright:
        turned = f" once upright (EXIF orientation {orientation}; {stored[0]}x{stored[1]} as stored)"
    same_aspect = abs(file_h - height * file_w / width) <= 1 or abs(file_w - width * file_h / height) <= 1
    if same_aspect:
        return [Finding(WARNING, "image-rescaled", "img_fn", expected,
                        f"{file_w}x{file_h}{turned}, the same aspect ratio: boxes are scaled with it ({path})")]
    hint = ""
    if stored == (width, height):
        hint = "; the stored pixels have the metadata's size: the EXIF orientation tag is probably wrong"
    return [Finding(ERROR, "size-mismatch", "img_fn", expected, f"a {file_w}x{file_h} image{turned} ({path}){hint}")]


def _format_box(box: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def check_boxes(boxes: np.ndarray, *, width: float, height: float, path: Path) -> list[Finding]:
    """Problems of ``[N, 4]`` boxes (``x1, y1, x2, y2`` pixels) in a ``width`` x ``height`` image:
    errors for NaN, inverted, empty and entirely outside boxes, a warning for a box clipped to the
    image (see the module docstring). ``path`` (the metadata file) names them in messages."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = clip_boxes(boxes, width=width, height=height)
    findings = []
    for i, (box, fitted) in enumerate(zip(boxes, clipped)):
        x1, y1, x2, y2 = box.tolist()
        got = f"{_format_box(box)} ({path})"
        if not np.isfinite(box).all():
            problem = (ERROR, "box-not-finite", f"{_BOX} of finite numbers")
        elif x2 < x1 or y2 < y1:
            problem = (ERROR, "box-inverted", f"{_BOX} with x1 <= x2 and y1 <= y2")
        elif x2 == x1 or y2 == y1:
            problem = (ERROR, "box-empty", f"{_BOX} of positive width and height")
        elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            problem = (ERROR, "box-outside", f"{_BOX} at least partly inside the {width:g}x{height:g} image")
        elif np.abs(box - fitted).max() > BOX_TOLERANCE:
            problem = (WARNING, "box-clipped", f"{_BOX} inside the {width:g}x{height:g} image")
            got = f"{_format_box(box)}, clipped to {_format_box(fitted)} ({path})"
        else:
            continue
        findings.append(Finding(problem[0], problem[1], f"boxes[{i}]", problem[2], got))
    return findings


# -- a VCR split -----------------------------------------------------------------------------------
@dataclass
class SplitCheck:
    """What :func:`check_split` found in one annotation file.

    Attributes:
        source: the annotation file.
        records: the records without errors, as a ``data.skip_bad=true`` run uses them; ``.skipped``
            holds the first error of every other record.
        problems: every problem, in file order.
        num_read: the records read (non-blank lines).
        decoded: whether images were decoded completely (``decode=True``) or only their headers read.
        images_hint: when no record's image was found, why, and where they are if one folder up or
            down holds them (:func:`images_root_hint`); else ``None``.
    """

    source: Path
    records: VCRRecords
    problems: list[DataProblem]
    num_read: int
    decoded: bool
    images_hint: str | None = None

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == WARNING]

    def skipped_by_kind(self) -> Counter[str]:
        """Records with errors, counted by the kind of their first error."""
        first: dict[int | None, str] = {}
        for problem in self.errors:
            first.setdefault(problem.error.line, problem.kind)
        return Counter(first.values())

    def report(self, *, max_problems: int = 20) -> str:
        """The ``vlekit check-data`` report: counts per kind of problem, then the first
        ``max_problems`` problems (0: all), each with ``file:line``."""
        name = self.source.name
        with_errors = len({p.error.line for p in self.errors})
        warned_only = len({p.error.line for p in self.warnings} - {p.error.line for p in self.errors})
        lines = [f"{name}: {self.num_read} records read: {with_errors} with errors, {warned_only} with warnings only "
                 f"({'images decoded' if self.decoded else 'image headers read, not decoded'})"]
        if self.images_hint:
            lines.append(self.images_hint)
        for severity, problems, note in (
            (ERROR, self.errors, " (a run with data.skip_bad=true skips these records; without it, it stops)"),
            (WARNING, self.warnings, ""),
        ):
            if problems:
                lines.append(f"{severity}s{note}:")
                counts = Counter(p.kind for p in problems)
                width = max(map(len, counts))
                lines += [f"  {kind:<{width}}  {count}" for kind, count in counts.most_common()]
        shown = self.problems if max_problems <= 0 else self.problems[:max_problems]
        if shown:
            lines.append(f"problems 1-{len(shown)} of {len(self.problems)}:")
            lines += [f"  {problem}" for problem in shown]
        return "\n".join(lines)

    def summary(self) -> str:
        """Short lines for a run's log: records skipped per reason (``data.skip_bad``), warnings per kind."""
        name, lines = self.source.name, []
        if self.errors:
            skipped = self.skipped_by_kind()
            reasons = ", ".join(f"{count} {kind}" for kind, count in skipped.most_common())
            lines.append(f"{name}: skipped {sum(skipped.values())} of {self.num_read} records (data.skip_bad): "
                         f"{reasons}; first: {self.errors[0]}")
        if self.warnings:
            kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(p.kind for p in self.warnings).most_common())
            lines.append(f"{name}: {len(self.warnings)} warnings: {kinds}; first: {self.warnings[0]}")
        return "\n".join(lines)


class PreflightError(ValueError):
    """A split has records with errors and the run does not skip them; the message names the first
    (annotation file, line, what is wrong) and counts the others. ``check`` holds every problem."""

    def __init__(self, check: SplitCheck) -> None:
        self.check = check
        skipped = check.skipped_by_kind()
        reasons = ", ".join(f"{count} {kind}" for kind, count in skipped.most_common())
        advice = check.images_hint or ("`vlekit check-data` lists them all; a training run skips them with "
                                       "data.skip_bad=true")
        super().__init__(f"{check.errors[0]}\n  {sum(skipped.values())} of {check.num_read} records of "
                         f"{check.source.name} have errors ({reasons}): {advice}")


class _Checker:
    """The per-record checks of :func:`check_split`, caching per image and per metadata file."""

    def __init__(self, images_root: Path, *, decode: bool) -> None:
        self.root, self.decode = images_root, decode
        self._metadata: dict[tuple[str, int], tuple[list[Finding], float | None, float | None]] = {}
        self._images: dict[tuple[str, float | None, float | None], list[Finding]] = {}

    def __call__(self, record: Mapping[str, Any]) -> list[Finding]:
        key = (record["metadata_fn"], len(record["objects"]))
        if key not in self._metadata:
            self._metadata[key] = self._check_metadata(record)
        findings, width, height = self._metadata[key]
        image_key = (record["img_fn"], width, height)
        if image_key not in self._images:
            self._images[image_key] = check_image(self.root / record["img_fn"], width=width, height=height,
                                                  decode=self.decode)
        return self._images[image_key] + findings

    def _check_metadata(self, record: Mapping[str, Any]) -> tuple[list[Finding], float | None, float | None]:
        """Box problems of the record's objects, and the metadata's size (None when unreadable)."""
        path = self.root / record["metadata_fn"]
        try:
            metadata = load_metadata(self.root, record)
        except VCRFormatError as error:
            return [Finding(ERROR, "bad-metadata", "metadata_fn", error.expected, error.got)], None, None
        width, height, boxes = metadata["width"], metadata["height"], metadata["boxes"]
        needed = len(record["objects"])
        if len(boxes) < needed:
            expected = f"a box for each of the record's {needed} objects"
            found = Finding(ERROR, "bad-metadata", "metadata_fn", expected, f"{len(boxes)} boxes in {path}")
            return [found], width, height
        corners = np.asarray([b[:4] for b in boxes[:needed]], dtype=np.float64)
        return check_boxes(corners, width=width, height=height, path=path), width, height


def _progress(items: Iterable[Any], *, total: int, desc: str, show: bool) -> Iterable[Any]:
    # disable=None: a bar only on a terminal (not in logs and captured output).
    return tqdm(items, total=total, desc=desc, unit="rec", disable=None if show else True, leave=False)


def check_split(
    annotations: str | Path, images_root: str | Path, *, decode: bool = False, progress: bool = False
) -> SplitCheck:
    """Check every record of a VCR annotation file, its image and its boxes; never raises on bad data.

    Args:
        annotations: the ``.jsonl`` file.
        images_root: the ``vcr1images`` folder.
        decode: decode every image completely (finds truncated files; slower) instead of reading headers.
        progress: show a progress bar (on a terminal).

    Raises:
        OSError: the annotation file cannot be read.
    """
    annotations = Path(annotations)
    records = read_vcr(annotations, skip_bad=True)
    problems = [DataProblem(ERROR, _RECORD_KINDS.get(e.field, "bad-record"), e) for e in records.skipped]
    skipped = list(records.skipped)
    kept, kept_lines = [], []
    checker = _Checker(Path(images_root), decode=decode)
    rows = _progress(zip(records, records.lines), total=len(records), desc=f"check {annotations.name}", show=progress)
    for record, line in rows:
        found = [
            DataProblem(f.severity, f.kind, VCRFormatError(file=annotations, line=line, annot_id=record["annot_id"],
                                                           field=f.field, expected=f.expected, got=f.got))
            for f in checker(record)
        ]
        problems += found
        errors = [p.error for p in found if p.severity == ERROR]
        if errors:
            skipped.append(errors[0])
        else:
            kept.append(record)
            kept_lines.append(line)
    problems.sort(key=lambda p: p.error.line or 0)  # stable: a record's problems keep their order
    skipped.sort(key=lambda e: e.line or 0)
    good = VCRRecords(kept, source=annotations, skipped=skipped, lines=kept_lines)
    check = SplitCheck(source=annotations, records=good, problems=problems,
                       num_read=len(records) + len(records.skipped), decoded=decode)
    if len(records) and check.skipped_by_kind()["missing-image"] == len(records):  # not one image where it should be
        check.images_hint = images_root_hint(Path(images_root), records[0]["img_fn"])
    return check


def folder_holding(images_root: Path, name: str) -> Path | None:
    """The folder one level up or down from ``images_root`` (a dataset's folder given for its ``vcr1images/``
    or ``val2014/``, or one of VCR's movie folders) under which ``name`` is a file, if any."""
    nearby = [images_root / "vcr1images", images_root.parent, images_root.parent.parent]
    if images_root.is_dir():
        nearby[1:1] = sorted(p for p in images_root.iterdir() if p.is_dir())
    return next((folder for folder in nearby if (folder / name).is_file()), None)


def archive_hint(images_root: Path, *, holds: str = "vcr1images/") -> str | None:
    """When ``images_root`` is an archive (VCR ships its images as ``vcr1images.zip``), or is missing with the
    archive beside it (``vcr1images`` given, ``vcr1images.zip`` there): what to unpack; else ``None``."""
    candidates = [images_root] if images_root.is_file() else [
        images_root.with_name(images_root.name + suffix) for suffix in (".zip", ".tar", ".tar.gz", ".tgz")]
    for archive in candidates:
        packed = packed_as(archive) if archive.is_file() else None
        if packed is None:
            continue
        given = "is" if archive == images_root else f"is not a folder, but {archive} is"
        return (f"the images root {images_root} {given} a {packed[0]} archive: unpack it ({packed[1]}) and give the "
                f"folder it holds ({holds}) as the images root (--images / data.images); images are read from files, "
                f"not archives")
    return None


def images_root_hint(images_root: Path, img_fn: str) -> str:
    """What to say when no record's image is under ``images_root``: the archive to unpack
    (:func:`archive_hint`), the folder nearby that holds them (:func:`folder_holding`), or what the root
    must hold."""
    archive = archive_hint(images_root)
    if archive is not None:
        return archive
    found = folder_holding(images_root, img_fn)
    if found is not None:
        return (f"no image is under {images_root}, but {found} holds them: give that folder as the images root "
                f"(--images / data.images)")
    what = "is not a folder" if not images_root.is_dir() else "holds none of the records' images"
    return (f"the images root {images_root} {what}: it must be the folder that holds VCR's movie folders "
            f"(vcr1images/), so that ROOT/{img_fn} is a file")


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def preflight(
    annotations: str | Path,
    images_root: str | Path,
    *,
    skip_bad: bool = False,
    progress: bool = False,
    report: Callable[[str], None] | None = _to_stderr,
) -> VCRRecords:
    """The records of a VCR split a run can use, checked before its first step (header-only image
    checks, sizes, boxes: :func:`check_split` without ``decode``).

    Args:
        skip_bad: leave records with errors out (``.skipped`` holds their first error) instead of raising.
        progress: show a progress bar (on a terminal).
        report: where the summary of skipped records and warnings goes (None: nowhere).

    Raises:
        PreflightError: a record has an error and ``skip_bad`` is False; names the first.
    """
    check = check_split(annotations, images_root, progress=progress)
    if check.errors and not skip_bad:
        raise PreflightError(check)
    if check.problems and report is not None:
        report(check.summary())
    return check.records
