"""Every package that the code under ``src/`` and ``pipelines/`` imports is declared in pyproject.toml: an
import that works only because another dependency happens to bring its package breaks on the next release."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Distribution names in ``project.dependencies``."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalise(re.match(r"[A-Za-z0-9_.\-]+", d).group()) for d in deps}


def imported() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere (module level or inside functions) → the files."""
    found: dict[str, set[str]] = {}
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("sounding", "pipelines"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(modules: dict[str, set[str]], names: set[str]) -> list[str]:
    """The imported modules whose distribution is not among ``names``, each with the files importing it."""
    provides = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(modules.items()):
        dists = {_normalise(d) for d in provides.get(module, [module])}
        if not dists & names:
            missing.append(f"{module} ({', '.join(sorted(dists))}), imported by {', '.join(sorted(files))}")
    return missing


def test_every_imported_package_is_a_declared_dependency() -> None:
    assert undeclared(imported(), declared()) == []


def test_the_check_names_an_import_whose_dependency_is_removed() -> None:
    modules = imported()
    assert {"scipy", "optuna_integration", "yaml", "sklearn"} <= set(modules)  # the scan sees them
    missing = undeclared(modules, declared() - {"scipy"})
    assert missing == ["scipy (scipy), imported by src/sounding/registry.py"]


def locked(text: str) -> dict[str, str]:
    """``requirements.lock``'s pins: distribution name → version."""
    pins = (line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    return {_normalise(name): version for name, version in pins}


def unmet(requirements: list[str], pins: dict[str, str]) -> list[str]:
    """The requirements (pyproject.toml's strings) that no pin satisfies, torch aside (pip installs it
    from pyproject's own pin: `make venv`)."""
    from packaging.requirements import Requirement

    found = []
    for text in requirements:
        req = Requirement(text)
        name = _normalise(req.name)
        if name != "torch" and not req.specifier.contains(pins.get(name, "0.0.0.dev0"), prereleases=True):
            found.append(f"{text} (locked: {pins.get(name, 'missing')})")
    return found


def test_the_lock_pins_a_version_of_every_dependency_that_pyproject_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = locked((ROOT / "requirements.lock").read_text())
    assert unmet(requirements, pins) == [], "pyproject.toml and requirements.lock disagree: run `make lock`"
    assert "torch" not in pins and pins["lightning"] == "2.6.6" and pins["mlflow"] == "3.17.2"
    # A changed pin is named with what the lock holds.
    assert unmet(["optuna==5.1.0", "newpkg>=1"], pins) == [
        "optuna==5.1.0 (locked: 5.0.0)",
        "newpkg>=1 (locked: missing)",
    ]
