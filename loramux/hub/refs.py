"""Hub references: ``hf://ORG/REPO[@REVISION]``, and folders inside the Hub's cache."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from loramux.registry.errors import InvalidName

SCHEME = "hf://"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubRef:
    """A model repo on the Hub and the revision asked for (a branch, tag or commit)."""

    repo: str
    revision: str = "main"

    @classmethod
    def parse(cls, text: str) -> HubRef:
        if not text.startswith(SCHEME):
            raise InvalidName(f"{text!r} is not a Hub reference: write hf://ORG/REPO[@REVISION]")
        repo, _, revision = text[len(SCHEME):].partition("@")
        if not _REPO_RE.match(repo) or ".." in repo:
            raise InvalidName(f"{text!r}: the Hub repo must be ORG/REPO (letters, digits, ._-)")
        if revision and (not _REV_RE.match(revision) or ".." in revision):
            raise InvalidName(f"{text!r}: {revision!r} is not a branch, tag or commit")
        return cls(repo, revision or "main")

    @property
    def pinned(self) -> bool:
        return bool(COMMIT_RE.match(self.revision))

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo}@{self.revision}"

    def default_name(self) -> str:
        """A registry name for the repo: ``org--repo`` lowercased, other characters as ``-``."""
        raw = self.repo.replace("/", "--").lower()
        name = re.sub(r"[^a-z0-9._-]", "-", raw).strip("._-")
        return name[:64].rstrip("._-") or "hub-adapter"


@dataclass(frozen=True)
class CachedSnapshot:
    """A folder inside the Hub cache: ``…/models--ORG--REPO/snapshots/<commit>[/subfolder]``."""

    repo_root: Path  # models--ORG--REPO
    repo: str
    commit: str
    subfolder: str


def cached_snapshot(folder: Path) -> CachedSnapshot | None:
    """What ``folder`` is inside the Hub cache, or None when it is not in one."""
    parts = Path(folder).absolute().parts
    for i in range(len(parts) - 2):
        if (parts[i].startswith("models--") and parts[i + 1] == "snapshots"
                and COMMIT_RE.match(parts[i + 2])):
            org_repo = parts[i][len("models--"):].split("--", 1)
            if len(org_repo) != 2:
                return None
            return CachedSnapshot(Path(*parts[:i + 1]), "/".join(org_repo), parts[i + 2],
                                  "/".join(parts[i + 3:]))
    return None
