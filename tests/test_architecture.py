"""The layout's promises: dependencies point one way (trainer -> release -> registry <- server),
no core part imports the demo or the benchmarks, the registry never calls out (release management
does, through the Registry API), what every part shares (loramux/wire.py, web/, errors.py,
cli_errors.py) imports no part, and no source file outgrows one screenful of nouns (400 lines).
Read from the source with ast, so a lazy import inside a function counts."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"registry": "loramux.registry", "release": "loramux.release",
         "server": "loramux.server", "trainer": "loramux.trainer", "bench": "loramux.bench",
         "loramux": "loramux"}
FORBIDDEN = {
    "registry": ("loramux.release", "loramux.server", "loramux.trainer", "loramux.demo",
                 "loramux.bench", "loramux.cli", "loramux.hub"),
    "release": ("loramux.server", "loramux.trainer", "loramux.demo", "loramux.bench",
                "loramux.cli"),
    "server": ("loramux.release", "loramux.trainer", "loramux.demo", "loramux.bench",
               "loramux.cli"),
    "trainer": ("loramux.server", "loramux.demo", "loramux.bench", "loramux.cli"),
}
# Imported by every part, so they import none of them.
SHARED = ("loramux/wire.py", "loramux/errors.py", "loramux/cli_errors.py", "loramux/web")
ANY_PART = ("loramux.registry", "loramux.release", "loramux.server", "loramux.trainer",
            "loramux.demo", "loramux.bench", "loramux.bases", "loramux.support", "loramux.cli")
# What asks a serving endpoint (answers, metrics): release management does, never the registry.
# The Hugging Face Hub is called by loramux.hub, which publishes through the registry.
CALLING_OUT = ("openai", "prometheus_client", "loramux.release", "huggingface_hub",
               "loramux.hub")
HTTP_CLIENTS = ("httpx", "requests", "urllib.request")
# The registry's own HTTP: its client (to a registry server) and its OCI blob store.
OWN_HTTP = ("registry/remote.py", "registry/oci/")


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


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part: str) -> None:
    bad = [(str(path.relative_to(REPO)), name)
           for path in sorted((REPO / part).rglob("*.py"))
           for name in sorted(_imports(path))
           if _matches(name, FORBIDDEN[part])]
    assert not bad, f"{part} must not import these: {bad}"


def test_shared_modules_import_no_part() -> None:
    files = [f for shared in SHARED for f in ([REPO / shared] if shared.endswith(".py")
                                              else sorted((REPO / shared).rglob("*.py")))]
    bad = [(str(path.relative_to(REPO)), name) for path in files
           for name in sorted(_imports(path)) if _matches(name, ANY_PART)]
    assert not bad, f"what every part imports must import no part: {bad}"


def test_the_registry_never_calls_out() -> None:
    """The registry stores and answers: no openai client, no metrics scraping, no release
    management, and HTTP only to itself (a registry server) and to its OCI blob store."""
    bad = []
    for path in sorted((REPO / "registry").rglob("*.py")):
        where = str(path.relative_to(REPO))
        bad += [(where, name) for name in sorted(_imports(path))
                if _matches(name, CALLING_OUT)
                or (_matches(name, HTTP_CLIENTS) and not where.startswith(OWN_HTTP))]
    assert not bad, f"the registry must not call out: {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from loramux.demo.tasks import load_eval\n")
    assert "loramux.demo.tasks" in _imports(sample)


def test_no_source_file_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for part in PARTS
            for p in (REPO / part).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def _setuptools() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_is_installed() -> None:
    """pyproject lists packages by hand (the parts live in top-level folders, installed under
    `loramux.`): a new sub-package missing there works in an editable install and is absent
    from a wheel."""
    config = _setuptools()
    listed = set(config["packages"])
    folders = {folder: name for name, folder in config["package-dir"].items()}
    found = {".".join([folders[init.parent.relative_to(REPO).parts[0]],
                       *init.parent.relative_to(REPO).parts[1:]])
             for part in folders for init in (REPO / part).rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages"


def test_every_data_file_is_package_data() -> None:
    """Data files (templates, CSS, scripts) are exactly what package-data declares
    (include-package-data is off, so that an install prints no warning per data folder): one
    it does not match would be missing from a wheel."""
    config = _setuptools()
    assert config.get("include-package-data") is False
    folders = {folder: name for name, folder in config["package-dir"].items()}
    listed = subprocess.run(["git", "ls-files", *folders], cwd=REPO, capture_output=True,
                            text=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    missing = []
    for file in listed.stdout.split():
        top, *dirs, name = Path(file).parts
        if name.endswith(".py"):
            continue
        inner = list(dirs)
        while ".".join([folders[top], *inner]) not in config["packages"]:
            inner.pop()  # the nearest package above the file
        package = ".".join([folders[top], *inner])
        below = Path(*dirs[len(inner):], name)
        if not any(below.match(p) and len(below.parts) == len(Path(p).parts)
                   for p in config["package-data"].get(package, [])):
            missing.append(file)
    assert not missing, f"declare these in [tool.setuptools.package-data]: {missing}"
