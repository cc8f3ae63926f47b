"""Dependencies point one way: the static import graph of vlekit and data_prep has no cycle.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: an import moved
into a function still ties the two modules together, it only hides the cycle from Python.
Importing ``pkg.mod`` is an edge to ``pkg.mod`` alone; the package's ``__init__`` is not counted
(Python runs it first, and it only gathers the public names).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlekit", "data_prep")


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the packages (``pkg`` itself is its ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` (at ``path``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module ``pkg.mod``; ``from pkg import name``, ``pkg``.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a package-less name: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, colours white / grey / black)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "grey"
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "grey":
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    modules = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.low": tmp_path / "low.py", "pkg.high": tmp_path / "h.py"}
    source = tmp_path / "h.py"
    source.write_text("def f():\n    from pkg.low import thing\n\nfrom . import low\nfrom pkg import version\n")
    assert imports_of("pkg.high", source, modules) == {"pkg.low", "pkg"}


def test_the_import_graph_of_vlekit_and_data_prep_has_no_cycle():
    graph = import_graph()
    assert {"vlekit.training.train", "vlekit.evaluation.evaluate", "vlekit.runs.folder", "data_prep.preprocess"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("lower", "upper"), [
    ("vlekit.evaluation.evaluate", "vlekit.training.train"),   # train evaluates while it trains, never the other way
    ("vlekit.ablation.grid", "vlekit.demo"),    # a grid runs any experiment, not only the demo's
    ("vlekit.ablation.stats", "vlekit.ablation.grid"),  # the statistics read results, whoever ran the grid
    ("vlekit.evaluation.plots", "vlekit.training.train"),      # plots read run folders; training knows nothing of them
    ("vlekit.runs.folder", "vlekit.training.train"),
])
def test_a_lower_layer_does_not_import_an_upper_one(lower, upper):
    graph = import_graph()
    reached, frontier = set(), [lower]
    while frontier:
        node = frontier.pop()
        if node not in reached:
            reached.add(node)
            frontier += graph[node]
    assert upper not in reached, f"{lower} imports {upper} (directly or through another module)"


# vlekit's layers, lowest first: a module imports only from its own layer or the layers below it.
LAYERS = [
    ("core", ["vlekit.options", "vlekit.registry", "vlekit.interfaces", "vlekit.tables", "vlekit.hub", "vlekit.layers", "vlekit.hf_configs"]),
    ("components", ["vlekit.components"]),
    ("model", ["vlekit.model"]),
    ("official VLE format", ["vlekit.vle"]),
    ("runs", ["vlekit.runs"]),
    ("evaluation", ["vlekit.evaluation"]),
    ("training", ["vlekit.training"]),
    ("bench", ["vlekit.bench"]),
    ("ablation", ["vlekit.ablation"]),
    ("diagnostics", ["vlekit.diagnose"]),
    ("application", ["vlekit.demo", "vlekit.cli"]),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer of tests/test_import_graph.py's LAYERS")


def test_vlekit_packages_are_layered():
    graph = import_graph()
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
              for name in sorted(graph) if name.startswith("vlekit.")
              for target in sorted(graph[name]) if target.startswith("vlekit.") and layer_of(target) > layer_of(name)]
    assert upward == [], "imports that point up a layer: " + ", ".join(upward)


def test_the_tree_shows_the_architecture():
    """A short root (the public core and the command line) and no module too long to read at once."""
    root = sorted(path.name for path in (REPO_ROOT / "vlekit").glob("*.py"))
    assert len(root) <= 12, root
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}, f"modules over 500 lines: {long}"


def test_tables_import_nothing_of_the_project_and_no_module_picks_a_plotting_backend():
    graph = import_graph()
    assert graph["vlekit.tables"] == set()
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"):
                pytest.fail(f"{name} calls matplotlib.use (line {node.lineno}): the caller chooses the backend")


def readme_layout() -> list[str]:
    """The modules and packages the README's Layout block lists, in its order (``pkg.sub.mod``)."""
    block = (REPO_ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    listed, path = [], []  # path: the packages the current line sits in, by indentation
    for line in block.splitlines():
        match = re.match(r"^( *)(\w+)(/|\.py\b)", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        path = path[:depth]
        if match.group(3) == "/":
            path.append(match.group(2))
            if depth:
                listed.append(".".join(path))
        elif path and path[0] in PACKAGES:
            listed.append(".".join([*path, match.group(2)]))
    return [name for name in listed if name.split(".")[0] in PACKAGES]


def test_the_readme_layout_lists_every_module_in_dependency_order():
    graph, listed = import_graph(), readme_layout()
    modules = set(graph) - set(PACKAGES)
    assert sorted(modules - set(listed)) == [] and sorted(set(listed) - modules) == [], "README Layout is out of date"
    position = {name: i for i, name in enumerate(listed)}
    upward = [f"{name} -> {target}" for name in listed for target in sorted(graph[name])
              if target in position and position[target] > position[name]]
    assert upward == [], "README Layout lists a module above one it imports: " + ", ".join(upward)
    assert not [t for name in listed if name.startswith("data_prep") for t in graph[name] if t.startswith("vlekit")]


def test_import_vlekit_loads_the_core_only():
    """``import vlekit`` (what a notebook cell registering a component pays) loads the registry, the
    interfaces and the core components; the application's names load on first use (PEP 562)."""
    import subprocess
    import sys

    code = ("import sys, vlekit; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('vlekit', 'data_prep'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert len(loaded) <= 15, loaded
    application = ("data_prep", "vlekit.training", "vlekit.evaluation", "vlekit.bench", "vlekit.ablation", "vlekit.hub",
                   "vlekit.runs", "vlekit.vle", "vlekit.diagnose")
    constants = ("data_prep", "data_prep.constants")  # CLIP's pixel statistics, defined once on the data side
    assert not [m for m in loaded if m.startswith(application) and m not in constants], loaded
    lazy = subprocess.run([sys.executable, "-c", "import vlekit, data_prep; print(vlekit.load_run.__module__, "
                                                 "data_prep.generate_synthetic_vcr.__module__)"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert lazy == ["vlekit.evaluation.predict", "data_prep.synthetic"]


def test_no_test_module_imports_another():
    """Shared test code lives in tests/conftest.py (fixtures) and tests/helpers.py, not in test modules."""
    found = []
    for path in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno} imports {name}" for name in names if name.split(".")[0].startswith("test_")]
    assert found == []
