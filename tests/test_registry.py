"""The registry: registration (module and notebook), lookup errors, presets, typed configs, plugins.

Most tests use fresh ``Registry`` instances; those that touch the global registries clean up after
themselves. Entry-point plugins are tested in a subprocess against a tiny plugin distribution
(a ``*.dist-info`` folder with ``entry_points.txt``) written to ``tmp_path`` and put on PYTHONPATH.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import vlekit
from vlekit.cli import main as cli_main
from vlekit.components.fusions import CoAttentionConfig, CoAttentionFusion
from vlekit.registry import (
    FUSIONS,
    TEXT_ENCODERS,
    VISION_ENCODERS,
    Registry,
    RegistryError,
    import_plugins,
    list_components,
    make_config,
    registry_for,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ToyConfig:
    width: int = 4
    depth: int = 1
    scale: float = 1.0
    act: str = "relu"
    flag: bool = False
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def toy_class(module_name: str = "mypkg.layers", qualname: str = "Toy") -> type[nn.Module]:
    """A fresh component class that claims to be defined in ``module_name``."""

    def __init__(self: nn.Module, *, config: ToyConfig) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.linear = nn.Linear(config.width, config.width)

    return type(qualname, (nn.Module,), {
        "__module__": module_name, "__qualname__": qualname, "__init__": __init__,
        "__doc__": "A toy component.\n\nMore text that is not the description.",
    })


_scan_distributions = importlib.metadata.packages_distributions


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return _scan_distributions()


@pytest.fixture(autouse=True)
def one_distribution_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations from plain modules look up the owning distribution, a ~0.3 s scan each time;
    no test here installs a distribution in-process, so one scan serves them all."""
    monkeypatch.setattr(importlib.metadata, "packages_distributions", _packages_distributions)


@pytest.fixture
def registry() -> Registry:
    return Registry(kind="fusion", entry_point_group="vlekit.tests.no-such-group")


# -- registration -------------------------------------------------------------------------------
def test_core_components_are_registered_by_decorator_in_their_module() -> None:
    entry = FUSIONS.get("co-attention")
    assert entry.component is CoAttentionFusion and entry.config_class is CoAttentionConfig
    assert CoAttentionFusion.config_class is CoAttentionConfig
    assert CoAttentionFusion.registered_name == "co-attention"
    assert entry.source == "core" and entry.kind == "fusion"
    assert entry.defining_module == "vlekit.components.fusions.CoAttentionFusion"
    assert entry.description.startswith("VLE / METER co-attention")
    assert TEXT_ENCODERS.get("hf-text").source == "core"
    assert VISION_ENCODERS.get("clip-vision").source == "core"


def test_decorator_in_a_module_records_source_and_first_docstring_line(registry: Registry) -> None:
    cls = registry.register("toy", config=ToyConfig)(toy_class("mypkg.layers"))
    entry = registry.get("toy")
    assert entry.component is cls and cls.config_class is ToyConfig
    assert entry.source == "module mypkg.layers"
    assert entry.description == "A toy component."
    assert registry.build("toy", width=3).linear.in_features == 3
    explicit = registry.register("toy2", config=ToyConfig, description="explicit")(toy_class("mypkg.layers", "Toy2"))
    assert registry.get("toy2").description == "explicit" and explicit.registered_name == "toy2"


NOTEBOOK_CELL = '''
from dataclasses import dataclass
from torch import nn

@dataclass(frozen=True)
class CellConfig:
    width: int = 4

@registry.register("cell-fusion", config=CellConfig)
class {class_name}(nn.Module):
    """Defined in a notebook cell."""

    def __init__(self, *, config: CellConfig) -> None:
        super().__init__()
        self.config = config
'''


def run_cell(registry: Registry, class_name: str = "CellFusion") -> type:
    """Execute a 'notebook cell' the way IPython does: in a namespace whose __name__ is __main__."""
    namespace: dict[str, Any] = {"__name__": "__main__", "registry": registry}
    exec(NOTEBOOK_CELL.format(class_name=class_name), namespace)
    return namespace[class_name]


