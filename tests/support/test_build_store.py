"""The build store outside the checkout: a finished build is copied in whole and back out byte
for byte; an entry without its completion marker (a copy cut short) is never reused; the store
can be moved or turned off, and old entries are pruned per kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loramux import build_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv(build_store.ENV, str(root))
    return root


def _build(folder: Path, text: str) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(text.encode() * 1000)
    (folder / "sub" / "report.json").write_text(f'{{"text": "{text}"}}')
    return folder


def test_kept_build_comes_back_byte_for_byte(store: Path, tmp_path: Path) -> None:
    src = _build(tmp_path / "built", "abc")
    assert not build_store.restore("demo-base", "k1", tmp_path / "clone" / "demo-base")
    build_store.keep("demo-base", "k1", src)
    dest = tmp_path / "clone" / "demo-base"
    (dest / "stale").mkdir(parents=True)  # whatever was there is replaced, not merged
    assert build_store.restore("demo-base", "k1", dest)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert got == ["sub", "sub/report.json", "weights.bin"]
    assert (dest / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    assert not build_store.restore("demo-base", "other-key", tmp_path / "x")
    assert not build_store.restore("adapters", "k1", tmp_path / "y")  # kinds are apart


def test_an_entry_cut_short_is_not_reused(store: Path, tmp_path: Path) -> None:
    _build(store / "demo-base" / "k2", "half")  # copied, but the marker never written
    assert not build_store.restore("demo-base", "k2", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    build_store.keep("demo-base", "k2", _build(tmp_path / "whole", "whole"))
    assert build_store.restore("demo-base", "k2", tmp_path / "dest")
    assert (tmp_path / "dest" / "weights.bin").read_bytes().startswith(b"whole")


def test_off_keeps_and_restores_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(build_store.ENV, "off")
    assert build_store.store_root() is None
    build_store.keep("demo-base", "k", _build(tmp_path / "b", "x"))
    assert not build_store.restore("demo-base", "k", tmp_path / "d")


def test_default_is_the_user_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(build_store.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_store.store_root() == tmp_path / "xdg" / "loramux" / "builds"


def test_old_entries_are_pruned(store: Path, tmp_path: Path) -> None:
    for i in range(build_store.KEEP_PER_KIND + 2):
        build_store.keep("adapters", f"k{i}", _build(tmp_path / f"b{i}", str(i)))
        os.utime(store / "adapters" / f"k{i}" / build_store.COMPLETE, (1000 + i, 1000 + i))
    kept = sorted(p.name for p in (store / "adapters").iterdir())
    assert len(kept) == build_store.KEEP_PER_KIND and "k0" not in kept


def test_a_key_is_a_plain_name(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain name"):
        build_store.restore("demo-base", "../escape", tmp_path / "d")


def test_a_store_that_cannot_be_written_does_not_fail_the_build(tmp_path: Path,
                                                                 monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(build_store.ENV, str(blocker / "store"))
    build_store.keep("demo-base", "k", _build(tmp_path / "b", "x"))  # logs, does not raise
    assert not build_store.restore("demo-base", "k", tmp_path / "d")
