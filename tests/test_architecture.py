"""The layout's promises: dependencies point one way (trainer -> registry <- server), neither
core part imports the demo or the benchmarks, and no source file outgrows one screenful of
nouns (400 lines). Read from the source with ast, so a lazy import inside a function counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"registry": "loramux.registry", "server": "loramux.server",
         "trainer": "loramux.trainer", "bench": "loramux.bench", "loramux": "loramux"}
FORBIDDEN = {
    "registry": ("loramux.server", "loramux.trainer", "loramux.demo", "loramux.bench",
                 "loramux.cli"),
    "server": ("loramux.trainer", "loramux.demo", "loramux.bench", "loramux.cli"),
    "trainer": ("loramux.server", "loramux.demo", "loramux.bench", "loramux.cli"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part: str) -> None:
    bad = [(str(path.relative_to(REPO)), name)
           for path in sorted((REPO / part).rglob("*.py"))
           for name in sorted(_imports(path))
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[part])]
    assert not bad, f"{part} must not import these: {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from loramux.demo.tasks import load_eval\n")
    assert "loramux.demo.tasks" in _imports(sample)


def test_no_source_file_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for part in PARTS
            for p in (REPO / part).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_package_is_installed() -> None:
    """pyproject lists packages by hand (the parts live in top-level folders, installed under
    `loramux.`): a new sub-package missing there works in an editable install and is absent
    from a wheel."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {folder: name for name, folder in config["package-dir"].items()}
    found = {".".join([folders[init.parent.relative_to(REPO).parts[0]],
                       *init.parent.relative_to(REPO).parts[1:]])
             for part in folders for init in (REPO / part).rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