def test_rerunning_a_notebook_cell_replaces_its_own_entry(registry: Registry) -> None:
    first = run_cell(registry)
    assert registry.get("cell-fusion").component is first
    assert registry.get("cell-fusion").source == "notebook"
    second = run_cell(registry)
    assert second is not first
    assert registry.get("cell-fusion").component is second
    assert [e.name for e in registry.entries()] == ["cell-fusion"]


def test_same_name_from_another_notebook_class_is_an_error_naming_both(registry: Registry) -> None:
    first = run_cell(registry, "CellFusion")
    with pytest.raises(RegistryError) as error:
        run_cell(registry, "OtherCellFusion")
    message = str(error.value)
    assert "__main__.CellFusion" in message and "__main__.OtherCellFusion" in message
    assert "'cell-fusion'" in message and "notebook" in message
    assert registry.get("cell-fusion").component is first  # the old entry survives


def test_duplicate_names_across_modules_are_errors_naming_both_sources(registry: Registry) -> None:
    registry.register("toy", config=ToyConfig)(toy_class("pkg_a.layers", "Toy"))
    with pytest.raises(RegistryError) as error:
        registry.register("toy", config=ToyConfig)(toy_class("pkg_b.layers", "Toy"))
    message = str(error.value)
    assert "pkg_a.layers.Toy" in message and "module pkg_a.layers" in message
    assert "pkg_b.layers.Toy" in message and "module pkg_b.layers" in message
    assert "yourpackage/toy" in message  # says what would be right


def test_a_plugin_cannot_take_a_core_name() -> None:
    with pytest.raises(RegistryError) as error:
        FUSIONS.register("co-attention", config=ToyConfig)(toy_class("thirdparty.fusions", "CoAttention"))
    message = str(error.value)
    assert "vlekit.components.fusions.CoAttentionFusion (core)" in message
    assert "thirdparty.fusions.CoAttention (module thirdparty.fusions)" in message
    assert FUSIONS.get("co-attention").component is CoAttentionFusion


def test_namespaced_names_are_accepted(registry: Registry) -> None:
    registry.register("mypkg/fancy-fusion_v2.1", config=ToyConfig)(toy_class())
    assert "mypkg/fancy-fusion_v2.1" in registry
    assert registry.build("mypkg/fancy-fusion_v2.1").config == ToyConfig()


@pytest.mark.parametrize("name", ["", "has space", "a/b/c", "/lead", "trail/", "pkg:Class", "tab\tname", "ünïcode!"])
def test_invalid_names_are_rejected(registry: Registry, name: str) -> None:
    with pytest.raises(RegistryError, match="invalid fusion name"):
        registry.register(name, config=ToyConfig)(toy_class())
    assert registry.entries() == []


def test_config_must_be_a_dataclass(registry: Registry) -> None:
    with pytest.raises(TypeError, match="must be a dataclass"):
        registry.register("toy", config=dict)(toy_class())


def test_unregister(registry: Registry) -> None:
    registry.register("toy", config=ToyConfig)(toy_class())
    registry.unregister("toy")
    assert "toy" not in registry
    with pytest.raises(RegistryError):
        registry.get("toy")


# -- lookup --------------------------------------------------------------------------------------
def test_unknown_name_suggests_close_matches_and_lists_known_names() -> None:
    with pytest.raises(RegistryError) as error:
        FUSIONS.get("co-atention")
    message = str(error.value)
    assert "unknown fusion 'co-atention'" in message
    assert "Did you mean 'co-attention'" in message
    known = message.split("Known fusions:")[1]
    for name in ("co-attention", "co-attention-base", "co-attention-large", "tiny-co-attention"):
        assert name in known
    with pytest.raises(RegistryError, match="unknown vision_encoder 'clip-vit-b61'.*Did you mean 'clip-vit-b16'"):
        VISION_ENCODERS.build("clip-vit-b61")


