"""Where the tests find the system services they start on loopback, in one place, and what a
missing one means.

PostgreSQL 15 or 16 (the registry's shared index), CNCF distribution (OCI blobs and artifacts),
Prometheus and promtool (the deploy kit's monitoring config), and a Chromium or Chrome browser with
chromedriver (the web pages). Each is looked for in Debian's own places and on PATH;
``LORAMUX_TEST_SERVICES_PATH`` (a PATH-like list), when set, is the only place looked in: point it
at a custom install, or at an empty folder to see what a missing service does.

A test that needs a missing one: with ``CI`` set, or as root (``.ci/system-deps`` installs them
there), it FAILS; a developer without root gets a skip whose reason starts ``[needs NAME]``, and
the run ends with one line naming the missing services and the tests they skipped
(``summary_line``, from tests/conftest.py).

Standard library only at import: ``.ci/system-deps`` runs this file (``python3 services.py``) to
learn what is missing, one ``PACKAGE<TAB>WHAT`` line per missing service.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ENV_PATH = "LORAMUX_TEST_SERVICES_PATH"
PG_VERSIONS = (15, 16)
PG_DEBIAN = tuple(f"/usr/lib/postgresql/{v}/bin" for v in PG_VERSIONS)
BROWSERS = ("chromium", "google-chrome", "google-chrome-stable", "chromium-browser")
TAG = re.compile(r"\[needs ([^\]]+)\]")


@dataclass(frozen=True)
class Service:
    name: str
    programs: tuple[str, ...]  # any one of them (postgresql: all of them, in one folder)
    package: str  # Debian's, for .ci/system-deps
    wants: str  # what is looked for, for the messages
    debian: tuple[str, ...] = ("/usr/bin",)  # searched after PATH (postgresql: before it)


SERVICES = {s.name: s for s in (
    Service("postgresql", ("initdb", "pg_ctl"), "postgresql-15",
            "PostgreSQL 15 or 16 (initdb and pg_ctl in /usr/lib/postgresql/15|16/bin or on PATH)",
            PG_DEBIAN),
    Service("oci-registry", ("docker-registry", "registry"), "docker-registry",
            "CNCF distribution (docker-registry, or distribution's registry, on PATH)"),
    Service("prometheus", ("prometheus",), "prometheus", "prometheus (on PATH)"),
    Service("promtool", ("promtool",), "prometheus", "promtool (on PATH)"),
    Service("chromium", BROWSERS, "chromium",
            f"a Chromium or Chrome browser ({', '.join(BROWSERS)} on PATH)"),
    Service("chromedriver", ("chromedriver",), "chromium-driver", "chromedriver (on PATH)"),
)}


def strict(root_can_fix: bool = True) -> bool:
    """Whether a missing service fails the test: CI is set, or this is root (who can install it
    with .ci/system-deps; ``root_can_fix=False`` where root cannot, e.g. a kernel feature)."""
    return bool(os.environ.get("CI")) or (root_can_fix and os.geteuid() == 0)


def search_path(first: Iterable[str] = (), debian: Iterable[str] = (),
                debian_first: bool = False) -> list[str]:
    """The folders looked in, in order: ``first``, then PATH and ``debian`` (or the override)."""
    override = os.environ.get(ENV_PATH)
    if override is not None:
        rest = override.split(os.pathsep)
    else:
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        rest = [*debian, *path] if debian_first else [*path, *debian]
    seen: list[str] = []
    for folder in (*first, *rest):
        if folder and folder not in seen:
            seen.append(folder)
    return seen


def _executable(path: Path) -> bool:
    try:
        return path.is_file() and os.access(path, os.X_OK)
    except OSError:  # a folder on PATH this user may not enter
        return False


@functools.cache
def _version(program: str) -> str:
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def _pg_major(initdb: Path) -> int | None:
    found = re.search(r"\(PostgreSQL\) (\d+)", _version(str(initdb)))
    return int(found.group(1)) if found else None


def _acceptable(service: Service, path: Path) -> bool:
    if service.name == "oci-registry" and path.name == "registry":
        return "distribution" in _version(str(path))  # not some other program of that name
    return True


def find(name: str, first: Iterable[str] = ()) -> str | None:
    """The service's program (postgresql: the folder of initdb and pg_ctl), or None."""
    service = SERVICES.get(name)
    if service is None:  # any other program: on PATH (or the override) after ``first``
        folders = search_path(first)
        return next((str(Path(f) / name) for f in folders if _executable(Path(f) / name)), None)
    if service.name == "postgresql":
        for folder in map(Path, search_path(first, service.debian, debian_first=True)):
            if (all(_executable(folder / p) for p in service.programs)
                    and _pg_major(folder / "initdb") in PG_VERSIONS):
                return str(folder)
        return None
    folders = search_path(first, service.debian)
    for program in service.programs:  # in order of preference, each over every folder
        for folder in folders:
            path = Path(folder) / program
            if _executable(path) and _acceptable(service, path):
                return str(path)
    return None


def describe(name: str) -> str:
    """What is looked for, then "not found" and where, when the override is set."""
    service = SERVICES.get(name)
    wants = service.wants if service else f"{name} (on PATH)"
    override = os.environ.get(ENV_PATH)
    where = "" if override is None else f" (looked only in {ENV_PATH}={override!r})"
    return f"{wants} not found{where}"


def unavailable(name: str, why: str, root_can_fix: bool = True) -> NoReturn:
    """Skip the test (a developer without root) or fail it (CI, or root), saying why."""
    import pytest

    message = f"[needs {name}] {why}"
    if strict(root_can_fix):
        who = "CI is set" if os.environ.get("CI") else "this is root"
        pytest.fail(f"{message} ({who}: a missing service fails the run)", pytrace=False)
    pytest.skip(message)


def require(name: str, first: Iterable[str] = ()) -> str:
    """The service's program (or folder, for postgresql); a skip or a failure when missing."""
    found = find(name, first)
    if found is not None:
        return found
    service = SERVICES.get(name)
    install = (f".ci/system-deps (as root) installs {service.package}" if service
               else "install it")
    unavailable(name, f"{describe(name)}: {install}")


def summary_line(skipped_reports: Iterable) -> str | None:
    """One line for the end of the run: the missing services and the tests each one skipped
    (by file, with counts), from the skip reasons that ``unavailable`` wrote."""
    by_service: dict[str, Counter[str]] = {}
    seen: set[str] = set()
    for report in skipped_reports:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        found = TAG.search(str(reason))
        if found is None or report.nodeid in seen:
            continue
        seen.add(report.nodeid)
        where = report.nodeid.split("::")[0] or str(report.location[0])
        by_service.setdefault(found.group(1), Counter())[where] += 1
    if not by_service:
        return None
    parts = []
    for name, files in sorted(by_service.items()):
        tests = ", ".join(f"{f} {n}" for f, n in sorted(files.items()))
        parts.append(f"{name} ({sum(files.values())} skipped: {tests})")
    return (f"missing system services skipped {_tests(len(seen))}: {'; '.join(parts)}; "
            "reasons above; .ci/system-deps (as root) installs services; CI=1 makes them fail")


def _tests(count: int) -> str:
    return f"{count} test{'' if count == 1 else 's'}"


def missing() -> list[Service]:
    return [s for s in SERVICES.values() if find(s.name) is None]


if __name__ == "__main__":  # for .ci/system-deps: PACKAGE<TAB>WHAT per missing service
    for service in missing():
        print(f"{service.package}\t{service.name}: {describe(service.name)}")
    sys.exit(0)
