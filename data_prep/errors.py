"""Format errors: a data file (or a record in it) that is not as expected, and the helpers that word them.

``DataFormatError`` is the one base: a message that names the file, where in it (a subclass's
``location``: ``data_prep.vcr.VCRFormatError`` a line and ``annot_id``, ``data_prep.vqa.VQAFormatError``
a ``question_id``), the field, what a valid value looks like and what was found::

    val.jsonl line 7 (annot_id val-12): field 'answer_label': expected an int in 0..3, got 5
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DataFormatError", "describe", "is_int", "utf8_problem"]


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
