"""requirements.lock: write it from an environment the test-suite passed in, or check an environment against it.

    python scripts/lock.py freeze --extras dev,notebooks,tracking --output requirements.lock
    python scripts/lock.py check [--lock requirements.lock]

``freeze`` runs in the environment to freeze (``make lock`` calls it with ``.venv-latest/bin/python``,
a fresh environment of the newest releases, then runs the test-suite there on the new lock) and writes every installed distribution as ``name==version``,
pip and setuptools included and the editable project packages (vlekit and plugins/*) left out, under
a header that records the extras, the interpreter and the platform it was made on. The lock is a pip
constraints file (``pip install -c requirements.lock ...``): it fixes the version of every package an
install pulls in, and platform-only pins (the CUDA wheels torch needs on Linux) are ignored elsewhere.

``check`` runs in the environment to check (``tests/test_environment.py`` does) and walks the
requirements of vlekit with the lock's extras and of every plugin, recursively, markers evaluated:
every package reached must be installed at exactly the locked version. It exits 1 with one line per
difference and what to run.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCK = REPO_ROOT / "requirements.lock"
EXTRAS_HEADER = "# extras: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def canonical(name: str) -> str:
    """PEP 503 name: ``Jinja2`` and ``jinja2``, ``websocket_client`` and ``websocket-client`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_packages() -> dict[str, Path]:
    """vlekit and the plugins under plugins/: canonical name -> folder (installed editable, never locked)."""
    folders = [REPO_ROOT, *sorted(p.parent for p in REPO_ROOT.glob("plugins/*/pyproject.toml"))]
    return {canonical(tomllib.loads((f / "pyproject.toml").read_text())["project"]["name"]): f for f in folders}


def read_lock(path: Path) -> tuple[dict[str, str], list[str]]:
    """``(pins, extras)``: canonical name -> exact version, and the extras of vlekit the lock covers."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such lock file (make lock writes it)")
    pins: dict[str, str] = {}
    extras: list[str] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith(EXTRAS_HEADER):
            extras = [e.strip() for e in line[len(EXTRAS_HEADER):].split(",") if e.strip()]
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        if not match:
            raise SystemExit(f"{path}:{number}: {line!r} is not 'name==version'; regenerate it with make lock")
        pins[canonical(match.group(1))] = match.group(2)
    if extras is None:
        raise SystemExit(f"{path}: no '{EXTRAS_HEADER.strip()} ...' header line; regenerate it with make lock")
    return pins, extras


def freeze(extras: list[str], output: Path) -> None:
    """Write the running environment's distributions as a lock (see the module docstring)."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    ours = project_packages()
    pins = []
    for line in frozen:
        match = PIN.match(line.strip())
        if not match:
            raise SystemExit(f"pip freeze gave {line!r}, not 'name==version': a package installed from a path "
                             "or URL cannot be locked; install it from an index and freeze again")
        if canonical(match.group(1)) not in ours:
            pins.append(f"{match.group(1)}=={match.group(2)}")
    missing = [name for name in ours if name not in {canonical(d.metadata["Name"]) for d in metadata.distributions()}]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not installed here: freeze the environment make test-latest built")
    today = datetime.date.today().isoformat()
    header = [
        "# The exact versions the vlekit test-suite was run with: a pip constraints file (pip install -c).",
        "# Written by `make lock` (scripts/lock.py freeze in a fresh environment, then the suite in it); do not edit.",
        f"# Made on {today} with CPython {platform.python_version()} on {platform.system()} {platform.machine()}.",
        f"{EXTRAS_HEADER}{','.join(extras)}",
    ]
    output.write_text("\n".join(header + sorted(pins, key=str.lower)) + "\n")
    print(f"{output}: {len(pins)} packages")


def requirements_of(name: str, extras: set[str]) -> list[tuple[str, set[str]]]:
    """The installed distribution's requirements that apply here (markers evaluated): (name, its extras)."""
    from packaging.requirements import Requirement

    reached = []
    for text in metadata.distribution(name).requires or []:
        requirement = Requirement(text)
        applies = requirement.marker is None or any(
            requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""}))
        if applies:
            reached.append((canonical(requirement.name), set(requirement.extras)))
    return reached


def check(lock: Path) -> tuple[list[str], int]:
    """Differences between the running environment and ``lock`` (none: it matches), and how many packages were checked."""
    pins, extras = read_lock(lock)
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    ours = project_packages()
    problems = [f"{name} (from {folder}) is not installed: run make setup"
                for name, folder in ours.items() if name not in installed]
    todo = [(name, set(extras) if name == "vlekit" else set(), "the project") for name in ours if name in installed]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted, needed_by = todo.pop()
        if (name, frozenset(wanted)) in seen:
            continue
        seen.add((name, frozenset(wanted)))
        if name not in ours:
            if name not in installed:
                problems.append(f"{name} (needed by {needed_by}) is not installed: run make setup")
                continue
            if name not in pins:
                problems.append(f"{name} {installed[name]} (needed by {needed_by}) has no pin in {lock.name}: "
                                "run make lock")
            elif installed[name] != pins[name]:
                problems.append(f"{name} is {installed[name]} here, {lock.name} pins {pins[name]} "
                                f"(needed by {needed_by}): run make setup")
        todo.extend((dep, dep_extras, name) for dep, dep_extras in requirements_of(name, wanted))
    return sorted(set(problems)), len({name for name, _ in seen} - set(ours))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    freezing = commands.add_parser("freeze", help="write the running environment as the lock")
    freezing.add_argument("--extras", required=True, help="vlekit's extras installed here, e.g. dev,notebooks")
    freezing.add_argument("--output", type=Path, default=DEFAULT_LOCK)
    checking = commands.add_parser("check", help="compare the running environment with the lock")
    checking.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    args = parser.parse_args(argv)
    if args.command == "freeze":
        declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        extras = [e.strip() for e in args.extras.split(",") if e.strip()]
        unknown = [e for e in extras if e not in declared]
        if unknown:
            raise SystemExit(f"--extras {unknown} not in pyproject.toml's optional-dependencies {sorted(declared)}")
        freeze(extras, args.output)
        return 0
    problems, checked = check(args.lock)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{sys.prefix} matches {args.lock}: {checked} packages at their locked versions")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
