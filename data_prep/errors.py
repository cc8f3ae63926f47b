"""Format errors: a data file (or a record in it) that is not as expected, and the helpers that word them.

``DataFormatError`` is the one base: a message that names the file, where in it (a subclass's
``location``: ``data_prep.vcr.VCRFormatError`` a line and ``annot_id``, ``data_prep.vqa.VQAFormatError``
a ``question_id``), the field, what a valid value looks like and what was found::

    val.jsonl line 7 (annot_id val-12): field 'answer_label': expected an int in 0..3, got 5
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DataFormatError", "describe", "is_int", "packed_as", "utf8_problem"]


class DataFormatError(ValueError):
    """A data file does not have the expected format.

    Attributes:
        file: the file that was read.
        field: the offending field, with a path into it (``answer_choices[2][5]``).
        expected: what a valid value looks like.
        got: a short description of what was found.

    A subclass adds where in the file (its own keyword arguments, returned by :meth:`arguments` so that
    the error survives pickling, e.g. from a DataLoader worker) and passes ``location`` for the message.
    """

    def __init__(self, *, file: str | Path, field: str, expected: str, got: str, location: str = "") -> None:
        self.file, self.field, self.expected, self.got = str(file), field, expected, got
        super().__init__(f"{Path(self.file).name}{location}: field '{field}': expected {expected}, got {got}")

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments that make this error again."""
        return {"file": self.file, "field": self.field, "expected": self.expected, "got": self.got}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__: pickling (DataLoader workers, multiprocessing) needs this.
        return (_rebuild, (type(self), self.arguments()))


def _rebuild(cls: type[DataFormatError], arguments: dict[str, Any]) -> DataFormatError:
    return cls(**arguments)


def describe(value: Any) -> str:
    """A short description of a bad value for an error message."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of length {len(value)}"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON ``true`` is no index)."""
    return isinstance(value, int) and not isinstance(value, bool)


def utf8_problem(data: bytes, error: UnicodeDecodeError, *, offset: int = 0, first_line: int = 1) -> str:
    """Where ``data`` stops being UTF-8, for an error message: the bad byte, its line and byte column,
    and its byte offset in the file (``data`` starts at byte ``offset`` and line ``first_line`` of it)."""
    position = error.start
    line = first_line + data.count(b"\n", 0, position)
    column = position - (data.rfind(b"\n", 0, position) + 1) + 1
    return (f"byte 0x{data[position]:02x} at line {line}, byte {column} of the line (offset {offset + position} "
            f"in the file), which is not UTF-8 ({error.reason})")


# The first bytes of the archive and compression formats datasets ship in (VCR: vcr1images.zip, vcr1annots.zip;
# VQA v2 and COCO: zip): (offset, magic, format, the command that unpacks it).
_PACKED = (
    (0, b"PK\x03\x04", "zip", "unzip {file} -d {folder}"),
    (0, b"PK\x05\x06", "zip", "unzip {file} -d {folder}"),  # an empty one
    (0, b"\x1f\x8b", "gzip", "gunzip -k {file}"),
    (0, b"BZh", "bzip2", "bunzip2 -k {file}"),
    (0, b"\xfd7zXZ\x00", "xz", "unxz -k {file}"),
    (0, b"(\xb5/\xfd", "zstd", "unzstd {file}"),
    (0, b"7z\xbc\xaf'\x1c", "7z", "7z x {file} -o{folder}"),
    (257, b"ustar", "tar", "tar -xf {file} -C {folder}"),
)


def packed_as(path: Path) -> tuple[str, str] | None:
    """``(format, the command that unpacks it)`` when the file ``path`` is an archive or a compressed file
    (by its first bytes, whatever its name), else ``None`` (not one, or not a readable file)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(262)
    except OSError:
        return None
    for offset, magic, kind, command in _PACKED:
        if head[offset:offset + len(magic)] == magic:
            if kind in ("gzip", "bzip2", "xz", "zstd") and (".tar" in path.suffixes or path.suffix in (".tgz", ".tbz2", ".txz")):
                kind, command = f"tar.{kind}", "tar -xf {file} -C {folder}"  # GNU tar finds the compression itself
            return kind, command.format(file=path, folder=path.parent)
    return None
