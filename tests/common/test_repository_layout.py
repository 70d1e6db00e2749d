"""The layout a newcomer is promised: the README's layout table names every top-level entry of
the repository (and nothing that is not there), and the three components never import each
other (ADR 1)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("troop_coordinator", "troop_worker", "troop_client")


def _tracked_top_level() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {name.split("/")[0] for name in files} - {".gitignore", ".ci", ".gitattributes"}


def _layout_table_names() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for path in re.findall(r"`([^`]+)`", first_cell):
            names.add(path.strip("/").split("/")[0])
    return names


def test_the_readme_layout_table_names_exactly_the_top_level_of_the_tree() -> None:
    tracked, named = _tracked_top_level(), _layout_table_names()
    assert tracked - named == set(), "top-level entries the README's layout table omits"
    assert named - tracked == set(), "layout table rows naming what is not in the tree"
    for component in (*COMPONENTS, "protos", "migrations", "scripts", "tests"):
        assert (ROOT / component).is_dir(), f"{component}/ is not at the top level"


def _imported_packages(package: str) -> set[str]:
    found: set[str] = set()
    for source in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_the_components_never_import_each_other() -> None:
    for component in COMPONENTS:
        others = set(COMPONENTS) - {component}
        assert _imported_packages(component) & others == set(), component
    assert _imported_packages("troop_common") & set(COMPONENTS) == set()


def test_the_verifier_uses_the_client_never_the_coordinator_or_the_worker() -> None:
    imported = _imported_packages("troop_verifier")
    assert imported & {"troop_coordinator", "troop_worker"} == set()
    assert "troop_verifier" not in set().union(*(_imported_packages(c) for c in COMPONENTS))


def test_the_installed_troop_command_finds_every_package(tmp_path: Path) -> None:
    """`troop` (the console script) runs from anywhere, not only from the repository root:
    the installed distribution maps every top-level package. (An editable install made
    before a package existed maps it not; scripts/bootstrap reinstalls then.)"""
    import os
    import sys

    packages = sorted(p.name for p in ROOT.glob("troop_*") if (p / "__init__.py").is_file())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib, sys; [importlib.import_module(p) for p in sys.argv[1:]]"
    done = subprocess.run(
        [sys.executable, "-c", code, *packages],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, f"run scripts/bootstrap: {done.stderr}"
