"""The registry's tokens file behaves like the server's API keys file (issue 29, item 5): errors
name `file:line`; a secret listed twice, a short secret and a `#` inside a secret are refused;
the file is re-read when it changes (a bad change keeps the tokens in force); and each file
given to the other server is refused with a hint instead of parsing into wrong secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loramux.registry.errors import RegistryError, Unauthorized
from loramux.registry.http.auth import TokenAuth
from loramux.server.auth import KeyStore
from loramux.server.errors import SettingsError

OPS, CI = "ops-secret-0123456789", "ci-secret-0123456789"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    stat = path.stat()  # a new mtime even within the file system's clock tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return path


@pytest.mark.parametrize(("text", "error"), [
    (f"{OPS}:admin:ops\n\n{OPS}:read:fleet\n", ":3: this secret is already listed on line 1"),
    (f"{OPS}:admin\nshort:read\n", ":2: the secret is shorter than 10 characters"),
    (f"{OPS}:admin\nab#cdefghijkl:admin\n", ":2: '#' inside a token"),
    (f"# comment\n{OPS}:root\n", ":2: bad token entry"),
    (f"{OPS} admin name=ops\n", ":1: this looks like a `loramux serve --api-keys` line"),
])
def test_tokens_file_errors_name_file_and_line(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path / "tokens", text)
    with pytest.raises(RegistryError) as raised:
        TokenAuth.from_sources(path)
    assert str(raised.value).startswith(f"{path}{error}"), str(raised.value)


def test_comments_still_work(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", f"# tokens\n{OPS}:admin:ops   # the operators\n")
    assert TokenAuth.from_sources(path).identify(OPS).name == "ops"


def test_the_tokens_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", f"{OPS}:admin:ops\n")
    auth = TokenAuth.from_sources(path)
    with pytest.raises(Unauthorized):
        auth.identify(CI)
    write(path, f"{OPS}:admin:ops\n{CI}:write:ci\n")
    assert auth.identify(CI).name == "ci"
    write(path, f"{OPS}:admin:ops\n{CI}:write:ci\n{CI}:admin:again\n")  # a bad change
    assert auth.identify(CI).scopes == {"read", "write"}  # the tokens in force stay
    write(path, f"{OPS}:admin:ops\n")
    with pytest.raises(Unauthorized):
        auth.identify(CI)


def test_a_registry_tokens_file_is_not_taken_as_api_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "keys", f"{OPS}:admin:ops\n{CI}:write:ci\n")
    with pytest.raises(SettingsError, match=r":1: this looks like a `loramux registry serve "
                       r"--tokens` line"):
        KeyStore(path)
