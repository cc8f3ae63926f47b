"""Component options: strict frozen dataclass configs built from YAML / the command line / Python.

:func:`make_config` rejects unknown options (with close matches) and wrong scalar types; dict and list
options are frozen (:class:`FrozenDict`, :class:`FrozenList`), so no option changes after a build, and
they dump to YAML as plain dicts and lists.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml


class FrozenDict(dict):
    """A dict that refuses changes: the nested options of a frozen config stay what was built.

    A ``dict`` subclass, so it compares equal to a plain dict and ``json.dumps`` writes it as one;
    ``yaml.safe_dump`` does too (representers registered below). Copies and pickles are frozen again.
    """

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "config options are immutable; build a new config instead "
            "(dataclasses.replace(config, field={**config.field, key: value}))"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda item: str(item[0]))))


class FrozenList(list):
    """A list that refuses changes (the list-valued options inside a :class:`FrozenDict`)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config options are immutable; build a new config instead")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))


for _dumper in (yaml.SafeDumper, yaml.Dumper):
    _dumper.add_representer(FrozenDict, yaml.representer.SafeRepresenter.represent_dict)
    _dumper.add_representer(FrozenList, yaml.representer.SafeRepresenter.represent_list)


def freeze(value: Any) -> Any:
    """``value`` with every nested dict and list made immutable (:class:`FrozenDict`, :class:`FrozenList`).

    Tuples become frozen lists too: JSON and YAML read them back as lists, which then compare equal.
    """
    if isinstance(value, Mapping):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):  # named tuples keep their type
        return FrozenList(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a frozen value (for libraries that may change what they are given)."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thaw(item) for item in value]
    return value


def make_config(config_class: type, options: Mapping[str, Any], *, where: str) -> Any:
    """Build a frozen dataclass config, rejecting unknown options and wrong basic types.

    Dict and list options are frozen too (:func:`freeze`), so no option changes after the build.
    ``where`` names the component in error messages (e.g. ``"fusion 'co-attention'"``).
    """
    if not dataclasses.is_dataclass(config_class):
        raise TypeError(f"{where}: config class {config_class!r} must be a dataclass")
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    unknown = [key for key in options if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
        raise TypeError(
            f"{where}: unknown option {key!r}{hint} Accepted options: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(config_class)
    options = {key: _coerce_float(value, hints.get(key)) for key, value in options.items()}
    for key, value in options.items():
        _check_type(value, hints.get(key), where=f"{where}: option {key!r}")
    return config_class(**{key: freeze(value) for key, value in options.items()})


def _coerce_float(value: Any, hint: Any) -> Any:
    """YAML 1.1 reads ``3e-5`` (no dot) as a string; accept it where a float is expected."""
    if isinstance(value, str) and hint is not None and float in (typing.get_args(hint) or (hint,)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_type(value: Any, hint: Any, *, where: str) -> None:
    """Check plain scalar annotations (int, float, bool, str, and their Optionals)."""
    if hint is None:
        return
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    scalars = {bool, int, float, str, type(None)}
    if not all(a in scalars for a in allowed):
        return  # containers and custom types are the component's own business
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if bool not in allowed and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, tuple(a for a in allowed))
    if not ok:
        names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
        raise TypeError(f"{where} must be {names}, got {type(value).__name__} {value!r}")
