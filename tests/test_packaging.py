"""The ways in agree: environment.yml (conda), pyproject.toml (pip), the Makefile, .ci/run, README.md."""
from __future__ import annotations

import itertools
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from helpers import make_dry_run

REPO_ROOT = Path(__file__).resolve().parents[1]


# -- version specifiers (packaging: in the lock, installed by every route) ------------------------------
SpecifierSet = pytest.importorskip("packaging.specifiers").SpecifierSet


def spec(text: str):
    return SpecifierSet(text)


def versions_in(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in v.split(".")) for v in re.findall(r"[0-9]+(?:\.[0-9]+)*", text)]


def candidate_versions(*specifiers: str) -> list[str]:
    """Versions around every bound in ``specifiers``: just below, at and just above each one."""
    out = {"0", "0.0.1", "999", "999.9.9"}
    for version in itertools.chain.from_iterable(versions_in(s) for s in specifiers):
        version = version + (0,) * (3 - len(version)) if len(version) < 3 else version
        for i in range(len(version)):
            for delta in (-1, 0, 1):
                bumped = list(version[: i + 1])
                bumped[i] += delta
                if bumped[i] >= 0:
                    out.add(".".join(map(str, bumped)))
                    out.add(".".join(map(str, bumped + [0] * (len(version) - i - 1))))
                    out.add(".".join(map(str, bumped + [99])))
    return sorted(out, key=lambda v: tuple(int(x) for x in v.split(".")))


def assert_within(name: str, narrower: str, wider: str, *, where: str) -> None:
    """Every version ``narrower`` allows is allowed by ``wider``, and ``narrower`` allows some."""
    candidates = candidate_versions(narrower, wider)
    allowed = [v for v in candidates if v in spec(narrower)]
    assert allowed, f"{where}: {name}{narrower} allows no version"
    outside = [v for v in allowed if v not in spec(wider)]
    assert not outside, f"{where}: {name}{narrower} allows {outside[:3]}, which pyproject.toml's {name}{wider} forbids"


# -- parsing the files ---------------------------------------------------------------------------
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(text: str) -> tuple[str, str]:
    """``"transformers>=5.0,<6"`` -> ``("transformers", ">=5.0,<6")`` (no markers or URLs here)."""
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*$", text)
    assert match, f"cannot parse requirement {text!r}"
    return canonical(match.group(1)), match.group(2).replace(" ", "")


def conda_requirement(text: str) -> tuple[str, str]:
    """A conda match spec -> (name, PEP 440 specifier): ``python=3.11`` is ``==3.11.*`` in conda."""
    name, version = split_requirement(text.replace(" ", ""))
    if re.fullmatch(r"=[0-9.]+(\.\*)?", version):
        version = "==" + version[1:].removesuffix(".*") + ".*"
    return name, version


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def environment() -> dict:
    path = REPO_ROOT / "environment.yml"
    assert path.is_file(), "environment.yml is missing"
    return yaml.safe_load(path.read_text())


def conda_section() -> dict[str, str]:
    return dict(conda_requirement(d) for d in environment()["dependencies"] if isinstance(d, str))


def pip_lines() -> list[str]:
    sections = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return sections[0]


def pip_section() -> dict[str, str]:
    return dict(split_requirement(line) for line in pip_lines() if not line.startswith("-"))