def test_unknown_name_without_close_match_still_lists_known(registry: Registry) -> None:
    registry.register("toy", config=ToyConfig)(toy_class())
    with pytest.raises(RegistryError) as error:
        registry.get("zzzzzz")
    assert "Did you mean" not in str(error.value)
    assert str(error.value).endswith("Known fusions: toy")


def test_registry_for_kinds() -> None:
    assert registry_for("fusion") is FUSIONS and registry_for("fusions") is FUSIONS
    assert registry_for("text-encoder") is TEXT_ENCODERS and registry_for("vision_encoders") is VISION_ENCODERS
    with pytest.raises(RegistryError, match="unknown component kind 'decoder'.*text_encoder, vision_encoder, fusion, head"):
        registry_for("decoder")


# -- presets -------------------------------------------------------------------------------------
def test_presets_merge_options_and_are_overridable(registry: Registry) -> None:
    cls = registry.register("toy", config=ToyConfig)(toy_class())
    registry.register_preset("toy-wide", base="toy", description="wide toy", width=32, act="gelu")
    entry = registry.get("toy-wide")
    assert entry.preset_of == "toy" and entry.component is cls and entry.description == "wide toy"
    assert dict(entry.preset_options) == {"width": 32, "act": "gelu"}
    assert entry.source == f"module {__name__}"
    assert registry.build("toy-wide").config == ToyConfig(width=32, act="gelu")
    assert registry.build("toy-wide", width=8, depth=3).config == ToyConfig(width=8, depth=3, act="gelu")
    assert registry.build("toy").config == ToyConfig()  # the base is untouched
    rows = {(e.name, e.preset_of) for e in registry.entries()}
    assert rows == {("toy", None), ("toy-wide", "toy")}


def test_preset_errors(registry: Registry) -> None:
    registry.register("toy", config=ToyConfig)(toy_class())
    registry.register_preset("toy-wide", base="toy", description="wide", width=32)
    with pytest.raises(RegistryError, match="base fusion 'nope' is not a registered component"):
        registry.register_preset("p1", base="nope", description="x")
    with pytest.raises(RegistryError, match="base fusion 'toy-wide' is not a registered component"):
        registry.register_preset("p2", base="toy-wide", description="preset of a preset")
    with pytest.raises(TypeError, match="preset 'p3'.*unknown option 'widht'.*did you mean 'width'"):
        registry.register_preset("p3", base="toy", description="typo", widht=3)
    with pytest.raises(TypeError, match="preset 'p4'.*option 'width' must be int"):
        registry.register_preset("p4", base="toy", description="bad type", width="3")
    assert {e.name for e in registry.entries()} == {"toy", "toy-wide"}


def test_core_presets() -> None:
    tiny = TEXT_ENCODERS.get("tiny-deberta")
    assert tiny.preset_of == "hf-text" and tiny.source == "core"
    _, config = FUSIONS.resolve("co-attention-large")
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (1024, 16, 4096)
    _, config = FUSIONS.resolve("co-attention-large", {"num_hidden_layers": 2})
    assert (config.hidden_size, config.num_hidden_layers) == (1024, 2)


