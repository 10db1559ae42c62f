"""The conda environments under envs/, checked statically (no conda here or in CI): each parses,
pins every dependency, agrees with the project's own requirements and with the requirements of
the packages it pins, each rule names one, and every module a rule's command imports is
provided by that rule's environment."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from workflow_rules import REPO, shell_rules

ENVS = sorted((REPO / "envs").glob("*.yaml"))
PACKAGE = REPO / "dginstyle"

# conda-forge names that differ from the PyPI distribution of the same software.
CONDA_TO_PYPI = {"pytorch": "torch", "opencv": "opencv-python"}
NOT_A_PACKAGE = {"python", "pip"}  # pinned too, but neither is imported


# ------------------------------------------------------------------------------ the env files


@cache
def env_pins(path: Path) -> dict[str, tuple[str, str]]:
    """{canonical PyPI name: (operator, version)} of an env file; conda `=X.Y` means X.Y.*."""
    spec = yaml.safe_load(path.read_text())
    pins: dict[str, tuple[str, str]] = {}
    for entry in spec["dependencies"]:
        items = entry["pip"] if isinstance(entry, dict) else [entry]
        for item in items:
            if isinstance(entry, dict):
                match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==)\s*([0-9][0-9A-Za-z.+]*)", item)
            else:
                match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==?)\s*([0-9][0-9A-Za-z.*]*)", item)
            assert match, f"{path.name}: '{item}' is not pinned (conda: 'name =X.Y', pip: 'name==X.Y.Z')"
            name, operator, version = match.groups()
            name = canonicalize_name(CONDA_TO_PYPI.get(name, name) if not isinstance(entry, dict) else name)
            assert name not in pins, f"{path.name}: {name} is listed twice"
            pins[name] = (operator, version.rstrip(".*"))
    return pins


def versions_of_pin(operator: str, version: str) -> list[Version]:
    """The versions a pin allows: one for `==`, a sample of the X.Y.* series for conda's `=`."""
    if operator == "==":
        return [Version(version)]
    return [Version(f"{version}.{patch}") for patch in range(100)] if version.count(".") < 2 else [Version(version)]


def pin_allows(pin: tuple[str, str], specifier: SpecifierSet) -> bool:
    return any(specifier.contains(v, prereleases=True) for v in versions_of_pin(*pin))


