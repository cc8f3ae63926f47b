"""The plugin registry: one registry per component kind.

A component is an ``nn.Module`` built from a frozen dataclass config. It is registered with one line,
the same in a module or in a notebook cell::

    @register_fusion("my-fusion", config=MyFusionConfig)
    class MyFusion(nn.Module):
        def __init__(self, *, config: MyFusionConfig): ...

Pip-installed plugins declare entry points in the groups ``vlekit.text_encoders``,
``vlekit.vision_encoders``, ``vlekit.fusions`` and ``vlekit.heads``; each entry point names a module (or object) whose
import registers its components. Entry points are imported lazily, on the first lookup or listing,
each inside its own ``try`` so that one broken plugin is listed as broken and the rest still work.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vlekit.options import freeze, make_config, thaw


# Set while an entry point is being imported, so registrations inside it know their package.
_loading_package: ContextVar[str | None] = ContextVar("_loading_package", default=None)


class RegistryError(LookupError):
    """A registry lookup or registration failed; the message says what would be right."""


@dataclass(frozen=True)
class Entry:
    """One registered name: a component, or a preset (a component with default options)."""

    name: str
    kind: str
    component: type[nn.Module]
    config_class: type
    source: str
    description: str
    defining_module: str
    preset_of: str | None = None
    preset_options: Mapping[str, Any] = field(default_factory=dict)
    tiny: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point whose import failed: listed with its error instead of breaking the rest."""

    entry_point: str
    package: str
    error: str


def _source_of(module_name: str) -> str:
    """Where a registration comes from: core, a pip package, or a notebook / script."""
    package = _loading_package.get()
    if package:
        return f"package {package}"
    top = module_name.split(".")[0]
    if top == "vlekit":
        return "core"
    if module_name == "__main__":
        return "notebook"
    distributions = _packages_distributions().get(top)
    if distributions:
        return f"package {distributions[0]}"
    return f"module {module_name}"


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    # Scanning every installed package takes ~0.3 s: once per process is enough.
    return importlib.metadata.packages_distributions()