def editable_paths() -> list[str]:
    return [line.split(None, 1)[1] for line in pip_lines() if line.startswith("-e ")]


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\??:?=\s*(.+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile defines no {name}"
    return match.group(1).strip()


def makefile_pins() -> dict[str, str]:
    text = (REPO_ROOT / "Makefile").read_text()
    match = re.search(r"^TORCH_SPEC\s*\??=\s*(.+)$", text, re.MULTILINE)
    assert match, "Makefile has no TORCH_SPEC"
    pins = dict(split_requirement(item) for item in match.group(1).split())
    assert all(v.startswith("==") for v in pins.values()), f"TORCH_SPEC should pin exact versions: {pins}"
    return {name: v[2:] for name, v in pins.items()}


def required(requirements: Iterable[str]) -> dict[str, str]:
    return dict(split_requirement(r) for r in requirements)


# -- environment.yml -----------------------------------------------------------------------------
def test_environment_is_conda_forge_python_and_pip_only() -> None:
    env = environment()
    assert env["name"] == "vlekit"
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda = conda_section()
    assert set(conda) == {"python", "pip"}, f"conda installs only Python and pip; pip the rest: {sorted(conda)}"
    assert conda["python"] == "==3.11.*"
    assert_within("python", conda["python"], pyproject()["project"]["requires-python"], where="environment.yml")


def test_environment_installs_like_make_setup() -> None:
    """The Makefile's TORCH_SPEC, the project with the Makefile's EXTRAS, every plugin, all editable, and
    pip / setuptools from the lock before anything is built."""
    pins = pip_section()
    assert {name: version.removeprefix("==") for name, version in pins.items() if name.startswith("torch")} == makefile_pins()
    assert {"pip", "setuptools"} <= set(pins)
    paths = editable_paths()
    assert f".[{makefile_variable('EXTRAS')}]" in paths, paths
    plugins = sorted(f"plugins/{p.parent.name}" for p in (REPO_ROOT / "plugins").glob("*/pyproject.toml"))
    listed = sorted(p for p in paths if p.startswith("plugins/"))
    assert listed == plugins, f"environment.yml installs {listed}; plugins/ holds {plugins}"


# -- Makefile ------------------------------------------------------------------------------------
def test_makefile_torch_pins_satisfy_pyproject() -> None:
    pins = makefile_pins()
    assert "torch" in pins
    torch_range = required(pyproject()["project"]["dependencies"])["torch"]
    assert pins["torch"] in spec(torch_range), f"Makefile pins torch {pins['torch']}; pyproject: torch{torch_range}"


def test_make_demo_test_and_test_fast_run_the_demo_and_the_suite(tmp_path: Path) -> None:
    """What ``make -n`` runs for the entry points, in an environment make setup installed (its stamp is fresh)."""
    (tmp_path / ".vlekit-installed").touch()
    runs = {target: make_dry_run(target, PYTHON="PY", ENV_DIR=tmp_path) for target in ("setup", "demo", "test", "test-fast")}
    assert runs["setup"] == []  # installed: nothing to do
    assert runs["demo"] == ["PY -m vlekit.cli demo"]
    (suite,), (fast,) = runs["test"], runs["test-fast"]
    # Both on CI's two cores (pytest-xdist), and both fail on exit 5 (no tests collected).
    assert suite.startswith("PY -m pytest -n 2 || ") and fast.startswith('PY -m pytest -n 2 -m "not slow" || ')
    assert suite.removeprefix("PY -m pytest -n 2") == fast.removeprefix('PY -m pytest -n 2 -m "not slow"')
    (one_process,) = make_dry_run("test", PYTHON="PY", ENV_DIR=tmp_path, TEST_WORKERS="0")
    assert one_process.startswith("PY -m pytest -n 0 || ")


# -- CI and README -------------------------------------------------------------------------------
def test_ci_runs_make_test() -> None:
    path = REPO_ROOT / ".ci" / "run"
    assert os.access(path, os.X_OK), ".ci/run is not executable"
    lines = [line.strip() for line in path.read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert any(re.fullmatch(r"(time\s+)?make\s+test", c) for c in commands), f".ci/run runs {commands}, not `make test`"


def test_readme_shows_make_demo_and_make_test_first() -> None:
    path = REPO_ROOT / "README.md"
    assert path.is_file(), "README.md is missing"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL)
    assert blocks, "README.md has no code block"
    first = [line.split("#")[0].strip() for line in blocks[0].splitlines()]
    assert "make demo" in first and "make test" in first, f"README's first code block is {blocks[0]!r}"


# -- the specifier helper itself ------------------------------------------------------------------
@pytest.mark.parametrize(("narrower", "wider", "ok"), [
    (">=2.4", ">=2.4", True), (">=2.5,<3", ">=2.4", True), ("==3.11.*", ">=3.11", True),
    (">=2.0", ">=2.4", False), (">=5.0", ">=5.0,<6", False), ("==3.10.*", ">=3.11", False), (">=3,<2", ">=1", False),
])
def test_assert_within(narrower: str, wider: str, ok: bool) -> None:
    if ok:
        assert_within("x", narrower, wider, where="test")
    else:
        with pytest.raises(AssertionError):
            assert_within("x", narrower, wider, where="test")
