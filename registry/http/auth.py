"""Bearer tokens with ``read`` / ``write`` / ``admin`` scopes, as FastAPI dependencies.

Tokens come from a file (``--tokens FILE``) or ``LORAMUX_REGISTRY_TOKENS``; both use the same
syntax, entries separated by commas or newlines: ``SECRET:SCOPE[:NAME]``, ``#`` starts a
comment (at the start of a line or after a space); secrets are at least ``MIN_SECRET_CHARS``
long and listed once; the file is re-read when it changes. ``admin`` implies ``write``, which
implies ``read``. ``write`` pushes, moves aliases
and deletes versions no alias points at; what can destroy data others rely on (a forced delete,
which removes aliases, ``gc``, and ``verify``, which moves blobs to quarantine) needs ``admin``.
The optional NAME is what the audit log records; without one the log gets a short hash of the
token, never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from loramux.registry.errors import Forbidden, RegistryError, Unauthorized
from loramux.web.watched import COMMENT_RE, MIN_SECRET_CHARS, WatchedFile
from loramux.wire import ACTOR_HEADER

ENV_TOKENS = "LORAMUX_REGISTRY_TOKENS"
TOKENS_FORMAT = (
    "File of tokens, one SECRET:read|write|admin[:NAME] per line (or comma-separated; "
    "# comments). admin includes write, write includes read; admin is needed for delete "
    "--force, gc and verify. NAME is what the audit log records. Also env "
    "LORAMUX_REGISTRY_TOKENS. Clients pass SECRET as LORAMUX_TOKEN or --token."
)
SCOPES = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}


@dataclass(frozen=True)
class Token:
    secret: str
    scope: str
    name: str


@dataclass(frozen=True)
class Identity:
    name: str
    scopes: frozenset[str]
    anonymous: bool = False


def parse_tokens(text: str, *, source: str = "tokens") -> list[Token]:
    """Tokens from a file's (or the variable's) text; refuses with ``source:line``: a malformed
    entry, a secret shorter than ``MIN_SECRET_CHARS``, a ``#`` inside an entry (a comment starts
    at the start of a line or after a space; inside a secret it would cut it), a secret listed
    twice (which line would win?), and a ``loramux serve --api-keys`` file given by mistake."""
    tokens: list[Token] = []
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{number}"
        line = COMMENT_RE.sub("", raw).strip()
        for entry in (e.strip() for e in line.split(",")):
            if not entry:
                continue
            if "#" in entry:
                raise RegistryError(f"{where}: '#' inside a token (a comment starts with '#' at "
                                    "the start of a line or after a space)")
            parts = entry.split(":")
            if " " in entry or "\t" in entry:
                raise RegistryError(f"{where}: this looks like a `loramux serve --api-keys` "
                                    "line (KEY admin …); registry tokens are "
                                    "SECRET:read|write|admin[:NAME]")
            if len(parts) not in (2, 3) or not parts[0] or parts[1] not in SCOPES:
                raise RegistryError(f"{where}: bad token entry {entry[:4]!r}…: expected "
                                    "SECRET:read|write|admin[:NAME]")
            secret, scope = parts[0], parts[1]
            if len(secret) < MIN_SECRET_CHARS:
                raise RegistryError(f"{where}: the secret is shorter than {MIN_SECRET_CHARS} "
                                    "characters; use a random one, e.g. `openssl rand -hex 16`")
            if secret in lines:
                raise RegistryError(f"{where}: this secret is already listed on line "
                                    f"{lines[secret]}")
            lines[secret] = number
            name = parts[2] if len(parts) == 3 and parts[2] else _anon_name(secret)
            tokens.append(Token(secret, scope, name))
    return tokens


def _anon_name(secret: str) -> str:
    return "token-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


class TokenAuth:
    """The registry's tokens: given, from ``LORAMUX_REGISTRY_TOKENS``, and from a file that is
    re-read when it changes (``loramux.web.watched``, as the server's API keys file)."""

    def __init__(self, tokens: Iterable[Token] = (), *, anonymous_read: bool = False,
                 tokens_file: Path | None = None) -> None:
        self._given = list(tokens)
        self.anonymous_read = anonymous_read
        self._file: WatchedFile[list[Token]] | None = None
        if tokens_file is not None:
            source = str(tokens_file)
            self._file = WatchedFile(
                Path(tokens_file), lambda text, _: parse_tokens(text, source=source),
                error=RegistryError, what="registry tokens")
            _no_duplicates(self._given, self._file.current(), source)

    @classmethod
    def from_sources(
        cls, tokens_file: Path | None = None, *, anonymous_read: bool = False
    ) -> TokenAuth:
        given = parse_tokens(os.environ.get(ENV_TOKENS, ""), source=ENV_TOKENS)
        return cls(given, anonymous_read=anonymous_read, tokens_file=tokens_file)

    @property
    def tokens(self) -> list[Token]:
        return self._given + (self._file.current() if self._file is not None else [])

    @property
    def configured(self) -> bool:
        return bool(self.tokens) or self.anonymous_read

    def identify(self, secret: str | None) -> Identity:
        if not secret:
            if self.anonymous_read:
                return Identity("anonymous", SCOPES["read"], anonymous=True)
            raise Unauthorized("missing bearer token: set LORAMUX_TOKEN (or pass --token)")
        found = None
        for token in self.tokens:  # compare with every token: no timing hint of which matched
            if hmac.compare_digest(token.secret.encode(), secret.encode()):
                found = token
        if found is None:
            raise Unauthorized("invalid bearer token")
        return Identity(found.name, SCOPES[found.scope])

    def authorize(self, secret: str | None, scope: str, action: str = "this") -> Identity:
        """The caller, if its token grants ``scope``: else Unauthorized or Forbidden."""
        return check_scope(self.identify(secret), scope, action)


def _no_duplicates(given: list[Token], listed: list[Token], source: str) -> None:
    secrets = {t.secret for t in given}
    if any(t.secret in secrets for t in listed):
        raise RegistryError(f"{source}: a secret is listed both there and in {ENV_TOKENS}")


def check_scope(identity: Identity, scope: str, action: str = "this") -> Identity:
    """The one place a missing scope becomes a 403 that names the scope."""
    if scope not in identity.scopes:
        granted = "/".join(s for s in ("read", "write", "admin") if s in identity.scopes)
        raise Forbidden(f"{identity.name} may only {granted}; {action} needs a token with "
                        f"{scope!r} scope")
    return identity


def bearer_secret(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (for code outside FastAPI's DI)."""
    scheme, _, secret = (authorization or "").partition(" ")
    return secret.strip() or None if scheme.lower() == "bearer" else None


_bearer = HTTPBearer(auto_error=False,
                     description="LORAMUX_TOKEN with read, write or admin scope")


def require(scope: str) -> Callable[..., Identity]:
    """A dependency that authenticates the caller and checks ``scope``."""

    async def dependency(  # async: no thread-pool hop on every request for a dict lookup
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Identity:
        auth: TokenAuth = request.app.state.auth
        return auth.authorize(credentials.credentials if credentials else None, scope)

    return dependency


require_read = require("read")
require_write = require("write")
require_admin = require("admin")


def actor_of(identity: Identity, request: Request) -> str:
    """Audit actor: the token's name, plus what the client says it is (user@host)."""
    claimed = request.headers.get(ACTOR_HEADER, "").strip()[:128]
    return f"{identity.name} ({claimed})" if claimed and claimed != identity.name else identity.name


UI_COOKIE = "loramux_registry_ui"  # set by the /ui login form (loramux/web/login.py)


def login_check(app: FastAPI) -> Callable[[str], str]:
    """What the /ui login form keeps for a session: the token, once it grants ``read``
    (checked again on every page, so a session ends with its token)."""

    def check(secret: str) -> str:
        if not secret:
            raise Unauthorized("enter a token")
        app.state.auth.authorize(secret, "read", "reading the web pages")
        return secret

    return check


def ui_identity(request: Request) -> Identity:
    """The caller of a ``/ui`` page: the token behind the login session whose id the HttpOnly
    cookie holds (a browser cannot send a bearer header on a link). Only the /ui routes call
    this; the API's dependencies above never read the cookie, so it grants nothing there."""
    auth: TokenAuth = request.app.state.auth
    return auth.authorize(request.app.state.ui_login.credential(request), "read",
                          "reading the pages")
