"""The plugins as pip packages: listed with their package as source, installable and removable one at a
time without touching anything else, and a broken plugin listed as BROKEN while the rest keep working.

The shared environment is never modified: a plugin made from the template (copied and renamed, as its
README tells plugin authors to) is pip-installed into a temporary ``--target`` folder, and fresh
Python processes run with that folder on / off ``PYTHONPATH``, which is what installing and
uninstalling it does to entry-point discovery.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "plugins" / "vlekit-plugin-template"

# Prints `vlekit list`, then builds a tiny model with each fusion named on the command line.
PROBE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import vlekit
    from vlekit.cli import main

    main(["list"])
    results = {}
    for fusion in sys.argv[1:]:
        try:
            model = vlekit.build_model(text_encoder="tiny-bert", vision_encoder="tiny-timm-vit",
                                       fusion={"name": fusion, **vlekit.FUSIONS.get(fusion).tiny})
            results[fusion] = f"ok {model.fusion.pooled_size}"
        except Exception as error:
            results[fusion] = f"{type(error).__name__}: {error}"
    print("RESULTS " + json.dumps(results))
    """
)
WORKING_FUSIONS = ["tiny-co-attention", "merged-attention", "dual-encoder", "template/mean-pool-fusion"]


def run_probe(tmp_path: Path, *fusions: str, pythonpath: Path | None = None) -> tuple[set[tuple[str, ...]], dict]:
    """Run ``PROBE_SCRIPT`` in a fresh process: (rows of ``vlekit list``, build results by fusion)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, *fusions], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    header, *rows, results = lines
    assert header.split() == ["kind", "name", "source", "description"]
    return {tuple(re.split(r"\s{2,}", row.strip(), maxsplit=3)) for row in rows}, json.loads(results.removeprefix("RESULTS "))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[tuple[str, ...]], dict]:
    """``vlekit list`` and builds in the shared environment as it is (all repository plugins installed)."""
    return run_probe(tmp_path_factory.mktemp("plain"), *WORKING_FUSIONS, "probe/mean-pool-fusion")


@pytest.mark.slow
def test_vlekit_list_shows_each_plugin_with_its_package(installed: tuple[set[tuple[str, ...]], dict]) -> None:
    rows, _ = installed
    sources = {(kind, name): source for kind, name, source, _ in rows}
    for name in ("merged-attention", "gated-cross-attention", "projection-concat", "dual-encoder"):
        assert sources[("fusion", name)] == "package vlekit-fusions"
    for name in ("timm-vit", "tiny-timm-vit"):
        assert sources[("vision_encoder", name)] == "package vlekit-timm"
    assert sources[("fusion", "template/mean-pool-fusion")] == "package vlekit-plugin-template"
    assert sources[("fusion", "co-attention")] == "core"
    assert not [row for row in rows if row[3].startswith("BROKEN")]


def make_probe_plugin(tmp_path: Path) -> Path:
    """The template copied and renamed to ``vlekit-probe-plugin`` (``probe/mean-pool-fusion``), as a source tree."""
    source = tmp_path / "vlekit-probe-plugin"
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__", "tests"))
    (source / "vlekit_plugin_template").rename(source / "vlekit_probe_plugin")
    for path in [p for p in source.rglob("*") if p.suffix in (".py", ".toml", ".md")]:
        text = path.read_text()
        for old, new in (("vlekit_plugin_template", "vlekit_probe_plugin"),
                         ("vlekit-plugin-template", "vlekit-probe-plugin"), ("template/", "probe/")):
            text = text.replace(old, new)
        path.write_text(text)
    return source


@pytest.mark.slow
def test_installing_and_uninstalling_a_plugin_adds_and_removes_exactly_its_components(
    tmp_path: Path, installed: tuple[set[tuple[str, ...]], dict]
) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(make_probe_plugin(tmp_path))],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(site.glob("vlekit_probe_plugin-*.dist-info/entry_points.txt"))

    with_rows, with_results = run_probe(tmp_path, *WORKING_FUSIONS, "probe/mean-pool-fusion", pythonpath=site)
    without_rows, without_results = installed  # the same environment without the probe plugin

    added = with_rows - without_rows
    assert without_rows <= with_rows  # nothing else changed
    assert {(kind, name, source) for kind, name, source, _ in added} == {
        ("fusion", "probe/mean-pool-fusion", "package vlekit-probe-plugin")
    }
    assert with_results["probe/mean-pool-fusion"] == "ok 128"  # 2 * its tiny hidden_size (64)
    assert without_results["probe/mean-pool-fusion"].startswith("RegistryError: unknown fusion 'probe/mean-pool-fusion'")
    for fusion in WORKING_FUSIONS:
        assert with_results[fusion].startswith("ok") and without_results[fusion].startswith("ok")


@pytest.mark.slow
def test_a_broken_plugin_is_listed_as_broken_and_the_rest_still_build(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist_info = site / "vlekit_broken_probe-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlekit-broken-probe\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[vlekit.fusions]\nbroken-fusion = vlekit_broken_probe\n")
    (site / "vlekit_broken_probe.py").write_text('raise RuntimeError("this plugin fails on import")\n')

    rows, results = run_probe(tmp_path, *WORKING_FUSIONS, "gated-cross-attention", "projection-concat",
                              pythonpath=site)
    broken = [row for row in rows if row[3].startswith("BROKEN")]
    assert broken == [("fusion", "broken-fusion", "package vlekit-broken-probe",
                       "BROKEN (broken-fusion = vlekit_broken_probe): RuntimeError: this plugin fails on import")]
    assert all(result.startswith("ok") for result in results.values()), results
