"""Docker's build context, evaluated without docker: which files an image build sends and copies.

No docker daemon here, so the rules are applied in Python as docker documents them
(docs.docker.com/build/concepts/context/#dockerignore-files) and implements them
(moby/patternmatcher, buildkit's dockerignore reader):

- `.dockerignore` lines are trimmed; `#` lines and blank lines are skipped; `!` makes an
  exception; each pattern is cleaned (`filepath.Clean`) and a leading `/` dropped.
- `*` is any run of characters but `/`, `?` one such character, `**` any number of folders
  (zero included), `[...]` a character class, `\\` escapes the next character.
- A path is excluded when the last pattern matching it or one of its parent folders is not an
  exception. A Dockerfile's own ``<Dockerfile>.dockerignore`` beside it wins over the context's.
- A folder that is excluded is not walked unless some exception pattern starts with it (the
  builder's shortcut; exceptions with wildcards below an excluded folder are not honoured).

patternmatcher also has string fast paths for patterns that start or end with `**`; they only
ever match more than the regular expression does, so checks here are the stricter ones.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    text: str
    exception: bool
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        """The path, or one of its parent folders, matches (docker's MatchesOrParentMatches)."""
        if self.regex.match(path):
            return True
        parts = path.split("/")[:-1]
        return any(self.regex.match("/".join(parts[:i + 1])) for i in range(len(parts)))


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch in "[]":
            out += ch
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def parse_dockerignore(text: str) -> list[Pattern]:
    patterns = []
    for line in text.removeprefix("\ufeff").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        if line:
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/")
        patterns.append(Pattern(line, exception, _regex(line)))
    return patterns


def excluded(path: str, patterns: list[Pattern]) -> bool:
    matched = False
    for pattern in patterns:
        if pattern.exception != matched:  # only a later pattern can change the verdict
            continue
        if pattern.matches(path):
            matched = not pattern.exception
    return matched


def ignore_file(context: Path, dockerfile: Path) -> Path | None:
    """The ignore file a build reads: the Dockerfile's own, else the context's."""
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"),
                      context / ".dockerignore"):
        if candidate.is_file():
            return candidate
    return None


def context_files(context: Path, dockerfile: Path) -> set[str]:
    """Every file (and link) the build sends, as a path relative to the context."""
    source = ignore_file(context, dockerfile)
    patterns = parse_dockerignore(source.read_text()) if source else []
    exceptions = [p.text for p in patterns if p.exception]
    files = set()
    for root, dirs, names in os.walk(context):
        rel = Path(root).relative_to(context).as_posix()
        rel = "" if rel == "." else rel + "/"
        for name in list(dirs):
            path = rel + name
            if excluded(path, patterns) and not any(
                    (e + "/").startswith(path + "/") for e in exceptions):
                dirs.remove(name)
            elif os.path.islink(context / path):
                files.add(path)  # sent as a link, not followed
        files |= {rel + n for n in names if not excluded(rel + n, patterns)}
    return files


@dataclass(frozen=True)
class Copy:
    instruction: str  # COPY or ADD
    sources: tuple[str, ...]
    dest: str


def instructions(dockerfile: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not logical):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        word, _, rest = logical.partition(" ")
        yield word.upper(), rest.strip()
        logical = ""


def copies(dockerfile: Path) -> list[Copy]:
    """The COPY and ADD instructions that read the build context (not ``--from`` a stage)."""
    found = []
    for word, rest in instructions(dockerfile):
        if word not in ("COPY", "ADD"):
            continue
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        flags = [a for a in args if a.startswith("--")]
        paths = [a for a in args if not a.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        found.append(Copy(word, tuple(paths[:-1]), paths[-1]))
    return found


def copied_files(context: Path, dockerfile: Path) -> set[str]:
    """The context files the Dockerfile's COPY and ADD put into the image."""
    sent = context_files(context, dockerfile)
    out = set()
    for copy in copies(dockerfile):
        for source in copy.sources:
            src = posixpath.normpath(source.lstrip("/"))
            if src == ".":
                out |= sent
                continue
            depth = src.count("/") + 1
            for path in sent:  # the source (a wildcard, a file or a folder) and what is below it
                head = "/".join(path.split("/")[:depth])
                if fnmatchcase(head, src):
                    out.add(path)
    return out


def image_user(dockerfile: Path) -> str | None:
    """The last USER: who the image's processes run as (None: root)."""
    users = [rest for word, rest in instructions(dockerfile) if word == "USER"]
    return users[-1] if users else None


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV variables the image sets (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for word, rest in instructions(dockerfile):
        if word == "ENV":
            env |= dict(item.split("=", 1) for item in shlex.split(rest))
    return env