# -- typed configs -------------------------------------------------------------------------------
def test_unknown_option_names_the_option_suggestions_and_accepted_ones() -> None:
    with pytest.raises(TypeError) as error:
        make_config(ToyConfig, {"widht": 3}, where="fusion 'toy'")
    message = str(error.value)
    assert message.startswith("fusion 'toy': unknown option 'widht'")
    assert "did you mean 'width'" in message
    assert "Accepted options: act, depth, extra, flag, label, scale, width" in message
    with pytest.raises(TypeError, match="unknown option 'hiden_size'.*did you mean 'hidden_size'"):
        FUSIONS.build("co-attention", hiden_size=64)
    with pytest.raises(TypeError) as error:
        make_config(ToyConfig, {"zzzzzz": 3}, where="fusion 'toy'")
    assert str(error.value) == (
        "fusion 'toy': unknown option 'zzzzzz'. Accepted options: act, depth, extra, flag, label, scale, width"
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"width": "4"}, "option 'width' must be int, got str '4'"),
        ({"width": 4.0}, "option 'width' must be int, got float"),
        ({"width": True}, "option 'width' must be int, got bool"),
        ({"scale": "fast"}, "option 'scale' must be float, got str 'fast'"),
        ({"flag": 1}, "option 'flag' must be bool, got int"),
        ({"act": None}, "option 'act' must be str, got NoneType"),
        ({"label": 3}, "option 'label' must be str or None, got int"),
    ],
)
def test_wrong_scalar_types_are_rejected(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(TypeError, match=expected):
        make_config(ToyConfig, options, where="fusion 'toy'")


def test_compatible_scalar_values_are_accepted() -> None:
    config = make_config(ToyConfig, {"scale": 2, "label": None, "flag": True, "extra": {"a": 1}}, where="x")
    assert config == ToyConfig(scale=2, label=None, flag=True, extra={"a": 1})
    assert make_config(ToyConfig, {"label": "x"}, where="x").label == "x"
    # YAML 1.1 reads 3e-5 (no dot) as a string: accepted where a float is expected.
    assert make_config(ToyConfig, {"scale": "3e-5"}, where="x").scale == 3e-5


def test_configs_are_frozen() -> None:
    config = FUSIONS.build("tiny-co-attention").config
    with pytest.raises(AttributeError):
        config.hidden_size = 8  # type: ignore[misc]


# -- module:Class paths ----------------------------------------------------------------------------
def test_module_class_paths() -> None:
    cls, config = FUSIONS.resolve("vlekit.components.fusions:CoAttentionFusion", {"hidden_size": 32, "num_attention_heads": 2})
    assert cls is CoAttentionFusion and config.hidden_size == 32
    module = FUSIONS.build("vlekit.components.fusions:CoAttentionFusion", hidden_size=32, num_attention_heads=2,
                           intermediate_size=64, num_hidden_layers=1)
    assert isinstance(module, CoAttentionFusion) and module.pooled_size == 64
    with pytest.raises(RegistryError, match="fusion 'vlekit.components.fusions:NoSuchClass': cannot import"):
        FUSIONS.build("vlekit.components.fusions:NoSuchClass")
    with pytest.raises(RegistryError, match="cannot import.*expected 'package.module:ClassName'"):
        FUSIONS.build("no_such_module_xyz:Thing")
    with pytest.raises(RegistryError, match="has no 'config_class' attribute"):
        FUSIONS.build("torch.nn:Linear")
    with pytest.raises(TypeError, match="unknown option 'hiden_size'"):
        FUSIONS.build("vlekit.components.fusions:CoAttentionFusion", hiden_size=32)


# -- plugins: import_plugins ---------------------------------------------------------------------
PLUGIN_MODULE = '''
"""A plugin module an experiment config lists under `plugins:`."""
from dataclasses import dataclass

import torch
from torch import nn

from vlekit import Fusion, FusionOutput, register_fusion


@dataclass(frozen=True)
class MeanFusionConfig:
    hidden_size: int = 16


@register_fusion("{name}", config=MeanFusionConfig, tiny=dict(hidden_size=8))
class MeanFusion(Fusion):
    """Masked means of both streams, concatenated (a test plugin)."""

    def __init__(self, *, config: MeanFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.pooled_size = 2 * config.hidden_size
        self.text_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.image_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, text, text_mask, image, image_mask):
        text, image = self.text_proj(text), self.image_proj(image)
        def mean(x, m):
            m = m.to(x.dtype).unsqueeze(-1)
            return (x * m).sum(1) / m.sum(1).clamp(min=1)
        pooled = torch.cat([mean(text, text_mask), mean(image, image_mask)], -1)
        return FusionOutput(text=text, image=image, pooled=pooled)
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A plugin module on sys.path (unique name); unregistered and unimported afterwards."""
    module_name = f"vlekit_tmp_plugin_{uuid.uuid4().hex[:8]}"
    component_name = f"tmpplug/mean-{module_name[-8:]}"
    (tmp_path / f"{module_name}.py").write_text(PLUGIN_MODULE.format(name=component_name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module_name, component_name
    FUSIONS.unregister(component_name)
    sys.modules.pop(module_name, None)


def test_import_plugins_registers_components_from_config_modules(plugin_module: tuple[str, str]) -> None:
    module_name, component_name = plugin_module
    assert component_name not in FUSIONS
    import_plugins([module_name])
    entry = FUSIONS.get(component_name)
    assert entry.source == f"module {module_name}"
    assert entry.description == "Masked means of both streams, concatenated (a test plugin)."
    import_plugins([module_name])  # a second process-start import is harmless
    fusion = FUSIONS.build(component_name, **entry.tiny)
    out = fusion(torch.randn(2, 3, 8), torch.ones(2, 3), torch.randn(2, 5, 8), torch.ones(2, 5))
    assert out.pooled.shape == (2, 16)
    model = vlekit.build_model(fusion={"name": component_name, "hidden_size": 16})
    assert model.resolved_config().fusion == {"name": component_name, "hidden_size": 16}


def test_import_plugins_error_names_the_module() -> None:
    expected = "plugin module 'no_such_plugin_xyz' listed in the config cannot be imported"
    with pytest.raises(RegistryError, match=expected):
        import_plugins(["vlekit.components.fusions", "no_such_plugin_xyz"])


# -- plugins: entry points of installed distributions ---------------------------------------------
def write_distribution(site: Path, *, dist: str, package: str, source: str, entry_points: str) -> None:
    """A minimal installed distribution: the package and its ``*.dist-info`` with entry points."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (info / "top_level.txt").write_text(f"{package}\n")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder holding a working fusion plugin and a broken one."""
    site = tmp_path_factory.mktemp("site")
    write_distribution(
        site, dist="vlekit-testplug", package="vlekit_testplug", source=PLUGIN_MODULE.format(name="testplug/mean"),
        entry_points="[vlekit.fusions]\ntestplug = vlekit_testplug\n",
    )
    write_distribution(
        site, dist="vlekit-brokenplug", package="vlekit_brokenplug",
        source='raise RuntimeError("boom: this plugin needs a missing library")\n',
        entry_points="[vlekit.fusions]\nbroken = vlekit_brokenplug\n",
    )
    return site


def run_python(args: list[str], site: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


ENTRY_POINT_SCRIPT = '''
import json, sys
import torch
import vlekit
from vlekit import FUSIONS, TEXT_ENCODERS, list_components

report = {"after_import_vlekit": "vlekit_testplug" in sys.modules}
TEXT_ENCODERS.get("hf-text")  # another kind's lookup loads only its own group
report["after_text_lookup"] = "vlekit_testplug" in sys.modules
entry = FUSIONS.get("testplug/mean")
report["after_fusion_lookup"] = "vlekit_testplug" in sys.modules
report["source"] = entry.source
report["description"] = entry.description
fusion = FUSIONS.build("testplug/mean", **entry.tiny)
out = fusion(torch.randn(2, 3, 8), torch.ones(2, 3), torch.randn(2, 4, 8), torch.ones(2, 4))
report["pooled_shape"] = list(out.pooled.shape)
report["core_still_builds"] = type(FUSIONS.build("tiny-co-attention")).__name__
report["broken"] = [(b.entry_point, b.package, b.error) for b in FUSIONS.broken]
report["rows"] = list_components("fusion")
try:
    FUSIONS.get("testplug/meen")
except LookupError as error:
    report["unknown_error"] = str(error)
model = vlekit.build_model(fusion={"name": "testplug/mean", "hidden_size": 16})
batch = dict(
    input_ids=torch.randint(0, 100, (1, 2, 5)), attention_mask=torch.ones(1, 2, 5, dtype=torch.long),
    text_type_ids=torch.zeros(1, 2, 5, dtype=torch.long), pixel_values=torch.randn(1, 3, 64, 64),
    object_patch_mask=torch.zeros(1, 2, 1, model.num_patches, dtype=torch.bool),
    object_type_ids=torch.zeros(1, 2, 1, dtype=torch.long), object_mask=torch.zeros(1, 2, 1, dtype=torch.long),
)
report["logits_shape"] = list(model(**batch)["logits"].shape)

# `python -m vlekit.cli list`, in this same process (one interpreter start instead of two).
import contextlib, io, runpy, warnings
sys.argv = ["vlekit", "list"]
listing = io.StringIO()
with contextlib.redirect_stdout(listing), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # vlekit.cli is already imported
    try:
        runpy.run_module("vlekit.cli", run_name="__main__")
    except SystemExit as exit:
        report["list_exit"] = exit.code
report["listing"] = listing.getvalue()
print("REPORT" + json.dumps(report))
'''


@dataclass(frozen=True)
class PluginRun:
    report: dict[str, Any]  # what ENTRY_POINT_SCRIPT saw
    listing: list[str]  # the lines of `python -m vlekit.cli list`


@pytest.fixture(scope="module")
def plugin_run(plugin_site: Path) -> PluginRun:
    """One subprocess with the test plugins on PYTHONPATH: the script, then `vlekit list`."""
    script = run_python(["-c", ENTRY_POINT_SCRIPT], plugin_site)
    stdout, stderr = script.communicate(timeout=180)
    assert script.returncode == 0, stderr
    report = json.loads(stdout.split("REPORT", 1)[1])
    assert report["list_exit"] == 0
    return PluginRun(report=report, listing=report["listing"].splitlines())


def test_entry_point_plugin_is_imported_lazily_on_first_lookup(plugin_run: PluginRun) -> None:
    report = plugin_run.report
    assert report["after_import_vlekit"] is False, "importing vlekit imported the plugin (not lazy)"
    assert report["after_text_lookup"] is False, "a text-encoder lookup imported a fusion plugin"
    assert report["after_fusion_lookup"] is True


def test_entry_point_plugin_is_listed_with_its_package_and_buildable(plugin_run: PluginRun) -> None:
    report = plugin_run.report
    assert report["source"] == "package vlekit-testplug"
    assert report["description"] == "Masked means of both streams, concatenated (a test plugin)."
    assert report["pooled_shape"] == [2, 16]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["testplug/mean"]["source"] == "package vlekit-testplug"
    assert rows["co-attention"]["source"] == "core"
    assert {row["kind"] for row in report["rows"]} == {"fusion"}
    assert "Did you mean 'testplug/mean'" in report["unknown_error"]
    assert report["logits_shape"] == [1, 2]  # usable in a model by name


def test_broken_plugin_is_listed_with_its_error_and_breaks_nothing_else(plugin_run: PluginRun) -> None:
    report = plugin_run.report
    # Other installed plugins may be listed too; ours: the broken one is broken, the good one is not.
    ours = [b for b in report["broken"] if b[1] in ("vlekit-brokenplug", "vlekit-testplug")]
    assert ours == [[
        "broken = vlekit_brokenplug", "vlekit-brokenplug", "RuntimeError: boom: this plugin needs a missing library",
    ]]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["broken"]["description"].startswith("BROKEN (broken = vlekit_brokenplug): RuntimeError: boom")
    assert rows["broken"]["source"] == "package vlekit-brokenplug"
    assert "broken plugin broken = vlekit_brokenplug (vlekit-brokenplug): RuntimeError: boom" in report["unknown_error"]
    assert report["core_still_builds"] == "CoAttentionFusion"
    assert report["pooled_shape"] == [2, 16]


def test_cli_list_shows_plugins_with_their_package_and_broken_ones(plugin_run: PluginRun) -> None:
    lines = plugin_run.listing
    plugin_line = next(line for line in lines if "testplug/mean" in line)
    assert plugin_line.split()[:4] == ["fusion", "testplug/mean", "package", "vlekit-testplug"]
    broken_line = next(line for line in lines if "vlekit_brokenplug" in line)
    assert "package vlekit-brokenplug" in broken_line and "RuntimeError: boom" in broken_line
    assert broken_line.split()[:4] == ["fusion", "broken", "package", "vlekit-brokenplug"]


def test_cli_list_shows_core_components_presets_and_sources(plugin_run: PluginRun) -> None:
    lines = plugin_run.listing
    assert lines[0].split() == ["kind", "name", "source", "description"]
    table = {tuple(line.split()[:3]): line for line in lines[1:]}
    for kind, name in [("text_encoder", "hf-text"), ("vision_encoder", "clip-vision"), ("fusion", "co-attention")]:
        assert (kind, name, "core") in table, f"{kind} {name} missing from `vlekit list`"
    presets = [
        ("text_encoder", "tiny-deberta", "hf-text"), ("text_encoder", "deberta-v3-base", "hf-text"),
        ("vision_encoder", "tiny-clip", "clip-vision"), ("vision_encoder", "clip-vit-b16", "clip-vision"),
        ("fusion", "co-attention-base", "co-attention"), ("fusion", "tiny-co-attention", "co-attention"),
    ]
    for kind, preset, base in presets:
        assert table[(kind, preset, "core")].endswith(f"(preset of {base})")


# -- listing -------------------------------------------------------------------------------------
def test_python_listing_has_every_core_component_with_source_and_description() -> None:
    rows = {(row["kind"], row["name"]): row for row in list_components()}
    for key in [("text_encoder", "hf-text"), ("vision_encoder", "clip-vision"), ("fusion", "co-attention"),
                ("text_encoder", "tiny-deberta"), ("vision_encoder", "tiny-clip"), ("fusion", "tiny-co-attention")]:
        assert key in rows, key
        assert rows[key]["source"] == "core" and rows[key]["description"]
    assert rows[("fusion", "co-attention-base")]["description"].endswith("(preset of co-attention)")
    assert {row["kind"] for row in list_components("fusion")} == {"fusion"}


def test_cli_list_kind_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["list", "--kind", "vision_encoder"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines and all(line.split()[0] == "vision_encoder" for line in lines)
    assert any(line.split()[1] == "clip-vision" for line in lines)
    assert cli_main(["list", "--kind", "head"]) == 0  # every registry's kind is a choice
    heads = {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"vcr-multiple-choice", "vqa", "itm", "pbc"} <= heads
    with pytest.raises(SystemExit):
        cli_main(["list", "--kind", "heads"])


def test_a_preset_follows_its_base_when_a_notebook_cell_re_registers_it() -> None:
    registry = Registry(kind="fusion", entry_point_group="vlekit.tests.none")

    def define(version: int):
        @dataclass(frozen=True)
        class CellConfig:
            width: int = 4

        class CellFusion(nn.Module):
            """A fusion defined in a notebook cell."""

            def __init__(self, *, config: CellConfig) -> None:
                super().__init__()
                self.config, self.version = config, version

        CellFusion.__module__ = "__main__"  # as in a notebook; re-running the cell defines it again
        return registry.register("cell", config=CellConfig)(CellFusion)

    define(1)
    registry.register_preset("cell-wide", base="cell", description="wide", width=8)
    define(2)  # the cell re-run
    built = registry.build("cell-wide")
    assert built.version == 2 and built.config.width == 8
    registry.unregister("cell")
    assert "cell" not in registry and "cell-wide" not in registry
