"""Finished builds kept outside any checkout, so a fresh clone on the same machine reuses them.

The demo base (minutes of pretraining), the converted real base and the trained demo and
real-model adapters each land in a checkout's own ``.cache`` (``loramux.paths``), keyed by
everything that decides their bytes. A new clone starts with an empty ``.cache``; without this
store ``make test`` there would rebuild all of them (about 25 of its minutes on 2 cores) to get
bytes this machine already made. So each finished build is also copied here under its kind and
key, and a build whose key is here is copied back instead of being made again.

The key is the only thing trusted: callers key by the recipe's own hash (the demo base), the
GGUF's sha256 (the real base) or the adapters' cache key (recipe, trainer source, base
identity, data, library versions). An entry is complete only once its marker file exists
(written after the copy, then the folder renamed into place), so an interrupted copy is never
reused. ``LORAMUX_BUILD_STORE`` moves the store; ``off`` turns it off (a CI job that must show
the cold build).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "LORAMUX_BUILD_STORE"
COMPLETE = ".loramux-build-complete"
KEEP_PER_KIND = 4  # newest entries kept per kind; older ones go (a real base is ~270 MB)


def store_root() -> Path | None:
    """The store's folder, or None when ``LORAMUX_BUILD_STORE=off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in {"off", "0", "no", "false"}:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loramux" / "builds"


def _entry(kind: str, key: str) -> Path | None:
    root = store_root()
    if root is None:
        return None
    if not key or any(c in key for c in "/\\") or key.startswith("."):
        raise ValueError(f"build store key {key!r} is not a plain name")
    return root / kind / key


def restore(kind: str, key: str, dest: Path | str) -> bool:
    """Copy the stored build ``kind/key`` to ``dest`` (replacing it); False when not stored."""
    entry = _entry(kind, key)
    if entry is None or not (entry / COMPLETE).is_file():
        return False
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(entry, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(COMPLETE))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.utime(entry / COMPLETE)  # recently used: pruned last
    log.info("reused %s %s from the build store (%s)", kind, key, entry)
    return True


def keep(kind: str, key: str, src: Path | str) -> None:
    """Copy the finished build ``src`` into the store as ``kind/key``.

    Never fails the build it follows: a full disk or a read-only home only costs the reuse.
    """
    entry = _entry(kind, key)
    if entry is None or (entry / COMPLETE).is_file():
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            (tmp / COMPLETE).write_text(f"{kind}/{key}\n")
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(entry.parent)
    except OSError as exc:
        log.warning("could not keep %s %s in the build store: %s", kind, key, exc)


def _prune(kind_dir: Path) -> None:
    entries = [e for e in kind_dir.iterdir() if (e / COMPLETE).is_file()]
    entries.sort(key=lambda e: (e / COMPLETE).stat().st_mtime_ns, reverse=True)
    for old in entries[KEEP_PER_KIND:]:
        shutil.rmtree(old, ignore_errors=True)