def test_there_are_envs():
    assert {path.name for path in ENVS} >= {"data.yaml", "generation.yaml", "segmentation.yaml"}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_parses_and_pins_every_dependency(env):
    spec = yaml.safe_load(env.read_text())
    assert set(spec) <= {"name", "channels", "dependencies"}, env.name
    assert "conda-forge" in spec["channels"] and "defaults" not in spec["channels"]
    pins = env_pins(env)  # asserts every entry is pinned
    assert pins["python"][1].startswith("3.11"), "the package is tested on Python 3.11"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_satisfies_the_projects_requirements(env):
    """A pin outside pyproject.toml's range (e.g. a torch without the weights-only loader the
    code requires) would give an environment that the tests never saw."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = env_pins(env)
    assert pin_allows(pins["python"], SpecifierSet(project["requires-python"]))
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert pin_allows(pins[name], requirement.specifier), (
                f"{env.name}: {name} {pins[name][1]} is outside pyproject.toml's '{requirement}'"
            )


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_each_others_requirements(env):
    """What the pinned packages themselves require of each other (read from the installed
    metadata, where the installed version is the pinned one): e.g. diffusers 0.42.1 needs
    safetensors >= 0.8."""
    pins = env_pins(env)
    marker_env = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
    checked = 0
    for name, pin in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(installed) not in versions_of_pin(*pin):
            continue  # another version here: its requirements say nothing about the pinned one
        checked += 1
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({**marker_env, "extra": ""}):
                continue
            other = canonicalize_name(requirement.name)
            if other in pins and requirement.specifier:
                assert pin_allows(pins[other], requirement.specifier), (
                    f"{env.name}: {name} {pin[1]} requires '{requirement}', but the env pins {other} {pins[other][1]}"
                )
    assert checked, f"{env.name}: none of its pins is installed here, so nothing was checked"


# ------------------------------------------------------------------------------ rules -> envs


def test_every_rule_names_an_existing_env():
    rules = shell_rules()
    assert rules, "no rules found in workflow/rules"
    for rule in rules.values():
        assert rule.conda, f"rule {rule.name} has no conda: directive"
        assert rule.env_file.is_file(), f"rule {rule.name}: conda env {rule.conda} does not exist"
        assert rule.env_file.parent == REPO / "envs", f"rule {rule.name}: {rule.conda} is not under envs/"


def _module_path(name: str) -> Path | None:
    parts = name.split(".")
    base = REPO.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside `try: ... except ImportError` or `if TYPE_CHECKING:` is not required."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            return True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


@dataclass
class Unit:
    """A piece of a module that runs as a whole: its module-level code, or one top-level
    function or class (with everything nested in it)."""

    imports: set[str]  # absolute module names (for `from m import x` also `m.x`: x may be a module)
    names: set[str]  # names and attributes it uses


def _unit(nodes: list[ast.AST], module: str, is_package: bool, parents: dict) -> Unit:
    unit = Unit(set(), set())
    package = module if is_package else module.rpartition(".")[0]
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import) and not _optional(node, parents):
                unit.imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not _optional(node, parents):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                unit.imports.add(source)
                unit.imports.update(f"{source}.{alias.name}" for alias in node.names)
                unit.names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Name):
                unit.names.add(node.id)
            elif isinstance(node, ast.Attribute):
                unit.names.add(node.attr)
    return unit


@cache
def module_units(module: str) -> tuple[Unit, dict[str, Unit]]:
    """(module-level code, {top-level function or class name: its unit})."""
    path = _module_path(module)
    tree = ast.parse(path.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    is_package = path.name == "__init__.py"
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    top_level = _unit([n for n in tree.body if not isinstance(n, defs)], module, is_package, parents)
    functions = {n.name: _unit([n], module, is_package, parents) for n in tree.body if isinstance(n, defs)}
    return top_level, functions


def third_party_imports(entry: list[tuple[str, str | None]], skip: frozenset = frozenset()) -> set[str]:
    """Top-level third-party modules that running `entry` ([(module, function or None for
    its module-level code)]) may import: a crude call graph over the package's own modules,
    where a function or class counts as reached once its name is used by reached code
    (`skip`: functions known not to run, such as the other stages' handlers)."""
    reached: set[tuple[str, str | None]] = set(skip)
    used: set[str] = set()
    external: set[str] = set()
    todo = list(entry)
    while todo:
        while todo:
            key = todo.pop()
            if key in reached:
                continue
            reached.add(key)
            module, function = key
            top_level, functions = module_units(module)
            unit = top_level if function is None else functions[function]
            used |= unit.names
            for name in unit.imports:
                top = name.split(".")[0]
                if top == "dginstyle":
                    parts = name.split(".")  # importing a.b.c runs a/__init__, a/b/__init__, a/b/c
                    for depth in range(1, len(parts) + 1):
                        if _module_path(".".join(parts[:depth])):
                            todo.append((".".join(parts[:depth]), None))
                elif top != "__future__" and top not in sys.stdlib_module_names:
                    external.add(top)
        # functions and classes of reached modules whose names reached code uses
        for module in {m for m, _ in reached}:
            todo += [(module, f) for f in module_units(module)[1] if f in used and (module, f) not in reached]
    return external


def stage_imports(stage: str) -> set[str]:
    """What `python -m dginstyle <stage>` may import: __main__ and cli, and the stage's handler,
    a HEAVY_STAGES module (all of it) or cli.py's `_run_<stage>`, never another stage's."""
    from dginstyle.cli import HEAVY_STAGES

    entry: list[tuple[str, str | None]] = [("dginstyle.__main__", None), ("dginstyle.cli", None)]
    handlers = {f for f in module_units("dginstyle.cli")[1] if f.startswith("_run_")}
    handler = "_run_" + stage.replace("-", "_")
    if stage in HEAVY_STAGES:
        module = HEAVY_STAGES[stage][0].partition(":")[0]
        entry += [(module, None)] + [(module, f) for f in module_units(module)[1]]
    else:
        assert handler in handlers, f"stage {stage}: neither in HEAVY_STAGES nor a {handler} in cli.py"
        entry.append(("dginstyle.cli", handler))
    return third_party_imports(entry, skip=frozenset(("dginstyle.cli", f) for f in handlers - {handler}))


@cache
def _import_to_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@cache
def _requirements_closure(names: frozenset[str]) -> frozenset[str]:
    """The distributions `names` install, with everything they require (installed metadata)."""
    marker_env = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    closure = set(names)
    todo = list(names)
    while todo:
        try:
            requirements = metadata.requires(todo.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(marker_env):
                continue
            name = canonicalize_name(requirement.name)
            if name not in closure:
                closure.add(name)
                todo.append(name)
    return frozenset(closure)


def test_stage_import_scan_sees_the_imports():
    """The scan itself: prepare needs numpy, PIL, cityscapesscripts and never torch (data env)."""
    imports = stage_imports("prepare")
    assert {"numpy", "PIL", "cityscapesscripts"} <= imports
    assert "torch" not in imports
    assert {"torch", "diffusers"} <= stage_imports("generate")


@pytest.mark.parametrize("rule", sorted(shell_rules()), ids=str)
def test_rule_env_provides_every_import_of_its_command(rule):
    rule = shell_rules()[rule]
    pins = env_pins(rule.env_file)
    provided = _requirements_closure(frozenset(name for name in pins if name not in NOT_A_PACKAGE))
    missing = []
    for module in sorted(stage_imports(rule.stage)):
        distributions = [canonicalize_name(d) for d in _import_to_distributions().get(module, [])]
        assert distributions, f"rule {rule.name}: no installed distribution provides '{module}' (cannot map it)"
        if not any(d in provided for d in distributions):
            missing.append(f"{module} (from {', '.join(distributions)})")
    assert not missing, f"rule {rule.name} (dginstyle {rule.stage}) imports {missing}, which {rule.conda} does not provide"
