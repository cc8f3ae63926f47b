"""Plugins use vlekit's public API only: ``vlekit``, ``vlekit.layers`` and ``vlekit.interfaces``.

The test reads every plugin package's source (not its tests) with ``ast`` and fails on an import of
another vlekit module, of a private name, or of a name that the public module does not export.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PUBLIC_MODULES = ("vlekit", "vlekit.layers", "vlekit.interfaces")


def _public_names(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    return set(names) if names is not None else {name for name in vars(module) if not name.startswith("_")}


def private_imports(source: str, *, filename: str) -> list[str]:
    """Each import in ``source`` that reaches past vlekit's public API, as ``"file:line: what"``."""
    problems = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vlekit" and alias.name not in PUBLIC_MODULES:
                    problems.append(f"{filename}:{node.lineno}: import {alias.name} (not a public module)")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "vlekit":
            if node.module not in PUBLIC_MODULES:
                problems.append(f"{filename}:{node.lineno}: from {node.module} import ... (not a public module)")
                continue
            public = _public_names(node.module)
            for alias in node.names:
                if alias.name.startswith("_") or alias.name not in public:
                    problems.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name} (not public)")
    return problems


def _plugin_sources() -> list[Path]:
    return sorted(path for path in PLUGINS.glob("*/*/**/*.py") if "tests" not in path.relative_to(PLUGINS).parts)


def test_the_plugin_sources_are_found() -> None:
    packages = {path.relative_to(PLUGINS).parts[0] for path in _plugin_sources()}
    assert {"vlekit-fusions", "vlekit-timm", "vlekit-plugin-template"} <= packages


@pytest.mark.parametrize("path", _plugin_sources(), ids=lambda path: str(path.relative_to(PLUGINS)))
def test_plugins_import_only_the_public_api(path: Path) -> None:
    problems = private_imports(path.read_text(), filename=path.name)
    assert not problems, "plugins may import only vlekit, vlekit.layers and vlekit.interfaces:\n" + "\n".join(problems)


def test_the_check_catches_private_and_internal_imports() -> None:
    source = (
        "import vlekit\n"
        "import vlekit.components.fusions\n"
        "from vlekit.components.fusions import CoAttentionConfig\n"
        "from vlekit.layers import _private, masked_mean\n"
        "from vlekit import registry_for, no_such_name\n"
        "from vlekit.registry import register_fusion\n"
    )
    assert private_imports(source, filename="bad.py") == [
        "bad.py:2: import vlekit.components.fusions (not a public module)",
        "bad.py:3: from vlekit.components.fusions import ... (not a public module)",
        "bad.py:4: from vlekit.layers import _private (not public)",
        "bad.py:5: from vlekit import no_such_name (not public)",
        "bad.py:6: from vlekit.registry import ... (not a public module)",
    ]
