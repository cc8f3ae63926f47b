"""requirements.lock: exact, within pyproject's ranges, used by every install route, and what this suite runs on.

Refresh it with ``make lock`` (``make test-latest`` in a fresh ``.venv-latest``, then ``scripts/lock.py
freeze`` there); ``make setup``, ``.ci/run`` (through ``make test``) and ``environment.yml`` install
with ``-c requirements.lock``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from helpers import make_dry_run

packaging_requirements = pytest.importorskip("packaging.requirements")

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements.lock"
LOCK_SCRIPT = REPO_ROOT / "scripts" / "lock.py"
MAKEFILE = (REPO_ROOT / "Makefile").read_text()
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
PLUGIN_PROJECTS = [tomllib.loads(p.read_text())["project"] for p in sorted(REPO_ROOT.glob("plugins/*/pyproject.toml"))]
# make setup leaves this file in the environment it installed from the lock.
SETUP_STAMP = Path(sys.prefix) / ".vlekit-installed"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path = LOCK) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"requirements.lock: {line!r} is not an exact 'name==version' pin"
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def lock_extras() -> list[str]:
    headers = [line for line in LOCK.read_text().splitlines() if line.startswith("# extras: ")]
    assert len(headers) == 1, "requirements.lock needs one '# extras: ...' header line"
    return headers[0].removeprefix("# extras: ").split(",")


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\??:?=\s*(.+)$", MAKEFILE, re.MULTILINE)
    assert match, f"Makefile defines no {name}"
    return match.group(1).strip()


def run_lock_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCK_SCRIPT), *args], capture_output=True, text=True, timeout=120)


# -- the lock file -------------------------------------------------------------------------------
def test_every_declared_requirement_is_locked_within_its_range():
    pins = lock_pins()
    requirements = [*PROJECT["dependencies"], *(r for extra in lock_extras()
                                                for r in PROJECT["optional-dependencies"][extra])]
    requirements += [r for project in PLUGIN_PROJECTS for r in project["dependencies"]]
    ours = {canonical(PROJECT["name"]), *(canonical(p["name"]) for p in PLUGIN_PROJECTS)}
    for text in requirements:
        requirement = packaging_requirements.Requirement(text)
        name = canonical(requirement.name)
        if name in ours:
            continue
        assert name in pins, f"{text} (pyproject) has no pin in requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {text}")


def test_the_lock_covers_what_make_setup_installs_and_leaves_the_project_out():
    assert lock_extras() == makefile_variable("EXTRAS").split(","), "the lock's extras are not the Makefile's EXTRAS"
    assert set(lock_extras()) >= {"dev", "notebooks", "tracking"}
    pins = lock_pins()
    assert {"jupyterlab", "jupyter-server", "ipykernel", "websocket-client", "tensorboard", "pip"} <= set(pins)
    ours = {canonical(PROJECT["name"]), *(canonical(p["name"]) for p in PLUGIN_PROJECTS)}
    assert not ours & set(pins), f"the editable project packages {sorted(ours & set(pins))} must not be locked"


def test_torch_is_pinned_alike_in_the_makefile_the_lock_and_environment_yml():
    pins = lock_pins()
    torch_spec = dict(item.split("==") for item in makefile_variable("TORCH_SPEC").split())
    assert torch_spec == {"torch": pins["torch"], "torchvision": pins["torchvision"]}, (
        f"Makefile TORCH_SPEC {torch_spec}; requirements.lock torch=={pins['torch']} torchvision=={pins['torchvision']}")
    assert all(f"{name}=={version}" in environment_pip_lines() for name, version in torch_spec.items())


# -- every route installs through it ---------------------------------------------------------------
def test_make_setup_installs_with_the_lock_and_reinstalls_when_it_changes(tmp_path):
    """What ``make -n`` says the targets run: setup installs with ``-c`` the lock, and again once the lock is
    newer than the environment's stamp; test-latest builds a fresh environment without the lock; lock freezes
    that environment and then runs the suite in it."""
    env_dir, latest, lock = tmp_path / "env", tmp_path / "latest", tmp_path / "requirements.lock"
    env_dir.mkdir()
    lock.write_text(LOCK.read_text())
    stamp = env_dir / ".vlekit-installed"  # what make setup leaves in the environment it installed
    stamp.touch()
    now = time.time()
    os.utime(lock, (now - 3600, now - 3600))
    variables = dict(PYTHON="PY", ENV_DIR=env_dir, LOCK=lock, LATEST_ENV=latest)
    assert not [line for line in make_dry_run("setup", **variables) if "pip install" in line], "installed and up to date"

    os.utime(lock, (now + 3600, now + 3600))  # the lock changed since
    installs = [line for line in make_dry_run("setup", **variables) if "pip install" in line]
    assert installs and all(f"-c {lock}" in line for line in installs), installs
    pins = lock_pins()
    assert any(f"torch=={pins['torch']} torchvision=={pins['torchvision']}" in line
               and f'-e ".[{",".join(lock_extras())}]"' in line for line in installs), installs

    fresh = make_dry_run("latest-env", **variables)
    assert fresh[0] == f"rm -rf {latest}" and any(line.startswith(f"python3 -m venv --upgrade-deps {latest}") for line in fresh)
    latest_installs = [line for line in fresh if "pip install" in line]
    assert latest_installs and not any("-c" in line.split() for line in latest_installs), "make test-latest must not use the lock"
    assert make_dry_run("test-latest", **variables)[-1].startswith(f"{latest}/bin/python -m pytest")

    steps = make_dry_run("lock", **variables)
    freeze = steps.index(f"{latest}/bin/python scripts/lock.py freeze --extras {','.join(lock_extras())} --output {lock}")
    suite = next(i for i, line in enumerate(steps) if line.startswith(f"{latest}/bin/python -m pytest"))
    assert steps[0] == f"rm -rf {latest}" and freeze < suite, "make lock freezes a fresh environment, then runs the suite on it"


def environment_pip_lines() -> list[str]:
    sections = [d["pip"] for d in yaml.safe_load((REPO_ROOT / "environment.yml").read_text())["dependencies"]
                if isinstance(d, dict)]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return sections[0]


def test_environment_yml_installs_with_the_lock():
    lines = environment_pip_lines()
    assert lines[0] == f"-c {LOCK.name}", lines
    assert f"-e .[{','.join(lock_extras())}]" in lines, f"environment.yml must install the lock's extras: {lines}"
    unpinned = [line for line in lines if not line.startswith("-")
                and canonical(packaging_requirements.Requirement(line).name) not in lock_pins()]
    assert not unpinned, f"environment.yml installs {unpinned}, which requirements.lock does not pin"


def test_pytest_collecting_no_tests_fails_make(tmp_path):
    """The Makefile's test recipes fail on pytest's exit 5 (nothing collected), and pass a passing run."""
    empty, passing = tmp_path / "empty", tmp_path / "passing"
    empty.mkdir()
    passing.mkdir()
    (passing / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    probe = tmp_path / "probe.mk"
    probe.write_text("probe:\n\t$(PYTHON) -m pytest -q -p no:cacheprovider --rootdir $(DIR) $(DIR) $(NO_TESTS_FAIL)\n")

    def make(folder: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", "-f", str(REPO_ROOT / "Makefile"), "-f", str(probe), "probe",
                               f"PYTHON={sys.executable}", f"DIR={folder}"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    nothing = make(empty)
    assert nothing.returncode != 0 and "collected no tests (exit 5): failing" in nothing.stderr, nothing
    assert make(passing).returncode == 0


# -- scripts/lock.py ----------------------------------------------------------------------------------
def test_this_environment_is_the_locked_one():
    if not SETUP_STAMP.is_file():
        pytest.skip(f"{sys.prefix} was not installed by make setup (e.g. make test-latest's environment)")
    result = run_lock_script("check")
    assert result.returncode == 0, result.stderr
    assert f"matches {LOCK}" in result.stdout


def test_check_names_a_package_off_its_pin_and_one_without_a_pin(tmp_path):
    pins = lock_pins()
    numpy = metadata.version("numpy")
    text = LOCK.read_text()
    off = re.sub(r"^numpy==.*$", "numpy==0.0.1", text, flags=re.MULTILINE)
    (tmp_path / "off.lock").write_text(off)
    result = run_lock_script("check", "--lock", str(tmp_path / "off.lock"))
    assert result.returncode == 1 and f"numpy is {numpy} here, off.lock pins 0.0.1" in result.stderr, result.stderr
    unpinned = re.sub(r"^PyYAML==.*\n", "", text, flags=re.MULTILINE | re.IGNORECASE)
    assert "pyyaml" in pins and unpinned != text
    (tmp_path / "unpinned.lock").write_text(unpinned)
    result = run_lock_script("check", "--lock", str(tmp_path / "unpinned.lock"))
    assert result.returncode == 1 and "pyyaml" in result.stderr and "has no pin in unpinned.lock" in result.stderr


def test_freeze_writes_a_lock_that_check_accepts(tmp_path):
    output = tmp_path / "fresh.lock"
    result = run_lock_script("freeze", "--extras", "dev", "--output", str(output))
    assert result.returncode == 0, result.stderr
    frozen = lock_pins(output)
    assert frozen["numpy"] == metadata.version("numpy") and "vlekit" not in frozen and "pip" in frozen
    assert run_lock_script("check", "--lock", str(output)).returncode == 0
    wrong = run_lock_script("freeze", "--extras", "dev,notebook", "--output", str(tmp_path / "x.lock"))
    assert wrong.returncode != 0 and "['notebook'] not in pyproject.toml's optional-dependencies" in wrong.stderr