def _first_line(text: str | None) -> str:
    """A docstring's first line as plain text (reST ``literal`` markup dropped: listings are read in a terminal)."""
    line = (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""
    return line.replace("``", "")


class Registry:
    """Named components of one kind, with presets, entry-point plugins and strict configs."""

    def __init__(self, *, kind: str, entry_point_group: str, core_module: str | None = None) -> None:
        """core_module: the module whose import registers this kind's core entries, imported on the first
        lookup (as plugins are) when ``import vlekit`` does not import it, so that stays cheap."""
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.core_module = core_module
        self._entries: dict[str, Entry] = {}
        self._broken: list[BrokenPlugin] = []
        self._entry_points_loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(
        self, name: str, *, config: type, description: str | None = None, tiny: Mapping[str, Any] | None = None
    ) -> Callable[[type[nn.Module]], type[nn.Module]]:
        """Class decorator: register ``cls`` under ``name`` with its dataclass ``config``.

        ``tiny``: options that build a small random-init instance offline, used by the
        registry-driven tests (a text encoder's tiny vocabulary must cover ids 0..99).
        ``description`` defaults to the first line of the class docstring.
        """

        def decorator(cls: type[nn.Module]) -> type[nn.Module]:
            if not dataclasses.is_dataclass(config):
                raise TypeError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")
            self._add(
                Entry(
                    name=name,
                    kind=self.kind,
                    component=cls,
                    config_class=config,
                    source=_source_of(cls.__module__),
                    description=description or _first_line(cls.__doc__),
                    defining_module=f"{cls.__module__}.{cls.__qualname__}",
                    tiny=freeze(tiny or {}),
                )
            )
            cls.config_class = config  # set only once the registration stood
            cls.registered_name = name
            return cls

        return decorator

    def register_preset(self, name: str, *, base: str, description: str, **options: Any) -> None:
        """Register ``name`` as ``base`` with default ``options`` (e.g. a hub model name)."""
        base_entry = self._entries.get(base)
        if base_entry is None or base_entry.preset_of is not None:
            raise RegistryError(f"preset {name!r}: base {self.kind} {base!r} is not a registered component")
        make_config(base_entry.config_class, options, where=f"{self.kind} preset {name!r}")
        frame_module = sys._getframe(1).f_globals.get("__name__", "__main__")
        self._add(
            dataclasses.replace(
                base_entry,
                name=name,
                description=description,
                source=_source_of(frame_module),
                defining_module=f"{frame_module}:preset:{name}",
                preset_of=base,
                preset_options=freeze(options),
            )
        )

    def _add(self, entry: Entry) -> None:
        _check_name(entry.name, self.kind)
        old = self._entries.get(entry.name)
        # Re-running a notebook cell re-registers from the same place: that replaces the entry.
        if old is not None and old.defining_module != entry.defining_module:
            raise RegistryError(
                f"{self.kind} {entry.name!r} is already registered by {old.defining_module} "
                f"({old.source}); {entry.defining_module} ({entry.source}) tried to register it again. "
                + ("Choose another name." if "/" in entry.name else
                   f"Choose another name, or namespace it as 'yourpackage/{entry.name}'.")
            )
        self._entries[entry.name] = entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its presets (for tests and notebooks)."""
        self._entries.pop(name, None)
        for preset in [n for n, e in self._entries.items() if e.preset_of == name]:
            del self._entries[preset]

    # -- lookup -------------------------------------------------------------------------------
    def load_entry_points(self, *, reload: bool = False) -> None:
        """Import every installed plugin of this kind once; failures are recorded, not raised."""
        if self._entry_points_loaded and not reload:
            return
        self._entry_points_loaded = True
        self._broken = []
        if self.core_module is not None:
            importlib.import_module(self.core_module)
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            package = entry_point.dist.name if entry_point.dist is not None else entry_point.module
            token = _loading_package.set(package)
            try:
                entry_point.load()
            except Exception as error:  # a plugin may fail in any way; keep the others working
                self._broken.append(
                    BrokenPlugin(
                        entry_point=f"{entry_point.name} = {entry_point.value}",
                        package=package,
                        error=f"{type(error).__name__}: {error}",
                    )
                )
            finally:
                _loading_package.reset(token)

    def get(self, name: str) -> Entry:
        """The entry for ``name``; unknown names get close matches and the known names."""
        self.load_entry_points()
        if name in self._entries:
            return self._entries[name]
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        broken = "".join(f"\n  broken plugin {b.entry_point} ({b.package}): {b.error}" for b in self._broken)
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}{broken}"
        )

    def entries(self) -> list[Entry]:
        self.load_entry_points()
        return [self._entries[name] for name in sorted(self._entries)]

    @property
    def broken(self) -> list[BrokenPlugin]:
        self.load_entry_points()
        return list(self._broken)

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._entries

    # -- building -----------------------------------------------------------------------------
    def resolve(self, name: str, options: Mapping[str, Any] | None = None) -> tuple[type[nn.Module], Any]:
        """``(component class, config)`` for a registered name or a ``module:Class`` path."""
        options = dict(options or {})
        if ":" in name:
            cls = _import_path(name, kind=self.kind)
            config_class = getattr(cls, "config_class", None)
            if config_class is None:
                raise RegistryError(f"{self.kind} {name!r}: class has no 'config_class' attribute (a dataclass)")
            return cls, make_config(config_class, options, where=f"{self.kind} {name!r}")
        entry = self.get(name)
        # A preset builds whatever its base is now (a re-run notebook cell may have replaced it).
        base = self.get(entry.preset_of) if entry.preset_of else entry
        # Dict options (e.g. an HF architecture) refine the preset's instead of replacing it.
        merged = {**entry.preset_options}
        for key, value in options.items():
            preset_value = merged.get(key)
            merged[key] = {**preset_value, **value} if isinstance(preset_value, dict) and isinstance(value, dict) else value
        return base.component, make_config(base.config_class, merged, where=f"{self.kind} {name!r}")

    def config_class_of(self, name: str) -> type:
        """The config dataclass of a registered name (a preset: its base's) or a ``module:Class`` path."""
        if ":" in name:
            config_class = getattr(_import_path(name, kind=self.kind), "config_class", None)
            if config_class is None:
                raise RegistryError(f"{self.kind} {name!r}: class has no 'config_class' attribute (a dataclass)")
            return config_class
        return self.get(name).config_class

    def spec_from_file(self, spec: Mapping[str, Any], *, where: str) -> dict[str, Any]:
        """A component spec read from a file another program or version wrote (a run folder, a Hub repo):
        the component's ``options_from_file`` classmethod, where it has one, drops what the installed
        libraries no longer read (``hf-text``'s Hugging Face keys: :mod:`vlekit.hf_configs`), so a file
        loads as its writer meant it. Typed options go through :meth:`build` unchanged and stay strict."""
        name = spec["name"]
        cls = _import_path(name, kind=self.kind) if ":" in name else self.get(name).component
        reader = getattr(cls, "options_from_file", None)
        if reader is None:
            return dict(spec)
        options = {key: value for key, value in spec.items() if key != "name"}
        return {"name": name, **reader(thaw(options), where=f"{where}: {self.kind} {name!r}")}

    def build(self, name: str, **options: Any) -> nn.Module:
        """Build the component ``name`` (registered name or ``module:Class``) with ``options``."""
        cls, config = self.resolve(name, options)
        return cls(config=config)


def _check_name(name: str, kind: str) -> None:
    parts = name.split("/")
    if not name or len(parts) > 2 or not all(p and p.replace("-", "").replace("_", "").replace(".", "").isalnum() for p in parts):
        raise RegistryError(
            f"invalid {kind} name {name!r}: use letters, digits, '-', '_' and '.', optionally namespaced as 'package/name'"
        )


def _import_path(path: str, *, kind: str) -> type[nn.Module]:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise RegistryError(f"{kind} {path!r}: cannot import it ({error}); expected 'package.module:ClassName'") from error


TEXT_ENCODERS = Registry(kind="text_encoder", entry_point_group="vlekit.text_encoders")
VISION_ENCODERS = Registry(kind="vision_encoder", entry_point_group="vlekit.vision_encoders")
FUSIONS = Registry(kind="fusion", entry_point_group="vlekit.fusions")
HEADS = Registry(kind="head", entry_point_group="vlekit.heads")
ADAPTATIONS = Registry(kind="adaptation", entry_point_group="vlekit.adaptations", core_module="vlekit.components.adaptations")
# Diagnostic probes (vlekit diagnose): plain classes with a dataclass config, registered like components.
PROBES = Registry(kind="probe", entry_point_group="vlekit.probes", core_module="vlekit.diagnose.probes")
TASKS = Registry(kind="task", entry_point_group="vlekit.tasks", core_module="vlekit.evaluation.tasks")
# The kinds a model is assembled from (each registered class is an ``nn.Module``); the other kinds
# (ways to adapt a model, tasks, diagnostic probes) register the same way and are listed with them.
MODEL_REGISTRIES: dict[str, Registry] = {r.kind: r for r in (TEXT_ENCODERS, VISION_ENCODERS, FUSIONS, HEADS)}
REGISTRIES: dict[str, Registry] = {**MODEL_REGISTRIES, **{r.kind: r for r in (ADAPTATIONS, TASKS, PROBES)}}

register_text_encoder = TEXT_ENCODERS.register
register_vision_encoder = VISION_ENCODERS.register
register_fusion = FUSIONS.register
register_head = HEADS.register
register_adaptation = ADAPTATIONS.register
register_probe = PROBES.register
register_task = TASKS.register


def registry_for(kind: str) -> Registry:
    """The registry of ``kind`` (``text_encoder``, ``vision_encoder``, ``fusion`` or ``head``; plurals accepted)."""
    key = kind.replace("-", "_").rstrip("s")
    if key not in REGISTRIES:
        raise RegistryError(f"unknown component kind {kind!r}; expected one of {', '.join(REGISTRIES)}")
    return REGISTRIES[key]


def list_components(kind: str | None = None) -> list[dict[str, str]]:
    """Every registered component (and broken plugin) as rows: kind, name, source, description."""
    rows: list[dict[str, str]] = []
    for registry in [registry_for(kind)] if kind else REGISTRIES.values():
        for entry in registry.entries():
            description = entry.description + (f" (preset of {entry.preset_of})" if entry.preset_of else "")
            rows.append({"kind": entry.kind, "name": entry.name, "source": entry.source, "description": description})
        for broken in registry.broken:
            rows.append({"kind": registry.kind, "name": broken.entry_point.split(" = ")[0],
                         "source": f"package {broken.package}",
                         "description": f"BROKEN ({broken.entry_point}): {broken.error}"})
    return rows


def import_plugins(modules: Iterable[str]) -> None:
    """Import the experiment config's ``plugins:`` modules, so every process has their components.

    A module that is missing or fails while it runs is a :class:`RegistryError` naming the module and
    the cause (its exception type, message and the line that raised it), not a raw traceback.
    """
    if isinstance(modules, str) or not all(isinstance(module, str) for module in modules):
        raise RegistryError(f"plugins: expected a list of module names (e.g. [my_package.components]), got {modules!r}")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise RegistryError(f"plugin module {module!r} listed in the config cannot be imported: {error}") from error
        except Exception as error:  # the plugin's own code failed: say which and where
            frame = traceback.extract_tb(error.__traceback__)[-1]
            raise RegistryError(
                f"plugin module {module!r} listed in the config failed while importing: {type(error).__name__}: "
                f"{error} (at {frame.filename}:{frame.lineno})"
            ) from error
