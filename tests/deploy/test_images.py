"""The images hold only what they install, and run as a non-root user (security round 2, item 1).

The README's deploy steps write the admin API key and the registry tokens into deploy/secrets/,
inside the build context. No docker here: the context (.dockerignore) and what each Dockerfile's
COPY and ADD take from it are evaluated with docker's rules (build_context.py) on this very
checkout, with stand-in secret files written where the README writes the real ones.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Iterator

import pytest
import yaml
from build_context import (
    context_files,
    copied_files,
    copies,
    excluded,
    ignore_file,
    image_env,
    image_user,
    parse_dockerignore,
)
from deploy_support import DEPLOY

REPO = DEPLOY.parent
DOCKERFILES = sorted(p.name for p in DEPLOY.glob("Dockerfile.*")
                     if not p.name.endswith(".dockerignore"))
# What must never reach an image or a builder: keys and tokens, the repository's history (and
# its config, which may hold credentials), the developer's environment and caches.
NEVER = ("deploy/secrets/", ".git/", ".venv/", ".cache/", ".env")


@pytest.fixture(scope="module")
def secrets_in_checkout() -> Iterator[list[str]]:
    """Stand-ins for the files README, Deploy writes (a real one is left as it is)."""
    made = []
    for name in ("api-keys", "registry-tokens"):
        path = DEPLOY / "secrets" / name
        if not path.exists():
            path.write_text("sk-stand-in-for-the-admin-key admin\n")
            made.append(path)
    try:
        yield [f"deploy/secrets/{n}" for n in ("api-keys", "registry-tokens")]
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def _leaks(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if p.startswith(NEVER) or p in {n.rstrip("/") for n in NEVER}
                  or "/__pycache__/" in p or ".egg-info/" in p)


def test_dockerignore_follows_dockers_rules() -> None:
    """The matcher against the examples of docker's documentation and patternmatcher's tests."""
    def ex(patterns: str, path: str) -> bool:
        return excluded(path, parse_dockerignore(patterns))

    assert ex("*/temp*", "somedir/temporary.txt") and ex("*/temp*", "somedir/temp")
    assert not ex("*/temp*", "temp.txt") and not ex("*/temp*", "a/b/temp")
    assert ex("*/*/temp*", "somedir/subdir/temporary.txt")
    assert ex("temp?", "tempa") and not ex("temp?", "tempab")
    assert ex("**/*.go", "a.go") and ex("**/*.go", "x/y/z.go") and not ex("**/*.go", "a.gox")
    assert ex("/deploy/secrets", "deploy/secrets/api-keys"), "a parent folder excludes its files"
    assert ex("deploy/secrets/", "deploy/secrets/api-keys"), "cleaned like filepath.Clean"
    assert not ex("*.md\n!README.md", "README.md") and ex("*.md\n!README.md", "CHANGES.md")
    assert ex("*.md\n!README*.md\nREADME-secret.md", "README-secret.md"), "last match wins"
    assert ex("*\n!src", ".git/config") and not ex("*\n!src", "src/a/b.py")
    assert not ex("# *\n", "anything") and ex("  *  \n", "anything")
    assert ex(r"\*", "*") and not ex(r"\*", "a")
    assert ex("**", "a/b") and ex("a/**", "a/b/c") and not ex("a/**/c", "b/c")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_context_and_image_leave_out_secrets_and_repository_state(secrets_in_checkout,
                                                                  name: str) -> None:
    dockerfile = DEPLOY / name
    sent = context_files(REPO, dockerfile)
    assert sent, "an empty context: the walk found nothing"
    for secret in secrets_in_checkout:
        assert (REPO / secret).is_file() and secret not in sent
    assert _leaks(sent) == [], "sent to the builder (a remote one, perhaps)"
    copied = copied_files(REPO, dockerfile)
    assert _leaks(copied) == [], "baked into an image layer"
    whole = [c for c in copies(dockerfile) if "." in c.sources or "/" in c.sources]
    assert not whole, "each COPY names what it copies, whatever the ignore file lets through"


def test_one_ignore_file_serves_both_images() -> None:
    """A ``Dockerfile.x.dockerignore`` beside a Dockerfile would replace the checked one."""
    for name in DOCKERFILES:
        assert ignore_file(REPO, DEPLOY / name) == REPO / ".dockerignore", name


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_copy_everything_they_install(name: str) -> None:
    """Every file git tracks under the installed packages (code, templates, native sources),
    the build's own files and the entrypoint: leaving one out would break the image."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = sorted(set(project["tool"]["setuptools"]["package-dir"].values()))
    tracked = subprocess.run(["git", "ls-files", "--", *folders], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    needed = {*tracked, "pyproject.toml", "constraints.txt", "Makefile",
              project["project"]["readme"], "deploy/entrypoint.sh"}
    assert len(tracked) > 100
    assert needed - copied_files(REPO, DEPLOY / name) == set()


def image_uid(name: str) -> tuple[int, int]:
    """The image's numeric user and group."""
    user = image_user(DEPLOY / name)
    match = re.fullmatch(r"(\d+):(\d+)", user or "")
    assert match, f"{name}: USER {user!r} is not a numeric uid:gid (runAsNonRoot needs one)"
    return int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_a_numeric_non_root_user(name: str) -> None:
    uid, gid = image_uid(name)
    assert uid != 0 and gid != 0
    text = (DEPLOY / name).read_text()
    assert f"--uid {uid}" in text and f"--gid {gid}" in text, "the user exists in the image"
    home = image_env(DEPLOY / name)["HOME"]
    assert f"--home-dir {home}" in text


def test_both_images_run_as_the_same_user() -> None:
    """The manifests and the compose file name one uid for either image."""
    assert len({image_uid(n) for n in DOCKERFILES}) == 1
    assert len({image_env(DEPLOY / n)["HOME"] for n in DOCKERFILES}) == 1


def test_compose_builds_the_checked_images_from_the_checked_context() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    builds = [s["build"] for s in doc["services"].values() if "build" in s]
    assert builds
    for build in builds:
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert build["dockerfile"].removeprefix("deploy/") in DOCKERFILES
